"""Accuracy per model call of every PF-ODE solver and grid on a suite of Gaussian mixtures.

For each case of benchmarks/perf_suite.py (teacher, perturbed student) and each solver/grid/NFE:
  * map RMS error  sqrt(mean_i ||Phi(z_i) - Phi_ref(z_i)||^2) of the teacher map;
  * PFD relative error |PFD - PFD_ref| / PFD_ref, both maps with the same solver, same noise.
The reference is torchdiffeq dopri5 at rtol = atol = 1e-10 (log sigma); it is cross-checked by
an independent fixed-grid RK4 with 300 log-uniform steps (the disagreement is reported).
Prints tables, writes benchmarks/results/solvers.json and solvers.png.

    python benchmarks/solvers.py [--n 512] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # perf_suite, and this checkout's pfd

from perf_suite import steps_for_nfe, suite  # noqa: E402

import pfd  # noqa: E402
from pfd.maps import CachedMap  # noqa: E402
from pfd.report import format_table, write_json  # noqa: E402

RESULTS = HERE / "results"
NFE_LEVELS = [6, 8, 10, 12, 16, 20, 24, 35, 48, 64]
CONFIGS = [(s, g) for s in ("euler", "heun", "midpoint", "rk4", "dpm2m", "dpm3m", "unipc3") for g in ("karras", "loglinear")]
DOPRI_RTOLS = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
THRESHOLDS = (0.01, 0.001)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).reshape(a.shape[0], -1).pow(2).sum(1).mean().sqrt())


def pfd_value(ma, mb, z: torch.Tensor) -> tuple[float, float, float, torch.Tensor]:
    """PFD through pfd.distance on explicit noise (maps cached: outputs computed once);
    returns (value, mean NFE of a, seconds for both maps, outputs of a)."""
    ca, cb = CachedMap(ma), CachedMap(mb)
    t0 = time.perf_counter()
    xa = ca(z)
    cb(z)
    secs = time.perf_counter() - t0
    res = pfd.distance(ca, cb, noise=z, batch_size=z.shape[0], progress=False)
    return res.value, float(res.nfe[0]), secs, xa


def run(n: int, quick: bool) -> dict:
    cases = suite()
    if quick:
        cases = {k: cases[k] for k in list(cases)[:2]}
    levels = [6, 10, 16, 24, 35, 64] if quick else NFE_LEVELS
    rows, refs = [], {}
    for name, (teacher, student) in cases.items():
        z = pfd.canonical_noise(n, teacher.event_shape, seed=1)
        t0 = time.perf_counter()
        ref_a = pfd.DiffusionMap(teacher.denoiser, solver="dopri5", rtol=1e-10, atol=1e-10)
        ref_b = pfd.DiffusionMap(student.denoiser, solver="dopri5", rtol=1e-10, atol=1e-10)
        pfd_ref, nfe_ref, _, x_ref = pfd_value(ref_a, ref_b, z)
        chk_a = pfd.DiffusionMap(teacher.denoiser, solver="rk4", steps=301, grid="loglinear")
        chk_b = pfd.DiffusionMap(student.denoiser, solver="rk4", steps=301, grid="loglinear")
        pfd_chk, _, _, x_chk = pfd_value(chk_a, chk_b, z)
        scale = float(x_ref.pow(2).sum(1).mean().sqrt())
        refs[name] = {
            "pfd": pfd_ref, "nfe_dopri5": nfe_ref, "data_rms": scale,
            "rk4_vs_dopri5_map_rms": rms(x_chk, x_ref), "rk4_vs_dopri5_pfd_rel": abs(pfd_chk - pfd_ref) / pfd_ref,
            "seconds": time.perf_counter() - t0, "teacher": repr(teacher), "student": repr(student),
        }
        print(f"[{name}] reference PFD {pfd_ref:.6g} (dopri5 {nfe_ref:.0f} NFE); rk4/1201 NFE check: "
              f"map {refs[name]['rk4_vs_dopri5_map_rms']:.2e}, PFD rel {refs[name]['rk4_vs_dopri5_pfd_rel']:.2e}",
              flush=True)
        runs = [(s, g, steps_for_nfe(s, lv)) for s, g in CONFIGS for lv in levels]
        runs += [("dopri5", "adaptive", rt) for rt in DOPRI_RTOLS]
        for solver, grid, knob in runs:
            if grid == "adaptive":
                kw = {"solver": solver, "rtol": knob, "atol": knob}
            else:
                kw = {"solver": solver, "steps": knob, "grid": grid}
            try:
                value, nfe, secs, xa = pfd_value(pfd.DiffusionMap(teacher.denoiser, **kw),
                                                  pfd.DiffusionMap(student.denoiser, **kw), z)
                err, rel = rms(xa, x_ref), abs(value - pfd_ref) / pfd_ref
            except (RuntimeError, FloatingPointError) as exc:  # e.g. dopri5 step-size underflow
                print(f"  {solver}/{grid}/{knob}: failed: {exc}", flush=True)
                continue
            rows.append({"case": name, "solver": solver, "grid": grid, "steps_or_rtol": knob, "nfe": nfe,
                         "map_rms": err, "map_rel": err / scale, "pfd": value, "pfd_rel_err": rel, "seconds": secs})
    return {"rows": rows, "references": refs, "n": n, "nfe_levels": levels}


def nfe_needed(curve: list[tuple[float, float]], thr: float) -> float | None:
    """Smallest tested NFE from which the error stays <= thr at every larger tested NFE."""
    best = None
    for nfe, err in sorted(curve, reverse=True):
        if err <= thr:
            best = nfe
        else:
            break
    return best


def analyse(data: dict) -> dict:
    rows = data["rows"]
    cases = list(data["references"])
    keys = sorted({(r["solver"], r["grid"]) for r in rows})
    summary = []
    heun18 = {c: next(r for r in rows if r["case"] == c and r["solver"] == "heun" and r["grid"] == "karras"
                      and r["steps_or_rtol"] == 18) for c in cases}
    for solver, grid in keys:
        entry = {"solver": solver, "grid": grid}
        ratios, need_heun = [], []
        for c in cases:
            curve = [(r["nfe"], r) for r in rows if r["case"] == c and r["solver"] == solver and r["grid"] == grid]
            for thr in THRESHOLDS:
                entry[f"nfe@{thr:g}|{c}"] = nfe_needed([(nf, r["pfd_rel_err"]) for nf, r in curve], thr)
            # error at (about) 35 NFE vs Heun/18, and NFE needed to match Heun/18's map error
            near = min(curve, key=lambda t: abs(t[0] - 35.0)) if curve else None
            if near is not None and grid != "adaptive":
                ratios.append(heun18[c]["map_rms"] / max(near[1]["map_rms"], 1e-300))
            need_heun.append(nfe_needed([(nf, r["map_rms"]) for nf, r in curve], heun18[c]["map_rms"]))
        entry["min_ratio_vs_heun18_at_35"] = min(ratios) if ratios else None
        entry["median_ratio_vs_heun18_at_35"] = sorted(ratios)[len(ratios) // 2] if ratios else None
        entry["max_nfe_to_match_heun18"] = None if any(v is None for v in need_heun) else max(need_heun)
        for thr in THRESHOLDS:
            vals = [entry[f"nfe@{thr:g}|{c}"] for c in cases]
            entry[f"max_nfe@{thr:g}"] = None if any(v is None for v in vals) else max(vals)
        summary.append(entry)
    pareto = {}
    for c in cases:
        pts = sorted((r["nfe"], r["map_rms"], f"{r['solver']}/{r['grid']}") for r in rows if r["case"] == c)
        front, best = [], math.inf
        for nfe, err, tag in pts:
            if err < best:
                front.append({"nfe": nfe, "map_rms": err, "config": tag})
                best = err
        pareto[c] = front
    return {"summary": summary, "pareto": pareto}


def plot(data: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib not installed: no plot")
        return
    cases = list(data["references"])
    fig, axes = plt.subplots(2, len(cases), figsize=(4 * len(cases), 7), squeeze=False)
    keys = sorted({(r["solver"], r["grid"]) for r in data["rows"]})
    for j, c in enumerate(cases):
        for solver, grid in keys:
            pts = sorted((r["nfe"], r["map_rel"], r["pfd_rel_err"]) for r in data["rows"]
                         if r["case"] == c and r["solver"] == solver and r["grid"] == grid)
            if not pts:
                continue
            style = "-" if grid in ("karras", "adaptive") else "--"
            for i in (0, 1):
                axes[i][j].loglog([p[0] for p in pts], [max(p[1 + i], 1e-16) for p in pts], style, marker=".",
                                  label=f"{solver}/{grid}")
        axes[0][j].set_title(c, fontsize=9)
        axes[1][j].set_xlabel("NFE per sample")
    axes[0][0].set_ylabel("map RMS error / data RMS")
    axes[1][0].set_ylabel("PFD relative error")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="noise samples per case (default 512)")
    ap.add_argument("--quick", action="store_true", help="two cases, fewer NFE levels")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: robust on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = run(args.n, args.quick)
    data.update(analyse(data))
    data["seconds"] = time.perf_counter() - t0
    data["versions"] = pfd.estimator.__globals__["versions"]()
    cases = list(data["references"])
    cols = ["solver", "grid", "min_ratio_vs_heun18_at_35", "median_ratio_vs_heun18_at_35", "max_nfe_to_match_heun18",
            "max_nfe@0.01", "max_nfe@0.001"]
    print("\nSolver summary over the suite (ratio = Heun/18 map error / solver map error at ~35 NFE; "
          "NFE = smallest tested NFE from which the criterion holds on every case)")
    print(format_table(data["summary"], cols))
    for thr in THRESHOLDS:
        print(f"\nNFE needed for PFD relative error <= {thr:g}, per case")
        print(format_table([{"solver": e["solver"], "grid": e["grid"], **{c: e[f"nfe@{thr:g}|{c}"] for c in cases}}
                            for e in data["summary"]], ["solver", "grid", *cases]))
    print("\nMap RMS error at ~35 NFE (relative to data RMS), per case")
    tab = []
    for solver, grid in sorted({(r["solver"], r["grid"]) for r in data["rows"] if r["grid"] != "adaptive"}):
        row = {"solver": solver, "grid": grid}
        for c in cases:
            cur = [r for r in data["rows"] if r["case"] == c and r["solver"] == solver and r["grid"] == grid]
            r35 = min(cur, key=lambda r: abs(r["nfe"] - 35))
            row[c] = f"{r35['map_rel']:.2e} ({r35['nfe']:.0f})"
        tab.append(row)
    print(format_table(tab, ["solver", "grid", *cases]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "solvers.json", data)
    plot(data, RESULTS / "solvers.png")
    print(f"\nwrote {RESULTS / 'solvers.json'} ({data['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
