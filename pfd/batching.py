"""Batch sizes chosen from a memory budget.

The PFD value never depends on the batch size (canonical noise and exact summation), so the
batch size is purely a speed/memory trade-off: :func:`auto_batch_size` picks the largest batch
whose float64 working set fits a budget. ``pfd.distance(..., batch_size="auto")`` uses it.

The working set of one sample is estimated as ``8 * numel * copies`` bytes: the solver state
and its stages (RK4 and the multistep methods keep <= 8 state-sized tensors; adaptive
torchdiffeq methods about 12) for each of the two maps, plus outputs and differences. Analytic
denoisers (:class:`pfd.GaussianMixture`) chunk their own temporaries to a fixed size, so their
cost does not grow with the batch. A map may declare its own cost per sample with an attribute
``bytes_per_sample`` (e.g. a neural network's activations); it is added to the estimate.

>>> auto_batch_size((16,), budget_bytes=64 * 2**20)  # 8 B * 16 * 30 copies per sample
17408
>>> auto_batch_size((3, 64, 64), budget_bytes=64 * 2**20)
22
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from pfd._checks import check_positive_int, check_shape

__all__ = ["DEFAULT_BUDGET_BYTES", "MAX_AUTO_BATCH", "auto_batch_size", "default_budget_bytes"]

DEFAULT_BUDGET_BYTES = 256 * 2**20
"""Default working-set budget of one batch: 256 MiB (override with ``PFD_MEMORY_BUDGET_MB``)."""
MAX_AUTO_BATCH = 1 << 16
"""Larger batches no longer amortise per-call overhead; they only cost memory."""
_STATE_COPIES_PER_MAP = 12
_SHARED_COPIES = 6  # noise, two outputs, their difference, squared distances
_BLOCK = 1024  # pfd.noise.BLOCK: batches aligned to noise blocks reuse whole blocks


def default_budget_bytes() -> int:
    """The budget used by ``batch_size="auto"``: ``PFD_MEMORY_BUDGET_MB`` if set, else 256 MiB."""
    env = os.environ.get("PFD_MEMORY_BUDGET_MB")
    if env is None:
        return DEFAULT_BUDGET_BYTES
    try:
        mb = float(env)
    except ValueError:
        raise ValueError(f"PFD_MEMORY_BUDGET_MB must be a number of megabytes, got {env!r}") from None
    if not math.isfinite(mb) or mb <= 0:
        raise ValueError(f"PFD_MEMORY_BUDGET_MB must be > 0, got {env!r}")
    return int(mb * 2**20)


def auto_batch_size(
    shape: Sequence[int],
    *maps: Callable[..., Any],
    budget_bytes: int | None = None,
    n: int | None = None,
) -> int:
    """The largest batch (samples) whose estimated working set fits ``budget_bytes``.

    Parameters
    ----------
    shape:
        Shape of one sample.
    maps:
        The maps to be evaluated; a map's ``bytes_per_sample`` attribute, if any, is added.
    budget_bytes:
        Memory budget of one batch (default :func:`default_budget_bytes`).
    n:
        Total samples; the batch never exceeds it.

    Notes
    -----
    Batches of at least 1024 samples are rounded down to a multiple of 1024 (whole noise
    blocks); the result is at most :data:`MAX_AUTO_BATCH` and at least 1.
    """
    dims = check_shape(shape)
    budget = default_budget_bytes() if budget_bytes is None else check_positive_int(budget_bytes, "budget_bytes")
    numel = math.prod(dims)
    per_sample = 8 * numel * (_STATE_COPIES_PER_MAP * max(len(maps), 2) + _SHARED_COPIES)
    for m in maps:
        extra = getattr(m, "bytes_per_sample", None)
        if extra is not None:
            if isinstance(extra, bool) or not isinstance(extra, (int, float)) or extra < 0:
                raise ValueError(f"bytes_per_sample of map {m!r} must be a number >= 0, got {extra!r}")
            per_sample += int(extra)
    b = max(1, min(MAX_AUTO_BATCH, budget // per_sample))
    if b >= _BLOCK:
        b -= b % _BLOCK
    if n is not None:
        b = min(b, check_positive_int(n, "n"))
    return b
