"""Exact PF-ODE flow maps Phi_{s -> t} of Gaussian mixtures in any process (OU by default).

The map moves a point x at process time s along the probability-flow ODE to time t (either
direction). Oracles, in order of preference (``method="auto"``):

- ``"gaussian"``: one component N(mu, S): Phi(x) = alpha_t mu + C_t^{1/2} C_s^{-1/2} (x - alpha_s mu),
  C = alpha^2 S + sigma^2 I (closed form).
- ``"cdf"``: any 1-D mixture: Phi = F_t^{-1} o F_s (a 1-D flow keeps order and pushes p_s to p_t);
  mixture CDFs in log space (log_ndtr), inverted by bisection to machine precision.
- ``"line"``: isotropic shared variance with means on a line: the 1-D map along the line and the
  single-Gaussian linear map orthogonal to it.
- ``"product"``: product mixtures (components = all combinations of per-coordinate atoms with
  product weights, diagonal covariances): the 1-D map coordinate-wise.
- ``"ode"``: anything else: a DOP853 solve (scipy, rtol 1e-11) of the EDM-coordinate ODE
  dy/d ln sigma = y - D(y; sigma). This one is numerical, not exact (see ``return_info``).

OU and EDM coordinates are related by x_OU = alpha_t x_VE at sigma_VE = sqrt(e^{2t} - 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import log_ndtr

from pfd.analytic.gmm import GaussianMixture
from pfd.schedules import Process, get_process

__all__ = ["EXACT_METHODS", "exact_map", "exact_method"]

EXACT_METHODS = ("gaussian", "cdf", "line", "product", "ode")
_F64 = torch.float64


def _check_time(t: Any, name: str) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"{name} must be a number (process time), got {type(t).__name__}")
    t = float(t)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"{name} must be a finite time >= 0, got {t}")
    return t


# ------------------------------------------------------------------------------------ structure
def _iso_shared(gmm: GaussianMixture) -> float | None:
    if gmm.cov_type == "iso":
        v = gmm.covs
    elif gmm.cov_type == "diag":
        v = gmm.covs.reshape(-1)
    else:
        return None
    return float(v[0]) if bool((v == v[0]).all()) else None


def _line(gmm: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None:
    """(center, unit direction, 1-D means along it, s^2) if the means lie on a line and the
    variance is isotropic and shared; else None."""
    s2 = _iso_shared(gmm)
    if s2 is None or gmm.n_components < 2:
        return None
    center = gmm.mean()
    M = gmm.means - center
    _, sv, vh = torch.linalg.svd(M, full_matrices=False)
    if float(sv[0]) == 0.0:
        return None
    if sv.shape[0] > 1 and float(sv[1]) > 1e-12 * float(sv[0]):
        return None
    u = vh[0]
    return center, u, M @ u, s2


def _product(gmm: GaussianMixture) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None:
    """Per coordinate: (atom weights, atom means, atom variances, atom index of each component)
    when the mixture is a product of 1-D mixtures; else None."""
    if gmm.cov_type == "full":
        return None
    K, d = gmm.n_components, gmm.dim
    V = (gmm.covs[:, None].expand(K, d) if gmm.cov_type == "iso" else gmm.covs).numpy()
    mu = gmm.means.numpy()
    pi = gmm.weights.numpy()
    factors = []
    count = 1
    for j in range(d):
        pairs = np.stack([mu[:, j], V[:, j]], 1)
        atoms, idx = np.unique(pairs, axis=0, return_inverse=True)
        idx = idx.reshape(-1)
        w = np.bincount(idx, weights=pi, minlength=atoms.shape[0])
        factors.append((w, atoms[:, 0], atoms[:, 1], idx))
        count *= atoms.shape[0]
    if count != K:
        return None
    codes = np.stack([f[3] for f in factors], 1)
    if np.unique(codes, axis=0).shape[0] != K:
        return None
    prod = np.prod(np.stack([f[0][f[3]] for f in factors], 1), axis=1)
    if np.max(np.abs(prod - pi)) > 1e-12:
        return None
    return factors


def exact_method(gmm: GaussianMixture) -> str:
    """Which oracle :func:`exact_map` uses for this mixture (``method="auto"``)."""
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a pfd.GaussianMixture, got {type(gmm).__name__}")
    if gmm.n_components == 1:
        return "gaussian"
    if gmm.dim == 1:
        return "cdf"
    if _line(gmm) is not None:
        return "line"
    if _product(gmm) is not None:
        return "product"
    return "ode"


# ------------------------------------------------------------------------------------ oracles
def _scales(proc: Process, t: float) -> tuple[float, float]:
    """(alpha_t, sigma_t^2)."""
    a = float(proc.alpha(t))
    return a, float(proc.sigma(t)) ** 2


def _gaussian(x: torch.Tensor, mu: torch.Tensor, S: torch.Tensor, s: float, t: float, proc: Process) -> torch.Tensor:
    a_s, v_s = _scales(proc, s)
    a_t, v_t = _scales(proc, t)
    lam, U = torch.linalg.eigh(0.5 * (S + S.T))
    lam = lam.clamp_min(0.0)
    c_s = a_s * a_s * lam + v_s
    c_t = a_t * a_t * lam + v_t
    if bool((c_s <= 0).any()) or bool((c_t <= 0).any()):
        raise ValueError("t_from and t_to must be > 0 for a Gaussian with a degenerate covariance")
    ratio = torch.sqrt(c_t / c_s)
    return a_t * mu + ((x - a_s * mu) @ U) * ratio @ U.T


def _log_cdfs(y: np.ndarray, w: np.ndarray, m: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = (y[:, None] - m[None]) / sd[None]
    lw = np.log(w)[None]
    return _lse(lw + log_ndtr(z)), _lse(lw + log_ndtr(-z))


def _lse(a: np.ndarray) -> np.ndarray:
    """logsumexp over axis 1 (a plain numpy version: scipy's is several times slower here)."""
    m = a.max(axis=1)
    return np.log(np.exp(a - m[:, None]).sum(axis=1)) + m


def _map_1d(x: np.ndarray, w: np.ndarray, mu: np.ndarray, var: np.ndarray, s: float, t: float, proc: Process) -> np.ndarray:
    """F_t^{-1}(F_s(x)) for the 1-D mixture sum w N(mu, var) (bisection in log space)."""
    a_s, v_s = _scales(proc, s)
    a_t, v_t = _scales(proc, t)
    sd_s = np.sqrt(a_s * a_s * var + v_s)
    sd_t = np.sqrt(a_t * a_t * var + v_t)
    if np.any(sd_s <= 0) or np.any(sd_t <= 0):
        raise ValueError("t_from and t_to must be > 0 for a mixture with degenerate (zero-variance) components")
    lf, ls = _log_cdfs(x, w, a_s * mu, sd_s)
    lower = lf <= math.log(0.5)  # match log F below the median, log(1 - F) above it
    target = np.where(lower, lf, ls)
    m_t = a_t * mu
    span = 80.0 * sd_t.max() + np.abs(x).max() * (1.0 + sd_t.max() / sd_s.min())
    lo = np.full_like(x, m_t.min() - span)
    hi = np.full_like(x, m_t.max() + span)
    sign = np.where(lower, 1.0, -1.0)[:, None]
    lw = np.log(w)[None]
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        # log F_t(mid) for lower points, log(1 - F_t(mid)) for upper ones
        val = _lse(lw + log_ndtr(sign * (mid[:, None] - m_t[None]) / sd_t[None]))
        below = np.where(lower, val < target, val > target)  # F_t(mid) < F_s(x): root is above mid
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
        if np.all((hi - lo) <= 4 * np.finfo(float).eps * np.maximum(1.0, np.abs(mid))):
            break
    return 0.5 * (lo + hi)


def _ode(gmm: GaussianMixture, x: torch.Tensor, s: float, t: float, proc: Process) -> torch.Tensor:
    from scipy.integrate import solve_ivp

    if s == 0 or t == 0:
        raise ValueError("the numerical ('ode') map needs t_from > 0 and t_to > 0")
    a_s, a_t = float(proc.alpha(s)), float(proc.alpha(t))
    u0, u1 = 0.5 * math.log(float(proc.inv_snr(s))), 0.5 * math.log(float(proc.inv_snr(t)))
    y0 = (x / a_s).reshape(-1).numpy()
    shape = x.shape

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        yt = torch.from_numpy(y).reshape(shape)
        return (yt - gmm.denoiser(yt, math.exp(u))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (u0, u1), y0, method="DOP853", rtol=1e-11, atol=1e-12)
    if not sol.success:  # pragma: no cover - scipy failure
        raise RuntimeError(f"ODE solve failed: {sol.message}")
    return a_t * torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)


def exact_map(
    gmm: GaussianMixture,
    x: torch.Tensor,
    t_from: float,
    t_to: float,
    process: str | Process = "ou",
    *,
    method: str = "auto",
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """The PF-ODE flow map Phi_{t_from -> t_to}(x) of a Gaussian mixture, x (B, d), float64.

    ``method``: ``"auto"`` (see :func:`exact_method`) or one of ``EXACT_METHODS`` (a structural
    method on a mixture without that structure raises ValueError). With ``return_info=True``
    also returns ``{"method": ..., "numerical": bool}`` (True only for the ODE fallback).

    >>> import torch, pfd
    >>> g = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.01, 0.01])
    >>> x = torch.tensor([[-0.5], [0.0], [0.3]])
    >>> y = pfd.analytic.exact_map(g, x, 2.0, 0.01)
    >>> back = pfd.analytic.exact_map(g, y, 0.01, 2.0)
    >>> bool((back - x).abs().max() < 1e-9), abs(float(y[1, 0])) < 1e-8   # the separatrix stays put
    (True, True)
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a pfd.GaussianMixture, got {type(gmm).__name__}")
    x = gmm._check_x(x).detach().to("cpu", _F64)
    s = _check_time(t_from, "t_from")
    t = _check_time(t_to, "t_to")
    proc = get_process(process)
    if method == "auto":
        method = exact_method(gmm)
    elif method not in EXACT_METHODS:
        raise ValueError(f"method must be 'auto' or one of {EXACT_METHODS}, got {method!r}")
    if s == t:
        out = x.clone()
    elif method == "gaussian":
        if gmm.n_components != 1:
            raise ValueError(f"method='gaussian' needs a single component, got K={gmm.n_components}")
        out = _gaussian(x, gmm.means[0], gmm.component_covs()[0], s, t, proc)
    elif method == "cdf":
        if gmm.dim != 1:
            raise ValueError(f"method='cdf' needs a 1-D mixture, got d={gmm.dim}")
        var = gmm.component_covs()[:, 0, 0].numpy()
        y = _map_1d(x[:, 0].numpy(), gmm.weights.numpy(), gmm.means[:, 0].numpy(), var, s, t, proc)
        out = torch.from_numpy(y)[:, None]
    elif method == "line":
        line = _line(gmm)
        if line is None:
            raise ValueError("method='line' needs an isotropic shared variance and collinear means")
        center, u, m, s2 = line
        a_s, v_s = _scales(proc, s)
        a_t, v_t = _scales(proc, t)
        c_s, c_t = a_s * a_s * s2 + v_s, a_t * a_t * s2 + v_t
        if c_s <= 0 or c_t <= 0:
            raise ValueError("t_from and t_to must be > 0 for a mixture with degenerate (zero-variance) components")
        r = x - a_s * center
        p = r @ u
        perp = r - p[:, None] * u[None]
        var = np.full(gmm.n_components, s2)
        p_new = torch.from_numpy(_map_1d(p.numpy(), gmm.weights.numpy(), m.numpy(), var, s, t, proc))
        out = a_t * center + p_new[:, None] * u[None] + math.sqrt(c_t / c_s) * perp
    elif method == "product":
        factors = _product(gmm)
        if factors is None:
            raise ValueError("method='product' needs a product mixture (all combinations of per-coordinate atoms)")
        cols = [_map_1d(x[:, j].numpy(), w, m, v, s, t, proc) for j, (w, m, v, _) in enumerate(factors)]
        out = torch.from_numpy(np.stack(cols, 1))
    else:
        out = _ode(gmm, x, s, t, proc)
    if return_info:
        return out, {"method": method, "numerical": method == "ode", "process": proc.kind}
    return out
