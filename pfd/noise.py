"""Canonical noise: z_i ~ N(0, I) that depends only on (seed, i).

Noise is drawn in fixed blocks of :data:`BLOCK` rows; block ``b`` comes from its own generator
seeded by a hash of ``(seed, b)``. Any slice ``[start, stop)`` is therefore the same whatever the
batch size, chunking or number of processes that asks for it, so a PFD value never depends on
how the work was split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pfd._checks import check_positive_int, check_shape

__all__ = ["BLOCK", "LabelSource", "NoiseSource", "canonical_labels", "canonical_noise", "derive_seed"]

BLOCK = 1024
"""Rows per independently seeded noise block (part of the definition of the noise)."""

_STREAM_NOISE = 0x9E3779B9
_STREAM_LABELS = 0x1ABE15


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit generator seed derived from ``seed`` and integer keys (numpy SeedSequence)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    ss = np.random.SeedSequence([int(seed), *[int(k) for k in keys]])
    return int(ss.generate_state(1, dtype=np.uint64)[0])




def _block_rows(block: Callable[[int], torch.Tensor], start: int, stop: int, empty: torch.Tensor) -> torch.Tensor:
    """Rows ``start .. stop-1`` of a stream drawn in blocks of :data:`BLOCK` rows (``block(b)``)."""
    if start < 0 or stop < start:
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    parts = []
    i = start
    while i < stop:
        b, off = divmod(i, BLOCK)
        take = min(BLOCK - off, stop - i)
        parts.append(block(b)[off : off + take])
        i += take
    if not parts:
        return empty
    return torch.cat(parts) if len(parts) > 1 else parts[0].clone()


class NoiseSource:
    """Canonical noise for one ``(seed, shape)``, with a one-block cache.

    >>> src = NoiseSource(seed=0, shape=(2,))
    >>> torch.equal(src.get(3, 7), src.get(0, 10)[3:7])
    True
    """

    def __init__(self, seed: int, shape: Sequence[int]) -> None:
        self.seed = seed
        derive_seed(seed)  # validates
        self.shape = check_shape(shape)
        self._cached: tuple[int, torch.Tensor] | None = None

    def _block(self, b: int) -> torch.Tensor:
        if self._cached is not None and self._cached[0] == b:
            return self._cached[1]
        g = torch.Generator().manual_seed(derive_seed(self.seed, _STREAM_NOISE, b))
        z = torch.randn((BLOCK, *self.shape), generator=g, dtype=torch.float64)
        self._cached = (b, z)
        return z

    def get(self, start: int, stop: int) -> torch.Tensor:
        """Noise rows ``start .. stop-1`` as a float64 CPU tensor of shape (stop-start, *shape)."""
        return _block_rows(self._block, start, stop, torch.empty((0, *self.shape), dtype=torch.float64))


def canonical_noise(n: int, shape: Sequence[int], seed: int = 0, start: int = 0) -> torch.Tensor:
    """Rows ``start .. start+n-1`` of the canonical noise for ``seed``: (n, *shape), float64.

    >>> z = canonical_noise(5, (3,), seed=1)
    >>> torch.equal(z[2:], canonical_noise(3, (3,), seed=1, start=2))
    True
    """
    check_positive_int(n, "n")
    return NoiseSource(seed, shape).get(start, start + n)


def _check_probs(probs: Any) -> torch.Tensor:
    if isinstance(probs, bool):
        raise TypeError("probs must be a number of classes or a sequence of class probabilities, got bool")
    if isinstance(probs, (int, np.integer)):
        k = int(probs)
        if k < 1:
            raise ValueError(f"probs as a number of classes must be >= 1, got {k}")
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    try:
        p = torch.as_tensor(np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64))
    except (TypeError, ValueError):
        what = type(probs).__name__
        raise TypeError(f"probs must be a number of classes or a sequence of class probabilities, got {what}") from None
    if p.ndim != 1 or p.shape[0] < 1:
        raise ValueError(f"probs must be a 1-D sequence of class probabilities, got shape {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or float(p.sum()) <= 0:
        raise ValueError("probs must be finite, >= 0 and not all zero")
    if abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"probs must sum to 1 (got {float(p.sum()):.8g}); normalise them first")
    return p / p.sum()


class LabelSource:
    """Canonical class labels: label i depends only on (seed, i) and the class probabilities.

    Labels are drawn in the same blocks of :data:`BLOCK` rows as the noise, from a stream of
    their own (so adding labels never changes the noise): row i is the class c with
    cdf(c - 1) <= u_i < cdf(c), u_i uniform. ``probs`` is a number of classes (uniform) or a
    sequence of class probabilities.

    >>> src = LabelSource(seed=0, probs=[0.2, 0.8])
    >>> torch.equal(src.get(3, 7), src.get(0, 10)[3:7])
    True
    >>> src.get(0, 5).dtype
    torch.int64
    """

    def __init__(self, seed: int, probs: Any) -> None:
        derive_seed(seed)  # validates
        self.seed = seed
        self.probs = _check_probs(probs)
        self._cdf = torch.cumsum(self.probs, 0)
        self._cdf[-1] = 1.0
        self._cached: tuple[int, torch.Tensor] | None = None

    def _block(self, b: int) -> torch.Tensor:
        if self._cached is not None and self._cached[0] == b:
            return self._cached[1]
        g = torch.Generator().manual_seed(derive_seed(self.seed, _STREAM_LABELS, b))
        u = torch.rand(BLOCK, generator=g, dtype=torch.float64)
        lab = torch.searchsorted(self._cdf, u, right=True).clamp_max(self.probs.shape[0] - 1)
        self._cached = (b, lab)
        return lab

    def get(self, start: int, stop: int) -> torch.Tensor:
        """Labels of rows ``start .. stop-1`` as an int64 CPU tensor of shape (stop-start,)."""
        return _block_rows(self._block, start, stop, torch.empty((0,), dtype=torch.long))


def canonical_labels(n: int, probs: Any, seed: int = 0, start: int = 0) -> torch.Tensor:
    """Rows ``start .. start+n-1`` of the canonical labels for ``seed`` and class ``probs``.

    >>> lab = canonical_labels(2000, [0.25, 0.75], seed=1)
    >>> abs(float((lab == 1).double().mean()) - 0.75) < 0.03
    True
    """
    check_positive_int(n, "n")
    return LabelSource(seed, probs).get(start, start + n)
