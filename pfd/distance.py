"""The probability flow distance estimator.

    PFD(a, b) = ( E_{z ~ N(0, I)} || Psi(a(z)) - Psi(b(z)) ||^2 )^{1/2}

estimated by the plug-in sqrt(mean_i d_i^2) over canonical noise z_1..z_n, where
d_i^2 = ||Psi(a(z_i)) - Psi(b(z_i))||^2. The per-sample squares are reduced by exact
(error-free) summation, so the value is bit-for-bit the same whatever the batch size, the
chunking or the order in which partial sums are combined.
"""

from __future__ import annotations

import math
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pfd._checks import (
    call_descriptor,
    call_map,
    check_positive_int,
    check_shape,
    progress_context,
)
from pfd.maps import describe_map, map_shape
from pfd.noise import BLOCK, NoiseSource, derive_seed

__all__ = ["MIN_CI_SAMPLES", "ExactSum", "PFDResult", "distance", "shard_range", "summarize", "versions"]

Z95 = 1.959963984540054


class ExactSum:
    """Error-free running sum of floats (Shewchuk's non-overlapping partials).

    ``value`` is the correctly rounded sum of everything added, independent of the order of
    additions; two sums can be merged exactly (``merge``), e.g. across processes.
    """

    __slots__ = ("partials",)

    def __init__(self, partials: Sequence[float] = ()) -> None:
        self.partials: list[float] = []
        for p in partials:
            self.add(p)

    def add(self, x: float) -> None:
        partials = self.partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    def add_many(self, values: torch.Tensor | np.ndarray | Sequence[float]) -> None:
        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", torch.float64).reshape(-1).tolist()
        elif isinstance(values, np.ndarray):
            values = values.astype(np.float64).reshape(-1).tolist()
        for v in values:
            self.add(v)

    def merge(self, other: ExactSum) -> None:
        for p in other.partials:
            self.add(p)

    @property
    def value(self) -> float:
        return math.fsum(self.partials)


def versions() -> dict[str, str]:
    """Versions of pfd and the numerical stack (recorded with every result)."""
    from pfd import __version__

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field."""
        return {
            "value": self.value,
            "stderr": self.stderr,
            "ci95": list(self.ci95),
            "n": self.n,
            "nfe": list(self.nfe),
            "seconds": self.seconds,
            "mean_sq": self.mean_sq,
            "provenance": self.provenance,
        }

    def __str__(self) -> str:
        lo, hi = self.ci95
        return f"PFD = {self.value:.6g} ± {self.stderr:.2g} (95% CI [{lo:.6g}, {hi:.6g}], n={self.n})"


MIN_CI_SAMPLES = 30
"""Below this many samples the normal 95% interval of mean d^2 is not reliable (a warning says so)."""


def warn_small_n(n: int) -> None:
    """Warn that the confidence interval of an estimate from ``n < 30`` samples is not meaningful."""
    if n < MIN_CI_SAMPLES:
        warnings.warn(f"n={n} samples: the 95% CI (a normal approximation of the mean of d^2) is not meaningful "
                      f"below n={MIN_CI_SAMPLES}; use more samples for an interval (pfd's default is n=10,000)",
                      UserWarning, stacklevel=3)


def summarize(sum_sq: float, sum_sq2: float, n: int) -> tuple[float, float, tuple[float, float], float]:
    """(value, stderr, ci95, mean_sq) from the sums of d^2 and d^4 over n samples."""
    mean_sq = max(sum_sq / n, 0.0)
    var_sq = max((sum_sq2 - n * mean_sq * mean_sq) / (n - 1), 0.0) if n > 1 else 0.0
    se_mean = math.sqrt(var_sq / n)
    value = math.sqrt(mean_sq)
    stderr = se_mean / (2.0 * value) if value > 0 else 0.0
    lo = math.sqrt(max(mean_sq - Z95 * se_mean, 0.0))
    hi = math.sqrt(mean_sq + Z95 * se_mean)
    return value, stderr, (lo, hi), mean_sq


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


def _run_map(m: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, label: str, start: int) -> torch.Tensor:
    return call_map(m, z, f"map {label}", start)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous noise indices ``[lo, hi)`` that rank ``rank`` of ``world_size`` evaluates.

    >>> [shard_range(10, r, 3) for r in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    return (n * rank) // world_size, (n * (rank + 1)) // world_size


def _resolve_group(group: Any) -> tuple[Any, int, int] | None:
    """(group, rank, world_size) when the evaluation is distributed, else None.

    ``group=None`` uses the default process group if torch.distributed is initialised;
    ``group=False`` forces a single-process evaluation; otherwise ``group`` is a ProcessGroup.
    """
    if group is False:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("group= was given but torch.distributed is not initialised (call init_process_group first)")
        return None
    if group is True:
        group = None
    elif group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be None, False or a torch.distributed ProcessGroup, got {type(group).__name__}")
    world = dist.get_world_size(group)
    if world == 1:
        return None
    return group, dist.get_rank(group), world


def _gather(obj: Any, group: Any, world: int) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


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

    Example
    -------
    >>> import pfd
    >>> p = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    >>> q = pfd.GaussianMixture([1.0], [[0.5, 0.0]], [1.0])
    >>> res = pfd.distance(p.flow_map(), q.flow_map(), n=256, progress=False)
    >>> round(res.value, 4), res.nfe  # exact maps: 0.5 (1 - 1/sqrt(1 + 80^2)) = 0.4938; Heun/18 is 3e-4 off
    (0.4935, (35.0, 35.0))
    """
    if not callable(a):
        raise TypeError(f"a must be a callable noise-to-data map, got {type(a).__name__}")
    if not callable(b):
        raise TypeError(f"b must be a callable noise-to-data map, got {type(b).__name__}")
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
    if auto_batch:
        from pfd.batching import auto_batch_size

        batch_size = auto_batch_size(sample_shape, a, b, n=n)

    from tqdm.auto import tqdm

    dist_info = _resolve_group(group)
    lo, hi = (0, n) if dist_info is None else shard_range(n, dist_info[1], dist_info[2])
    show = progress and (dist_info is None or dist_info[1] == 0)
    s2, s4 = ExactSum(), ExactSum()
    nfe_tot: list[float | None] = [0.0, 0.0]
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        with progress_context(show):
            _accumulate(a, b, n, lo, hi, batch_size, noise, source, descriptor, s2, s4, nfe_tot, show, tqdm)
    except Exception as exc:
        if dist_info is None:
            raise
        error = exc  # re-raised on every rank below, so no rank hangs in the gather
    world = 1
    if dist_info is not None:
        grp, _, world = dist_info
        mine = (n, seed if source is not None else None, sample_shape, s2.partials, s4.partials, nfe_tot, _picklable(error))
        parts = _gather(mine, grp, world)
        for rank, part in enumerate(parts):
            if part[6] is not None:
                raise part[6] if isinstance(part[6], BaseException) else RuntimeError(f"rank {rank}: {part[6]}")
        if any(p[:3] != mine[:3] for p in parts):
            got = sorted({f"n={p[0]}, seed={p[1]}, shape={p[2]}" for p in parts})
            raise ValueError(f"every rank must call distance with the same n, seed and shape; got {got}")
        s2, s4 = ExactSum(), ExactSum()
        nfe_tot = [0.0, 0.0]
        for p in parts:
            s2.merge(ExactSum(p[3]))
            s4.merge(ExactSum(p[4]))
            for j in (0, 1):
                nfe_tot[j] = None if nfe_tot[j] is None or p[5][j] is None else nfe_tot[j] + p[5][j]
    seconds = time.perf_counter() - t0
    value, stderr, ci95, mean_sq = summarize(s2.value, s4.value, n)
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
    return PFDResult(value, stderr, ci95, n, nfe, seconds, mean_sq, provenance)  # type: ignore[arg-type]


def _picklable(exc: BaseException | None) -> BaseException | str | None:
    if exc is None:
        return None
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return f"{type(exc).__name__}: {exc}"


def _accumulate(a, b, n, lo, hi, batch_size, noise, source, descriptor, s2, s4, nfe_tot, show, tqdm) -> None:
    """Add d^2 and d^4 of noise rows [lo, hi) to the exact sums s2, s4 (and NFE totals)."""
    with tqdm(total=hi - lo, unit="sample", desc="pfd", disable=not show, file=sys.stderr, leave=False) as bar:
        for start in range(lo, hi, batch_size):
            stop = min(hi, start + batch_size)
            z = noise[start:stop] if source is None else source.get(start, stop)
            outs = []
            for j, (m, label) in enumerate(((a, "a"), (b, "b"))):
                x = _run_map(m, z, label, start)
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
            d2 = (xa - xb).reshape(stop - start, -1).pow(2).sum(1)
            s2.add_many(d2)
            s4.add_many(d2 * d2)
            bar.update(stop - start)
