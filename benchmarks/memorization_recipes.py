"""What does it take for a digits student to copy its training set? (slow; not in CI)

The fair MtoG sweep (benchmarks/mtog_digits.py) can test N / sqrt|theta| only on model sizes whose
students memorize at the smallest N. This study asks, on the 64-D digits teacher, which students
copy (memorization ratio d1/d2 < 1/3) a training set of N = 8 / 16 and what moves that line:

* **recipes**: the sweep's DSM training of small students with one setting changed at a time
  (learning rate x3 and /3.3, batch 1024, log-uniform sigma only, twice the depth, FiLM
  noise conditioning in every block: ``resmlp``), each scored at 10k, 20k and 40k steps;
* **capacity**: plain MLPs of 33k-351k parameters at N = 8 ... 64 (half octaves; 91 and 128 for the
  two largest), scored at 10k and 20k steps, 5 seeds for the sizes that copy (``CAPACITY_EXTRA``
  pools later units with the first); per size the N where the seed-mean copy fraction crosses 1/2
  (N_copy, log-linear interpolation, 95% bootstrap CI over seeds) and the slope of log2 N_copy
  against log2 |theta|;
* **onset of generalization on E_gen**: on the same runs, the N where E_gen / E_gen(memorizer)
  falls through each of ``ONSET_LEVELS``, and the slope of log2 N_onset against log2 |theta| per
  level (``onset_fits``; the slope is alpha at every level if the curves collapse on N / |theta|^alpha).

Everything else is the sweep's (benchmarks/memorization_digits.py ``run_study``: ensemble trainer,
constant learning rate, EMA, output clamp when scored, 3 seeds, n = 1024 noise samples, 95%
t-intervals over seeds).

    python benchmarks/memorization_recipes.py           # the committed study (CPU, ~4.5 h on one core)
    python benchmarks/memorization_recipes.py --quick   # smoke run into results/quick/

Resumable (records keyed by all settings under results/digits_runs/, trainer checkpoints there
too, git-ignored). Writes results/memorization_recipes.json (+ .png and _onset.png),
``complete: false`` until every arm is scored.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

RESULTS = Path(__file__).resolve().parent / "results"

RECIPES: list[tuple[str, str, dict[str, Any]]] = [
    ("mlp:32:3", "mlp:32:3", {}),
    ("mlp:64:3", "mlp:64:3", {}),
    ("mlp:128:3", "mlp:128:3", {}),
    ("mlp:64:3, lr x3", "mlp:64:3", {"lr": 6e-3}),
    ("mlp:64:3, lr /3.3", "mlp:64:3", {"lr": 6e-4}),
    ("mlp:64:3, batch 1024", "mlp:64:3", {"batch_size": 1024}),
    ("mlp:64:3, log-uniform sigma", "mlp:64:3", {"p_uniform": 1.0}),
    ("mlp:64:6 (deeper)", "mlp:64:6", {}),
    ("resmlp:16:3 (FiLM)", "resmlp:16:3", {}),
    ("resmlp:32:3 (FiLM)", "resmlp:32:3", {}),
    ("resmlp:64:3 (FiLM)", "resmlp:64:3", {}),
]
"""(name, size, training settings changed from the sweep's)."""
RECIPE_NS, RECIPE_STAGES = [8, 16], [10000, 20000, 40000]
CAPACITY_SIZES = ["mlp:96:3", "mlp:128:3", "mlp:192:3", "mlp:256:3", "mlp:384:3"]
CAPACITY_NS, CAPACITY_STAGES = [8, 11, 16, 23, 32, 45, 64], [10000, 20000]
FIT_SIZES = ["mlp:128:3", "mlp:192:3", "mlp:256:3", "mlp:384:3"]
"""The capacity sizes that copy at N = 8: the N_copy and onset fits use these."""
CAPACITY_EXTRA: list[tuple[list[str], list[int], list[int]]] = [
    (FIT_SIZES, CAPACITY_NS, [3, 4]),
    (["mlp:256:3", "mlp:384:3"], [91, 128], [0, 1, 2, 3, 4]),
]
"""Units trained after the first capacity study (3 seeds) and pooled with it: seeds 3 and 4 for
the sizes that copy, and N = 91, 128 for the two largest (their curves reach N = 64 still high)."""
ONSET_LEVELS = (0.97, 0.95, 0.925, 0.9, 0.85)
"""Levels of E_gen / E_gen(memorizer) at which the onset of generalization is read."""


PROFILE_SIGMAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""Noise levels of the denoiser-error profile of the final students."""


def sigma_profile(trainer: Any, idx: list[int], *, sigmas: tuple[float, ...] = PROFILE_SIGMAS, batch: int = 512,
                  clamp: float | None = None, seed: int = 0) -> dict[int, list[float]]:
    """Per member in ``idx``: the RMS over noisy training inputs x = y + sigma eps (y drawn from
    its training set, seeded) of ||D_theta(x; sigma) - D_emp(x; sigma)||, the distance of its
    (EMA, clamped) denoiser to its training set's exact empirical denoiser, at each sigma: where
    a student that does not copy falls short of the memorizer."""
    import torch

    g = torch.Generator().manual_seed(seed)
    r, dev = trainer.r, trainer.device
    data, sizes = trainer.data.cpu(), trainer.n.cpu()[:, None]
    out: dict[int, list[float]] = {i: [] for i in idx}
    with torch.no_grad():
        for sig in sigmas:
            pick = (torch.rand(r, batch, generator=g) * sizes).long()
            y = data[torch.arange(r)[:, None], pick]
            eps = torch.randn(y.shape, generator=g)
            x, s = (y + sig * eps).to(dev), torch.full((r, batch), float(sig), device=dev)
            d = trainer.ema_model(x, s)
            if clamp is not None:
                d = d.clamp(-clamp, clamp)
            err = (d - trainer.posterior_mean(x, s)).flatten(2).pow(2).sum(2).mean(1).sqrt().cpu()
            for i in idx:
                out[i].append(float(err[i]))
    return out


def profile_hook(store: list[dict[str, Any]], n_train: int):
    """A ``run_study`` final hook: the sigma profile of the members trained on ``n_train`` points,
    computed once per arm and settings (JSONL record under runs_dir) and appended to ``store``."""
    from pfd.analysis._runs import read_records, settings_key
    from pfd.report import append_jsonl

    def hook(*, arm, trainer, members, data, settings, runs_dir, clamp):
        path = runs_dir / f"sigma_profile_{arm.replace(':', '-').replace(' ', '_')}.jsonl"
        done = read_records(path, ("seed", "n_train"), settings)
        want = [(i, s, n) for i, (s, n) in enumerate(members) if n == n_train]
        missing = [(i, s, n) for i, s, n in want if (s, n) not in done]
        if missing and trainer is not None:
            prof = sigma_profile(trainer, [i for i, _, _ in missing], clamp=clamp)
            for i, s, n in missing:
                rec = {"seed": s, "n_train": n, "arm": arm, "step": trainer.step, "sigmas": list(PROFILE_SIGMAS),
                       "rms_error": prof[i], "settings_key": settings_key(settings), "settings": settings}
                append_jsonl(path, rec)
                done[(s, n)] = rec
        store.extend(done[(s, n)] for _, s, n in want if (s, n) in done)

    return hook


def _profile_summary(profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from _fair import mean_ci95

    out = []
    for name in dict.fromkeys(p["recipe"] for p in profiles):
        sel = [p for p in profiles if p["recipe"] == name]
        for k, sig in enumerate(sel[0]["sigmas"]):
            r = mean_ci95([p["rms_error"][k] for p in sel])
            out.append({"recipe": name, "n_train": sel[0]["n_train"], "sigma": sig, "seeds": len(sel),
                        "rms_error": r["mean"], "rms_error_ci95": r["ci95"]})
    return out


def crossing(ns: list[int], fracs: list[float], level: float = 0.5) -> float | None:
    """The N where a falling curve fracs(N) first crosses ``level`` (linear in log2 N between the
    bracketing points); None when it never does inside the range, and None when the curve starts
    below ``level`` (the crossing lies below the smallest N; a later noisy re-crossing is not it).

    >>> round(crossing([8, 16, 32], [0.9, 0.6, 0.2]), 3)
    20.159
    """
    if not fracs or fracs[0] < level:
        return None
    for (n0, f0), (n1, f1) in zip(zip(ns, fracs, strict=True), zip(ns[1:], fracs[1:], strict=True), strict=False):
        if f0 >= level > f1:
            t = (f0 - level) / (f0 - f1)
            return 2.0 ** (math.log2(n0) + t * (math.log2(n1) - math.log2(n0)))
    return None


def crossing_fit(rows: list[dict[str, Any]], stage: int, *, field: str = "copy_fraction", level: float = 0.5,
                 sizes: list[str] | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per size: the N where the seed-mean curve ``field``(N) falls through ``level`` (N_copy for
    the copy fraction at 1/2; the onset of generalization for E_gen / E_gen(mem)), with a 95%
    bootstrap CI over seeds, and the slope of log2 N against log2 |theta| with its CI.

    A replicate resamples the seeds once for all sizes (a seed fixes the training sets, which every
    size shares). The seeds are those every fitted size has at all of its N (each size keeps its own
    N grid); ``sizes`` (default: all in ``rows``) picks the sizes. A size whose curve does not cross
    inside its N range has ``n_cross`` None and is left out of the slope; an interval needs at least
    half the replicates to cross.
    """
    import numpy as np

    sel = [r for r in rows if r["stage"] == stage and (sizes is None or r["size"] in sizes)]
    params = {r["size"]: r["n_params"] for r in sel}
    names = sorted(params, key=params.get)
    table = {(r["size"], r["n_train"], r["seed"]): r[field] for r in sel}
    grid = {s: sorted({r["n_train"] for r in sel if r["size"] == s}) for s in names}
    complete = [{k for k in {r["seed"] for r in sel} if all((s, n, k) in table for n in grid[s])} for s in names]
    seeds = sorted(set.intersection(*complete)) if complete else []
    if names and not seeds:
        raise ValueError(f"crossing_fit: no seed has every N of every size {names} at stage {stage}")

    def stars(sample: list[int]) -> dict[str, float | None]:
        return {s: crossing(grid[s], [float(np.mean([table[(s, n, k)] for k in sample])) for n in grid[s]], level)
                for s in names}

    def slope(st: dict[str, float | None]) -> float | None:
        ok = [s for s in names if st[s] is not None]
        if len(ok) < 2:
            return None
        return float(np.polyfit([math.log2(params[s]) for s in ok], [math.log2(st[s]) for s in ok], 1)[0])

    full = stars(seeds)
    rng = np.random.default_rng(seed)
    boots = [stars(rng.choice(seeds, size=len(seeds), replace=True).tolist()) for _ in range(n_boot)]

    def ci(vals: list[float]) -> list[float] | None:
        return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) >= n_boot // 2 else None

    per = [{"size": s, "params": params[s], "n_range": [grid[s][0], grid[s][-1]], "n_cross": full[s],
            "n_cross_ci95": ci([b[s] for b in boots if b[s] is not None]),
            "n_cross_over_sqrt_params": None if full[s] is None else full[s] / math.sqrt(params[s]),
            "boot_in_range": sum(b[s] is not None for b in boots)} for s in names]
    slopes = [v for v in (slope(b) for b in boots) if v is not None]
    return {"stage": stage, "observable": field, "level": level, "seeds": seeds, "sizes": per,
            "slope": slope(full), "slope_ci95": ci(slopes), "n_boot": n_boot}


def capacity_fit(rows: list[dict[str, Any]], stage: int, **kw: Any) -> dict[str, Any]:
    """N_copy per size (the seed-mean copy fraction crosses 1/2) and its slope against |theta|:
    :func:`crossing_fit` of the copy fraction at level 1/2."""
    return crossing_fit(rows, stage, field="copy_fraction", level=0.5, **kw)


def onset_fits(rows: list[dict[str, Any]], stages: list[int], levels: tuple[float, ...] = ONSET_LEVELS,
               **kw: Any) -> list[dict[str, Any]]:
    """The onset of generalization on E_gen: per stage and level, :func:`crossing_fit` of
    E_gen / E_gen(memorizer) (1 while a student copies, below 1 as it generalizes). There is no
    canonical level, so the slope is reported as a function of it: if the curves of all sizes
    collapsed onto one curve of N / |theta|^alpha, every level would give the same slope alpha."""
    return [crossing_fit(rows, st, field="e_gen_rel", level=lv, **kw) for st in sorted(stages) for lv in levels]


SWEEP_MIN_PARAMS = 50_000
"""The committed GPU sweep (results/mtog_digits.json) predates copy fractions; its sizes above this
many parameters are the ones this study finds copying at N = 8 (mlp:192:3 and mlp:512:3 there)."""


def sweep_onset_fits(path: str | Path, levels: tuple[float, ...] = ONSET_LEVELS, *, min_params: int = SWEEP_MIN_PARAMS,
                     n_boot: int = 1000) -> dict[str, Any] | None:
    """The onset of generalization on E_gen (:func:`onset_fits`) read from the runs of a committed
    MtoG sweep (``benchmarks/mtog_digits.py``: plateau-rule training with lr decays up to a step cap,
    N = 8 ... 2048), on its sizes with at least ``min_params`` parameters; None if ``path`` is absent.
    A cross-check of the fixed-budget capacity runs under another training protocol."""
    import json

    path = Path(path)
    if not path.exists():
        return None
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    rows = [{"stage": 0, "size": f"{r['arch']}:{r['width']}:{r['depth']}", "n_params": r["n_params"], "seed": r["seed"],
             "n_train": r["n_train"], "e_gen_rel": r["e_gen_rel"], "steps": r["steps"],
             "stopped_by": r["stopped_by"]} for r in runs if r["n_params"] >= min_params]
    if not rows:
        return None
    params = {r["size"]: r["n_params"] for r in rows}
    sizes = sorted(params, key=params.get)
    steps = {s: sorted(r["steps"] for r in rows if r["size"] == s) for s in sizes}
    return {"source": str(path.name), "min_params": min_params, "sizes": sizes,
            "steps_min_median_max": {s: [v[0], v[len(v) // 2], v[-1]] for s, v in steps.items()},
            "capped": {s: sum(r["stopped_by"] == "cap" for r in rows if r["size"] == s) for s in sizes},
            "runs": {s: len(steps[s]) for s in sizes},
            "fits": onset_fits(rows, [0], levels, n_boot=n_boot)}


def run(recipes: list[tuple[str, str, dict[str, Any]]], recipe_ns: list[int], recipe_stages: list[int],
        capacity_sizes: list[str], capacity_ns: list[int], capacity_stages: list[int], *, out_dir: Path,
        seeds: list[int], n_eval: int, base_train: dict[str, Any] | None = None, n_boot: int = 1000,
        capacity_extra: list[tuple[list[str], list[int], list[int]]] = (), fit_sizes: list[str] | None = None,
        sweep: str | Path | None = None, log=print) -> dict[str, Any]:
    """The study. ``capacity_extra``: further (sizes, N, seeds) units trained after the first
    capacity study and pooled with it (more seeds, larger N); ``fit_sizes``: the sizes the N_copy
    and onset fits use (default all); ``sweep``: a committed MtoG sweep's JSON whose E_gen onset is
    read as a cross-check (:func:`sweep_onset_fits`)."""
    from memorization_digits import run_study, summarize

    t0 = time.perf_counter()
    kw = {"out_dir": out_dir, "n_eval": n_eval, "routing_ns": (), "distill": None, "progress": False, "log": log}
    recipe_rows, summary, profiles = [], [], []
    complete = True
    for name, size, train in recipes:
        got: list[dict[str, Any]] = []
        res = run_study([size], recipe_ns, seeds, recipe_stages, train={**(base_train or {}), **train},
                        final_hook=profile_hook(got, min(recipe_ns)), **kw)
        complete &= res["complete"] and len(got) == len(seeds)
        recipe_rows += [{**r, "recipe": name, "changed": train} for r in res["rows"]]
        summary += [{**r, "recipe": name, "changed": train} for r in res["summary"]]
        profiles += [{**p, "recipe": name} for p in got]
    cap_rows: list[dict[str, Any]] = []
    for sizes_u, ns_u, seeds_u in [(capacity_sizes, capacity_ns, seeds), *capacity_extra]:
        if not sizes_u:
            continue
        cap = run_study(list(sizes_u), list(ns_u), list(seeds_u), capacity_stages, train=base_train, **kw)
        complete &= cap["complete"]
        cap_rows += cap["rows"]
    fits = [capacity_fit(cap_rows, st, sizes=fit_sizes, n_boot=n_boot) for st in sorted(capacity_stages)] if cap_rows else []
    onsets = onset_fits(cap_rows, capacity_stages, sizes=fit_sizes, n_boot=n_boot) if cap_rows else []
    return {"recipes": summary, "recipe_rows": recipe_rows, "sigma_profile": _profile_summary(profiles),
            "sigma_profile_rows": profiles, "capacity": summarize(cap_rows), "capacity_rows": cap_rows,
            "capacity_fit": fits[-1] if fits else None, "capacity_fits_by_stage": fits, "onset_fits": onsets,
            "sweep_onset": sweep_onset_fits(sweep, n_boot=n_boot) if sweep is not None else None,
            "complete": bool(complete), "seconds": time.perf_counter() - t0}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(18, 4.8))
    last = max(r["stage"] for r in res["recipes"])
    n0 = min(r["n_train"] for r in res["recipes"])
    rows = sorted((r for r in res["recipes"] if r["stage"] == last and r["n_train"] == n0),
                  key=lambda r: (r["n_params"], bool(r["changed"])))
    for k, r in enumerate(rows):
        film = r["size"].startswith("resmlp")
        color = "C1" if film else ("C2" if r["changed"] else "C0")
        lo, hi = r["copy_fraction_ci95"]
        ax[0].barh(k, r["copy_fraction"], color=color, alpha=0.8)
        ax[0].errorbar(r["copy_fraction"], k, xerr=[[r["copy_fraction"] - lo], [hi - r["copy_fraction"]]], fmt="none",
                       color="k", capsize=3, lw=1)
        ax[0].text(hi + 0.015, k, f"{r['copy_fraction']:.2f}", va="center", fontsize=8, color=color)
    ax[0].set_yticks(range(len(rows)), [f"{r['recipe']}  ({r['n_params'] / 1000:.1f}k)" for r in rows], fontsize=8)
    ax[0].set_xlim(0, 1.02)
    ax[0].set_xlabel(f"copy fraction at N = {n0} (95% t-interval over seeds)")
    ax[0].set_title(f"Which students copy N = {n0} digits? ({last // 1000}k steps; |θ| in brackets)\n"
                    "blue: sweep's MLPs, green: one training setting changed, orange: FiLM resmlp", fontsize=9)
    ax[0].grid(alpha=0.3, axis="x")
    cap = res["capacity"]
    stage = max(r["stage"] for r in cap)
    cmap = plt.get_cmap("viridis")
    sizes = sorted({r["size"] for r in cap}, key=lambda s: next(r["n_params"] for r in cap if r["size"] == s))
    for k, s in enumerate(sizes):
        sel = sorted((r for r in cap if r["size"] == s and r["stage"] == stage), key=lambda r: r["n_train"])
        c = cmap(k / max(1, len(sizes) - 1))
        p = sel[0]["n_params"]
        ax[1].plot([r["n_train"] for r in sel], [r["copy_fraction"] for r in sel], "o-", color=c, ms=4,
                   label=f"{s} ({p / 1000:.0f}k)")
        ax[1].fill_between([r["n_train"] for r in sel], [r["copy_fraction_ci95"][0] for r in sel],
                           [r["copy_fraction_ci95"][1] for r in sel], color=c, alpha=0.2, lw=0)
    ax[1].axhline(0.5, color="k", lw=0.8, ls=":")
    ax[1].set_xscale("log", base=2)
    ax[1].set_xlabel("N (training images)")
    ax[1].set_ylabel("copy fraction")
    ax[1].set_title(f"Copy fraction against N ({stage // 1000}k steps, 95% t-intervals over seeds)", fontsize=9)
    ax[1].legend(fontsize=8)
    ax[1].grid(alpha=0.3)
    fits = res.get("capacity_fits_by_stage") or ([res["capacity_fit"]] if res["capacity_fit"] else [])
    if fits:
        import numpy as np

        allp = [s["params"] for f in fits for s in f["sizes"]]
        xs = np.geomspace(min(allp), max(allp), 20)
        for j, fit in enumerate(fits):
            last_fit = j == len(fits) - 1
            c = "C0" if last_fit else "C7"
            pts = [s for s in fit["sizes"] if s["n_cross"] is not None]
            for s in pts:
                ci = s["n_cross_ci95"] or [s["n_cross"], s["n_cross"]]
                ax[2].errorbar(s["params"], s["n_cross"], yerr=[[s["n_cross"] - ci[0]], [ci[1] - s["n_cross"]]],
                               fmt="o" if last_fit else "s", mfc=c if last_fit else "none", color=c, capsize=3)
            # sizes still copying more than half at their largest N: N_copy beyond the range (a lower bound)
            for s in fit["sizes"]:
                n_max = s["n_range"][1]
                top = [r for r in cap if r["size"] == s["size"] and r["stage"] == fit["stage"] and r["n_train"] == n_max]
                if s["n_cross"] is None and top and top[0]["copy_fraction"] >= 0.5:
                    ax[2].plot(s["params"], n_max, "^", color=c, ms=8, mfc=c if last_fit else "none")
                    ax[2].annotate(f"> {n_max}", (s["params"], n_max), xytext=(-12, 8), textcoords="offset points",
                                   fontsize=8, color=c)
            sl, sci = fit["slope"], fit["slope_ci95"]
            if sl is not None and pts:
                p0 = pts[0]
                ax[2].plot(xs, p0["n_cross"] * (xs / p0["params"]) ** sl, "-", color=c, lw=1,
                           label=f"{fit['stage'] // 1000}k steps: slope {sl:.2f}"
                           + (f" [{sci[0]:.2f}, {sci[1]:.2f}]" if sci else ""))
        ax[2].plot(xs, np.sqrt(xs), "k--", lw=1, label="N = sqrt|θ| (the paper's N*)")
        ax[2].set_xscale("log")
        ax[2].set_yscale("log", base=2)
        ax[2].set_xlabel("|θ|")
        ax[2].set_ylabel("N_copy (copy fraction = 1/2)")
        ax[2].set_title(f"Copy capacity: N_copy against |θ| ({len(fits[-1]['seeds'])} seeds, 95% bootstrap CIs;\n"
                        "▲: still > 1/2 at the largest N; hollow: earlier stage)", fontsize=9)
        ax[2].legend(fontsize=8, loc="lower right")
        ax[2].grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_onset(res: dict[str, Any], path: Path) -> None:
    """E_gen / E_gen(memorizer) against N for the fitted sizes (final stage), and the slope of the
    onset N against |theta| as a function of the level it is read at (both stages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    onsets = res["onset_fits"]
    sizes = [s["size"] for s in onsets[0]["sizes"]]
    stages = sorted({f["stage"] for f in onsets})
    last = stages[-1]
    fig, ax = plt.subplots(1, 3, figsize=(19, 4.8))
    cmap = plt.get_cmap("viridis")
    for k, size in enumerate(sizes):
        sel = sorted((r for r in res["capacity"] if r["size"] == size and r["stage"] == last), key=lambda r: r["n_train"])
        c = cmap(k / max(1, len(sizes) - 1))
        ns = [r["n_train"] for r in sel]
        ax[0].plot(ns, [r["e_gen_rel"] for r in sel], "o-", color=c, ms=4,
                   label=f"{size} ({sel[0]['n_params'] / 1000:.0f}k)")
        ax[0].fill_between(ns, [r["e_gen_rel_ci95"][0] for r in sel], [r["e_gen_rel_ci95"][1] for r in sel], color=c,
                           alpha=0.2, lw=0)
    for lv in sorted({f["level"] for f in onsets}):
        ax[0].axhline(lv, color="0.6", lw=0.7, ls=":")
    ax[0].set_xscale("log", base=2)
    ax[0].set_xlabel("N (training images)")
    ax[0].set_ylabel("E_gen / E_gen(memorizer)")
    ax[0].set_title(f"Onset of generalization on E_gen ({last // 1000}k steps, {len(onsets[-1]['seeds'])} seeds, "
                    "95% t-intervals)\ndotted: the levels the onset N is read at", fontsize=9)
    ax[0].legend(fontsize=8)
    ax[0].grid(alpha=0.3)
    import numpy as np

    show = [lv for lv in (0.95, 0.9) if any(f["level"] == lv for f in onsets)]
    for j, lv in enumerate(show):
        f = next(f for f in onsets if f["stage"] == last and f["level"] == lv)
        pts = [s for s in f["sizes"] if s["n_cross"] is not None]
        ci = [s["n_cross_ci95"] or [s["n_cross"]] * 2 for s in pts]
        ax[1].errorbar([s["params"] for s in pts], [s["n_cross"] for s in pts], capsize=3, fmt="o-", color=f"C{j}",
                       yerr=[[s["n_cross"] - c[0] for s, c in zip(pts, ci, strict=True)],
                             [c[1] - s["n_cross"] for s, c in zip(pts, ci, strict=True)]],
                       label=f"onset N at level {lv}" + (f" (slope {f['slope']:.2f})" if f["slope"] is not None else ""))
    fit = (res.get("capacity_fits_by_stage") or [None])[-1]
    if fit:
        pts = [s for s in fit["sizes"] if s["n_cross"] is not None]
        ax[1].plot([s["params"] for s in pts], [s["n_cross"] for s in pts], "s:", color="C3", mfc="none",
                   label="N_copy, copy fraction ½" + (f" (slope {fit['slope']:.2f})" if fit["slope"] is not None else ""))
    allp = [s["params"] for s in onsets[0]["sizes"]]
    xs = np.geomspace(min(allp) / 1.3, max(allp) * 1.3, 20)
    ax[1].plot(xs, np.sqrt(xs), "k--", lw=1, label="N = sqrt|θ| (the paper's N*)")
    ax[1].plot(xs, 0.1 * np.sqrt(xs), "k:", lw=1, label="N = 0.1 sqrt|θ|")
    ax[1].set_xscale("log")
    ax[1].set_yscale("log", base=2)
    ax[1].set_xlabel("|θ|")
    ax[1].set_ylabel("N")
    ax[1].set_title(f"Onset N against |θ| ({last // 1000}k steps; 95% bootstrap CIs over seeds)", fontsize=9)
    ax[1].legend(fontsize=7, loc="upper left")
    ax[1].grid(alpha=0.3, which="both")
    for j, st in enumerate(stages):
        fs = [f for f in onsets if f["stage"] == st and f["slope"] is not None]
        x = [f["level"] + (j - (len(stages) - 1) / 2) * 0.004 for f in fs]
        y = [f["slope"] for f in fs]
        lo = [f["slope"] - (f["slope_ci95"] or [f["slope"]] * 2)[0] for f in fs]
        hi = [(f["slope_ci95"] or [f["slope"]] * 2)[1] - f["slope"] for f in fs]
        ax[2].errorbar(x, y, yerr=[lo, hi], fmt="o-" if st == last else "s--", color="C0" if st == last else "C7",
                       mfc="C0" if st == last else "none", capsize=3,
                       label=f"onset on E_gen, {st // 1000}k steps (n sizes crossing: "
                       + ", ".join(str(sum(s["n_cross"] is not None for s in f["sizes"])) for f in fs) + ")")
    for fit in res.get("capacity_fits_by_stage") or []:
        if fit["slope_ci95"]:
            band = {"color": "C3", "alpha": 0.2, "lw": 0} if fit["stage"] == last else {
                "facecolor": "none", "edgecolor": "C3", "hatch": "//", "alpha": 0.4, "lw": 0}
            ax[2].axhspan(*fit["slope_ci95"], **band,
                          label=f"slope of N_copy (copy fraction ½), {fit['stage'] // 1000}k steps (95% CI)")
    sw = res.get("sweep_onset")
    if sw:
        fs = [f for f in sw["fits"] if f["slope"] is not None]
        ax[2].errorbar([f["level"] for f in fs], [f["slope"] for f in fs], fmt="^-.", color="C2", capsize=3,
                       yerr=[[f["slope"] - (f["slope_ci95"] or [f["slope"]] * 2)[0] for f in fs],
                             [(f["slope_ci95"] or [f["slope"]] * 2)[1] - f["slope"] for f in fs]],
                       label=f"onset on E_gen in the GPU sweep ({' & '.join(sw['sizes'])}; lr decays, ≤ 30k steps)")
    ax[2].axhline(0.5, color="k", ls="--", lw=1, label="½ (the paper's N* ∝ sqrt|θ|)")
    ax[2].axhline(0.0, color="0.4", lw=0.8)
    ax[2].set_xlabel("level of E_gen / E_gen(memorizer) the onset N is read at")
    ax[2].set_ylabel("slope of log2 N_onset on log2 |θ|")
    ax[2].set_title("Does the onset scale as sqrt|θ|? Slope against the level (95% bootstrap CIs over seeds)\n"
                    f"sizes {sizes[0]} … {sizes[-1]}: "
                    f"{onsets[0]['sizes'][-1]['params'] / onsets[0]['sizes'][0]['params']:.1f}× in |θ|", fontsize=9)
    ax[2].invert_xaxis()
    ax[2].legend(fontsize=7, loc="lower left")
    ax[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    from pfd.analysis.mtog import DEFAULT_TRAIN
    from pfd.report import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run into results/quick/")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--only", choices=("recipes", "capacity"), default=None, help="run one part (the other is read)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir) if args.out_dir else RESULTS / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        recipes = [("mlp:8:1", "mlp:8:1", {}), ("mlp:8:1, lr x3", "mlp:8:1", {"lr": 6e-3}),
                   ("resmlp:8:1 (FiLM)", "resmlp:8:1", {})]
        conf = {"recipes": recipes, "recipe_ns": [8, 16], "recipe_stages": [20, 40], "capacity_sizes": ["mlp:8:1", "mlp:16:1"],
                "capacity_ns": [8, 11, 16], "capacity_stages": [40], "seeds": [0, 1], "n_eval": 64,
                "capacity_extra": [(["mlp:16:1"], [8, 11, 16], [2]), (["mlp:16:1"], [23], [0, 1, 2])],
                "fit_sizes": None, "sweep": None}
        base = {"check_every": 20, "n_check": 64, "warmup": 10}
        n_boot = 50
    else:
        conf = {"recipes": RECIPES, "recipe_ns": RECIPE_NS, "recipe_stages": RECIPE_STAGES,
                "capacity_sizes": CAPACITY_SIZES, "capacity_ns": CAPACITY_NS, "capacity_stages": CAPACITY_STAGES,
                "seeds": [0, 1, 2], "n_eval": 1024, "capacity_extra": CAPACITY_EXTRA, "fit_sizes": FIT_SIZES,
                "sweep": RESULTS / "mtog_digits.json"}
        base, n_boot = None, 1000
    if args.only == "capacity":
        conf["recipes"] = []
    if args.only == "recipes":
        conf["capacity_sizes"], conf["capacity_extra"] = [], []
    res = run(conf["recipes"], conf["recipe_ns"], conf["recipe_stages"], conf["capacity_sizes"], conf["capacity_ns"],
              conf["capacity_stages"], out_dir=out, seeds=conf["seeds"], n_eval=conf["n_eval"], base_train=base,
              n_boot=n_boot, capacity_extra=conf["capacity_extra"], fit_sizes=conf["fit_sizes"], sweep=conf["sweep"],
              log=lambda m: print(m, flush=True))
    res["config"] = {"teacher": "digits", **{k: v for k, v in conf.items() if k not in ("recipes", "sweep")},
                     "sweep": Path(conf["sweep"]).name if conf["sweep"] else None,
                     "recipes": [{"name": n, "size": s, "changed": t} for n, s, t in conf["recipes"]],
                     "train": {**DEFAULT_TRAIN, "min_steps": "off (constant lr)", **(base or {})},
                     "solver": {"solver": "heun", "steps": 18}, "copy_threshold": 1 / 3,
                     "onset_levels": list(ONSET_LEVELS),
                     "intervals": "95% t over seeds; N_copy and onset N: 95% bootstrap over seeds", "device": "cpu",
                     "threads": args.threads}
    if args.only is None:
        path = out / "memorization_recipes.json"
        write_json(path, res)
        if res["recipes"] and res["capacity"]:
            plot(res, path.with_suffix(".png"))
        if res["onset_fits"]:
            plot_onset(res, path.with_name("memorization_recipes_onset.png"))
        print(f"wrote {path} (complete={res['complete']}, {res['seconds']:.0f} s)")
    else:
        print(f"part {args.only} done (complete={res['complete']}, {res['seconds']:.0f} s); rerun without --only to "
              "write the result")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
