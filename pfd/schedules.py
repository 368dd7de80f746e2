"""Noise-level grids for the PF-ODE in EDM (VE) coordinates.

The EDM/Karras grid with exponent rho places n noise levels from sigma_max down to sigma_min,

    sigma_i = (sigma_max^{1/rho} + i/(n-1) (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho,

dense at low noise where the denoiser changes fastest. The solvers end at sigma_min and take a
final denoise step to sigma = 0 (never evaluating (x - D)/sigma at sigma = 0).
"""

from __future__ import annotations

import torch

from pfd._checks import check_positive_float, check_positive_int

__all__ = ["check_sigma_range", "karras_sigmas", "loglinear_sigmas"]


def check_sigma_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """Validate 0 < sigma_min < sigma_max and return them as floats."""
    lo = check_positive_float(sigma_min, "sigma_min")
    hi = check_positive_float(sigma_max, "sigma_max")
    if not lo < hi:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    return lo, hi


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """The EDM grid: ``steps`` noise levels from sigma_max down to sigma_min (float64).

    >>> s = karras_sigmas(18)
    >>> round(float(s[0]), 6), round(float(s[-1]), 6), len(s)
    (80.0, 0.002, 18)
    """
    check_positive_int(steps, "steps", minimum=2)
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    rho = check_positive_float(rho, "rho")
    i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    s = (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    s[0], s[-1] = hi, lo  # exact end points
    return s


def loglinear_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """``steps`` noise levels uniform in log sigma (uniform in log-SNR), sigma_max -> sigma_min."""
    check_positive_int(steps, "steps", minimum=2)
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    s = torch.exp(torch.linspace(torch.log(torch.tensor(hi, dtype=torch.float64)),
                                 torch.log(torch.tensor(lo, dtype=torch.float64)), steps, dtype=torch.float64))
    s[0], s[-1] = hi, lo
    return s
