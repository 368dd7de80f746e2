"""Named noise-level grids for fixed-grid PF-ODE solvers (used by :class:`pfd.DiffusionMap`).

* ``"karras"``: EDM's grid, sigma_i^{1/rho} uniform (rho = 7 by default): dense at low noise;
* ``"loglinear"``: uniform in log sigma, i.e. uniform steps h in lambda = -log sigma (half the
  log-SNR). This is the natural grid of the exponential integrators (``"dpm2m"``, ``"dpm3m"``,
  ``"unipc3"``), whose local error is a function of h alone.

>>> g = make_grid("loglinear", 5, 0.01, 100.0)
>>> [round(float(v), 6) for v in g]
[100.0, 10.0, 1.0, 0.1, 0.01]
"""

from __future__ import annotations

import torch

from pfd.schedules import karras_sigmas, loglinear_sigmas

__all__ = ["GRIDS", "check_grid", "make_grid"]

GRIDS = ("karras", "loglinear")


def check_grid(grid: str) -> str:
    """Validate a grid name (case-insensitive) and return it in canonical form."""
    if not isinstance(grid, str):
        raise TypeError(f"grid must be a string, one of {list(GRIDS)}, got {type(grid).__name__}")
    name = grid.strip().lower()
    if name not in GRIDS:
        raise ValueError(f"grid must be one of {list(GRIDS)}, got {grid!r}")
    return name


def make_grid(grid: str, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """``steps`` float64 noise levels from sigma_max down to sigma_min on the named grid
    (``rho`` is used by ``"karras"`` only)."""
    name = check_grid(grid)
    if name == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, rho)
    return loglinear_sigmas(steps, sigma_min, sigma_max)
