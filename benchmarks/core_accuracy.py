"""Accuracy of PF-ODE maps on the demo mixture against a tight reference (issue 2's measurement).

For each solver setting: NFE, RMS map error (= PFD to the reference on the same noise), max
per-sample error and wall time (median of repeats). Writes benchmarks/results/core_accuracy.json.

    python benchmarks/core_accuracy.py [--n 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pfd
from pfd.analytic.teachers import hexagon_teacher
from pfd.estimator import versions
from pfd.report import format_table, write_json

SETTINGS = [
    ("euler", {"steps": 18}),
    ("heun", {"steps": 18}),
    ("heun", {"steps": 36}),
    ("heun", {"steps": 72}),
    ("rk4", {"steps": 18}),
    ("unipc3", {"steps": 20}),
    ("unipc3", {"steps": 35}),
    ("dpm3m", {"steps": 35}),
    ("dopri5", {"rtol": 1e-5, "atol": 1e-5}),
    ("dopri5", {"rtol": 1e-6, "atol": 1e-8}),
    ("dopri5", {"rtol": 1e-8, "atol": 1e-8}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "core_accuracy.json"))
    args = ap.parse_args()
    gmm = hexagon_teacher()
    z = pfd.canonical_noise(args.n, (2,), seed=0)
    ref_map = gmm.ode_map(solver="dopri8", rtol=1e-11, atol=1e-11)
    ref = ref_map(z)
    rows = []
    for solver, kw in SETTINGS:
        m = gmm.ode_map(solver=solver, **kw)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            x = m(z)
            times.append(time.perf_counter() - t0)
        err = (x - ref).pow(2).sum(1)
        rows.append({
            "solver": solver,
            "options": ", ".join(f"{k}={v:g}" for k, v in kw.items()),
            "nfe": m.last_nfe,
            "rms_error": float(err.mean().sqrt()),
            "max_error": float(err.sqrt().max()),
            "seconds_median": statistics.median(times),
        })
    print(f"demo mixture, n={args.n}, reference dopri8 rtol=atol=1e-11 ({ref_map.last_nfe} NFE); "
          f"data RMS {float(ref.pow(2).sum(1).mean().sqrt()):.3f}")
    print(format_table(rows, ["solver", "options", "nfe", "rms_error", "max_error", "seconds_median"]))
    write_json(args.out, {"n": args.n, "reference": ref_map.describe(), "rows": rows, "versions": versions()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
