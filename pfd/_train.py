"""Internals shared by pfd's trainers (ratio fits, distillation, the analysis students), and their one
training configuration :class:`TrainConfig` (public as ``pfd.TrainConfig``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pfd._checks import check_positive_float, check_positive_int
from pfd.solvers import SolverSettings

_F64 = torch.float64


@dataclass(frozen=True)
class TrainConfig:
    """How a pfd trainer trains its network and scores it: MLP ``width`` and ``depth``,
    ``train_steps`` Adam steps of ``batch_size`` at learning rate ``lr``, PFDs on ``n_eval`` shared
    noise samples of ``eval_seed`` with the maps' ``solver``; ``progress`` shows progress bars.

    One dataclass for every trainer: the analyses' DSM students (:class:`pfd.analysis.DSMTrainer`
    runs), :func:`pfd.adapters.fit_ratio`, the distillation trainers in :mod:`pfd.distill`. Each
    trainer takes ``config=None`` for its own defaults, a module constant (e.g.
    ``pfd.adapters.ratio.RATIO_TRAIN``); change some of them with ``RATIO_TRAIN.replace(...)``.
    A trainer ignores the fields it has no use for (a ratio fit scores no PFD: ``n_eval``,
    ``eval_seed`` and ``solver`` do not apply).

    >>> cfg = TrainConfig(width=32, train_steps=500)
    >>> cfg.depth, cfg.solver.to_dict()
    (3, {'solver': 'heun', 'steps': 18})
    >>> cfg.replace(width=8).width
    8
    """

    width: int = field(default=64, metadata={"help": "MLP width"})
    depth: int = field(default=3, metadata={"help": "hidden layers of the MLP denoiser"})
    train_steps: int = field(default=2000, metadata={"help": "optimizer steps per student"})
    batch_size: int = field(default=256, metadata={"help": "training batch size"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate"})
    n_eval: int = field(default=2048, metadata={"help": "shared noise samples per PFD"})
    eval_seed: int = field(default=0, metadata={"help": "seed of the shared evaluation noise"})
    solver: SolverSettings = field(default_factory=SolverSettings)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("width", "depth", "train_steps", "batch_size"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.n_eval, "n_eval", minimum=2)
        check_positive_float(self.lr, "lr")
        if isinstance(self.eval_seed, bool) or not isinstance(self.eval_seed, int) or self.eval_seed < 0:
            raise ValueError(f"eval_seed must be an int >= 0, got {self.eval_seed!r}")
        if not isinstance(self.solver, SolverSettings):
            raise TypeError(f"solver must be a pfd.solvers.SolverSettings, got {type(self.solver).__name__}")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON (without ``progress``, which never changes a result)."""
        d = asdict(self)
        d.pop("progress")
        d["solver"] = self.solver.to_dict()
        return d


def train_config(config: TrainConfig | None, default: TrainConfig) -> TrainConfig:
    """``config``, or the trainer's ``default`` when it is None (a TypeError for anything else)."""
    if config is None:
        return default
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a pfd.TrainConfig, got {type(config).__name__}")
    return config


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
