"""Stability-balanced vs schedule grids for K-segment trajectory distillation (issue 3).

Reproduces the experiment of Gao, Li, Shi, Zhou (arXiv 2606.03820) on Gaussian-mixture OU models:
for each mixture, K in {1, 2, 4, 8, 16} and grid in {uniform, logsnr, edm, balanced-sum,
balanced-plus}, train a K-segment residual student (pfd.distill) with a fixed budget on exact
segment pairs, for several seeds, and measure the end-to-end relative MSE
sum ||y_hat - y||^2 / sum ||y||^2 against the exact map Phi_{T -> delta} on a held-out test set
of x_T ~ p_T. Also: per-segment local errors against the Groenwall bound
sum_j eps_j exp(sum_{i>j} dLambda_i), and whether the bound's ordering of grids predicts the
measured ordering. Writes benchmarks/results/stability_grid.json and stability_grid.png.

    python benchmarks/stability_grid.py [--seeds 3] [--steps 400] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pfd
from pfd.analytic import exact_map
from pfd.distill import exact_pairs, train_trajectory_student
from pfd.estimator import versions
from pfd.report import format_table, write_json
from pfd.schedules import get_process
from pfd.stability import make_time_grid, propagated_error_bound, segment_increments

GRIDS = ["uniform", "logsnr", "edm", "balanced-sum", "balanced-plus"]
KS = [1, 2, 4, 8, 16]


def mixtures() -> dict[str, pfd.GaussianMixture]:
    u = torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0, -0.5, 1.0, 0.3], dtype=torch.float64)
    u = u / u.norm()
    line = torch.stack([-1.5 * u, 0.0 * u, 1.5 * u]) + 0.1
    return {
        "1d-2mode-narrow": pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.01, 0.01]),
        "1d-2mode-wide": pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.25, 0.25]),
        "2d-4mode-product": pfd.GaussianMixture([0.25] * 4, [[-1, -1], [-1, 1], [1, -1], [1, 1]], [0.01] * 4),
        "8d-3mode-line": pfd.GaussianMixture([0.3, 0.4, 0.3], line, [0.02] * 3),
    }


def test_set(gmm: pfd.GaussianMixture, T: float, delta: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ou = get_process("ou")
    x0 = gmm.sample(n, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    xT = ou.alpha(T) * x0 + ou.sigma(T) * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    return xT, exact_map(gmm, xT, T, delta)


def bound_score(inc: np.ndarray) -> float:
    """sum_j exp(sum_{i>j} dLambda_i): the bound's error prediction with equal local errors."""
    return propagated_error_bound(np.ones_like(inc), inc)


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run the experiment for ``config`` (see ``main`` for the keys); returns the JSON report."""
    T, delta = config["t_max"], config["t_min"]
    all_mix = mixtures()
    mix = {k: all_mix[k] for k in config["mixtures"]}
    rows: list[dict[str, Any]] = []
    local: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for mname, gmm in mix.items():
        xT, yT = test_set(gmm, T, delta, config["n_test"], seed=4242)
        denom = float((yT**2).sum())
        for K in config["Ks"]:
            grids = ["uniform"] if K == 1 else config["grids"]  # K = 1: every grid is [T, delta]
            for gname in grids:
                grid = make_time_grid(gname, K, delta, T, gmm)
                inc_sum = segment_increments(gmm, grid, rate="sum")
                inc_plus = segment_increments(gmm, grid, rate="plus")
                vals = []
                for seed in config["seeds"]:
                    train = pfd.TrainConfig(width=config["hidden"], depth=config["depth"], train_steps=config["steps"],
                                            batch_size=config["batch_size"], lr=config["lr"])
                    student, hist = train_trajectory_student(gmm, grid, n_train=config["n_train"], seed=seed, config=train)
                    with torch.no_grad():
                        yh = student(xT).to(torch.float64)
                    rel = float(((yh - yT) ** 2).sum()) / denom
                    vals.append(rel)
                    if K in config["local_Ks"]:
                        # per-segment local RMS errors on held-out x ~ p_{t_j}, vs the propagated bound
                        Xh, Yh = exact_pairs(gmm, grid, config["n_local"], seed=10_000 + seed)
                        with torch.no_grad():
                            eps = [float(((student.segment(j, Xh[j]).double() - Yh[j]) ** 2).sum(1).mean().sqrt())
                                   for j in range(K)]
                        rms = math.sqrt(float(((yh - yT) ** 2).sum(1).mean()))
                        local.append({"mixture": mname, "K": K, "grid": gname, "seed": seed, "local_rms": eps,
                                      "dLambda_sum": inc_sum.tolist(), "dLambda_plus": inc_plus.tolist(),
                                      "end_to_end_rms": rms,
                                      "bound_sum": propagated_error_bound(eps, inc_sum),
                                      "bound_plus": propagated_error_bound(eps, inc_plus),
                                      "train_seconds": hist["seconds"]})
                # K = 1: the single segment [T, delta] is the same for every grid; list it under each
                for gn in (config["grids"] if K == 1 else [gname]):
                    inc = segment_increments(gmm, grid, rate="sum")
                    rows.append({
                        "mixture": mname, "K": K, "grid": gn, "rel_mse": vals,
                        "mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                        "bound_score_sum": bound_score(inc),
                        "bound_score_plus": bound_score(np.maximum(inc_plus, 0.0)),
                        "max_amplification": float(np.exp(inc).max()),
                        "grid_times": [float(t) for t in grid],
                    })
                print(f"  {mname:18s} K={K:2d} {gname:13s} rel MSE {statistics.fmean(vals):.4g}"
                      f" (+- {statistics.stdev(vals) if len(vals) > 1 else 0:.2g})  [{time.perf_counter() - t_start:.0f}s]",
                      flush=True)
    # reductions of every grid against uniform-t, per mixture and K
    base = {(r["mixture"], r["K"]): r["mean"] for r in rows if r["grid"] == "uniform"}
    for r in rows:
        b = base[(r["mixture"], r["K"])]
        r["reduction_vs_uniform_pct"] = 100.0 * (1.0 - r["mean"] / b) if b > 0 else None
    # does the bound's ordering of grids predict the measured ordering (Spearman, per mixture and K)?
    ordering = []
    for mname in mix:
        for K in config["Ks"]:
            rs = [r for r in rows if r["mixture"] == mname and r["K"] == K]
            if K == 1 or len(rs) < 3:
                continue
            meas = np.argsort(np.argsort([r["mean"] for r in rs]))
            entry = {"mixture": mname, "K": K, "measured_best": rs[int(np.argmin([r["mean"] for r in rs]))]["grid"]}
            for key in ("bound_score_sum", "bound_score_plus"):
                pred = np.argsort(np.argsort([r[key] for r in rs]))
                entry[f"spearman_{key[12:]}"] = float(np.corrcoef(meas, pred)[0, 1])
                entry[f"predicted_best_{key[12:]}"] = rs[int(np.argmin([r[key] for r in rs]))]["grid"]
            ordering.append(entry)
    return {"config": config, "rows": rows, "local_errors": local, "ordering": ordering,
            "seconds": time.perf_counter() - t_start, "versions": versions(),
            "mixtures": {k: v.to_dict() for k, v in mix.items()}}


def k8_table(report: dict[str, Any], K: int = 8) -> list[dict[str, Any]]:
    out = []
    for r in report["rows"]:
        if r["K"] == K:
            out.append({"mixture": r["mixture"], "grid": r["grid"], "rel_mse": r["mean"], "sd": r["sd"],
                        "reduction_%": r["reduction_vs_uniform_pct"], "bound_score": r["bound_score_sum"]})
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = list(report["mixtures"])
    fig, axes = plt.subplots(1, len(mixes), figsize=(4.2 * len(mixes), 3.6), squeeze=False)
    for ax, m in zip(axes[0], mixes, strict=True):
        for g in report["config"]["grids"]:
            pts = sorted((r["K"], r["mean"], r["sd"]) for r in report["rows"]
                         if r["mixture"] == m and (r["grid"] == g or r["K"] == 1))
            ks = [p[0] for p in pts]
            ax.errorbar(ks, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=3, capsize=2, label=g)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("K segments")
    axes[0][0].set_ylabel("end-to-end relative MSE")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400, help="Adam steps per student (every step: one batch per segment)")
    ap.add_argument("--quick", action="store_true", help="one mixture, K = 8, two grids, tiny budget")
    ap.add_argument("--mixtures", nargs="+", choices=list(mixtures()), help="subset of the mixtures")
    ap.add_argument("--Ks", nargs="+", type=int, help="subset of K values (default 1 2 4 8 16)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "stability_grid.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = {
        "t_max": 3.0, "t_min": 0.01, "process": "ou", "mixtures": list(mixtures()), "Ks": KS, "grids": GRIDS,
        "seeds": list(range(args.seeds)), "steps": args.steps, "batch_size": 256, "n_train": 4096, "hidden": 64,
        "depth": 2, "lr": 2e-3, "n_test": 4096, "n_local": 2048, "local_Ks": [8],
    }
    if args.mixtures:
        config["mixtures"] = args.mixtures
    if args.Ks:
        config["Ks"] = args.Ks
    if args.quick:
        config.update(mixtures=["1d-2mode-narrow"], Ks=[8], grids=["uniform", "balanced-sum"], seeds=[0, 1],
                      steps=150, n_train=1024, n_test=1024, n_local=512)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for m in config["mixtures"]:  # one mixture at a time; the JSON is rewritten after each (partial results survive)
        part = run({**config, "mixtures": [m]})
        if not report:
            report = {**part, "config": config}
        else:
            for key in ("rows", "local_errors", "ordering"):
                report[key] += part[key]
            report["mixtures"].update(part["mixtures"])
            report["seconds"] += part["seconds"]
        report["complete"] = m == config["mixtures"][-1]
        write_json(out, report)
    cols = ["mixture", "grid", "rel_mse", "sd", "reduction_%", "bound_score"]
    print("\nK = 8: end-to-end relative MSE (mean, sd over seeds) and reduction vs uniform-t")
    print(format_table(k8_table(report), cols))
    print("\nall K (mean rel MSE)")
    keys = ["mixture", "K", "grid", "mean", "sd", "reduction_vs_uniform_pct"]
    print(format_table([{k: r[k] for k in keys} for r in report["rows"]], keys))
    print("\nbound ordering vs measured ordering (Spearman over grids)")
    print(format_table(report["ordering"], list(report["ordering"][0]) if report["ordering"] else ["mixture"]))
    if report["local_errors"]:
        lr = [{"mixture": e["mixture"], "grid": e["grid"], "seed": e["seed"], "e2e_rms": e["end_to_end_rms"],
               "bound_sum": e["bound_sum"], "bound_plus": e["bound_plus"], "max_local": max(e["local_rms"])}
              for e in report["local_errors"]]
        print("\nK = 8: end-to-end RMS error vs the propagated local-error bound (local errors as RMS)")
        print(format_table(lr, list(lr[0])))
    try:
        plot(report, out.with_suffix(".png"))
    except ImportError:
        print("(matplotlib not installed: no plot)")
    print(f"\nwrote {out} in {report['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
