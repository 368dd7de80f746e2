"""The probability flow distance estimator.

    PFD(a, b) = ( E_{z ~ N(0, I)} || Psi(a(z)) - Psi(b(z)) ||^2 )^{1/2}

estimated by the plug-in sqrt(mean_i d_i^2) over canonical noise z_1..z_n, where
d_i^2 = ||Psi(a(z_i)) - Psi(b(z_i))||^2. The per-sample squares are reduced by exact
(error-free) summation, so the value is bit-for-bit the same whatever the batch size, the
chunking or the order in which partial sums are combined.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pfd._checks import call_descriptor, call_map, check_callable, check_positive_int, check_shape, progress_context
from pfd._labels import Conditions, resolve_labels
from pfd._reduce import (
    ExactSum,
    SquaredDistances,
    gather_or_raise,
    resolve_group,
    shard_range,
    summarize,
    warn_small_n,
)
from pfd._version import __version__
from pfd.maps import describe_map, map_shape
from pfd.noise import BLOCK, NoiseSource, derive_seed

__all__ = ["ExactSum", "PFDResult", "distance", "shard_range", "summarize", "versions"]

def versions() -> dict[str, str]:
    """Versions of pfd and the numerical stack (recorded with every result)."""
    out = {
        "pfd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        import torchdiffeq

        out["torchdiffeq"] = getattr(torchdiffeq, "__version__", "unknown")
    except ImportError:  # pragma: no cover
        pass
    return out


@dataclass(frozen=True)
class PFDResult:
    """A PFD estimate with its uncertainty and provenance.

    ``value`` is the plug-in estimate sqrt(mean d^2); ``stderr`` its delta-method standard
    error sd(d^2) / (2 value sqrt(n)); ``ci95`` the 95% normal interval of mean d^2,
    clipped at 0 and square-rooted (asymmetric, never negative). ``nfe`` holds the mean model
    evaluations per sample of each map (None where a map does not count them).
    """

    value: float
    stderr: float
    ci95: tuple[float, float]
    n: int
    nfe: tuple[float | None, float | None]
    seconds: float
    mean_sq: float
    provenance: dict[str, Any] = field(default_factory=dict)
    by_label: dict[int, dict[str, Any]] | None = None
    solver_error: Any = None  # pfd.solver_error.SolverError when asked for (distance(solver_error=...))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field."""
        d = {
            "value": self.value,
            "stderr": self.stderr,
            "ci95": list(self.ci95),
            "n": self.n,
            "nfe": list(self.nfe),
            "seconds": self.seconds,
            "mean_sq": self.mean_sq,
            "provenance": self.provenance,
            "solver_error": None if self.solver_error is None else self.solver_error.to_dict(),
        }
        if self.by_label is not None:
            d["by_label"] = {str(k): dict(v, ci95=list(v["ci95"])) for k, v in self.by_label.items()}
        return d

    def __str__(self) -> str:
        lo, hi = self.ci95
        se = ""
        if self.solver_error is not None:
            v = self.solver_error.value
            se = " (sampling) ± solver error unknown" if v is None else f" (sampling) ± {v:.2g} (solver)"
        return f"PFD = {self.value:.6g} ± {self.stderr:.2g}{se} (95% CI [{lo:.6g}, {hi:.6g}], n={self.n})"


def _resolve_shape(a: Any, b: Any, shape: Sequence[int] | None) -> tuple[int, ...] | None:
    sa, sb = map_shape(a), map_shape(b)
    if sa is not None and sb is not None and sa != sb:
        raise ValueError(f"maps a and b have different sample shapes: a {sa}, b {sb}")
    inferred = sa or sb
    if shape is not None:
        shape = check_shape(shape)
        if inferred is not None and inferred != shape:
            raise ValueError(f"shape={shape} does not match the maps' sample shape {inferred}")
        return shape
    return inferred


def _run_map(m: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, label: str, start: int,
             lab: torch.Tensor | None = None) -> torch.Tensor:
    return call_map(m, z, f"map {label}", start, labels=lab)


def distance(
    a: Callable[[torch.Tensor], torch.Tensor],
    b: Callable[[torch.Tensor], torch.Tensor],
    *,
    n: int | None = None,
    shape: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int | str = 1024,
    noise: torch.Tensor | None = None,
    descriptor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    group: Any = None,
    labels: Any = None,
    by_label: bool = False,
    solver_error: bool | str = False,
    rtol: float | None = None,
) -> PFDResult:
    """Probability flow distance between two noise-to-data maps on shared noise.

    Parameters
    ----------
    a, b:
        Noise-to-data maps (e.g. :class:`pfd.DiffusionMap`, :class:`pfd.OneStepMap`, or any
        callable ``z -> x``), evaluated on the same noise.
    n:
        Number of noise samples (default 10,000; must be >= 2). Taken from ``noise`` if given.
    shape:
        Shape of one sample; inferred from the maps when they declare it.
    seed:
        Seed of the canonical noise: z_i depends only on (seed, i).
    batch_size:
        Samples per batch; affects memory and speed, never the value. ``"auto"`` picks the
        largest batch that fits a memory budget (:func:`pfd.batching.auto_batch_size`).
    noise:
        An explicit (n, *shape) noise tensor to use instead of canonical noise.
    descriptor:
        Psi, applied to both outputs before the distance (identity by default).
    progress:
        Show a tqdm progress bar on stderr (rank 0 only when distributed).
    group:
        Distributed evaluation. ``None`` (default): if ``torch.distributed`` is initialised with
        more than one process, the noise indices are split into contiguous shards, one per rank,
        and the exact partial sums of every rank are gathered and merged, so the value is
        bit-identical to the single-process value for any world size. Every rank of the group
        must call ``distance`` with the same arguments. A ``ProcessGroup`` selects the group;
        ``False`` forces a local, single-process evaluation. NFE and counts are summed over ranks.
    labels:
        Conditions for conditional maps (``m(z, labels)``), one per noise index and shared by
        both maps: an int K (classes 0..K-1, uniform) or a sequence of class probabilities —
        canonical, label i depends only on (seed, i) — or an explicit integer tensor of class
        ids (n,), or a float tensor of embeddings (n, ...). An unconditional map of the pair is
        called as ``m(z)``. Required when a map is conditional.
    by_label:
        Also break the result down by class (class-id labels only): ``result.by_label[c]`` holds
        value, stderr, ci95, n and mean_sq of the samples with label c. The overall value is
        the same number with or without the breakdown, and sum_c n_c mean_sq_c = n mean_sq.
    solver_error:
        Also estimate the PF-ODE discretisation error of the value (``result.solver_error``, a
        :class:`pfd.solver_error.SolverError`): ``True`` or ``"cheap"`` (extra work about a
        quarter of the run's), ``"thorough"`` (about the run's). Zero when both maps are exact,
        unknown (None, with a reason) for opaque callables. Single-process only.
    rtol:
        Target relative solver error of the PFD (e.g. 0.005): the PF-ODE maps among ``a``, ``b``
        are re-solved on the cheapest fixed grid whose estimated solver error is below
        ``rtol * value``; the choice and its history are in ``provenance["auto_solver"]``
        (see :func:`pfd.solver_error.auto_distance`). Implies ``solver_error``.

    Example
    -------
    >>> import pfd
    >>> p = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    >>> q = pfd.GaussianMixture([1.0], [[0.5, 0.0]], [1.0])
    >>> res = pfd.distance(p.ode_map(), q.ode_map(), n=256, progress=False)
    >>> round(res.value, 4), res.nfe  # exact maps: 0.5 (1 - 1/sqrt(1 + 80^2)) = 0.4938; Heun/18 is 3e-4 off
    (0.4935, (35.0, 35.0))
    """
    if labels is not None and (rtol is not None or solver_error):
        raise ValueError("solver_error= and rtol= do not support conditional maps (labels=) yet; "
                         "score without them, or estimate the solver error per class with labels fixed")
    if rtol is not None:
        from pfd.solver_error import auto_distance

        return auto_distance(a, b, rtol=rtol, n=n, shape=shape, seed=seed, batch_size=batch_size, noise=noise,
                             descriptor=descriptor, progress=progress, group=group,
                             solver_error=solver_error or True)
    from pfd.solver_error import check_mode

    se_mode = check_mode(solver_error)
    check_callable(a, "a", "a callable noise-to-data map")
    check_callable(b, "b", "a callable noise-to-data map")
    if descriptor is not None and not callable(descriptor):
        raise TypeError(f"descriptor must be callable or None, got {type(descriptor).__name__}")
    auto_batch = isinstance(batch_size, str)
    if auto_batch and batch_size != "auto":
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    if not auto_batch:
        batch_size = check_positive_int(batch_size, "batch_size")
    derive_seed(seed)  # validates seed
    seed = int(seed)  # numpy integers are accepted
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor of shape (n, *shape), got {type(noise).__name__}")
        if noise.ndim < 2 or not noise.dtype.is_floating_point:
            raise ValueError(f"noise must be a floating tensor of shape (n, *shape), got {tuple(noise.shape)} {noise.dtype}")
        if noise.device.type == "meta":
            raise ValueError("noise must hold values (a CPU or CUDA tensor), got a meta tensor")
        finite = torch.isfinite(noise.reshape(noise.shape[0], -1)).all(1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"noise must be finite; rows {bad[:10]}{' ...' if len(bad) > 10 else ''} contain NaN or inf")
        if n is not None and n != noise.shape[0]:
            raise ValueError(f"n={n} does not match the {noise.shape[0]} rows of noise")
        n = int(noise.shape[0])
        declared = _resolve_shape(a, b, shape)
        if declared is not None and tuple(noise.shape[1:]) != declared:
            raise ValueError(f"noise must have shape (n, *{declared}) to match the maps, got {tuple(noise.shape)}")
        sample_shape = check_shape(tuple(noise.shape[1:]), "noise.shape[1:]")
        source = None
    else:
        n = 10_000 if n is None else n
        sample_shape = _resolve_shape(a, b, shape)
        if sample_shape is None:
            raise ValueError("shape= is required: neither map declares the shape of a sample")
        source = NoiseSource(seed, sample_shape)
    n = check_positive_int(n, "n", minimum=2)
    conds = resolve_labels(labels, seed, (a, b), n)
    if not isinstance(by_label, bool):
        raise TypeError(f"by_label must be a bool, got {type(by_label).__name__}")
    if by_label and (conds is None or not conds.class_ids):
        raise ValueError("by_label=True needs class-id labels (an int, class probabilities or an integer tensor)")
    if auto_batch:
        from pfd.batching import auto_batch_size

        batch_size = auto_batch_size(sample_shape, a, b, n=n)

    dist_info = resolve_group(group)
    if se_mode is not None and dist_info is not None:
        raise ValueError("solver_error= is single-process only; pass group=False or run without torch.distributed")
    kept: list[torch.Tensor] | None = [] if se_mode is not None else None
    lo, hi = (0, n) if dist_info is None else shard_range(n, dist_info[1], dist_info[2])
    show = progress and (dist_info is None or dist_info[1] == 0)
    sums, nfe_tot = SquaredDistances(), [0.0, 0.0]
    groups: dict[int, tuple[SquaredDistances, int]] = {}
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        rows = source.get if source is not None else (lambda start, stop: noise[start:stop])
        with progress_context(show):
            sums, nfe_tot, groups = _accumulate((a, b), rows, lo, hi, batch_size, descriptor, show, kept, conds, by_label)
    except Exception as exc:
        if dist_info is None:
            raise
        error = exc  # re-raised on every rank by gather_or_raise, so no rank hangs in the gather
    world = 1
    if dist_info is not None:
        grp, _, world = dist_info
        key = (n, seed if source is not None else None, sample_shape)
        mine_groups = {c: (g.s2.partials, g.s4.partials, k) for c, (g, k) in groups.items()}
        parts = gather_or_raise((key, sums.s2.partials, sums.s4.partials, nfe_tot, mine_groups), error, grp, world)
        if any(p[0] != key for p in parts):
            got = sorted({f"n={p[0][0]}, seed={p[0][1]}, shape={p[0][2]}" for p in parts})
            raise ValueError(f"every rank must call distance with the same n, seed and shape; got {got}")
        sums, nfe_tot, groups = SquaredDistances(), [0.0, 0.0], {}
        for _, p2, p4, p_nfe, p_groups in parts:
            sums.merge(SquaredDistances(p2, p4))
            for j in (0, 1):
                nfe_tot[j] = None if nfe_tot[j] is None or p_nfe[j] is None else nfe_tot[j] + p_nfe[j]
            for c, (g2, g4, k) in p_groups.items():
                acc, k0 = groups.get(c, (SquaredDistances(), 0))
                acc.merge(SquaredDistances(g2, g4))
                groups[c] = (acc, k0 + k)
    seconds = time.perf_counter() - t0
    value, stderr, ci95, mean_sq = sums.summary(n)
    warn_small_n(n)
    nfe = tuple(None if t is None else t / n for t in nfe_tot)
    provenance = {
        "a": describe_map(a),
        "b": describe_map(b),
        "noise": (
            {"kind": "canonical", "seed": seed, "block": BLOCK, "generator": "torch.randn/SeedSequence"}
            if source is not None
            else {"kind": "explicit"}
        ),
        "shape": list(sample_shape) if sample_shape else None,
        "descriptor": "identity" if descriptor is None else getattr(descriptor, "__qualname__", repr(descriptor)),
        "dtype": "float64",
        "reduction": "exact sums of d^2 and d^4",
        "world_size": world,
        "versions": versions(),
    }
    if conds is not None:
        provenance["labels"] = conds.provenance
    breakdown = None
    if by_label:
        breakdown = {}
        for c in sorted(groups):
            acc, k = groups[c]
            v, se, ci, ms = acc.summary(k)
            breakdown[c] = {"value": v, "stderr": se, "ci95": ci, "n": k, "mean_sq": ms}
    se = None
    if kept is not None:
        from pfd.solver_error import estimate, indexer

        se = estimate(a, b, torch.cat(kept), indexer(noise, source), descriptor=descriptor, mode=se_mode,
                      seed=seed, run_nfe=nfe, batch_size=batch_size)  # type: ignore[arg-type]
    return PFDResult(value, stderr, ci95, n, nfe, seconds, mean_sq, provenance,  # type: ignore[arg-type]
                     by_label=breakdown, solver_error=se)


def _accumulate(
    maps: tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]],
    rows: Callable[[int, int], torch.Tensor],
    lo: int,
    hi: int,
    batch_size: int,
    descriptor: Callable[[torch.Tensor], torch.Tensor] | None,
    show: bool,
    keep: list[torch.Tensor] | None = None,
    conds: Conditions | None = None,
    by_label: bool = False,
) -> tuple[SquaredDistances, list[float | None], dict[int, tuple[SquaredDistances, int]]]:
    """The exact sums of d^2, d^4 over noise rows [lo, hi) (``rows(start, stop)`` gives the noise)
    and the NFE totals of both maps (None for a map that does not count them); the per-sample
    d^2 are appended to ``keep`` when it is a list (for the solver-error estimate); with
    ``by_label`` also the sums and counts per class."""
    from tqdm.auto import tqdm

    from pfd.report import pfd_bar_label

    sums = SquaredDistances()
    groups: dict[int, tuple[SquaredDistances, int]] = {}
    nfe_tot: list[float | None] = [0.0, 0.0]
    with tqdm(total=hi - lo, unit="sample", desc=pfd_bar_label(*maps), disable=not show, file=sys.stderr,
              leave=False) as bar:
        for start in range(lo, hi, batch_size):
            stop = min(hi, start + batch_size)
            z = rows(start, stop)
            lab = None if conds is None else conds.rows(start, stop)
            outs = []
            for j, (m, label) in enumerate(zip(maps, ("a", "b"), strict=True)):
                x = _run_map(m, z, label, start, lab)
                nfe = getattr(m, "last_nfe", None)
                if nfe is None or nfe_tot[j] is None:
                    nfe_tot[j] = None
                else:
                    nfe_tot[j] += float(nfe) * (stop - start)
                outs.append(x)
            xa, xb = outs
            if descriptor is not None:
                xa, xb = call_descriptor(descriptor, xa, "map a", start), call_descriptor(descriptor, xb, "map b", start)
                if xa.shape != xb.shape:
                    raise ValueError(f"descriptor must return tensors of equal shape for both maps, got "
                                     f"{tuple(xa.shape)} (map a) and {tuple(xb.shape)} (map b)")
            d2 = sums.add(xa, xb)
            if by_label and lab is not None:
                for c in torch.unique(lab).tolist():
                    hit = lab == c
                    acc, k = groups.get(c, (SquaredDistances(), 0))
                    acc.add_d2(d2[hit])
                    groups[c] = (acc, k + int(hit.sum()))
            if keep is not None:
                keep.append(d2.detach().to("cpu", torch.float64))
            bar.update(stop - start)
    return sums, nfe_tot, groups
