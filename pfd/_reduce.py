"""The reduction core: exact sums of d^2 and d^4, their summary, and the rank protocol.

Everything that turns per-sample squared distances into a PFD (``pfd.distance``, the
torchmetrics metric, the monitor's bank, the bias-variance decomposition) goes through this
module, so there is one accumulation, one summary and one way of splitting work over ranks:

* :class:`ExactSum` (error-free summation) and :class:`SquaredDistances` (the per-batch update:
  d_i^2 = ||x_a,i - x_b,i||^2 added exactly to the sums of d^2 and d^4);
* :func:`summarize` (value, stderr, ci95, mean_sq from the two sums);
* the rank protocol: :func:`resolve_group`, :func:`world_info`, :func:`is_distributed`,
  :func:`is_rank_zero`, :func:`shard_range` (contiguous shards) and :func:`gather_or_raise`
  (all-gather every rank's part; if any rank failed, raise on every rank so none hangs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Z95 = 1.959963984540054


class ExactSum:
    """Error-free running sum of floats (Shewchuk's non-overlapping partials).

    ``value`` is the correctly rounded sum of everything added, independent of the order of
    additions; two sums can be merged exactly (``merge``), e.g. across processes.

    >>> s = ExactSum([1e16, 1.0, -1e16])
    >>> s.value
    1.0
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


class SquaredDistances:
    """Exact sums of d^2 and d^4 over the samples added so far (a PFD's sufficient statistics)."""

    __slots__ = ("s2", "s4")

    def __init__(self, s2: Sequence[float] = (), s4: Sequence[float] = ()) -> None:
        self.s2, self.s4 = ExactSum(s2), ExactSum(s4)

    def add(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """Add d_i^2 = ||xa_i - xb_i||^2 of one batch (float64, shape (B, ...)); returns d^2."""
        d2 = (xa - xb).reshape(xa.shape[0], -1).pow(2).sum(1)
        self.add_d2(d2)
        return d2

    def add_d2(self, d2: torch.Tensor) -> None:
        self.s2.add_many(d2)
        self.s4.add_many(d2 * d2)

    def merge(self, other: SquaredDistances) -> None:
        self.s2.merge(other.s2)
        self.s4.merge(other.s4)

    def summary(self, n: int) -> tuple[float, float, tuple[float, float], float]:
        """:func:`summarize` of the sums over ``n`` samples."""
        return summarize(self.s2.value, self.s4.value, n)


MIN_CI_SAMPLES = 30
"""Below this many samples the normal 95% interval of mean d^2 is not reliable (a warning says so)."""


def warn_small_n(n: int) -> None:
    """Warn that the confidence interval of an estimate from ``n < 30`` samples is not meaningful."""
    if n < MIN_CI_SAMPLES:
        import warnings

        warnings.warn(f"n={n} samples: the 95% CI (a normal approximation of the mean of d^2) is not meaningful "
                      f"below n={MIN_CI_SAMPLES}; use more samples for an interval (pfd's default is n=10,000)",
                      UserWarning, stacklevel=3)


def summarize(sum_sq: float, sum_sq2: float, n: int) -> tuple[float, float, tuple[float, float], float]:
    """(value, stderr, ci95, mean_sq) from the sums of d^2 and d^4 over n samples.

    >>> summarize(8.0, 32.0, 2)  # d^2 = (4, 4)
    (2.0, 0.0, (2.0, 2.0), 4.0)
    """
    mean_sq = max(sum_sq / n, 0.0)
    var_sq = max((sum_sq2 - n * mean_sq * mean_sq) / (n - 1), 0.0) if n > 1 else 0.0
    se_mean = math.sqrt(var_sq / n)
    value = math.sqrt(mean_sq)
    stderr = se_mean / (2.0 * value) if value > 0 else 0.0
    lo = math.sqrt(max(mean_sq - Z95 * se_mean, 0.0))
    hi = math.sqrt(mean_sq + Z95 * se_mean)
    return value, stderr, (lo, hi), mean_sq


# --- the rank protocol -----------------------------------------------------------------------


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous noise indices ``[lo, hi)`` that rank ``rank`` of ``world_size`` evaluates.

    >>> [shard_range(10, r, 3) for r in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    return (n * rank) // world_size, (n * (rank + 1)) // world_size


def is_distributed(group: Any = None) -> bool:
    """True when torch.distributed is initialised with more than one process in ``group``."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_info(group: Any = None) -> tuple[int, int]:
    """(rank, world_size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_rank_zero() -> bool:
    """True on global rank 0 (and in a single process): the rank that writes files."""
    return world_info()[0] == 0


def resolve_group(group: Any) -> tuple[Any, int, int] | None:
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


def _picklable(exc: BaseException | None) -> BaseException | str | None:
    if exc is None:
        return None
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return f"{type(exc).__name__}: {exc}"


def gather_or_raise(part: Any, error: BaseException | None, group: Any, world: int, what: str = "") -> list[Any]:
    """All-gather every rank's ``part``; if any rank's ``error`` is set, raise it on every rank
    (the exception itself when it pickles, else a RuntimeError naming the rank), so that no
    rank waits forever in a later collective. ``what`` prefixes the RuntimeError's message."""
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, (part, _picklable(error)), group=group)
    for rank, (_, err) in enumerate(out):
        if err is not None:
            if isinstance(err, BaseException):
                raise err
            raise RuntimeError(f"{what}rank {rank}: {err}")
    return [p for p, _ in out]
