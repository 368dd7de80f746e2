"""Canonical noise: z_i ~ N(0, I) that depends only on (seed, i).

Noise is drawn in fixed blocks of :data:`BLOCK` rows; block ``b`` comes from its own generator
seeded by a hash of ``(seed, b)``. Any slice ``[start, stop)`` is therefore the same whatever the
batch size, chunking or number of processes that asks for it, so a PFD value never depends on
how the work was split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pfd._checks import check_positive_int, check_shape

__all__ = ["BLOCK", "NoiseSource", "canonical_noise", "derive_seed"]

BLOCK = 1024
"""Rows per independently seeded noise block (part of the definition of the noise)."""

_STREAM_NOISE = 0x9E3779B9


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit generator seed derived from ``seed`` and integer keys (numpy SeedSequence)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    ss = np.random.SeedSequence([int(seed), *[int(k) for k in keys]])
    return int(ss.generate_state(1, dtype=np.uint64)[0])




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
        if start < 0 or stop < start:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        parts = []
        i = start
        while i < stop:
            b, off = divmod(i, BLOCK)
            take = min(BLOCK - off, stop - i)
            parts.append(self._block(b)[off : off + take])
            i += take
        if not parts:
            return torch.empty((0, *self.shape), dtype=torch.float64)
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()


def canonical_noise(n: int, shape: Sequence[int], seed: int = 0, start: int = 0) -> torch.Tensor:
    """Rows ``start .. start+n-1`` of the canonical noise for ``seed``: (n, *shape), float64.

    >>> z = canonical_noise(5, (3,), seed=1)
    >>> torch.equal(z[2:], canonical_noise(3, (3,), seed=1, start=2))
    True
    """
    check_positive_int(n, "n")
    return NoiseSource(seed, shape).get(start, start + n)
