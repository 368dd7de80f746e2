"""Stability-balanced grids, a powered and paired comparison with a stiffness sweep (issue 18 B).

Trajectory students (pfd.distill.train_trajectory_student, K = 8 residual segments) of the exact
OU PF-ODE map Phi_{T -> delta} on Gaussian mixtures, for the grids uniform-t, log-SNR, EDM and
stability-balanced (balanced-sum), compared PAIRED: for one seed every grid gets the same exact
training draws (the same x0 and noise, mapped at its own grid times), the same initial weights
(last layers zero: every student starts as the identity), the same minibatch indices and the same
test set. Per seed the ratio relMSE(balanced) / relMSE(other) is formed; its log is averaged over
seeds with a Student-t 95% interval, reported as the reduction 1 - ratio in % (positive: the
balanced grid is better).

Settings: a stiffness sweep on the 1-D two-mode mixture (+-1), component variance s^2 in
{0.25, 0.04, 0.01, 0.001} at delta = 0.01 and early-stopping time delta in {0.1, 0.01, 0.001} at
s^2 = 0.01 (stiffness measured by Lambda(delta, T) and Lambda+(delta, T)), plus the 2-D product
and 8-D line mixtures of benchmarks/stability_grid.py. Two budgets (Adam-step caps); the stopping
rule is the per-segment validation plateau (train_trajectory_student(plateau=True)). Controls:
K = 1 (the one-step student) and an equal-parameter K = 8 student (time_conditioned=True: one
shared MLP, the same parameters as K = 1) on the balanced grid, for the Lipschitz-mismatch map
(one step vs K segments across stiffness).

Resumable: each (setting, grid, variant, budget, seed) result is stored in the JSON under "runs",
keyed by every setting, and never redone; loops run seeds outermost so a partial sweep holds
complete pairs for its first seeds.

    PYTHONPATH=. python benchmarks/stability_grid_sweep.py [--seeds 5] [--budgets 300 1200] [--quick]
Writes benchmarks/results/stability_grid_sweep.json and .png.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _fair import RunStore, mean_ci95, run_key
from stability_grid import mixtures as base_mixtures
from stability_grid import test_set

import pfd
from pfd.distill import exact_pairs, train_trajectory_student
from pfd.estimator import versions
from pfd.report import format_table
from pfd.stability import cumulative, make_time_grid, segment_increments

GRIDS = ["uniform", "logsnr", "edm", "balanced-sum"]
BALANCED = "balanced-sum"


def settings(quick: bool = False) -> list[dict[str, Any]]:
    """The sweep: (name, mixture spec, delta), ordered from mild to stiff within each sweep."""
    out = [{"name": f"1d-s2={s2:g}-delta=0.01", "mixture": "1d-2mode", "s2": s2, "t_min": 0.01, "sweep": "s2"}
           for s2 in (0.25, 0.04, 0.01, 0.001)]
    out += [{"name": f"1d-s2=0.01-delta={d:g}", "mixture": "1d-2mode", "s2": 0.01, "t_min": d, "sweep": "delta"}
            for d in (0.1, 0.001)]
    out += [{"name": m, "mixture": m, "s2": 0.01 if m.startswith("2d") else 0.02, "t_min": 0.01, "sweep": "other"}
            for m in ("2d-4mode-product", "8d-3mode-line")]
    if quick:
        out = [o for o in out if o["name"] in ("1d-s2=0.25-delta=0.01", "1d-s2=0.001-delta=0.01")]
    return out


def build_mixture(st: dict[str, Any]) -> pfd.GaussianMixture:
    if st["mixture"] == "1d-2mode":
        return pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [st["s2"], st["s2"]])
    return base_mixtures()[st["mixture"]]


def variants(config: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """(grid, K, time_conditioned) trained per setting, seed and budget."""
    v = [(g, config["K"], False) for g in config["grids"]]
    return [*v, ("uniform", 1, False), (BALANCED, config["K"], True)]


def run_setting_seed(st: dict[str, Any], seed: int, config: dict[str, Any], store: RunStore,
                     report_fn: Any, train: bool = True) -> list[dict[str, Any]]:
    gmm = build_mixture(st)
    T, delta = config["t_max"], st["t_min"]
    test = None
    recs = []
    for gname, K, tc in variants(config):
        grid = make_time_grid(gname, K, delta, T, gmm)
        pairs = None
        for budget in config["budgets"]:
            key = run_key({"setting": st, "grid": gname, "K": K, "time_conditioned": tc, "budget": budget, "seed": seed,
                           **{k: config[k] for k in ("t_max", "batch_size", "n_train", "hidden", "depth", "lr", "n_test",
                                                     "eval_every", "patience", "rel_tol", "n_val")}})
            rec = store.get(key)
            if rec is None and not train:
                continue
            if rec is None:
                if test is None:
                    xT, yT = test_set(gmm, T, delta, config["n_test"], seed=4242)
                    test = (xT, yT, float((yT**2).sum()))
                if pairs is None:
                    pairs = exact_pairs(gmm, grid, config["n_train"], seed=seed)
                train = pfd.TrainConfig(width=config["hidden"], depth=config["depth"], train_steps=budget,
                                        batch_size=config["batch_size"], lr=config["lr"], progress=False)
                student, hist = train_trajectory_student(
                    gmm, grid, n_train=config["n_train"], seed=seed, pairs=pairs, time_conditioned=tc, plateau=True,
                    eval_every=config["eval_every"], patience=config["patience"], rel_tol=config["rel_tol"],
                    n_val=config["n_val"], config=train)
                with torch.no_grad():
                    yh = student(test[0]).to(torch.float64)
                rec = {"setting": st["name"], "grid": gname, "K": K, "time_conditioned": tc, "budget": budget,
                       "seed": seed, "rel_mse": float(((yh - test[1]) ** 2).sum()) / test[2],
                       "steps_used": hist["steps_used"], "plateaued": hist["plateaued"], "params": hist["params"],
                       "seconds": hist["seconds"], "val_loss_per_segment": hist["val_loss_per_segment"]}
                store.put(key, rec, report_fn(False))
            recs.append(rec)
            if not train:
                continue
            print(f"  seed {seed} {st['name']:24s} {gname:12s} K={K} tc={int(tc)} budget {budget:5d}: relMSE "
                  f"{rec['rel_mse']:.4g} (steps used {rec['steps_used']})", flush=True)
    return recs


def _paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed log(relMSE_a / relMSE_b), its t-interval, as the reduction 100 (1 - ratio) of a vs b."""
    ra, rb = {r["seed"]: r["rel_mse"] for r in a}, {r["seed"]: r["rel_mse"] for r in b}
    common = sorted(set(ra) & set(rb))
    st = mean_ci95([math.log(ra[s] / rb[s]) for s in common])

    def red(x: float) -> float:
        return 100.0 * (1.0 - math.exp(x))

    return {"n": st["n"], "seeds": common, "log_ratio_mean": st["mean"], "log_ratio_ci95": st["ci95"],
            "reduction_pct": red(st["mean"]) if st["mean"] is not None else None,
            "paired_ci95": [red(st["ci95"][1]), red(st["ci95"][0])] if st["ci95"] else None}


def aggregate(config: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows, grid_rows, stiff = [], [], {}
    K = config["K"]
    for st in config["settings"]:
        gmm = build_mixture(st)
        T, delta = config["t_max"], st["t_min"]
        lam, lam_plus = cumulative(gmm, delta, T, rate="sum"), cumulative(gmm, delta, T, rate="plus")
        stiff[st["name"]] = {"Lambda": lam, "Lambda_plus": lam_plus, **{k: st[k] for k in ("s2", "t_min", "sweep")}}
        for budget in config["budgets"]:
            def sel(g: str, k: int = K, tc: bool = False, _n: str = st["name"], _b: int = budget) -> list[dict[str, Any]]:
                return [r for r in runs if r["setting"] == _n and r["grid"] == g and r["K"] == k
                        and r["time_conditioned"] == tc and r["budget"] == _b]
            for gname, k, tc in variants(config):
                rs = sel(gname, k, tc)
                if rs:
                    m = mean_ci95([r["rel_mse"] for r in rs])
                    inc = segment_increments(gmm, make_time_grid(gname, k, delta, T, gmm))
                    grid_rows.append({"setting": st["name"], "budget": budget, "grid": gname, "K": k,
                                      "time_conditioned": tc, "n": m["n"], "rel_mse_mean": m["mean"],
                                      "rel_mse_ci95": m["ci95"], "max_amplification": float(np.exp(inc).max()),
                                      "steps_used_mean": float(np.mean([r["steps_used"] for r in rs])),
                                      "params": rs[0]["params"]})
            comps = [(f"{BALANCED} vs {g}", sel(BALANCED), sel(g)) for g in config["grids"] if g != BALANCED]
            comps += [(f"K={K} {BALANCED} vs K=1", sel(BALANCED), sel("uniform", 1)),
                      (f"K={K} {BALANCED} time-conditioned (equal params) vs K=1", sel(BALANCED, K, True),
                       sel("uniform", 1))]
            for name, a, b in comps:
                if a and b:
                    p = _paired(a, b)
                    rows.append({"setting": st["name"], "budget": budget, "comparison": name, **p,
                                 "Lambda": lam, "Lambda_plus": lam_plus})
    # trend: does the balanced grid's advantage over uniform grow with stiffness? OLS of the per-seed
    # log ratio on Lambda within the s^2 and delta sweeps (per budget), slope with a t-interval
    trend = []
    for sweep in ("s2", "delta"):
        names = [s["name"] for s in config["settings"] if s["sweep"] == sweep or (s["name"] == "1d-s2=0.01-delta=0.01")]
        for budget in config["budgets"]:
            for other in [g for g in config["grids"] if g != BALANCED]:
                xs, ys = [], []
                for n in names:
                    a = {r["seed"]: r["rel_mse"] for r in runs if r["setting"] == n and r["grid"] == BALANCED
                         and r["K"] == K and not r["time_conditioned"] and r["budget"] == budget}
                    b = {r["seed"]: r["rel_mse"] for r in runs if r["setting"] == n and r["grid"] == other
                         and r["K"] == K and not r["time_conditioned"] and r["budget"] == budget}
                    for s in set(a) & set(b):
                        xs.append(stiff[n]["Lambda"])
                        ys.append(math.log(a[s] / b[s]))
                if len(set(xs)) >= 3 and len(xs) >= 5:
                    trend.append({"sweep": sweep, "budget": budget, "other": other, **_slope(xs, ys)})
    return {"rows": rows, "grids": grid_rows, "stiffness": stiff, "trend": trend}


def _slope(x: list[float], y: list[float]) -> dict[str, Any]:
    """OLS slope of y on x with a 95% t-interval (per-seed points treated as independent)."""
    from scipy.stats import t as student_t

    xa, ya = np.asarray(x), np.asarray(y)
    n = len(xa)
    xm = xa - xa.mean()
    b = float((xm * (ya - ya.mean())).sum() / (xm * xm).sum())
    resid = ya - ya.mean() - b * xm
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / float((xm * xm).sum()))
    h = float(student_t.ppf(0.975, n - 2)) * se
    return {"n_points": n, "slope_log_ratio_per_Lambda": b, "slope_ci95": [b - h, b + h]}


def _errbars(ax: Any, pts: list[tuple[float, dict[str, Any]]], **kw: Any) -> None:
    """Paired reductions at x with their 95% intervals (no bar where fewer than 2 seeds)."""
    pts = [p for p in pts if p[1]["reduction_pct"] is not None]
    if not pts:
        return
    y = [p[1]["reduction_pct"] for p in pts]
    lo = [p[1]["reduction_pct"] - p[1]["paired_ci95"][0] if p[1]["paired_ci95"] else 0.0 for p in pts]
    hi = [p[1]["paired_ci95"][1] - p[1]["reduction_pct"] if p[1]["paired_ci95"] else 0.0 for p in pts]
    ax.errorbar([p[0] for p in pts], y, yerr=[lo, hi], marker="o", ms=3, capsize=2, **kw)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    cfg = report["config"]
    K = cfg["K"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes.ravel()
    one_d = [s["name"] for s in cfg["settings"] if s["mixture"] == "1d-2mode"]
    for bi, budget in enumerate(cfg["budgets"][:2]):
        for gi, other in enumerate([g for g in cfg["grids"] if g != BALANCED]):
            pts = sorted(((r["Lambda"] * (1 + 0.025 * (gi - 1)), r) for r in report["rows"] if r["budget"] == budget
                          and r["comparison"] == f"{BALANCED} vs {other}" and r["setting"] in one_d), key=lambda p: p[0])
            _errbars(ax[bi], pts, label=f"vs {other}", color=f"C{gi}")
        ax[bi].set_title(f"(a{bi + 1}) balanced-sum vs each grid, K = {K}, budget cap {budget} steps", fontsize=9)
        ax[bi].set_ylabel("relMSE reduction by balanced-sum, % (paired 95% CI)", fontsize=8)
    budget = cfg["budgets"][-1]
    for ci, comp in enumerate([f"K={K} {BALANCED} vs K=1", f"K={K} {BALANCED} time-conditioned (equal params) vs K=1"]):
        pts = sorted(((r["Lambda"], r) for r in report["rows"] if r["budget"] == budget and r["comparison"] == comp
                      and r["setting"] in one_d), key=lambda p: p[0])
        _errbars(ax[2], pts, label=comp.replace(f"K={K} {BALANCED} ", f"K={K} balanced ").replace(" vs K=1", "")
                 + " vs K=1", color=f"C{ci + 3}")
    ax[2].set_title(f"(b) Lipschitz mismatch: K = {K} segments vs one step, budget cap {budget}", fontsize=9)
    ax[2].set_ylabel("relMSE reduction vs the one-step student, %", fontsize=8)
    for gi, g in enumerate(cfg["grids"]):
        for budget, ls in zip(cfg["budgets"][-2:], ["--", "-"], strict=False):
            pts = sorted((report["stiffness"][r["setting"]]["Lambda"], r["rel_mse_mean"]) for r in report["grids"]
                         if r["grid"] == g and r["K"] == K and not r["time_conditioned"] and r["budget"] == budget
                         and r["setting"] in one_d)
            if pts:
                ax[3].plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker="o", ms=3, color=f"C{gi}",
                           label=f"{g}, cap {budget}")
    ax[3].set_yscale("log")
    ax[3].set_title(f"(c) end-to-end relMSE (mean over seeds), K = {K}", fontsize=9)
    ax[3].set_ylabel("relative MSE", fontsize=8)
    for a in ax:
        a.set_xscale("log")
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.xaxis.set_minor_formatter(plt.NullFormatter())
        a.set_xticks([2, 3, 5, 10, 20, 30, 50])
        a.set_xlabel("stiffness Lambda(delta, T), 1-D two-mode sweep (s^2 and delta)", fontsize=8)
        if a is not ax[3]:
            a.axhline(0, color="k", lw=0.6)
        a.legend(fontsize=7)
    ns = sorted({r["n"] for r in report["rows"]}) or [0]
    seeds = f"{ns[0]}" if ns[0] == ns[-1] else f"{ns[0]}-{ns[-1]}"
    fig.suptitle(f"Stability-balanced grids: paired over {seeds} seeds"
                 + ("" if report.get("complete") else " (PARTIAL: seeds still running)"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _try_plot(report: dict[str, Any], path: Path) -> None:
    try:
        plot(report, path)
    except ImportError:
        print("(matplotlib not installed: no plot)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budgets", nargs="+", type=int, default=[300, 1200], help="Adam-step caps (plateau stops earlier)")
    ap.add_argument("--quick", action="store_true", help="two settings, 2 seeds, tiny budgets (seconds)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "stability_grid_sweep.json"))
    ap.add_argument("--run-seeds", nargs="+", type=int, help="train only these seeds, in this order (parallel workers)")
    ap.add_argument("--reverse-settings", action="store_true", help="visit the settings in reverse order")
    ap.add_argument("--also-read", nargs="*", default=[], help="other workers' result files to take finished runs from")
    ap.add_argument("--report-only", action="store_true", help="no training: aggregate the stored runs, write JSON/PNG")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config: dict[str, Any] = {
        "t_max": 3.0, "process": "ou", "K": 8, "grids": GRIDS, "seeds": list(range(args.seeds)),
        "budgets": args.budgets, "batch_size": 128, "n_train": 4096, "hidden": 32, "depth": 2, "lr": 2e-3,
        "n_test": 4096, "eval_every": 50, "patience": 6, "rel_tol": 0.01, "n_val": 1024,
        "settings": settings(args.quick),
    }
    if args.quick:
        config.update(seeds=[0, 1], budgets=[40, 80], n_train=512, n_test=512, n_val=256, eval_every=20, patience=2)
    config["stiffness"] = [{k: s[k] for k in ("name", "s2", "t_min")} for s in config["settings"]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = RunStore(out)
    t_start = time.perf_counter()
    mine: list[dict[str, Any]] = []

    def report(complete: bool) -> dict[str, Any]:
        return {"config": config, "complete": complete, **aggregate(config, mine), "versions": versions(),
                "seconds_this_session": time.perf_counter() - t_start}

    def collect() -> int:
        """All stored runs of the planned sweep into ``mine``; returns how many planned runs are missing."""
        store.absorb([Path(p) for p in args.also_read])
        mine.clear()
        for seed in config["seeds"]:
            for st in config["settings"]:
                mine.extend(run_setting_seed(st, seed, config, store, None, train=False))
        return len(config["seeds"]) * len(config["settings"]) * len(variants(config)) * len(config["budgets"]) - len(mine)

    last = {"report": {"config": config, "complete": False}}  # saved with each finished run (aggregated per seed)
    order = [s for s in config["settings"]][:: -1 if args.reverse_settings else 1]
    for seed in ([] if args.report_only else (args.run_seeds or config["seeds"])):
        for st in order:
            store.absorb([Path(p) for p in args.also_read])
            run_setting_seed(st, seed, config, store, lambda c: last["report"])
        collect()
        rep = last["report"] = report(False)
        store.save(rep)
        _try_plot(rep, out.with_suffix(".png"))
    missing = collect()
    final = report(missing == 0)
    final["missing_runs"] = missing
    store.save(final)
    _try_plot(final, out.with_suffix(".png"))
    cols = ["setting", "budget", "comparison", "n", "reduction_pct", "paired_ci95"]
    print(format_table(final["rows"], cols))
    if final["trend"]:
        print(format_table(final["trend"], list(final["trend"][0])))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
