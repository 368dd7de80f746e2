"""Memorization -> generalization (MtoG) scaling sweep and its transition fit.

Sweep training-set sizes N (powers of two) x model widths x seeds; for every run train a DSM
student (:class:`pfd.analysis.DSMTrainer`) on N teacher samples and measure E_gen and E_mem on
shared noise. Each finished run is appended to a JSONL file at once (atomic single write +
fsync); a restarted sweep reads it back and runs only what is missing, so a killed sweep loses
at most the run in progress and never duplicates one.

Fit: per width, E(N) ~ b + a / (1 + exp((log2 N - x0) / w)); the transition point is
N* = 2^x0. It is fitted to E_gen, E_mem and to both relative to the E_gen of the run's empirical
model (``e_gen_rel``, ``e_mem_rel``): in a low-dimensional teacher the empirical model itself
approaches the teacher as N grows, so the raw errors mostly decay with N while the relative ones
show the switch from memorizing (e_mem_rel ~ 0, e_gen_rel ~ 1) to generalizing.

Collapse: for exponents alpha, one shared logistic is fitted to all runs against
u = log2 N - alpha log2 |theta|; the residual (R^2 deficit) measures how well the curves
collapse. The paper's claim corresponds to alpha = 1/2 (u = log2(N / sqrt|theta|)).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pfd._checks import check_positive_int
from pfd.analysis._runs import read_records, run_settings, settings_key, train_student
from pfd.analysis.students import TrainConfig
from pfd.analytic.gmm import GaussianMixture
from pfd.maps import CachedMap
from pfd.report import append_jsonl, check_writable

__all__ = ["collapse_scan", "fit_logistic", "fit_transitions", "mtog_scaling"]

KEY = ("n_train", "width", "seed")
FIELDS = ("e_gen", "e_mem", "e_gen_rel", "e_mem_rel")
# a generalizing student is as far from the memorizer as the teacher is: e_mem_rel -> 1 at large N
FIXED_PLATEAU = {"e_mem_rel": 1.0}


def _with_relative(rec: dict[str, Any]) -> dict[str, Any]:
    """Add E_gen and E_mem relative to E_gen of the run's empirical model (the memorizer's
    distance to the teacher): e_mem_rel ~ 0 memorizing, ~ 1 as far from the memorizer as the
    teacher is; e_gen_rel ~ 1 no better than memorizing, < 1 generalizing beyond the training set."""
    ref = rec["e_gen_empirical"]
    out = dict(rec)
    out["e_gen_rel"] = rec["e_gen"] / ref if ref > 0 else None
    out["e_mem_rel"] = rec["e_mem"] / ref if ref > 0 else None
    return out


def _logistic(x, b, a, x0, w):
    return b + a / (1.0 + np.exp(np.clip((x - x0) / w, -60, 60)))


def fit_logistic(x: Sequence[float], y: Sequence[float], *, fix_b: float | None = None) -> dict[str, float] | None:
    """Least-squares fit of y = b + a / (1 + exp((x - x0) / w)) (a step of height a at x0).

    Returns b, a, x0, w, sse and r2, or None when it cannot be fitted (fewer than 4 points).
    A grid over (x0, w) with (b, a) solved in closed form finds the global basin, then
    Levenberg-Marquardt refines it; ``w`` stays >= 0.05 so a sharp step does not run away.
    ``fix_b`` pins the plateau at x -> +inf (b) to a known value, e.g. 1 for ``e_mem_rel``.

    >>> import numpy as np
    >>> x = np.linspace(0, 10, 21)
    >>> f = fit_logistic(x, 0.2 + 1.0 / (1 + np.exp((x - 4.0) / 0.8)))
    >>> round(f["x0"], 4), round(f["w"], 4)
    (4.0, 0.8)
    """
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 4 or x.shape != y.shape or not np.all(np.isfinite(y)) or np.ptp(x) == 0:
        return None
    span = float(np.ptp(x))
    # 1) global search: for fixed (x0, w) the model is linear in (b, a) -> closed-form least squares
    x0s = np.linspace(x.min() - span / 2, x.max() + span / 2, 121)
    ws = np.geomspace(0.05, 2 * span, 40)
    g = 1.0 / (1.0 + np.exp(np.clip((x[None, None, :] - x0s[:, None, None]) / ws[None, :, None], -60, 60)))
    gm = g.mean(-1, keepdims=True)
    gc, yc = g - gm, y - y.mean()
    if fix_b is None:
        var = (gc * gc).sum(-1)
        a = np.where(var > 1e-300, (gc * yc).sum(-1) / np.maximum(var, 1e-300), 0.0)
        b = y.mean() - a * gm[..., 0]
    else:
        gg = (g * g).sum(-1)
        a = np.where(gg > 1e-300, (g * (y - fix_b)).sum(-1) / np.maximum(gg, 1e-300), 0.0)
        b = np.full_like(a, float(fix_b))
    sse_grid = ((b[..., None] + a[..., None] * g - y) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(sse_grid), sse_grid.shape)
    best = (np.array([b[i, j], a[i, j], x0s[i], ws[j]]), float(sse_grid[i, j]))
    # 2) local refinement (Levenberg-Marquardt) from the best grid point
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            if fix_b is None:
                p, _ = curve_fit(_logistic, x, y, p0=best[0], maxfev=400)
            else:
                q, _ = curve_fit(lambda xx, a_, x0_, w_: _logistic(xx, fix_b, a_, x0_, w_), x, y, p0=best[0][1:], maxfev=400)
                p = np.r_[fix_b, q]
        sse = float(np.sum((_logistic(x, *p) - y) ** 2))
        if np.all(np.isfinite(p)) and p[3] >= 0.05 and sse < best[1]:
            best = (p, sse)
    except (RuntimeError, ValueError):
        pass
    p, sse = best
    sst = float(np.sum((y - y.mean()) ** 2))
    return {"b": float(p[0]), "a": float(p[1]), "x0": float(p[2]), "w": float(p[3]), "sse": sse,
            "r2": 1.0 - sse / sst if sst > 0 else 1.0}


def _mean_curve(runs: list[dict[str, Any]], width: int, field: str) -> tuple[np.ndarray, np.ndarray]:
    ns = sorted({r["n_train"] for r in runs if r["width"] == width})
    y = [np.mean([r[field] for r in runs if r["width"] == width and r["n_train"] == n]) for n in ns]
    return np.log2(ns), np.asarray(y)


def fit_transitions(runs: list[dict[str, Any]], field: str = "e_gen") -> list[dict[str, Any]]:
    """Per width: logistic fit of the seed-mean ``field`` against log2 N, transition N* = 2^x0
    (``transition_in_range`` says whether x0 lies inside the swept range of log2 N). For
    ``e_mem_rel`` the large-N plateau is pinned at 1 (the teacher's own relative E_mem)."""
    out = []
    for w in sorted({r["width"] for r in runs}):
        x, y = _mean_curve(runs, w, field)
        n_params = next(r["n_params"] for r in runs if r["width"] == w)
        f = fit_logistic(x, y, fix_b=FIXED_PLATEAU.get(field))
        inside = f is not None and float(x.min()) <= f["x0"] <= float(x.max())
        out.append({"width": w, "n_params": n_params, "sqrt_params": math.sqrt(n_params), "field": field, "fit": f,
                    "transition_in_range": inside,
                    "log2_n_star": None if f is None else f["x0"], "n_star": None if f is None else 2.0 ** f["x0"]})
    return out


def collapse_scan(runs: list[dict[str, Any]], field: str = "e_gen", alphas: Sequence[float] | None = None) -> dict[str, Any]:
    """How well do the per-width curves collapse against u = log2 N - alpha log2|theta|?

    For each alpha one shared logistic is fitted to all seed-mean points; the score is its
    residual 1 - R^2 (smaller = better collapse). Returns the scan, the best alpha, and the
    scores at alpha = 0 (plain log2 N) and alpha = 1/2 (log2(N / sqrt|theta|)), and
    ``exponent_from_transitions``: the least-squares slope of log2 N* against log2 |theta|.
    """
    alphas = np.round(np.arange(0.0, 1.5001, 0.05), 4) if alphas is None else np.asarray(alphas, float)
    xs, ys, ps = [], [], []
    for w in sorted({r["width"] for r in runs}):
        x, y = _mean_curve(runs, w, field)
        n_params = next(r["n_params"] for r in runs if r["width"] == w)
        xs.append(x)
        ys.append(y)
        ps.append(np.full_like(x, math.log2(n_params)))
    x, y, lp = np.concatenate(xs), np.concatenate(ys), np.concatenate(ps)
    scan = []
    fix_b = FIXED_PLATEAU.get(field)
    for a in alphas:
        f = fit_logistic(x - a * lp, y, fix_b=fix_b)
        scan.append({"alpha": float(a), "residual": None if f is None else 1.0 - f["r2"]})
    ok = [s for s in scan if s["residual"] is not None]
    best = min(ok, key=lambda s: s["residual"]) if ok else None

    def at(a: float) -> float | None:
        f = fit_logistic(x - a * lp, y, fix_b=fix_b)
        return None if f is None else 1.0 - f["r2"]

    # independent estimate: slope of the per-width transition log2 N* against log2 |theta|
    tr = [t for t in fit_transitions(runs, field) if t["log2_n_star"] is not None]
    slope = None
    if len(tr) >= 2:
        lx = np.array([math.log2(t["n_params"]) for t in tr])
        ly = np.array([t["log2_n_star"] for t in tr])
        slope = float(np.polyfit(lx, ly, 1)[0]) if np.ptp(lx) > 0 else None
    return {"field": field, "exponent_from_transitions": slope, "scan": scan,
            "best_alpha": None if best is None else best["alpha"],
            "best_residual": None if best is None else best["residual"],
            "residual_log2N": at(0.0), "residual_log2N_over_sqrt_params": at(0.5)}


def mtog_scaling(
    teacher: GaussianMixture,
    n_trains: Sequence[int],
    widths: Sequence[int],
    seeds: Sequence[int] = (0,),
    *,
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the MtoG sweep; return all runs plus the transition and collapse fits.

    ``out`` is the JSONL file of finished runs (created if missing; checked for writability
    before any training). ``config`` (:class:`pfd.analysis.TrainConfig`) sets training and
    evaluation; its ``width`` is replaced by each of ``widths``. Every line carries the settings
    that determine it (the teacher, the config without ``width``, the pfd and torch versions)
    and their key: a rerun reuses only runs with the same settings, so a changed setting
    recomputes the runs instead of mixing old numbers into the new result. A run that fails (a
    diverging training gives non-finite values: ``ArithmeticError``/``RuntimeError``/
    ``ValueError``) is recorded as failed (``failed_runs`` in the result, with its error; not
    retried on resume) and the sweep goes on; the fits use the runs that finished.
    ``on_run(record)`` is called after each new run is written.
    """
    if not isinstance(teacher, GaussianMixture):
        raise TypeError(f"teacher must be a pfd.GaussianMixture, got {type(teacher).__name__}")
    grid_n = [check_positive_int(n, "n_trains entry", minimum=2) for n in n_trains]
    grid_w = [check_positive_int(w, "widths entry") for w in widths]
    grid_s = [check_positive_int(s, "seeds entry", minimum=0) for s in seeds]
    if not grid_n or not grid_w or not grid_s:
        raise ValueError("n_trains, widths and seeds must be non-empty")
    check_writable(out, "out")
    cfg = config or TrainConfig()
    settings = run_settings(teacher=teacher.to_dict(), **{k: v for k, v in cfg.to_dict().items() if k != "width"})
    key = settings_key(settings)
    done = read_records(out, KEY, settings)
    todo = [(n, w, s) for w in grid_w for n in grid_n for s in grid_s if (n, w, s) not in done]
    teacher_map = CachedMap(teacher.ode_map(**cfg.solver.kwargs()))  # computed once, reused by every run

    from tqdm.auto import tqdm

    for n, w, s in tqdm(todo, desc="mtog", unit="run", disable=not cfg.progress, leave=False):
        try:
            rec, _ = train_student(teacher, n, cfg.replace(width=w), seed=s, teacher_map=teacher_map)
        except (ArithmeticError, RuntimeError, ValueError) as exc:  # a diverging run: record it, go on
            rec = {"n_train": n, "width": w, "seed": s, "failed": True,
                   "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
            warnings.warn(f"mtog run N={n}, width={w}, seed={s} failed ({rec['error'][:200]}); recorded as failed, "
                          "the sweep goes on", UserWarning, stacklevel=2)
        rec = {**rec, "settings_key": key, "settings": settings}
        append_jsonl(out, rec)
        done[(n, w, s)] = rec
        if on_run is not None:
            on_run(rec)
    every = [done[(n, w, s)] for w in grid_w for n in grid_n for s in grid_s]
    failed = [{k: r[k] for k in ("n_train", "width", "seed", "error")} for r in every if r.get("failed")]
    runs = [_with_relative({k: v for k, v in r.items() if k != "settings"}) for r in every if not r.get("failed")]
    if not runs:
        raise RuntimeError(f"all {len(every)} mtog runs failed; the first: {failed[0]['error']}")
    result = {
        "config": {"n_trains": grid_n, "widths": grid_w, "seeds": grid_s,
                   **{k: v for k, v in cfg.to_dict().items() if k != "width"}, "teacher": teacher.to_dict(),
                   "settings_key": key, "versions": settings["versions"]},
        "runs": runs,
        "failed_runs": failed,
        "transitions": {f: fit_transitions(runs, f) for f in FIELDS},
        "collapse": {f: collapse_scan(runs, f) for f in FIELDS},
    }
    return result
