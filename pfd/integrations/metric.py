"""PFD as a torchmetrics ``Metric`` (for training code that already logs torchmetrics).

The metric holds a :class:`pfd.monitor.NoiseBank` of reference outputs (computed once, reused
across ``reset()``) and four float64 sum states, ``sum_sq`` (sum of d_i^2), ``sum_sq2`` (sum of
d_i^4), ``count`` and ``nfe_sum``, all reduced by sum across ranks. Each batch is summed
exactly (error-free summation), so the value agrees with :func:`pfd.distance` to a few ulps
(one rounding per batch and per rank) for any batch size or world size. ``compute()`` synchronises the ranks,
so it must be called on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from pfd._checks import call_map, eval_mode, is_conditional, is_int
from pfd._maps import as_student_map, models_behind
from pfd._reduce import SquaredDistances, shard_range, summarize, warn_small_n, world_info
from pfd.monitor import NoiseBank

__all__ = ["PFDMetric"]


class PFDMetric(Metric):
    """The PFD between a reference map and a student, accumulated like any torchmetrics metric.

    ``update(student)`` takes either a noise-to-data map (or a ``torch.nn.Module`` G(z)),
    which is then evaluated on this rank's shard of the noise bank (:meth:`shard`), or a tensor
    of student outputs for consecutive bank rows starting at ``start`` (default: where the
    previous tensor update on this rank stopped, beginning at the rank's shard). The noise of
    rows ``[lo, hi)`` is :meth:`noise`. ``compute()`` returns the PFD as a float64 scalar
    tensor; ``details`` then holds stderr, ci95, n and the student's NFE per sample.

    >>> import torch, pfd
    >>> from pfd.integrations.metric import PFDMetric
    >>> teacher = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    >>> metric = PFDMetric(teacher.ode_map(steps=4), n=64)
    >>> metric.update(pfd.OneStepMap(lambda z: 0.5 * z, shape=(2,)))
    >>> value = metric.compute()
    >>> ref = pfd.distance(teacher.ode_map(steps=4), lambda z: 0.5 * z, n=64, shape=(2,), progress=False)
    >>> bool(value == ref.value), metric.details["n"]
    (True, 64)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    sum_sq: torch.Tensor
    sum_sq2: torch.Tensor
    count: torch.Tensor
    nfe_sum: torch.Tensor

    def __init__(
        self,
        reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
        n: int = 2048,
        seed: int = 0,
        *,
        shape: Sequence[int] | None = None,
        batch_size: int = 1024,
        cache_dir: str | os.PathLike[str] | None = None,
        reference_key: str | None = None,
        bank: NoiseBank | None = None,
        labels: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if bank is None:
            if reference is None:
                raise TypeError("PFDMetric needs a reference map (or a NoiseBank as bank=)")
            bank = NoiseBank(reference, n, seed=seed, shape=shape, batch_size=batch_size,
                             cache_dir=cache_dir, reference_key=reference_key, labels=labels)
        elif labels is not None:
            raise ValueError("labels= belongs to the NoiseBank when bank= is given")
        elif not isinstance(bank, NoiseBank):
            raise TypeError(f"bank must be a pfd.monitor.NoiseBank, got {type(bank).__name__}")
        self.bank = bank
        for name in ("sum_sq", "sum_sq2", "count", "nfe_sum"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._cursor: int | None = None
        self._nfe_known = True
        self.details: dict[str, Any] = {}

    def shard(self) -> tuple[int, int]:
        """Bank rows ``[lo, hi)`` this rank scores when ``update`` gets a map."""
        rank, world = world_info(self.process_group)
        return shard_range(self.bank.n, rank, world)

    def noise(self, lo: int, hi: int) -> torch.Tensor:
        """Canonical noise of bank rows ``[lo, hi)`` (feed it to the student, then ``update``)."""
        if not (0 <= lo <= hi <= self.bank.n):
            raise ValueError(f"rows must satisfy 0 <= lo <= hi <= n={self.bank.n}, got lo={lo}, hi={hi}")
        return self.bank.noise[lo:hi].clone()

    def labels(self, lo: int, hi: int) -> torch.Tensor | None:
        """Conditions of bank rows ``[lo, hi)`` (None for an unconditional bank)."""
        if not (0 <= lo <= hi <= self.bank.n):
            raise ValueError(f"rows must satisfy 0 <= lo <= hi <= n={self.bank.n}, got lo={lo}, hi={hi}")
        return None if self.bank.labels is None else self.bank.labels[lo:hi].clone()

    def _add(self, x: torch.Tensor, lo: int) -> None:
        x = x.detach().to("cpu", torch.float64)
        hi = lo + x.shape[0]
        ref = self.bank.outputs(lo, hi)
        sums = SquaredDistances()
        d2 = sums.add(x, ref)
        if not bool(torch.isfinite(d2).all()):
            bad = (torch.nonzero(~torch.isfinite(d2)).flatten() + lo).tolist()
            raise ValueError(f"student outputs are not finite for bank rows {bad[:10]}")
        self.sum_sq += sums.s2.value  # each batch summed exactly, then one rounding per batch
        self.sum_sq2 += sums.s4.value
        self.count += float(x.shape[0])

    def update(self, student: Any, start: int | None = None) -> None:
        """Accumulate squared distances for a student map (this rank's shard) or for a tensor of
        student outputs of bank rows ``start .. start+B-1``."""
        if isinstance(student, torch.Tensor):
            if student.ndim < 2 or tuple(student.shape[1:]) != self.bank.shape:
                raise ValueError(f"student outputs must have shape (B, *{self.bank.shape}), got {tuple(student.shape)}")
            lo = start if start is not None else (self._cursor if self._cursor is not None else self.shard()[0])
            if not is_int(lo) or lo < 0 or lo + student.shape[0] > self.bank.n:
                raise ValueError(f"start={lo!r} with {student.shape[0]} rows does not fit the bank of n={self.bank.n}")
            lo = int(lo)
            self._add(student, lo)
            self._cursor = lo + student.shape[0]
            self._nfe_known = False
            return
        if start is not None:
            raise ValueError("start= applies to tensors of student outputs only, not to maps")
        smap = as_student_map(student, self.bank.shape)
        lo, hi = self.shard()
        with eval_mode(*models_behind(student)), torch.no_grad():
            for b in range(lo, hi, self.bank.batch_size):
                e = min(hi, b + self.bank.batch_size)
                lab = None if self.bank.labels is None else self.bank.labels[b:e]
                if is_conditional(smap) and lab is None:
                    raise ValueError("the student is conditional but the bank has no labels: build the metric with labels=")
                x = call_map(smap, self.bank.noise[b:e], "student map", b, labels=lab)
                self._add(x, b)
                nfe = getattr(smap, "last_nfe", None)
                if nfe is None:
                    self._nfe_known = False
                else:
                    self.nfe_sum += float(nfe) * (e - b)

    def compute(self) -> torch.Tensor:
        """The PFD over every row accumulated on every rank (call on all ranks)."""
        n = round(float(self.count))
        if n < 2:
            raise ValueError(f"PFDMetric needs at least 2 accumulated samples, got {n}; call update() first")
        value, stderr, ci95, mean_sq = summarize(float(self.sum_sq), float(self.sum_sq2), n)
        warn_small_n(n)
        self.details = {"value": value, "stderr": stderr, "ci95": ci95, "n": n, "mean_sq": mean_sq,
                        "nfe": float(self.nfe_sum) / n if self._nfe_known else None}
        return torch.tensor(value, dtype=torch.float64)

    def reset(self) -> None:
        """Clear the accumulated sums (the reference bank is kept)."""
        super().reset()
        self._cursor = None
        self._nfe_known = True
