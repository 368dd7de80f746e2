"""Shared pieces of the fair-test benchmarks (issue 18): t-intervals and a resumable run store."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

from pfd.report import write_json


def mean_ci95(values: list[float]) -> dict[str, Any]:
    """Mean, sd and the two-sided 95% Student-t interval of the mean (None for n < 2)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    m = statistics.fmean(v)
    if n < 2:
        return {"n": 1, "mean": m, "sd": None, "ci95": None}
    sd = statistics.stdev(v)
    h = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": m, "sd": sd, "ci95": [m - h, m + h]}


def run_key(settings: dict[str, Any]) -> str:
    """The key of one run: every setting that changes its result, as canonical JSON."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


class RunStore:
    """Per-run results kept inside the report JSON under ``"runs"`` (a dict key -> record), so a
    killed sweep resumes: finished runs are read back and never repeated, unfinished ones redone."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.runs: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.runs = dict(json.loads(self.path.read_text()).get("runs", {}))
            except (json.JSONDecodeError, OSError, AttributeError):
                self.runs = {}

    def absorb(self, paths: list[Path]) -> int:
        """Add the finished runs of other stores (parallel workers writing their own files) that this one
        lacks; returns how many were added. Saved with the next ``put``/``save``."""
        added = 0
        for p in paths:
            try:
                other = json.loads(Path(p).read_text()).get("runs", {})
            except (json.JSONDecodeError, OSError, AttributeError):
                continue
            for k, v in other.items():
                if k not in self.runs:
                    self.runs[k] = v
                    added += 1
        return added

    def get(self, key: str) -> Any:
        return self.runs.get(key)

    def put(self, key: str, record: Any, report: dict[str, Any]) -> None:
        self.runs[key] = record
        self.save(report)

    def save(self, report: dict[str, Any]) -> None:
        write_json(self.path, {**report, "runs": self.runs})
