"""A real-data teacher with no download: a Gaussian mixture fitted to scikit-learn's digits.

scikit-learn ships 1,797 handwritten digits as 8x8 images with 17 grey levels (0..16). Scaled
to [-1, 1] as pixel / 8 - 1 and fitted by a full-covariance mixture, they give a 64-D teacher
whose denoiser, score, samples and PF-ODE map are all exact (it is a
:class:`pfd.GaussianMixture`), so E_gen and E_mem against it are exact against a population
nobody here invented.
"""

from __future__ import annotations

import functools

import torch

from pfd._checks import check_positive_int
from pfd.analytic.gmm import GaussianMixture
from pfd.noise import derive_seed

__all__ = ["digits_images", "digits_split", "digits_teacher"]

DIGITS_SHAPE = (1, 8, 8)


@functools.lru_cache(maxsize=1)
def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    pix = torch.as_tensor(load_digits().data, dtype=torch.float64)
    return (pix / 8.0 - 1.0).reshape(-1, *DIGITS_SHAPE)


def digits_images() -> torch.Tensor:
    """All 1,797 digits as a float64 tensor (1797, 1, 8, 8) in [-1, 1] (pixel / 8 - 1).

    >>> x = digits_images()
    >>> tuple(x.shape), float(x.min()), float(x.max())
    ((1797, 1, 8, 8), -1.0, 1.0)
    """
    return _digits().clone()


def digits_split(holdout: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) images: a seeded random ``holdout`` fraction of the digits is the test part.

    >>> train, test = digits_split(0.2, seed=0)
    >>> train.shape[0], test.shape[0]
    (1438, 359)
    """
    if not (isinstance(holdout, (int, float)) and not isinstance(holdout, bool) and 0.0 <= holdout < 1.0):
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    x = _digits()
    n_test = round(holdout * x.shape[0])
    g = torch.Generator().manual_seed(derive_seed(int(seed), 0xD161) % (2**63))
    perm = torch.randperm(x.shape[0], generator=g)
    return x[perm[n_test:]].clone(), x[perm[:n_test]].clone()


@functools.lru_cache(maxsize=8)
def _teacher(n_components: int, seed: int, reg: float, holdout: float) -> GaussianMixture:
    train = _digits() if holdout == 0.0 else digits_split(holdout, seed)[0]
    return GaussianMixture.fit(train, n_components, covariance="full", reg=reg, seed=seed)


def digits_teacher(n_components: int = 10, seed: int = 0, *, reg: float = 1e-3, holdout: float = 0.0) -> GaussianMixture:
    """Full-covariance Gaussian mixture fitted to the digits: event shape (1, 8, 8), d = 64.

    ``n_components`` components, EM initialised from ``seed``, ``reg`` added to each covariance
    diagonal (constant border pixels would otherwise be singular). ``holdout > 0`` fits on the
    train part of :func:`digits_split` (``holdout``, ``seed``) only, so the test part can score
    it. The fit is cached in-process (same arguments -> the same object; it is not mutated by
    pfd).

    >>> import pfd
    >>> teacher = pfd.analytic.digits_teacher()
    >>> teacher.event_shape, teacher.dim, teacher.n_components
    ((1, 8, 8), 64, 10)
    >>> tuple(teacher.sample(2, seed=0).shape)
    (2, 1, 8, 8)
    """
    k = check_positive_int(n_components, "n_components")
    if not (isinstance(reg, (int, float)) and not isinstance(reg, bool) and reg >= 0):
        raise ValueError(f"reg must be a number >= 0, got {reg!r}")
    if not (isinstance(holdout, (int, float)) and not isinstance(holdout, bool) and 0.0 <= holdout < 1.0):
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    return _teacher(k, int(seed), float(reg), float(holdout))
