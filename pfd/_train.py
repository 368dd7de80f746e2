"""Internals shared by pfd's trainers (ratio fits, distillation, the analysis students)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pfd._checks import check_positive_int

_F64 = torch.float64


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: leave it). Small MLP training on
    a busy CPU is fastest, by far, single-threaded."""
    if n is None:
        yield
        return
    check_positive_int(n, "num_threads")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def log_uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    """``n`` float64 draws log-uniform in [lo, hi] from generator ``g``."""
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=g, dtype=_F64))


def as_pool(sampler: Any, n: int, seed: int, name: str) -> torch.Tensor:
    """A (N, d) float64 CPU pool of samples from a tensor or a ``sampler(n, seed)`` (validated)."""
    if isinstance(sampler, torch.Tensor):
        pool = sampler.detach()
    elif callable(sampler):
        with torch.no_grad():
            pool = sampler(n, seed)
        if not isinstance(pool, torch.Tensor):
            raise TypeError(f"{name}(n, seed) must return a torch.Tensor, got {type(pool).__name__}")
    else:
        raise TypeError(f"{name} must be a tensor of samples (N, d) or a callable sampler(n, seed) -> (n, d)")
    if pool.ndim != 2 or pool.shape[0] < 2:
        raise ValueError(f"{name} must give samples of shape (N, d) with N >= 2, got {tuple(pool.shape)}")
    if not bool(torch.isfinite(pool).all()):
        raise ValueError(f"{name} gave non-finite samples")
    return pool.to("cpu", _F64)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (a temporary file, then a rename)."""
    from pfd.report import atomic_write

    atomic_write(path, lambda fh: torch.save(obj, fh))
