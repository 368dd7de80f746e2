"""Noise-level grids for the PF-ODE in EDM (VE) coordinates.

The EDM/Karras grid with exponent rho places n noise levels from sigma_max down to sigma_min,

    sigma_i = (sigma_max^{1/rho} + i/(n-1) (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho,

dense at low noise where the denoiser changes fastest. The solvers end at sigma_min and take a
final denoise step to sigma = 0 (never evaluating (x - D)/sigma at sigma = 0).

This module also holds the forward processes (OU, VP, VE/EDM) in one alpha/sigma notation,
conversions t <-> sigma_VE <-> log-SNR, and K-segment time grids (:func:`time_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pfd._checks import as_float_array, check_positive_float, check_positive_int

__all__ = [
    "GRID_KINDS",
    "PROCESSES",
    "SIGMA_GRIDS",
    "Process",
    "check_grid_name",
    "check_sigma_range",
    "check_time_range",
    "get_process",
    "karras_sigmas",
    "loglinear_sigmas",
    "make_grid",
    "time_grid",
]


def _check_range(lo: Any, hi: Any, lo_name: str, hi_name: str) -> tuple[float, float]:
    lo = check_positive_float(lo, lo_name)
    hi = check_positive_float(hi, hi_name)
    if not lo < hi:
        raise ValueError(f"{lo_name} must be < {hi_name}, got {lo_name}={lo}, {hi_name}={hi}")
    return lo, hi


def check_sigma_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """Validate 0 < sigma_min < sigma_max and return them as floats."""
    return _check_range(sigma_min, sigma_max, "sigma_min", "sigma_max")


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


# ---------------------------------------------------------------------------------------------
# Forward processes in one alpha/sigma notation, conversions and K-segment time grids.
#
#   X_t = alpha_t X_0 + sigma_t Z,   rho_t = sigma_t^2 / alpha_t^2  (inverse SNR = the EDM sigma^2),
#   sigma_VE(t) = sqrt(rho_t),       log-SNR lambda_t = -ln rho_t.
#
# The PF-ODE is dx/dt = f(t) x - 1/2 g(t)^2 grad log p_t(x) with f = (ln alpha)' and
# g^2 = alpha^2 rho'. After y = x / alpha every process becomes the EDM ODE in sigma_VE.
# ---------------------------------------------------------------------------------------------

_ArrayLike = float | np.ndarray


SIGMA_GRIDS = ("karras", "loglinear")


def check_grid_name(grid: str) -> str:
    """Validate a noise-level grid name (case-insensitive) and return it in canonical form.

    ``"karras"``: EDM's grid, sigma_i^{1/rho} uniform (dense at low noise); ``"loglinear"``:
    uniform in log sigma, i.e. uniform steps h in lambda = -log sigma, the natural grid of the
    exponential integrators (``"dpm2m"``, ``"dpm3m"``, ``"unipc3"``), whose local error is a
    function of h alone.
    """
    if not isinstance(grid, str):
        raise TypeError(f"grid must be a string, one of {list(SIGMA_GRIDS)}, got {type(grid).__name__}")
    name = grid.strip().lower()
    if name not in SIGMA_GRIDS:
        raise ValueError(f"grid must be one of {list(SIGMA_GRIDS)}, got {grid!r}")
    return name


def make_grid(grid: str, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """``steps`` float64 noise levels from sigma_max down to sigma_min on the named grid
    (``rho`` is used by ``"karras"`` only).

    >>> g = make_grid("loglinear", 5, 0.01, 100.0)
    >>> [round(float(v), 6) for v in g]
    [100.0, 10.0, 1.0, 0.1, 0.01]
    """
    name = check_grid_name(grid)
    if name == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, rho)
    return loglinear_sigmas(steps, sigma_min, sigma_max)


def _as_times(t: Any, name: str = "t") -> np.ndarray:
    arr = as_float_array(t, name)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return arr


def _out(arr: np.ndarray) -> _ArrayLike:
    return float(arr) if arr.ndim == 0 else arr


@dataclass(frozen=True)
class Process:
    """A diffusion forward process X_t = alpha_t X_0 + sigma_t Z (float64 numpy maths).

    ``kind`` is ``"ou"`` (dX = -X dt + sqrt(2) dW: alpha = e^-t, sigma^2 = 1 - e^-2t),
    ``"vp"`` (linear beta schedule on t in [0, 1]: alpha = exp(-1/2 int beta)) or ``"ve"``
    (EDM: alpha = 1, sigma = t). All methods take a float or an array of times and return the
    same kind. Get one with :func:`get_process`.

    >>> import math
    >>> ou = get_process("ou")
    >>> round(ou.inv_snr(1.0), 12) == round(math.e ** 2 - 1, 12)
    True
    >>> round(ou.t_from_sigma_ve(ou.sigma_ve(0.3)), 12)
    0.3
    """

    kind: str
    beta_min: float = 0.1
    beta_max: float = 20.0

    # -- integrated beta for VP: B(t) = int_0^t beta, rho = e^B - 1
    def _B(self, t: np.ndarray) -> np.ndarray:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def _dB(self, t: np.ndarray) -> np.ndarray:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def _check_t(self, t: Any) -> np.ndarray:
        arr = _as_times(t)
        if np.any(arr < 0):
            raise ValueError(f"t must be >= 0 for the {self.kind} process, got min {arr.min():.6g}")
        return arr

    def alpha(self, t: _ArrayLike) -> _ArrayLike:
        """Signal scale alpha_t."""
        t = self._check_t(t)
        if self.kind == "ou":
            return _out(np.exp(-t))
        if self.kind == "vp":
            return _out(np.exp(-0.5 * self._B(t)))
        return _out(np.ones_like(t))

    def sigma(self, t: _ArrayLike) -> _ArrayLike:
        """Noise scale sigma_t of the forward process (not the VE sigma; see :meth:`sigma_ve`)."""
        t = self._check_t(t)
        if self.kind == "ou":
            return _out(np.sqrt(-np.expm1(-2.0 * t)))
        if self.kind == "vp":
            return _out(np.sqrt(-np.expm1(-self._B(t))))
        return _out(t.copy())

    def inv_snr(self, t: _ArrayLike) -> _ArrayLike:
        """Inverse SNR sigma_t^2 / alpha_t^2 (the EDM sigma^2; ``rho`` is the Karras grid exponent only)."""
        t = self._check_t(t)
        if self.kind == "ou":
            return _out(np.expm1(2.0 * t))
        if self.kind == "vp":
            return _out(np.expm1(self._B(t)))
        return _out(t * t)

    def dinv_snr(self, t: _ArrayLike) -> _ArrayLike:
        """d inv_snr / dt."""
        t = self._check_t(t)
        if self.kind == "ou":
            return _out(2.0 * np.exp(2.0 * t))
        if self.kind == "vp":
            return _out(self._dB(t) * np.exp(self._B(t)))
        return _out(2.0 * t)

    def f(self, t: _ArrayLike) -> _ArrayLike:
        """Drift coefficient f = d ln alpha / dt."""
        t = self._check_t(t)
        if self.kind == "ou":
            return _out(-np.ones_like(t))
        if self.kind == "vp":
            return _out(-0.5 * self._dB(t))
        return _out(np.zeros_like(t))

    def g2(self, t: _ArrayLike) -> _ArrayLike:
        """Squared diffusion coefficient g^2 = alpha^2 rho'."""
        a = np.asarray(self.alpha(t))
        return _out(a * a * np.asarray(self.dinv_snr(t)))

    def sigma_ve(self, t: _ArrayLike) -> _ArrayLike:
        """EDM noise level sqrt(rho_t) (so that X_t / alpha_t = X_0 + sigma_VE Z)."""
        return _out(np.sqrt(np.asarray(self.inv_snr(t))))

    def log_snr(self, t: _ArrayLike) -> _ArrayLike:
        """log-SNR lambda_t = -ln rho_t (t > 0)."""
        r = np.asarray(self.inv_snr(t))
        if np.any(r <= 0):
            raise ValueError("log_snr needs t > 0 (rho_0 = 0)")
        return _out(-np.log(r))

    def t_from_inv_snr(self, inv_snr: _ArrayLike) -> _ArrayLike:
        """Inverse of :meth:`inv_snr`."""
        r = _as_times(inv_snr, "inv_snr")
        if np.any(r < 0):
            raise ValueError("inv_snr must be >= 0")
        if self.kind == "ou":
            return _out(0.5 * np.log1p(r))
        if self.kind == "vp":
            B = np.log1p(r)  # solve beta_min t + (beta_max - beta_min) t^2 / 2 = B for t >= 0
            a = 0.5 * (self.beta_max - self.beta_min)
            if a == 0:
                return _out(B / self.beta_min)
            return _out(2.0 * B / (self.beta_min + np.sqrt(self.beta_min**2 + 4.0 * a * B)))
        return _out(np.sqrt(r))

    def t_from_sigma_ve(self, sigma_ve: _ArrayLike) -> _ArrayLike:
        """Inverse of :meth:`sigma_ve`."""
        s = _as_times(sigma_ve, "sigma_ve")
        if np.any(s < 0):
            raise ValueError("sigma_ve must be >= 0")
        return self.t_from_inv_snr(s * s)

    def t_from_log_snr(self, log_snr: _ArrayLike) -> _ArrayLike:
        """Inverse of :meth:`log_snr`."""
        return self.t_from_inv_snr(np.exp(-_as_times(log_snr, "log_snr")))

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"process": self.kind}
        if self.kind == "vp":
            d.update(beta_min=self.beta_min, beta_max=self.beta_max)
        return d


PROCESSES = ("ou", "vp", "ve")


def get_process(process: str | Process = "ou") -> Process:
    """A :class:`Process` from its name (``"ou"``, ``"vp"``, ``"ve"``/``"edm"``) or itself."""
    if isinstance(process, Process):
        return process
    if not isinstance(process, str):
        raise TypeError(f"process must be one of {PROCESSES} or a Process, got {type(process).__name__}")
    name = process.lower()
    if name == "edm":
        name = "ve"
    if name not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES} (or 'edm'), got {process!r}")
    return Process(name)


def check_time_range(t_min: float, t_max: float) -> tuple[float, float]:
    """Validate 0 < t_min < t_max and return them as floats."""
    return _check_range(t_min, t_max, "t_min", "t_max")


GRID_KINDS = ("uniform", "logsnr", "edm")


def time_grid(
    K: int, t_min: float, t_max: float, kind: str = "uniform", process: str | Process = "ou", rho: float = 7.0
) -> torch.Tensor:
    """K segments on [t_min, t_max]: K + 1 process times from t_max DOWN to t_min (float64).

    ``kind``: ``"uniform"`` (uniform in t), ``"logsnr"`` (uniform in log-SNR = -ln rho_t),
    ``"edm"`` (Karras rho-grid in sigma_VE = sqrt(rho_t)). The stability-balanced grid needs
    the data distribution: :func:`pfd.stability.balanced_grid`.

    >>> [round(float(t), 6) for t in time_grid(2, 0.01, 1.0, "logsnr", "ve")]
    [1.0, 0.1, 0.01]
    """
    check_positive_int(K, "K")
    lo, hi = check_time_range(t_min, t_max)
    proc = get_process(process)
    if kind == "uniform":
        t = np.linspace(hi, lo, K + 1)
    elif kind == "logsnr":
        l_hi, l_lo = proc.log_snr(hi), proc.log_snr(lo)
        t = np.asarray(proc.t_from_log_snr(np.linspace(l_hi, l_lo, K + 1)))
    elif kind == "edm":
        s = karras_sigmas(K + 1, float(proc.sigma_ve(lo)), float(proc.sigma_ve(hi)), rho).numpy()
        t = np.asarray(proc.t_from_sigma_ve(s))
    else:
        raise ValueError(f"kind must be one of {GRID_KINDS} (balanced grids: pfd.stability.balanced_grid), got {kind!r}")
    out = torch.as_tensor(t, dtype=torch.float64).clone()
    out[0], out[-1] = hi, lo
    return out
