"""How far a PFD is from the PFD of the exact maps on the same noise: the solver-error estimate.

A PFD computed with PF-ODE maps a, b solved on a grid carries two errors: the sampling error of
the n noise samples (``PFDResult.stderr``) and the discretisation error of the solves. The
second is

    Delta = mean_i d_i^2 - mean_i e_i^2,   d_i = ||Psi a(z_i) - Psi b(z_i)||,  e_i = the same with
                                           the exact maps a*, b*,

and the solver error of the PFD is |sqrt(mean d^2) - sqrt(mean e^2)|. Per-sample differences
D_i = d_i^2 - e_i^2 are heavy-tailed (a sample near a separatrix switches modes late and carries
most of the error), so a small uniform subsample can miss the samples that matter. The
estimator here:

1. knows d_i^2 for every sample from the run itself (the reduction keeps them when asked);
2. draws a Poisson subsample with inclusion probabilities pi_i proportional to a defensive
   mixture of d_i (|D_i| ~ 2 d_i |delta_a - delta_b| grows with d_i) and the uniform law, capped
   at 1 so the largest d_i are taken with certainty;
3. solves both maps on the subsample with a *reference* more accurate than the run (RK4, order
   4, on the run's own sigma grid, or 100x tighter tolerances for adaptive solvers) and with a
   *check* at half the reference resolution (every other grid point). When check and reference
   differ by more than a quarter of the estimate (and by more than a tenth of the sampling
   error), the reference is refined (its grid subdivided 2x, 4x, ...): an order check, whose
   gap / 7 is the reference's own error once it passes (RK4 cuts its error 16x per halving of
   the step in its asymptotic regime; 8x is assumed), gap / 2 when it still fails at the end
   (3x assumed: the first refinement is often not asymptotic yet);
4. estimates Delta by Horvitz-Thompson, sum_S D_i / (n pi_i), with the unbiased Poisson-sampling
   variance sum_S (1 - pi_i) D_i^2 / (n pi_i)^2. A refinement is solved on a *thinned* subset
   of the rows (each kept with probability q_i, preferentially the rows whose last refinement
   changed most): the estimate is then the multi-phase Horvitz-Thompson sum (the first
   level's D_i over pi_i, plus each refinement's change of D_i over pi_i q_i ...; see
   :func:`multiphase_ht`), still unbiased, with an unbiased variance that includes the thinning;
5. reports ``value`` = (|Delta_hat| + sd + reference error) converted to PFD units: an estimate
   that is conservative by one standard deviation of its own sampling noise.

The cost: ``"cheap"`` keeps the *total* reference work, refinement included, within a quarter
of the run's, counted in model calls x (rows + 512) (1024 rows a call, whatever ``batch_size``)
so that small batches are not taken to be free (:func:`_work`): 60% for the first level, the
rest for one refinement on a thinned subset (skipped, with the gap / 2 reference error, when
the rest cannot pay 32 rows). A run too small to pay 128 reference rows gets 128 rows and one
refinement on 64. ``"thorough"`` spends about
the run's work on the first level and refines on the whole subsample up to 16x.

Maps whose output involves no ODE solve (one-step students, exact analytic maps) contribute no
solver error; maps pfd cannot refine (opaque callables) make the estimate unknown (``value`` is
None, with a reason).

>>> import pfd
>>> p = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
>>> q = pfd.GaussianMixture([1.0], [[0.5, 0.0]], [1.0])
>>> res = pfd.distance(p.ode_map(), q.ode_map(), n=512, progress=False, solver_error=True)
>>> res.solver_error.value < 1e-3, res.solver_error.status
(True, 'estimated')
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pfd.noise import derive_seed

__all__ = ["MODES", "SolverError", "classify_map", "refined_map"]

MODES = ("cheap", "thorough")
"""``"cheap"``: all reference work at most a quarter of the run's (large n); ``"thorough"``: about the run's and more."""

_BUDGET = {"cheap": 0.25, "thorough": 1.0}  # reference work / the run's, in _work units (cheap: refinement included)
_FIRST_SHARE = {"cheap": 0.6, "thorough": 1.0}  # share of the budget planned for the first reference level
_THIN = {"cheap": True, "thorough": False}  # refinements on a thinned subset (cheap) or the whole subsample
_MAX_REFINE = {"cheap": 1, "thorough": 4}  # refinements of the reference grid after the first level
_MIN_THIN = 32  # fewer rows than this for a refinement: stop refining (budget spent)
_MIN_REFINE = 64  # a small run's cheap budget affords one refinement on this many rows
_CALL_ROWS = 512  # cost model: a model call costs as much as this many rows more (fixed per-call cost)
_CALL_BATCH = 1024  # cost model: rows per call (fixed, not the run's batch_size: the estimate must not
# depend on the batching)
_MIN_M = {"cheap": 128, "thorough": 512}
_ALPHA = 0.3  # uniform share of the defensive sampling mixture
_MAX_LEVEL = 4  # finest reference: every interval of the run's grid split into 2^4
_STREAM = 0x5E  # seed stream of the subsample draw
_F64 = torch.float64


@dataclass(frozen=True)
class SolverError:
    """The solver-error part of a PFD's error budget.

    ``value`` estimates |PFD computed - PFD of the exact maps on the same noise| (None when
    unknown; 0.0 when both maps are exact). ``delta`` is the signed point estimate of
    PFD computed - PFD exact; ``value`` = |delta| plus one standard deviation of the estimate's
    subsampling noise (``sd``) plus the reference's own estimated error (``reference_error``),
    all in PFD units. ``m`` noise samples were re-solved with the reference; ``seconds`` and
    ``nfe`` (model evaluations, both maps, reference and check) are its cost.
    """

    value: float | None
    status: str
    reason: str = ""
    delta: float | None = None
    sd: float = 0.0
    reference_error: float = 0.0
    m: int = 0
    mode: str = "cheap"
    seconds: float = 0.0
    nfe: float = 0.0
    maps: dict[str, str] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field."""
        return {
            "value": self.value, "status": self.status, "reason": self.reason, "delta": self.delta,
            "sd": self.sd, "reference_error": self.reference_error, "m": self.m, "mode": self.mode,
            "seconds": self.seconds, "nfe": self.nfe, "maps": dict(self.maps), "reference": dict(self.reference),
        }

    def __str__(self) -> str:
        if self.value is None:
            return f"solver error unknown ({self.reason})"
        return f"solver error {self.value:.2g} ({self.status}, m={self.m})"


# ------------------------------------------------------------------------------- map kinds


def _unwrap(m: Any) -> Any:
    """The map behind pass-through wrappers (CachedMap, LabelledMap, ...: objects with ``base``)."""
    seen = 0
    while getattr(m, "base", None) is not None and callable(m.base) and seen < 16:
        m = m.base
        seen += 1
    return m


def classify_map(m: Any) -> tuple[str, str]:
    """(kind, why) of a map for the solver-error estimate: kind ``"ode"`` (a PF-ODE solve pfd can
    refine), ``"exact"`` (no ODE solve: one-step and multi-step students, exact analytic maps) or
    ``"unknown"`` (an opaque callable).

    >>> import pfd
    >>> classify_map(pfd.GaussianMixture([1.0], [[0.0]], [1.0]).ode_map())[0]
    'ode'
    >>> classify_map(pfd.OneStepMap(lambda z: z, shape=(1,)))[0]
    'exact'
    >>> classify_map(lambda z: z)[0]
    'unknown'
    """
    from pfd.maps import DiffusionMap, OneStepMap

    inner = _unwrap(m)
    if isinstance(inner, DiffusionMap):
        if inner.sigmas.numel() < 2:
            return "exact", "a single denoiser call, no ODE solve"
        return "ode", f"{type(inner).__name__} ({inner.method})"
    declared = getattr(inner, "solver_error_free", None)
    if declared is True:
        return "exact", f"{type(inner).__name__} declares solver_error_free"
    if isinstance(inner, OneStepMap):
        return "exact", "one-step map, no ODE solve"
    from pfd.adapters.students import ConsistencyStudent, FlowMapStudent
    from pfd.distill.trajectory import ExactFlowMap, TrajectoryMap

    if isinstance(inner, (ConsistencyStudent, FlowMapStudent, TrajectoryMap)):
        return "exact", f"{type(inner).__name__}: a student's own map, no ODE solve"
    if isinstance(inner, ExactFlowMap):
        if inner.method == "ode":
            return "unknown", "ExactFlowMap of a mixture without closed form (numerical DOP853 solve)"
        return "exact", f"exact analytic map ({inner.method})"
    return "unknown", f"{type(inner).__name__} is an opaque callable: pfd cannot refine its solve"


def _resample(sigmas: torch.Tensor, level: int) -> torch.Tensor:
    """The grid at resolution 2^level: every interval split into 2^level geometrically equal
    pieces (level >= 0), or every other point kept, the last one always (level = -1).

    >>> [round(v, 6) for v in _resample(torch.tensor([8.0, 4.0, 2.0, 1.0]), 1).tolist()]
    [8.0, 5.656854, 4.0, 2.828427, 2.0, 1.414214, 1.0]
    >>> _resample(torch.tensor([8.0, 4.0, 2.0, 1.0]), -1).tolist()
    [8.0, 2.0, 1.0]
    """
    s = sigmas.to(_F64)
    if level < 0:
        keep = list(range(0, s.numel(), 2))
        if keep[-1] != s.numel() - 1:
            keep.append(s.numel() - 1)
        return s[keep].clone()
    r = 2**level
    if r == 1:
        return s.clone()
    ls = torch.log(s)
    frac = torch.arange(r, dtype=_F64) / r
    inner = torch.exp(ls[:-1, None] + (ls[1:] - ls[:-1])[:, None] * frac[None, :])
    inner[:, 0] = s[:-1]  # the original grid points exactly
    return torch.cat([inner.reshape(-1), s[-1:]])


def refined_map(m: Any, level: int = 0) -> Any:
    """A more accurate copy of a PF-ODE map (same denoiser, same sigma range and start).

    Fixed grids: classical RK4 (order 4, four model calls per step) on the map's own grid
    (``level=0``), on the grid with every interval split into 2^level pieces uniform in log sigma
    (``level > 0``) or on every other grid point (``level=-1``). Adaptive torchdiffeq solvers: the
    same method at tolerances 10^-(level+2) times the map's. Wrappers (CachedMap, LabelledMap)
    are looked through.

    >>> import pfd
    >>> m = pfd.GaussianMixture([1.0], [[0.0]], [1.0]).ode_map(solver="euler", steps=5)
    >>> ref = refined_map(m, 1)
    >>> ref.method, ref.sigmas.numel(), ref.nfe_per_sample
    ('rk4', 9, 33)
    """
    from pfd.maps import DiffusionMap

    inner = _unwrap(m)
    if not isinstance(inner, DiffusionMap):
        raise TypeError(f"refined_map needs a DiffusionMap (or a wrapper of one), got {type(inner).__name__}")
    out = copy.copy(inner)
    out.last_nfe = None
    if inner.adaptive:
        tighten = 10.0 ** -(level + 2)
        out.rtol = max(inner.rtol * tighten, 1e-13)
        out.atol = max(inner.atol * tighten, 1e-14)
        return out
    _set_solver(out, "rk4")
    out.sigmas = _resample(inner.sigmas, level)
    out.steps = int(out.sigmas.numel())
    if hasattr(out, "grid") and not isinstance(out.grid, str):  # pragma: no cover - defensive
        out.grid = "explicit"
    return out


def _set_solver(m: Any, name: str) -> None:
    """Point a copied DiffusionMap at the built-in fixed-grid method ``name``."""
    m.backend, m.method, m.solver, m.adaptive = "builtin", name, name, False
    if hasattr(m, "stepper"):  # maps that hold a solver-registry entry
        from pfd.solvers import get_solver

        m.stepper = get_solver(name)


def _ref_nfe(m: Any, level: int) -> float:
    """Model evaluations per sample of the reference at a level (a rough guess for adaptive)."""
    inner = _unwrap(m)
    if inner.adaptive:
        return 300.0 * 1.6 ** (level + 2)
    return 4.0 * (_resample(inner.sigmas, level).numel() - 1) + 1.0


def _work(nfe_per_row: float, rows: int) -> float:
    """Cost model of solving ``rows`` rows at ``nfe_per_row`` model calls each, in batches:
    every call costs its rows plus a fixed :data:`_CALL_ROWS` (per-call overhead dominates small
    batches: on the 2-D suite mixtures a call costs about as much as 900 more rows)."""
    return nfe_per_row * (rows + _CALL_ROWS * math.ceil(rows / _CALL_BATCH))


def _affordable(work: float, nfe_per_row: float) -> int:
    """Most rows whose :func:`_work` at ``nfe_per_row`` fits ``work`` (0 if none).

    >>> _affordable(_work(10.0, 700), 10.0)
    700
    """
    if work <= 0 or nfe_per_row <= 0:
        return 0
    lo, hi = 0, int(work / nfe_per_row) + 1  # _work is increasing in rows: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _work(nfe_per_row, mid) <= work * (1 + 1e-12) else (lo, mid)
    return lo


def _run_nfe(m: Any, kind: str, measured: float | None) -> float:
    if measured is not None:
        return float(measured)
    inner = _unwrap(m)
    per = getattr(inner, "nfe_per_sample", None)
    return float(per) if isinstance(per, (int, float)) else 1.0


# ------------------------------------------------------------------------------- estimate


def inclusion_probabilities(weight: np.ndarray, m: int) -> np.ndarray:
    """Probabilities pi_i = min(1, c w_i) with sum pi = m (w > 0): the largest weights are taken
    with certainty, the rest proportionally.

    >>> inclusion_probabilities(np.array([1.0, 1.0, 1.0, 100.0]), 2).round(3).tolist()
    [0.333, 0.333, 0.333, 1.0]
    """
    w = np.asarray(weight, dtype=np.float64)
    n = w.size
    if m >= n:
        return np.ones(n)
    pi = np.zeros(n)
    certain = np.zeros(n, dtype=bool)
    for _ in range(n):
        rest = ~certain
        c = (m - certain.sum()) / w[rest].sum()
        pi[rest] = c * w[rest]
        over = rest & (pi >= 1.0)
        if not over.any():
            break
        certain |= over
    pi[certain] = 1.0
    return np.clip(pi, 0.0, 1.0)


def _sq_dist(xa: torch.Tensor, xb: torch.Tensor, descriptor: Callable | None) -> torch.Tensor:
    if descriptor is not None:
        xa, xb = descriptor(xa).to(_F64), descriptor(xb).to(_F64)
    return (xa - xb).reshape(xa.shape[0], -1).pow(2).sum(1)


def _eval(m: Any, z: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, float]:
    outs, nfe = [], 0.0
    for s in range(0, z.shape[0], batch_size):
        zb = z[s : s + batch_size]
        outs.append(m(zb).to(_F64))
        last = getattr(m, "last_nfe", None)
        nfe += float(last or 0) * zb.shape[0]
    return torch.cat(outs), nfe


def _eval_memo(orig: Any, ref: Any, level: int, z: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, float]:
    """``_eval(ref, z)``; for a :class:`pfd.maps.CachedMap` the reference outputs are memoised on
    it too (by the content of each noise row), so scoring many students against one cached
    teacher re-solves each teacher row once."""
    from pfd.maps import CachedMap

    if not isinstance(orig, CachedMap):
        return _eval(ref, z, batch_size)
    import hashlib

    memo = orig.__dict__.setdefault("_refined_outputs", {})
    keys = [(level, hashlib.sha1(row.detach().to("cpu", _F64).contiguous().numpy().tobytes()).hexdigest())
            for row in z]
    missing = [i for i, key in enumerate(keys) if key not in memo]
    nfe = 0.0
    if missing:
        x, nfe = _eval(ref, z[missing], batch_size)
        for j, i in enumerate(missing):
            memo[keys[i]] = x[j].clone()
    return torch.stack([memo[key] for key in keys]), nfe


def _mode(solver_error: Any) -> str:
    if solver_error is True:
        return "cheap"
    if isinstance(solver_error, str) and solver_error in MODES:
        return solver_error
    raise ValueError(f"solver_error must be False, True or one of {MODES}, got {solver_error!r}")


def check_mode(solver_error: Any) -> str | None:
    """Validated mode for ``distance(solver_error=...)``: None (off), ``"cheap"`` or ``"thorough"``."""
    if solver_error is False or solver_error is None:
        return None
    return _mode(solver_error)


def multiphase_ht(c: list[np.ndarray], q: list[np.ndarray], inside: list[np.ndarray]) -> tuple[float, float]:
    """Horvitz-Thompson total of nested Poisson samples and its standard deviation.

    Phase 0 is a Poisson sample S_0 of the population with inclusion probabilities ``q[0]``;
    phase k keeps each row of S_{k-1} independently with probability ``q[k]``. ``c[k]`` is the
    phase-k increment (known on S_k, rows flagged by ``inside[k]``; all arrays are indexed by the
    rows of S_0). The estimate sum_k sum_{S_k} c_k / (q_0 ... q_k) is unbiased for
    sum over the population of sum_k c_k; the variance estimate, unbiased too, is
    sum_k sum_{S_k} (1 - q_k) W_k / (q_0 ... q_k)^2 with W_k an unbiased estimate of
    (c_k + c_{k+1} + ...)^2 built backwards from the later phases (clipped at 0 before the root).

    >>> one = np.ones(3)
    >>> multiphase_ht([np.array([1.0, 2.0, 3.0])], [np.full(3, 0.5)], [one > 0])
    (12.0, 5.291502622129181)
    """
    big = len(c)
    cum = np.cumprod(np.stack([np.where(inside[k], q[k], 1.0) for k in range(big)]), axis=0)
    z = np.where(inside[-1], c[-1], 0.0)
    w = z**2
    var = float(np.sum(np.where(inside[-1], (1 - q[-1]) * w / cum[-1] ** 2, 0.0)))
    for k in range(big - 2, -1, -1):
        nxt, qn = inside[k + 1], np.where(inside[k + 1], q[k + 1], 1.0)
        ck = np.where(inside[k], c[k], 0.0)
        z, w = ck + np.where(nxt, z / qn, 0.0), ck**2 + np.where(nxt, (2 * ck * z + w) / qn, 0.0)
        var += float(np.sum(np.where(inside[k], (1 - q[k]) * w / cum[k] ** 2, 0.0)))
    total = float(sum(np.sum(np.where(inside[k], c[k] / cum[k], 0.0)) for k in range(big)))
    return total, math.sqrt(max(var, 0.0))


def thinning(proxy: np.ndarray, m: float) -> np.ndarray:
    """Keep-probabilities for thinning a subsample to about ``m`` rows: min(1, c w_i) with
    w a defensive mixture of ``proxy`` (the expected size of a row's contribution, >= 0) and
    the uniform law, so the rows that carry the correction are kept preferentially.

    >>> thinning(np.array([0.0, 0.0, 0.0, 9.0]), 2).round(3).tolist()
    [0.333, 0.333, 0.333, 1.0]
    """
    proxy = np.abs(np.asarray(proxy, dtype=np.float64))
    scale = float(proxy.mean()) if proxy.size else 0.0
    weight = (1 - _ALPHA) * proxy / scale + _ALPHA if scale > 0 else np.ones_like(proxy)
    return inclusion_probabilities(weight, round(m))


def estimate(
    a: Any,
    b: Any,
    d2: torch.Tensor,
    get_noise: Callable[[np.ndarray], torch.Tensor],
    *,
    descriptor: Callable | None,
    mode: str,
    seed: int,
    run_nfe: tuple[float | None, float | None],
    batch_size: int,
) -> SolverError:
    """Solver-error estimate of a finished run (see the module docstring).

    ``d2`` are the run's per-sample squared distances (n,), ``get_noise(idx)`` returns the
    noise rows ``idx``; ``run_nfe`` the run's mean NFE per sample of each map.
    """
    t0 = time.perf_counter()
    kinds = {"a": classify_map(a), "b": classify_map(b)}
    maps = {k: f"{v[0]}: {v[1]}" for k, v in kinds.items()}
    unknown = [f"map {k}: {v[1]}" for k, v in kinds.items() if v[0] == "unknown"]
    if unknown:
        return SolverError(None, "unknown", "; ".join(unknown), mode=mode, maps=maps)
    if all(v[0] == "exact" for v in kinds.values()):
        return SolverError(0.0, "exact", "both maps are exact (no ODE solve)", delta=0.0, mode=mode, maps=maps)
    n = int(d2.shape[0])
    d2np = d2.detach().to("cpu", _F64).numpy()
    mean_sq = float(d2np.mean())
    value = math.sqrt(max(mean_sq, 0.0))
    ode = [k for k, v in kinds.items() if v[0] == "ode"]
    the = {"a": a, "b": b}
    sampling_ms = float(d2np.std()) / math.sqrt(n)  # standard error of mean d^2
    # adaptive solvers are refined by tolerance: at most 1000x tighter than the map's
    max_level = 1 if any(_unwrap(the[k]).adaptive for k in ode) else _MAX_LEVEL
    # the reference starts on the run's own grid (check: every other point) unless that is one step
    level = 0 if all(_unwrap(the[k]).adaptive or _unwrap(the[k]).sigmas.numel() > 2 for k in ode) else 1
    max_level = min(max_level, level + _MAX_REFINE[mode])
    # the budget: total reference work (both maps, every level) ~ _BUDGET x the run's work, in
    # model calls x (rows + _CALL_ROWS): small batches are not free
    run_cost = sum(_run_nfe(the[k], kinds[k][0], run_nfe[i]) for i, k in enumerate("ab"))
    budget = _BUDGET[mode] * _work(run_cost, n)
    exact_cost = sum(_run_nfe(the[k], "exact", run_nfe[i]) for i, k in enumerate("ab") if k not in ode)
    ref_cost = sum(_ref_nfe(the[k], level) + _ref_nfe(the[k], level - 1) for k in ode) + exact_cost
    reserve = (1 - _FIRST_SHARE[mode]) * budget  # kept for refining the reference
    smallest = _work(ref_cost, _MIN_M[mode])
    if _THIN[mode] and level < max_level and budget < smallest:
        # a small run (the budget cannot pay _MIN_M reference rows) gets its minimum:
        # _MIN_M reference rows and one refinement on _MIN_REFINE rows
        reserve = _work(sum(_ref_nfe(the[k], level + 1) for k in ode), _MIN_REFINE)
        budget = smallest + reserve
    m = _affordable(budget - reserve, ref_cost)
    m = min(n, max(m, _MIN_M[mode]))
    sq = np.sqrt(np.maximum(d2np, 0.0))
    weight = (1 - _ALPHA) * sq / max(float(sq.mean()), 1e-300) + _ALPHA
    pi = inclusion_probabilities(weight, m)
    rng = np.random.default_rng(derive_seed(seed, _STREAM))
    take = np.nonzero(rng.random(n) < pi)[0]
    if take.size == 0:
        take = np.array([int(np.argmax(pi))])
    m0 = int(take.size)
    z = get_noise(take)
    d2s = d2np[take]
    nfe = 0.0
    spent = 0.0  # work in the budget's units
    exact_out: dict[str, torch.Tensor] = {}
    for k in ("a", "b"):
        if k not in ode:
            exact_out[k], used = _eval(the[k], z, batch_size)
            nfe += used
            spent += _work(used / m0, m0)
    # e2[level]: squared distances of the reference maps at a level on the rows solved (NaN elsewhere)
    e2: dict[int, np.ndarray] = {}

    def solve(lv: int, rows: np.ndarray) -> None:
        nonlocal nfe, spent
        if lv in e2:
            return
        zr = z[torch.from_numpy(rows)]
        xs = {}
        for k in ("a", "b"):
            if k in ode:
                xs[k], used = _eval_memo(the[k], refined_map(the[k], lv), lv, zr, batch_size)
                nfe += used
                spent += _work(used / rows.size, rows.size)
            else:
                xs[k] = exact_out[k][torch.from_numpy(rows)]
        out = np.full(m0, np.nan)
        out[rows] = _sq_dist(xs["a"], xs["b"], descriptor).numpy()
        e2[lv] = out

    # phase 0: reference (level) and check (level - 1) on the whole subsample
    everyone = np.arange(m0)
    solve(level, everyone)
    solve(level - 1, everyone)
    inc = [d2s - e2[level]]  # phase increments: D at the first level, then level-to-level corrections
    qs = [pi[take]]
    inside = [np.ones(m0, dtype=bool)]
    first = level
    phases = [{"level": level, "rows": m0}]
    stopped = "max level"
    while True:
        tot, sd_tot = multiphase_ht(inc, qs, inside)
        delta_ms, sd_ms = tot / n, sd_tot / n
        # the last refinement's change of the PFD's mean square (HT on the rows it was solved on)
        last_change = e2[level - 1] - e2[level]
        if level == first:
            gap = abs(float(np.sum(last_change / qs[0]))) / n
        else:
            gap = abs(multiphase_ht([np.zeros(m0)] * (len(inc) - 1) + [last_change], qs, inside)[0]) / n
        phases[-1]["gap_ms"] = gap
        if gap <= 0.25 * (abs(delta_ms) + sd_ms):
            stopped = "order check passed"
            break
        if abs(delta_ms) + sd_ms + gap < 0.1 * sampling_ms:  # far below the sampling error
            stopped = "negligible"
            break
        if level >= max_level:
            stopped = "max level"
            break
        # refine: the next level on a thinned subset of the current rows, within what is left of the budget
        cur = inside[-1]
        cost = sum(_ref_nfe(the[k], level + 1) for k in ode)
        afford = _affordable(budget - spent, cost) if _THIN[mode] else int(cur.sum())
        if afford < _MIN_THIN:
            stopped = "budget"
            break
        rows_cur = np.nonzero(cur)[0]
        cum = np.prod(np.stack([np.where(inside[j], qs[j], 1.0) for j in range(len(qs))]), axis=0)
        proxy = np.nan_to_num(np.abs(last_change) / cum)[rows_cur]
        # plan two standard deviations of the Poisson count below what is affordable, so the rows
        # drawn rarely overrun the budget
        plan = afford - 2.0 * math.sqrt(afford)
        keep = thinning(proxy, plan) if plan < rows_cur.size else np.ones(rows_cur.size)
        kept = rows_cur[rng.random(rows_cur.size) < keep]
        if kept.size == 0:
            kept = rows_cur[[int(np.argmax(keep))]]
        qk = np.ones(m0)
        qk[rows_cur] = keep
        ink = np.zeros(m0, dtype=bool)
        ink[kept] = True
        level += 1
        solve(level, kept)
        inc.append(np.where(ink, e2[level - 1] - e2[level], 0.0))
        qs.append(qk)
        inside.append(ink)
        phases.append({"level": level, "rows": int(kept.size)})
    # RK4 cuts its error 16x per halving of the step in its asymptotic regime; assume only 8x when
    # the order check passed, and only 3x when it failed (between the first two levels 2.7-13x
    # was seen on the benchmark suite, where the first level is often not yet asymptotic)
    ref_err = gap / 7.0 if stopped in ("order check passed", "negligible") else gap / 2.0
    exact_ms = max(mean_sq - delta_ms, 0.0)
    denom = value + math.sqrt(exact_ms)
    to_pfd = 1.0 / denom if denom > 0 else 0.0
    delta = value - math.sqrt(exact_ms)
    sd = sd_ms * to_pfd
    ref_e = ref_err * to_pfd
    est = abs(delta) + sd + ref_e
    reference: dict[str, Any] = {
        k: {"solver": "rk4" if not _unwrap(the[k]).adaptive else _unwrap(the[k]).method,
            "level": level, "nfe": refined_map(the[k], level).nfe_per_sample} for k in ode
    }
    reference["check_gap"] = gap * to_pfd
    reference["stopped"] = stopped
    reference["phases"] = [{"level": p["level"], "rows": p["rows"], "gap": p["gap_ms"] * to_pfd} for p in phases]
    reference["budget"] = {"work": budget, "spent": spent, "unit": f"model calls x (rows + {_CALL_ROWS})",
                           "run_work": _work(run_cost, n)}
    reference["sampling"] = f"Poisson, pi ~ {1 - _ALPHA:g} d_i + {_ALPHA:g} uniform (capped at 1)"
    return SolverError(
        est, "estimated", delta=delta, sd=sd, reference_error=ref_e, m=m0, mode=mode,
        seconds=time.perf_counter() - t0, nfe=nfe / n, maps=maps, reference=reference,
    )


def indexer(noise: torch.Tensor | None, source: Any) -> Callable[[np.ndarray], torch.Tensor]:
    """``get(idx)`` of the rows ``idx`` of explicit noise or of a canonical :class:`NoiseSource`."""

    def get(idx: np.ndarray) -> torch.Tensor:
        if noise is not None:
            return noise[torch.from_numpy(idx)].to(_F64)
        # one contiguous read per run of the canonical stream covering the rows (a block at most),
        # not one read per row
        from pfd.noise import BLOCK

        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        srt = idx[order]
        out = torch.empty((idx.size, *source.shape), dtype=_F64)
        lo = 0
        while lo < srt.size:
            start = int(srt[lo])
            stop = min((start // BLOCK + 1) * BLOCK, int(srt[-1]) + 1)
            hi = int(np.searchsorted(srt, stop, side="left"))
            chunk = source.get(start, stop)
            out[torch.from_numpy(order[lo:hi])] = chunk[torch.from_numpy(srt[lo:hi] - start)]
            lo = hi
        return out

    return get


# ------------------------------------------------------------------------------- rtol= choice

AUTO_SOLVER = "unipc3"
"""Fixed-grid method tried by ``distance(rtol=...)`` (order 3, one model call per step)."""
AUTO_ORDER = 2.0  # assumed when extrapolating the error to more steps (below unipc3's 3: conservative)
AUTO_START_STEPS = 16
AUTO_MAX_STEPS = 1024
AUTO_PILOT_N = 2048
AUTO_MAX_PILOTS = 4  # pilot grids tried before the full run
AUTO_PILOT_MARGIN = 0.8  # a pilot passes below this share of the target
AUTO_MAX_LEAP = 4  # a pilot's grid grows at most 4x per pilot


def retuned_map(m: Any, solver: str, steps: int) -> Any:
    """A copy of a :class:`pfd.DiffusionMap` (wrappers looked through) on the Karras grid of
    ``steps`` points with a built-in fixed-grid ``solver``; same denoiser, sigma range and rho.

    >>> import pfd
    >>> m = pfd.GaussianMixture([1.0], [[0.0]], [1.0]).ode_map(solver="dopri5")
    >>> r = retuned_map(m, "unipc3", 12)
    >>> r.method, r.nfe_per_sample, m.method
    ('unipc3', 12, 'dopri5')
    """
    from pfd.maps import DiffusionMap
    from pfd.schedules import make_grid
    from pfd.solvers import SOLVERS

    inner = _unwrap(m)
    if type(inner) is not DiffusionMap:
        raise TypeError(f"only a pfd.DiffusionMap can be re-solved on another grid, got {type(inner).__name__}")
    builtin = sorted(k for k, v in SOLVERS.items() if v.backend == "builtin")
    if solver not in builtin:
        raise ValueError(f"solver must be a built-in fixed-grid method {builtin}, got {solver!r}")
    out = copy.copy(inner)
    _set_solver(out, solver)
    out.steps, out.grid = int(steps), "karras"
    out.sigmas = make_grid("karras", out.steps, inner.sigma_min, inner.sigma_max, inner.rho)
    out.last_nfe = None
    return out


def auto_distance(a: Any, b: Any, *, rtol: float, solver_error: bool | str = True, n: int | None = None,
                  **kwargs: Any) -> Any:
    """``pfd.distance(a, b, rtol=...)``: the PFD on the cheapest fixed grid meeting a solver-error target.

    Every :class:`pfd.DiffusionMap` among ``a``, ``b`` is re-solved with ``unipc3`` on a Karras
    grid (other maps are kept: exact maps add no solver error). A pilot on the first
    min(n, 2048) noise samples at 16 steps measures the solver error (thorough estimate); the
    steps are then extrapolated to the target (error ~ steps^-2, with a 25% margin), and while a
    pilot misses 80% of the target the next grid (at most 4x finer) is piloted too (up to 4
    pilots), so that a short or long extrapolation costs a pilot, not a full run. The full run
    is made with its own solver-error estimate; while that estimate exceeds ``rtol * value``
    the steps grow again (up to 1024). ``result.provenance["auto_solver"]`` records the target,
    the setting chosen, whether the target was met and every attempt.

    >>> import pfd
    >>> p = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])
    >>> q = pfd.GaussianMixture([0.5, 0.5], [[-1.1, 0.0], [1.1, 0.0]], [0.1, 0.1])
    >>> res = pfd.distance(p.ode_map(), q.ode_map(), n=1024, rtol=0.01, progress=False)
    >>> auto = res.provenance["auto_solver"]
    >>> chosen = auto["chosen"]
    >>> auto["met"], chosen["solver"], res.solver_error.value <= 0.01 * res.value
    (True, 'unipc3', True)
    """
    from pfd._checks import check_positive_float
    from pfd.estimator import distance

    rtol = check_positive_float(rtol, "rtol")
    if not rtol < 1.0:
        raise ValueError(f"rtol must be a relative error in (0, 1), got {rtol}")
    mode = _mode(solver_error)
    if kwargs.get("group") not in (None, False):
        raise ValueError("rtol= is single-process only; pass group=False")
    kwargs["group"] = False
    the = {"a": a, "b": b}
    kinds = {k: classify_map(m) for k, m in the.items()}
    for k, (kind, why) in kinds.items():
        if kind == "unknown":
            raise ValueError(f"rtol= needs maps whose solver error pfd can estimate; map {k}: {why}")
    from pfd.maps import DiffusionMap

    tune = [k for k, m in the.items() if kinds[k][0] == "ode" and type(_unwrap(m)) is DiffusionMap]
    kept = [k for k in the if kinds[k][0] == "ode" and k not in tune]
    t0 = time.perf_counter()
    history: list[dict[str, Any]] = []

    def attempt(steps: int, n_run: int | None, pilot: bool) -> Any:
        maps = {k: (retuned_map(m, AUTO_SOLVER, steps) if k in tune else m) for k, m in the.items()}
        kw = dict(kwargs)
        if pilot and kw.get("noise") is not None:
            kw["noise"] = kw["noise"][:n_run]
            n_run = None
        # pilots are small: their estimate is the thorough one (more reference rows, refined to the end)
        res = distance(maps["a"], maps["b"], n=n_run, solver_error="thorough" if pilot else mode, **kw)
        se = res.solver_error
        history.append({"solver": AUTO_SOLVER, "steps": steps, "n": res.n, "pilot": pilot, "value": res.value,
                        "solver_error": se.value, "target": rtol * res.value,
                        "seconds": res.seconds + se.seconds})
        return res

    if not tune:
        res = distance(a, b, n=n, solver_error=mode, **kwargs)
        met = res.solver_error.value is not None and res.solver_error.value <= rtol * res.value
        chosen: dict[str, Any] = {"solver": None, "steps": None, "note": "no DiffusionMap to re-solve"}
    else:
        n_full = int(kwargs["noise"].shape[0]) if kwargs.get("noise") is not None else (10_000 if n is None else n)
        steps = AUTO_START_STEPS
        n_pilot = min(n_full, AUTO_PILOT_N)
        res = attempt(steps, n_pilot, pilot=n_pilot < n_full)
        pilots = 1
        while True:
            est, target = res.solver_error.value, rtol * res.value
            full = res.n == n_full
            if full and est <= target:
                met = True
                break
            if full and steps >= AUTO_MAX_STEPS:
                met = False
                break
            # a pilot must meet the target with a margin (its small sample is noisy), then the full run
            aim = target * (1.0 if full else AUTO_PILOT_MARGIN)
            grow = est > aim and steps < AUTO_MAX_STEPS
            if grow:
                ratio = est / max(aim, 1e-300)
                new = max(math.ceil(steps * 1.25 * ratio ** (1.0 / AUTO_ORDER)), math.ceil(steps * 1.25))
                if not full:  # a pilot's extrapolation is checked by the next pilot: no large leaps
                    new = min(new, AUTO_MAX_LEAP * steps)
                steps = min(AUTO_MAX_STEPS, new)
            # a pilot that missed is followed by another pilot at the new grid before the full run
            # is spent on it (an extrapolation from 16 steps can fall short, or far overshoot)
            again = not full and grow and pilots < AUTO_MAX_PILOTS
            pilots += again
            res = attempt(steps, n_pilot if again else n, pilot=again)
        chosen = {"solver": AUTO_SOLVER, "grid": "karras", "steps": steps, "nfe": steps, "maps": tune}
    auto = {"rtol": rtol, "met": bool(met), "chosen": chosen, "kept_as_given": kept,
            "attempts": history, "seconds_total": time.perf_counter() - t0}
    res.provenance["auto_solver"] = auto
    return res
