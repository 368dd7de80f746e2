"""benchmarks/memorization_digits.py on tiny settings: records, resume, summary, figure."""

import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def _load():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memorization_digits.py"
    spec = importlib.util.spec_from_file_location("memorization_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_memorization_study_tiny_resumes_and_summarises(tmp_path):
    mod = _load()
    kw = {"out_dir": tmp_path, "targets": ("sample", "posterior"), "n_eval": 32,
          "train": {"check_every": 10, "n_check": 32, "warmup": 5}, "progress": False}
    logs: list[str] = []
    res = mod.run_study(["mlp:8:1"], [8], [0, 1], [10, 20], log=logs.append, **kw)
    assert res["complete"] and res["n_rows"] == 2 * 2 * 2 == len(logs)
    for r in res["rows"]:
        assert r["steps"] == r["stage"] and r["target"] in ("sample", "posterior")
        assert r["e_mem_rel"] ** 2 == pytest.approx(r["e_mem_same_rel"] ** 2 + r["e_mem_switched_rel"] ** 2, rel=1e-9)
    row = next(s for s in res["summary"] if s["arm"] == "mlp:8:1 sample" and s["n_train"] == 8 and s["stage"] == 20)
    vals = [r["basin_agreement"] for r in res["rows"] if r["arm"] == "mlp:8:1 sample" and r["n_train"] == 8
            and r["stage"] == 20]
    assert row["seeds"] == 2 and row["basin_agreement"] == pytest.approx(sum(vals) / 2)
    lo, hi = row["basin_agreement_ci95"]
    assert lo <= row["basin_agreement"] <= hi and math.isfinite(lo)
    # a rerun trains and scores nothing; one more stage continues from the checkpoint
    logs.clear()
    again = mod.run_study(["mlp:8:1"], [8], [0, 1], [10, 20], log=logs.append, **kw)
    assert logs == [] and again["n_rows"] == res["n_rows"]
    more = mod.run_study(["mlp:8:1"], [8], [0, 1], [10, 20, 30], log=logs.append, **{**kw, "targets": ("sample",)})
    assert any("resumed at step 20" in m for m in logs) and more["complete"]
    mod.plot(res, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 10_000
