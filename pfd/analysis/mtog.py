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
from pathlib import Path
from typing import Any

import numpy as np

from pfd._checks import check_positive_int
from pfd.analysis._runs import read_records, run_settings, settings_key, train_student
from pfd.analysis.students import TrainConfig
from pfd.analytic.gmm import GaussianMixture
from pfd.maps import CachedMap
from pfd.report import append_jsonl, check_writable

__all__ = ["collapse_scan", "fit_logistic", "fit_transitions", "half_octaves", "memorizing_sizes", "mtog_report",
           "mtog_scaling", "mtog_sweep", "parse_size", "run_key", "transition_fits"]

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


# ---------------------------------------------------------------------------------------------
# The fair sweep: students trained to convergence (ensembles per size and seed), keyed runs,
# process-parallel, and transition / collapse fits with bootstrap-over-seeds CIs.

SWEEP_VERSION = 1
DEFAULT_TRAIN: dict[str, Any] = {
    "lr": 2e-3, "lr_ref_width": 256, "clamp": 3.0, "batch_size": 256, "p_mean": -1.2, "p_std": 1.2,
    "p_uniform": 0.5, "sigma_min": 0.002, "sigma_max": 80.0, "ema": 0.999, "warmup": 200, "check_every": 500,
    "patience": 3, "tol": 0.005, "lr_decay": 0.3, "max_decays": 2, "min_steps": 2000, "max_steps": 40000,
    "n_check": 1024,
}


OPTIONAL_TRAIN: dict[str, Any] = {"target": "sample"}
"""Training settings that may be given but are not part of a run's settings at their default
(``target``: "sample" for plain DSM, "posterior" to regress on the exact empirical denoiser)."""


def parse_size(spec: str) -> dict[str, Any]:
    """``"mlp:WIDTH:DEPTH"``, ``"resmlp:WIDTH:BLOCKS"`` or ``"conv:CHANNELS:BLOCKS"`` -> {arch,
    width, depth, label} (:class:`pfd.analysis.students.EnsembleDenoiser`'s architectures).

    >>> parse_size("mlp:256:3")
    {'arch': 'mlp', 'width': 256, 'depth': 3, 'label': 'mlp:256:3'}
    """
    from pfd.analysis.students import ARCHS

    parts = str(spec).split(":")
    if len(parts) != 3 or parts[0] not in ARCHS:
        raise ValueError(f"size must look like 'ARCH:WIDTH:DEPTH' with ARCH one of {', '.join(ARCHS)} "
                         f"(e.g. 'mlp:256:3', 'conv:32:4'), got {spec!r}")
    try:
        width, depth = int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"size {spec!r}: width and depth must be integers") from None
    if width < 1 or depth < 1:
        raise ValueError(f"size {spec!r}: width and depth must be >= 1")
    return {"arch": parts[0], "width": width, "depth": depth, "label": f"{parts[0]}:{width}:{depth}"}


def half_octaves(n_min: int = 8, n_max: int = 2048) -> list[int]:
    """N values from ``n_min`` to ``n_max`` in half-octave steps (rounded 2^(k/2)).

    >>> half_octaves(8, 64)
    [8, 11, 16, 23, 32, 45, 64]
    """
    lo, hi = math.log2(n_min), math.log2(n_max)
    ks = range(round(2 * lo), round(2 * hi) + 1)
    return sorted({round(2 ** (k / 2)) for k in ks})


def run_key(settings: dict[str, Any]) -> str:
    """A stable hash of every setting that determines a run (canonical JSON, sha1)."""
    import hashlib
    import json

    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _unit_settings(teacher: GaussianMixture, size: dict[str, Any], seeds: list[int], n_trains: list[int],
                   train: dict[str, Any], n_eval: int, eval_seed: int, solver: dict[str, Any], device: str) -> dict:
    import hashlib
    import json

    # the teacher's parameters to 6 significant digits: another BLAS or scikit-learn build
    # refitting the same named teacher gives the same key, a different teacher does not
    rounded = {k: [float(f"{t:.6g}") for t in np.asarray(v, float).ravel()] for k, v in teacher.to_dict().items()}
    teacher_hash = hashlib.sha1(json.dumps(rounded).encode()).hexdigest()[:16]
    # the ensemble (all seeds x N of one size) shares noise streams, so its whole grid is part of
    # each run's identity; CPU and CUDA generators differ, so the device type is too
    return {"version": SWEEP_VERSION, "teacher": teacher_hash, "arch": size["arch"], "width": size["width"],
            "depth": size["depth"], "seeds": list(seeds), "n_trains": list(n_trains), "train": train, "n_eval": n_eval,
            "eval_seed": eval_seed, "solver": solver, "device": str(device).split(":")[0],
            "tf32": str(device).startswith("cuda")}


_WORKER: dict[str, Any] = {}


def _unit_worker(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train and score one size's ensemble (all seeds x N; runs in a worker process)."""
    import time

    import torch

    from pfd.analysis._runs import OnDevice, train_ensemble
    from pfd.analytic.teachers import get_teacher

    torch.set_num_threads(job.get("threads", 1))
    if job["device"].startswith("cuda"):
        # TF32 tensor-core matmuls for the float32 students (about 4x faster on H100/H200); the
        # mixtures' maps are float64 and unaffected. Part of the run key (see _unit_settings).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    key = (job["teacher_name"], job["device"], repr(job["solver"]))
    if _WORKER.get("key") != key:
        teacher = get_teacher(job["teacher_name"]) if job.get("teacher") is None else GaussianMixture.from_dict(job["teacher"])
        _WORKER.update(key=key, teacher=teacher,
                       tmap=CachedMap(OnDevice(teacher.ode_map(**job["solver"]), job["device"])))
    left = None if job["deadline"] is None else job["deadline"] - time.time()
    recs = train_ensemble(_WORKER["teacher"], job["n_trains"], job["seeds"], arch=job["arch"], width=job["width"],
                          depth=job["depth"], train=job["train"], n_eval=job["n_eval"], eval_seed=job["eval_seed"],
                          device=job["device"], teacher_map=_WORKER["tmap"], solver=job["solver"],
                          wall_budget=None if left is None else max(1.0, left), checkpoint=job["checkpoint"],
                          checkpoint_settings=job["settings"], checkpoint_every=job["checkpoint_every"],
                          probe_fraction=job["probe_fraction"])
    for r in recs:
        r["key"] = run_key({**job["settings"], "seed": r["seed"], "n_train": r["n_train"]})
        r["size"] = job["label"]
    return recs


def mtog_sweep(
    teacher: GaussianMixture | str,
    n_trains: Sequence[int],
    sizes: Sequence[str],
    seeds: Sequence[int],
    *,
    out: str | os.PathLike[str],
    train: dict[str, Any] | None = None,
    n_eval: int = 4096,
    eval_seed: int = 0,
    solver: dict[str, Any] | None = None,
    device: str = "cpu",
    processes: int = 1,
    wall_budget: float | None = None,
    n_boot: int = 200,
    progress: bool = True,
    on_unit: Callable[[list[dict[str, Any]]], None] | None = None,
    train_missing: bool = True,
    checkpoint_every: float | None = 600.0,
    probe_fraction: float | None = 0.5,
) -> dict[str, Any]:
    """Run (or resume) the fair MtoG sweep; return the result dict (``config``, ``runs``,
    ``transitions``, ``collapse``, ``complete``).

    Work unit: one model size, i.e. one student per (seed, N) trained together, each to
    convergence (:func:`pfd.analysis._runs.train_ensemble`). Each finished run is appended to the JSONL file
    ``out`` under a key hashing every setting that determines it (teacher, architecture, seed,
    whole seed and N grid, training config, evaluation, device type): a restart skips units whose runs are all
    present with the same key; a run made with other settings is never reused. Units run in
    ``processes`` worker processes. ``wall_budget`` (seconds) stops training of all units at that
    deadline. A unit's training is resumable: its trainer state is saved atomically (in the
    folder ``<out stem>_ckpt`` next to ``out``, one file per unit, named and checked by the
    unit's settings) every ``checkpoint_every`` seconds of training (None: only when the wall
    budget stops it) and when the wall budget stops it; such a unit records no runs (the result
    is ``complete: false`` and lists it in ``pending``) and a restart continues it bit for bit;
    its checkpoint is deleted once its runs are written. ``probe_fraction``: the runs still
    training at that fraction of ``max_steps`` are scored there too, so each run that ends at the
    cap records how much its E_gen moved over the rest of training (``e_gen_drift``; see
    ``convergence`` in the result). ``train_missing=False`` only refits the runs already in ``out``.
    """
    import concurrent.futures as cf
    import multiprocessing as mp
    import time

    teacher_name = teacher if isinstance(teacher, str) else None
    if isinstance(teacher, str):
        from pfd.analytic.teachers import get_teacher

        teacher = get_teacher(teacher)
    if not isinstance(teacher, GaussianMixture):
        raise TypeError(f"teacher must be a pfd.GaussianMixture or a teacher name, got {type(teacher).__name__}")
    grid_n = sorted({check_positive_int(int(n), "n_trains entry", minimum=2) for n in n_trains})
    size_specs = [parse_size(s) for s in sizes]
    grid_s = [int(s) for s in seeds]
    if not grid_n or not size_specs or not grid_s:
        raise ValueError("n_trains, sizes and seeds must be non-empty")
    if any(s < 0 for s in grid_s):
        raise ValueError("seeds must be >= 0")
    cfg_train = {**DEFAULT_TRAIN, **(train or {})}
    known = set(DEFAULT_TRAIN) | set(OPTIONAL_TRAIN)
    unknown = set(cfg_train) - known
    if unknown:
        raise ValueError(f"train: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    for name, default in OPTIONAL_TRAIN.items():  # at its default a setting stays out, so runs keep their keys
        if cfg_train.get(name, default) == default:
            cfg_train.pop(name, None)
    solver = dict(solver or {})
    n_eval = check_positive_int(n_eval, "n_eval", minimum=2)
    if checkpoint_every is not None and not checkpoint_every > 0:
        raise ValueError(f"checkpoint_every must be > 0 seconds or None, got {checkpoint_every!r}")
    done = read_records(out, ("key",))
    ckpt_dir = Path(out).parent / f"{Path(out).stem}_ckpt"
    jobs = []
    for size in size_specs:
        st = _unit_settings(teacher, size, grid_s, grid_n, cfg_train, n_eval, eval_seed, solver, device)
        keys = [run_key({**st, "seed": s, "n_train": n}) for s in grid_s for n in grid_n]
        ckpt = ckpt_dir / f"unit-{size['label'].replace(':', '-')}-{run_key(st)}.pt"
        if all((k,) in done and done[(k,)].get("stopped_by") != "wall" for k in keys):
            ckpt.unlink(missing_ok=True)  # left behind by a sweep killed between writing the runs and this
        elif train_missing:
            jobs.append({"teacher_name": teacher_name, "teacher": None if teacher_name else teacher.to_dict(),
                         "arch": size["arch"], "width": size["width"], "depth": size["depth"], "label": size["label"],
                         "seeds": grid_s, "n_trains": grid_n, "train": cfg_train, "n_eval": n_eval, "eval_seed": eval_seed,
                         "solver": solver, "device": device, "settings": st, "checkpoint": str(ckpt),
                         "checkpoint_every": checkpoint_every or math.inf, "probe_fraction": probe_fraction,
                         "deadline": None if wall_budget is None else time.time() + float(wall_budget)})
    if jobs:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    # biggest models first, so the stragglers at the end are small
    jobs.sort(key=lambda j: -(j["width"] ** 2 * j["depth"] * (9 if j["arch"] == "conv" else 1)))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="mtog units", unit="unit", disable=not progress, leave=False)

    pending: list[str] = []

    def finish(job: dict[str, Any], recs: list[dict[str, Any]]) -> None:
        bar.update(1)
        if not recs:  # stopped by the wall budget; its checkpoint holds the progress
            pending.append(job["label"])
            return
        for r in recs:
            append_jsonl(out, r)
            done[(r["key"],)] = r
        Path(job["checkpoint"]).unlink(missing_ok=True)
        if on_unit is not None:
            on_unit(recs)

    if processes <= 1 or len(jobs) <= 1:
        for j in jobs:
            finish(j, _unit_worker(j))
    else:
        with cf.ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_unit_worker, j): j for j in jobs}
            for f in cf.as_completed(futs):
                finish(futs[f], f.result())
    bar.close()
    runs = []
    for size in size_specs:
        st = _unit_settings(teacher, size, grid_s, grid_n, cfg_train, n_eval, eval_seed, solver, device)
        for s in grid_s:
            for n in grid_n:
                rec = done.get((run_key({**st, "seed": s, "n_train": n}),))
                if rec is not None:
                    runs.append(rec)
    config = {"teacher": teacher_name or "custom", "n_trains": grid_n, "seeds": grid_s,
              "sizes": [s["label"] for s in size_specs],
              "steps": {"rule": "per run: every check_every steps, the fixed-noise DSM loss of the EMA weights on its "
                        "training set; after `patience` checks without a relative drop of `tol` the learning rate is "
                        "multiplied by lr_decay; after max_decays decays the run has converged (stopped_by='plateau');"
                        " capped at max_steps (stopped_by='cap'); steps used are recorded per run",
                        **{k: cfg_train[k] for k in ("check_every", "patience", "tol", "lr_decay", "max_decays",
                                                     "min_steps", "max_steps")}},
              "train": cfg_train, "n_eval": n_eval, "eval_seed": eval_seed,
              "solver": solver or {"solver": "heun", "steps": 18}, "device": device, "processes": processes,
              "wall_budget": wall_budget, "n_boot": n_boot, "probe_fraction": probe_fraction}
    res = mtog_report(runs, config, n_boot=n_boot)
    res["pending"] = pending
    return res


def _seed_means(runs: list[dict[str, Any]], field: str, group: str, seeds: Sequence[int]):
    """{group: (log2 N array, mean field over the given (possibly repeated) seeds)}."""
    out = {}
    for g in sorted({r[group] for r in runs}, key=lambda v: next(r["n_params"] for r in runs if r[group] == v)):
        table: dict[int, dict[int, float]] = {}
        for r in runs:
            if r[group] == g and r.get(field) is not None:
                table.setdefault(r["n_train"], {})[r["seed"]] = r[field]
        ns = sorted(n for n in table if all(s in table[n] for s in set(seeds)))
        y = np.array([np.mean([table[n][s] for s in seeds]) for n in ns])
        out[g] = (np.log2(ns), y)
    return out


def _collapse_alpha(curves: dict[Any, tuple[np.ndarray, np.ndarray]], lps: dict[Any, float], fix_b: float | None,
                    init: Sequence[float] | None = None) -> tuple[float | None, float | None, list[float] | None]:
    """The collapse exponent alpha: every size's curve is fitted jointly as
    E_g(N) = b_g + a_g / (1 + exp((log2 N - c - alpha log2|theta_g|) / w)), i.e. the curves
    coincide against u = log2(N / |theta|^alpha) up to each size's own plateaus (b_g, a_g: a
    small model generalizes to a higher floor), with one shared transition shape (c, w) and
    alpha free (least squares). Started from the per-size logistic fits (or from ``init``, the
    parameter vector of an earlier fit, e.g. the full-data fit inside a bootstrap).
    Returns (alpha, 1 - R^2, parameters) or (None, None, None) when it cannot be fitted."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    groups = list(curves)
    if len(groups) < 2 or any(len(curves[g][0]) < 4 for g in groups):
        return None, None, None
    x = np.concatenate([curves[g][0] for g in groups])
    y = np.concatenate([curves[g][1] for g in groups])
    gi = np.concatenate([np.full(len(curves[g][0]), i) for i, g in enumerate(groups)])
    lpv = np.array([lps[g] for g in groups])
    if np.ptp(lpv) == 0:
        return None, None, None
    k = len(groups)
    sst = float(np.sum((y - y.mean()) ** 2))

    def model(xx, *p):
        b = np.full(k, fix_b) if fix_b is not None else np.asarray(p[:k])
        a = np.asarray(p[k:2 * k])
        c, w, al = p[2 * k:]
        return _logistic(xx, b[gi], a[gi], c + al * lpv[gi], w)

    if init is None:
        fits = [fit_logistic(*curves[g], fix_b=fix_b) for g in groups]
        if any(f is None for f in fits):
            return None, None, None
        x0 = np.array([f["x0"] for f in fits])
        al0, c0 = np.polyfit(lpv, x0, 1)
        init = [*(f["b"] for f in fits), *(f["a"] for f in fits), float(c0), float(np.median([f["w"] for f in fits])),
                float(al0)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            p, _ = curve_fit(model, x, y, p0=list(init), maxfev=5000)
    except (RuntimeError, ValueError):
        return None, None, None
    if not np.all(np.isfinite(p)) or abs(p[-2]) < 0.05:
        return None, None, None
    sse = float(np.sum((model(x, *p) - y) ** 2))
    return float(p[-1]), (sse / sst if sst > 0 else 0.0), [float(v) for v in p]


def transition_fits(runs: list[dict[str, Any]], field: str = "e_gen", *, group: str = "size", n_boot: int = 200,
                    seed: int = 0, collapse: bool = True) -> dict[str, Any]:
    """Per model size, the logistic transition N* of the seed-mean ``field`` against log2 N, and
    the collapse exponent alpha of N / |theta|^alpha, each with a 95% bootstrap CI over seeds.

    A bootstrap replicate resamples the seeds with replacement (the same resample for every
    size: a seed fixes the training sets, which the sizes share) and refits everything;
    CIs are the 2.5/97.5 percentiles. Also the slope of log2 N* against log2 |theta| (an
    independent estimate of alpha) with its CI. ``n_star_ci95`` is None where fewer than half
    of the replicates gave a transition inside the swept range.

    >>> import numpy as np
    >>> runs = [{"size": p, "n_params": p, "seed": s, "n_train": n,
    ...          "e_gen": 1 + 2 / (1 + np.exp(np.log2(n) - 0.5 * np.log2(p) - 2 + 0.1 * s))}
    ...         for p in (2**8, 2**12, 2**16) for s in range(3) for n in (2**np.arange(2, 15)).tolist()]
    >>> res = transition_fits(runs, n_boot=20)
    >>> collapse = res["collapse"]
    >>> round(collapse["alpha"], 1)
    0.5
    """
    seeds = sorted({r["seed"] for r in runs})
    params = {r[group]: r["n_params"] for r in runs}
    lps = {g: math.log2(p) for g, p in params.items()}
    fix_b = FIXED_PLATEAU.get(field)

    def fit_all(sample: Sequence[int]):
        curves = _seed_means(runs, field, group, sample)
        stars = {}
        for g, (x, y) in curves.items():
            f = fit_logistic(x, y, fix_b=fix_b) if len(x) >= 4 else None
            inside = f is not None and float(x.min()) <= f["x0"] <= float(x.max())
            stars[g] = (f, inside)
        ok = [g for g, (f, inside) in stars.items() if inside]
        slope = None
        if len(ok) >= 2:
            lx = np.array([lps[g] for g in ok])
            slope = float(np.polyfit(lx, [stars[g][0]["x0"] for g in ok], 1)[0]) if np.ptp(lx) > 0 else None
        coll = _collapse_alpha(curves, lps, fix_b, init=init) if collapse else (None, None, None)
        return stars, slope, coll

    init = None
    stars, slope, (alpha, residual, init) = fit_all(seeds)
    order = list(_seed_means(runs, field, group, seeds))  # the groups' order inside the parameter vector
    rng = np.random.default_rng(seed)
    boot_x0: dict[Any, list[float]] = {g: [] for g in params}
    boot_slope, boot_alpha = [], []
    for _ in range(n_boot):
        sample = rng.choice(seeds, size=len(seeds), replace=True).tolist()
        st, sl, (al, _, _) = fit_all(sample)
        for g, (f, inside) in st.items():
            if inside:
                boot_x0[g].append(f["x0"])
        if sl is not None:
            boot_slope.append(sl)
        if al is not None:
            boot_alpha.append(al)

    def ci(vals: list[float], need: int) -> list[float] | None:
        return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) >= need and vals else None

    entries = []
    for g in sorted(params, key=params.get):
        f, inside = stars[g]
        c = ci(boot_x0[g], max(1, n_boot // 2))
        entries.append({"size": g, "params": params[g], "field": field, "fit": f, "transition_in_range": inside,
                        "log2_n_star": None if f is None else f["x0"],
                        "n_star": None if f is None else 2.0 ** f["x0"],
                        "n_star_ci95": None if c is None else [2.0 ** c[0], 2.0 ** c[1]],
                        "boot_in_range": len(boot_x0[g]), "n_boot": n_boot})
    return {"field": field, "transitions": entries,
            "collapse": {"alpha": alpha, "residual": residual,
                         "per_size": None if init is None else {
                             g: {"b": fix_b if fix_b is not None else init[i], "a": init[len(order) + i]}
                             for i, g in enumerate(order)},
                         "c": None if init is None else init[-3], "w": None if init is None else init[-2],
                         "alpha_ci95": ci(boot_alpha, max(1, n_boot // 2)),
                         "alpha_ci_width": None if ci(boot_alpha, max(1, n_boot // 2)) is None else
                         float(np.diff(ci(boot_alpha, max(1, n_boot // 2)))[0]),
                         "slope_log2_nstar_vs_log2_params": slope,
                         "slope_ci95": ci(boot_slope, max(1, n_boot // 2)), "n_boot": n_boot}}


DRIFT_MAX = 0.02
"""A run stopped at the step cap counts as converged in E_gen when its E_gen moved by at most
this fraction over the second part of training (``e_gen_drift``, from the probe)."""


def _cap_drift(capped: list[dict[str, Any]]) -> dict[str, Any]:
    """For the runs stopped at the step cap: how many, how many carry an E_gen probe, the median
    and largest E_gen drift, and how many drifted by more than :data:`DRIFT_MAX` (or have no
    probe): those are the runs not shown to have converged."""
    drift = [r["e_gen_drift"] for r in capped if r.get("e_gen_drift") is not None]
    return {"capped": len(capped), "capped_probed": len(drift),
            "capped_e_gen_drift_median": float(np.median(drift)) if drift else None,
            "capped_e_gen_drift_max": float(np.max(drift)) if drift else None,
            "unconverged": len(capped) - sum(d <= DRIFT_MAX for d in drift), "drift_max_allowed": DRIFT_MAX}


def _at_smallest_n(runs: list[dict[str, Any]], size: str) -> tuple[int, list[dict[str, Any]]]:
    """The smallest N of ``size``'s runs and its runs at that N (one per seed)."""
    n0 = min(r["n_train"] for r in runs if r["size"] == size)
    return n0, [r for r in runs if r["size"] == size and r["n_train"] == n0]


MEMORIZING = {"copy_fraction_min": 0.9, "e_gen_rel_min": 0.95}
"""A size memorizes at small N when, at the smallest N of the sweep, the seed-mean copy fraction
(memorization ratio) is at least ``copy_fraction_min`` and its E_gen is no better than the
memorizer's (seed-mean E_gen / E_gen(memorizer) >= ``e_gen_rel_min``)."""


def memorizing_sizes(runs: list[dict[str, Any]], rule: dict[str, float] | None = None) -> list[str] | None:
    """The sizes whose students memorize at the sweep's smallest N (:data:`MEMORIZING`): they copy
    training points and their E_gen sits at the memorizer's. Only for those does E_gen(N) describe
    a memorization -> generalization transition; a size that never memorizes gives a capacity curve.
    None when the runs carry no copy fraction (older records).

    >>> runs = [{"size": "a", "n_train": 8, "copy_fraction": 0.97, "e_gen_rel": 0.99},
    ...         {"size": "b", "n_train": 8, "copy_fraction": 0.0, "e_gen_rel": 1.06}]
    >>> memorizing_sizes(runs)
    ['a']
    """
    rule = {**MEMORIZING, **(rule or {})}
    if not runs or any(r.get("copy_fraction") is None for r in runs):
        return None
    out = []
    for size in sorted({r["size"] for r in runs}):
        _, small = _at_smallest_n(runs, size)
        if (np.mean([r["copy_fraction"] for r in small]) >= rule["copy_fraction_min"]
                and np.mean([r["e_gen_rel"] for r in small]) >= rule["e_gen_rel_min"]):
            out.append(size)
    return out


def mtog_report(runs: list[dict[str, Any]], config: dict[str, Any], *, n_boot: int = 200) -> dict[str, Any]:
    """The sweep's result in the committed schema: ``config``, ``observable: "e_gen"``,
    ``transitions`` (per size: params, n_star, n_star_ci95), ``collapse`` (alpha, alpha_ci95),
    ``fits`` for the other observables, ``convergence`` (steps and how close small N got to the
    memorizer), ``memorizing`` (the sizes that memorize at small N, :func:`memorizing_sizes`, and
    the E_gen fits on those sizes alone, ``fit``, when they are some but not all of the sizes;
    when all memorize, the main fit is theirs), ``runs`` and ``complete``."""
    config = {**config, "params": {r["size"]: r["n_params"] for r in runs}}
    expected = len(config["n_trains"]) * len(config["seeds"]) * len(config["sizes"])
    finished = [r for r in runs if r.get("stopped_by") != "wall"]
    complete = len(finished) == expected
    main = transition_fits(runs, "e_gen", n_boot=n_boot) if runs else None
    others = {f: transition_fits(runs, f, n_boot=n_boot, collapse=f != "e_gen_rel") if runs else None
              for f in ("e_mem", "e_gen_rel", "e_mem_rel")}
    conv = {}
    for size in config["sizes"]:
        rs = [r for r in runs if r["size"] == size]
        if not rs:
            continue
        n0, small = _at_smallest_n(rs, size)
        conv[size] = {"steps_min": min(r["steps"] for r in rs), "steps_median": float(np.median([r["steps"] for r in rs])),
                      "steps_max": max(r["steps"] for r in rs),
                      "stopped_by": {k: sum(r["stopped_by"] == k for r in rs) for k in {r["stopped_by"] for r in rs}},
                      "smallest_n": n0, "e_mem_rel_at_smallest_n": float(np.mean([r["e_mem_rel"] for r in small])),
                      "e_mem_rel_at_smallest_n_max": float(np.max([r["e_mem_rel"] for r in small])),
                      "e_gen_rel_at_smallest_n": float(np.mean([r["e_gen_rel"] for r in small])),
                      "copy_fraction_at_smallest_n": None if any(r.get("copy_fraction") is None for r in small)
                      else float(np.mean([r["copy_fraction"] for r in small])),
                      **_cap_drift([r for r in rs if r["stopped_by"] == "cap"])}
    mem = memorizing_sizes(runs)
    mem_fit = None
    if mem is not None and len(mem) >= 2 and len(mem) < len({r["size"] for r in runs}):
        mem_fit = transition_fits([r for r in runs if r["size"] in mem], "e_gen", n_boot=n_boot)
    return {"config": config, "observable": "e_gen",
            "transitions": [] if main is None else main["transitions"],
            "collapse": {} if main is None else main["collapse"],
            "memorizing": {"rule": dict(MEMORIZING), "sizes": mem, "fit": mem_fit},
            "fits": others, "convergence": conv, "runs": runs, "complete": complete,
            "n_runs": len(runs), "n_runs_expected": expected}
