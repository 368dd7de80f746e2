"""The mixture suite shared by benchmarks/solvers.py and benchmarks/throughput.py.

Each case is (teacher, student): the student is a perturbed mixture, so PFD(teacher, student) is
a non-trivial distance whose solver-induced error the benchmarks measure. Everything is seeded.
"""

from __future__ import annotations

import math

import torch

import pfd

F64 = torch.float64


def _ring(k: int, radius: float) -> torch.Tensor:
    ang = torch.arange(k, dtype=F64) * (2 * math.pi / k)
    return radius * torch.stack([ang.cos(), ang.sin()], 1)


def _random_full_covs(g: torch.Generator, k: int, d: int, lo: float, hi: float) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=F64))
    lam = lo + (hi - lo) * torch.rand(k, d, generator=g, dtype=F64)
    return q @ torch.diag_embed(lam) @ q.transpose(1, 2)


def suite() -> dict[str, tuple[pfd.GaussianMixture, pfd.GaussianMixture]]:
    """name -> (teacher, student)."""
    g = torch.Generator().manual_seed(20261122)
    out: dict[str, tuple[pfd.GaussianMixture, pfd.GaussianMixture]] = {}
    w8 = torch.ones(8, dtype=F64)
    for tag, var in (("narrow", 0.01), ("wide", 0.25)):
        teacher = pfd.GaussianMixture(w8, _ring(8, 2.0), torch.full((8,), var, dtype=F64))
        student = pfd.GaussianMixture(w8 * torch.linspace(0.8, 1.2, 8, dtype=F64), _ring(8, 2.1),
                                      torch.full((8,), 1.3 * var, dtype=F64))
        out[f"2d-8modes-{tag}"] = (teacher, student)
    # d = 16, 6 modes, diagonal covariances
    k, d = 6, 16
    mu = 2.0 * torch.randn(k, d, generator=g, dtype=F64)
    cov = 0.05 + 0.45 * torch.rand(k, d, generator=g, dtype=F64)
    w = 0.5 + torch.rand(k, generator=g, dtype=F64)
    out["d16-6modes-diag"] = (pfd.GaussianMixture(w, mu, cov),
                              pfd.GaussianMixture(w, mu + 0.1 * torch.randn(k, d, generator=g, dtype=F64), 1.2 * cov))
    # d = 64, 16 modes, full covariances
    k, d = 16, 64
    mu = 1.5 * torch.randn(k, d, generator=g, dtype=F64)
    cov = _random_full_covs(g, k, d, 0.02, 0.5)
    w = 0.5 + torch.rand(k, generator=g, dtype=F64)
    out["d64-16modes-full"] = (pfd.GaussianMixture(w, mu, cov),
                               pfd.GaussianMixture(w, mu + 0.1 * torch.randn(k, d, generator=g, dtype=F64), 1.2 * cov))
    # the memorizing model of 1,000 training points vs the mixture they were drawn from
    wide = out["2d-8modes-wide"][0]
    out["empirical-1000"] = (pfd.GaussianMixture.empirical(wide.sample(1000, seed=7)), wide)
    return out


def steps_for_nfe(solver: str, nfe: int) -> int:
    """Grid points giving about ``nfe`` evaluations (final denoise included) for a built-in method."""
    per_step = pfd.solvers.SOLVERS[solver].evals_per_step
    return max(2, round((nfe - 1) / per_step) + 1)
