"""Calibration and cost of the solver-error estimate, and the rtol= choice against torchdiffeq dopri5.

For each case of benchmarks/perf_suite.py (teacher, perturbed student) and each solver setting
(heun/18, unipc3/20, euler/18 on the Karras grid):
  * the run with ``solver_error=True`` ("cheap") and the same run without it (overhead: best of
    two such pairs, one after the other);
  * the true solver error |PFD - PFD_ref| on the same noise, PFD_ref from dopri8 at
    rtol = atol = 1e-10 (log sigma) on every sample;
  * calibration: true <= 3 x estimate, and estimate <= 10 x true or estimate < stderr / 4.
Then, per case, time to a PFD within 0.5% of the reference:
  * ``pfd.distance(..., rtol=0.005)`` (pilot + extrapolated unipc3 grid + verification, all counted);
  * torchdiffeq dopri5 as a user calls it: ``DiffusionMap(solver="dopri5")`` at pfd's default
    rtol 1e-6, and at the loosest rtol of 1e-3 .. 1e-6 that lands within 0.5% (matched accuracy,
    chosen with hindsight, so favourable to dopri5).
Writes benchmarks/results/solver_error.json (resumable: finished cases are kept; ``--redo`` recomputes
the cases named, e.g. after a change of the estimator) and .png. The dopri8 references are cached
in $PFD_BENCH_CACHE (default /tmp/pfd-bench-cache).

    python benchmarks/solver_error.py [--n 20000] [--quick] [--cases A B] [--redo]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from perf_suite import suite  # noqa: E402

import pfd  # noqa: E402
from pfd.report import format_table, write_json  # noqa: E402

RESULTS = HERE / "results"
OUT = RESULTS / "solver_error.json"
CACHE = Path(os.environ.get("PFD_BENCH_CACHE", "/tmp/pfd-bench-cache"))
SETTINGS = [("heun", 18), ("unipc3", 20), ("euler", 18)]
REF = {"solver": "dopri8", "rtol": 1e-10, "atol": 1e-10}
DOPRI_RTOLS = [1e-3, 1e-4, 1e-5, 1e-6]
TARGET = 0.005
CASE_N = {"d64-16modes-full": 1000, "empirical-1000": 5000}  # heavy denoisers: fewer samples
REPEAT = 2  # timings of the overhead: best of this many side-by-side pairs
SKIP_DEFAULT = ("d64-16modes-full",)  # its dopri8 reference alone takes ~10 min per 1000 samples here


def outputs(m, z: torch.Tensor, bs: int = 1024) -> torch.Tensor:
    return torch.cat([m(z[i : i + bs]) for i in range(0, z.shape[0], bs)])


def pfd_of(xa: torch.Tensor, xb: torch.Tensor) -> float:
    return float((xa - xb).pow(2).sum(1).mean().sqrt())


def run_case(name: str, teacher, student, n: int, quick: bool) -> dict:
    z = pfd.canonical_noise(n, teacher.event_shape, seed=0)
    cache = CACHE / f"{name}-n{n}.pt"  # reference outputs (slow) kept across restarts, outside the repo
    t0 = time.perf_counter()
    if cache.exists():
        ra, rb, ref_seconds = torch.load(cache)
    else:
        ra = outputs(teacher.ode_map(**REF), z)
        rb = outputs(student.ode_map(**REF), z)
        ref_seconds = time.perf_counter() - t0
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save((ra, rb, ref_seconds), cache)
    ref = pfd_of(ra, rb)
    print(f"[{name}] n={n} reference PFD {ref:.6g} ({REF['solver']}, {ref_seconds:.0f} s)", flush=True)
    rows = []
    for solver, steps in SETTINGS:
        a = teacher.ode_map(solver=solver, steps=steps)
        b = student.ode_map(solver=solver, steps=steps)
        # side by side, best of REPEAT each (the machine is shared: single timings catch load spikes)
        run_s, se_s = [], []
        for _ in range(REPEAT):
            plain = pfd.distance(a, b, noise=z, progress=False)
            res = pfd.distance(a, b, noise=z, progress=False, solver_error=True)
            run_s.append(plain.seconds)
            se_s.append(res.solver_error.seconds)
        se = res.solver_error
        true = abs(res.value - ref)
        ok_low = true <= 3 * se.value
        ok_high = se.value <= 10 * true or se.value < res.stderr / 4
        row = {
            "case": name, "solver": solver, "steps": steps, "n": n, "pfd": res.value, "pfd_ref": ref,
            "true_error": true, "true_signed": res.value - ref, "estimate": se.value, "delta": se.delta,
            "sd": se.sd, "reference_error": se.reference_error, "m": se.m, "stderr": res.stderr,
            "true_over_est": true / se.value if se.value > 0 else math.inf,
            "est_over_true": se.value / true if true > 0 else math.inf,
            "calibrated": bool(ok_low and ok_high), "run_seconds": min(run_s), "se_seconds": min(se_s),
            "overhead": min(se_s) / min(run_s), "overhead_each": [e / r for e, r in zip(se_s, run_s, strict=True)],
            "se_nfe_per_sample": se.nfe, "run_nfe": plain.nfe[0],
            "ref_level": se.reference.get("a", se.reference.get("b", {})).get("level"),
            "stopped": se.reference.get("stopped"), "phases": se.reference.get("phases"),
            "budget": se.reference.get("budget"),
        }
        rows.append(row)
        print(f"  {solver}/{steps}: PFD {res.value:.5g} true err {true:.2e} est {se.value:.2e} "
              f"(delta {se.delta:+.2e}, sd {se.sd:.1e}, m={se.m}) stderr {res.stderr:.1e}  "
              f"true/est {row['true_over_est']:.2f}  overhead {100 * row['overhead']:.0f}%  "
              f"{'OK' if row['calibrated'] else 'MISS'}", flush=True)
    speed = speed_race(teacher, student, z, ref, quick)
    return {"rows": rows, "speed": speed, "ref_seconds": ref_seconds, "pfd_ref": ref}


def speed_race(teacher, student, z: torch.Tensor, ref: float, quick: bool) -> dict:
    """Time to a PFD within 0.5% of the reference: rtol= vs dopri5 as a user calls it."""
    out: dict = {}
    t0 = time.perf_counter()
    res = pfd.distance(teacher.ode_map(), student.ode_map(), noise=z, rtol=TARGET, progress=False)
    auto = res.provenance["auto_solver"]
    out["pfd_rtol"] = {"seconds": time.perf_counter() - t0, "rel_error": abs(res.value - ref) / ref,
                       "chosen": auto["chosen"], "met": auto["met"], "attempts": auto["attempts"],
                       "estimate_rel": res.solver_error.value / res.value}
    print(f"  rtol={TARGET}: {out['pfd_rtol']['seconds']:.1f} s, chose {auto['chosen']['solver']}/"
          f"{auto['chosen']['steps']}, true rel err {out['pfd_rtol']['rel_error']:.2e}", flush=True)
    t0 = time.perf_counter()
    res = pfd.distance(teacher.ode_map(), student.ode_map(), noise=z, progress=False)
    out["heun18"] = {"seconds": time.perf_counter() - t0, "rel_error": abs(res.value - ref) / ref}
    dopri = []
    for rt in ([1e-4, 1e-6] if quick else DOPRI_RTOLS):
        t0 = time.perf_counter()
        res = pfd.distance(teacher.ode_map(solver="dopri5", rtol=rt), student.ode_map(solver="dopri5", rtol=rt),
                           noise=z, progress=False)
        dopri.append({"rtol": rt, "seconds": time.perf_counter() - t0, "rel_error": abs(res.value - ref) / ref,
                      "nfe": res.nfe[0]})
        print(f"  dopri5 rtol={rt:g}: {dopri[-1]['seconds']:.1f} s, rel err {dopri[-1]['rel_error']:.2e}, "
              f"NFE {res.nfe[0]:.0f}", flush=True)
    out["dopri5"] = dopri
    default = next(d for d in dopri if d["rtol"] == 1e-6)
    matched = [d for d in dopri if d["rel_error"] <= TARGET]
    loosest = max(matched, key=lambda d: d["rtol"]) if matched else None
    out["speedup_vs_dopri5_default"] = default["seconds"] / out["pfd_rtol"]["seconds"]
    out["speedup_vs_dopri5_matched"] = None if loosest is None else loosest["seconds"] / out["pfd_rtol"]["seconds"]
    out["dopri5_matched_rtol"] = None if loosest is None else loosest["rtol"]
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for c in data["cases"].values() for r in c["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    ax = axes[0]
    marks = {"heun": "o", "unipc3": "s", "euler": "^"}
    for r in rows:
        ax.scatter(r["estimate"], max(r["true_error"], 1e-7), marker=marks[r["solver"]],
                   color="C0" if r["calibrated"] else "C3", s=40)
    lo = min(min(r["estimate"] for r in rows), min(max(r["true_error"], 1e-7) for r in rows)) / 2
    hi = max(max(r["estimate"] for r in rows), max(r["true_error"] for r in rows)) * 2
    xs = [lo, hi]
    ax.plot(xs, xs, "k-", lw=1, label="true = estimate")
    ax.plot(xs, [3 * x for x in xs], "k--", lw=1, label="true = 3 x estimate")
    ax.plot(xs, [x / 10 for x in xs], "k:", lw=1, label="true = estimate / 10")
    for s, mk in marks.items():
        ax.scatter([], [], marker=mk, color="gray", label=f"{s} ({'18' if s != 'unipc3' else '20'} pts)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("estimated solver error of the PFD")
    ax.set_ylabel("true |PFD - PFD(dopri8 1e-10)|")
    ax.set_title("calibration (blue: meets both criteria)")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    names = list(data["cases"])
    width = 0.25
    lowest = float("inf")
    for j, (key, label) in enumerate((("pfd_rtol", "pfd rtol=0.005"), ("dopri5_default", "dopri5 rtol=1e-6 (default)"),
                                      ("dopri5_matched", "dopri5, loosest rtol within 0.5%"))):
        vals = []
        for nm in names:
            sp = data["cases"][nm]["speed"]
            if key == "pfd_rtol":
                vals.append(sp["pfd_rtol"]["seconds"])
            elif key == "dopri5_default":
                vals.append(next(d["seconds"] for d in sp["dopri5"] if d["rtol"] == 1e-6))
            else:
                rt = sp["dopri5_matched_rtol"]
                vals.append(next(d["seconds"] for d in sp["dopri5"] if d["rtol"] == rt) if rt else float("nan"))
        ax.bar([i + (j - 1) * width for i in range(len(names))], vals, width, label=label)
        lowest = min([lowest] + [v for v in vals if v == v])
    ax.set_xticks(range(len(names)))
    ax.set_yscale("log")
    ax.set_ylim(bottom=lowest / 2)
    ax.set_xticklabels([f"{nm}\n(n = {data['cases'][nm]['rows'][0]['n']})" for nm in names], fontsize=8)
    ax.set_ylabel("seconds to a PFD within 0.5%")
    ax.set_title("time to a PFD within 0.5% of the reference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="two cases, n=2000, fewer dopri5 runs (a smoke test)")
    ap.add_argument("--cases", nargs="*", default=None)
    ap.add_argument("--redo", action="store_true", help="recompute the cases named even if the JSON has them")
    ap.add_argument("--machine", default="2 CPU cores shared with other jobs (timings noisy; the overhead is a "
                    "ratio of two runs made one after the other in one process)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = suite()
    names = args.cases or [c for c in cases if c not in SKIP_DEFAULT]
    if args.quick:
        names, args.n = names[:2], 2000
    out_path = OUT if not args.quick else RESULTS / "solver_error_quick.json"
    data = json.loads(out_path.read_text()) if out_path.exists() else {}
    if data.get("config", {}).get("n") != args.n:
        data = {}
    data.setdefault("cases", {})
    data["config"] = {"n": args.n, "settings": SETTINGS, "reference": REF, "target": TARGET,
                      "dopri_rtols": DOPRI_RTOLS, "case_n": CASE_N, "mode": "cheap", "noise_seed": 0,
                      "overhead_timing": f"best of {REPEAT} side-by-side pairs (run, run + estimate)",
                      "skipped_by_default": {c: "dopri8 reference ~10 min per 1000 samples on this machine"
                                             for c in SKIP_DEFAULT},
                      "threads": 1, "machine": args.machine,
                      "estimator": "cheap: total reference work (refinement included) <= 0.25 x the run's, in "
                                   "model calls x (rows + 512); one refinement on a thinned subset"}
    for name in names:
        if name in data["cases"] and not args.redo:
            continue
        teacher, student = cases[name]
        data["cases"][name] = run_case(name, teacher, student, min(args.n, CASE_N.get(name, args.n)), args.quick)
        data["complete"] = False
        data["versions"] = {"pfd": pfd.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}
        write_json(out_path, data)
    rows = [r for c in data["cases"].values() for r in c["rows"]]
    data["complete"] = all(c in data["cases"] for c in cases if c not in SKIP_DEFAULT)
    data["summary"] = {
        "calibrated": sum(r["calibrated"] for r in rows), "total": len(rows),
        "max_true_over_est": max(r["true_over_est"] for r in rows),
        "max_overhead": max(r["overhead"] for r in rows),
        "median_overhead": sorted(r["overhead"] for r in rows)[len(rows) // 2],
    }
    write_json(out_path, data)
    print(format_table([{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in r.items()
                         if k in ("case", "solver", "true_error", "estimate", "stderr", "true_over_est",
                                  "est_over_true", "overhead", "calibrated")} for r in rows],
                       ["case", "solver", "true_error", "estimate", "stderr", "true_over_est", "est_over_true",
                        "overhead", "calibrated"]))
    for nm, c in data["cases"].items():
        sp = c["speed"]
        print(f"{nm}: rtol=0.005 {sp['pfd_rtol']['seconds']:.1f} s (err {sp['pfd_rtol']['rel_error']:.1e}); "
              f"speed-up vs dopri5 default {sp['speedup_vs_dopri5_default']:.1f}x, vs matched "
              f"{sp['speedup_vs_dopri5_matched'] or float('nan'):.1f}x (rtol {sp['dopri5_matched_rtol']})")
    plot(data, out_path.with_suffix(".png"))


if __name__ == "__main__":
    main()
