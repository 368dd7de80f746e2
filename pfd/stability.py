"""Stability of the Gaussian-mixture PF-ODE: velocity Jacobian, Lipschitz bounds, balanced grids.

For p_0 = sum_k pi_k N(mu_k, S_k) under X_t = alpha_t X_0 + sigma_t Z (see
:class:`pfd.schedules.Process`), the PF-ODE velocity is v(x, t) = f x - 1/2 g^2 grad log p_t(x)
and its Jacobian is, with y = x / alpha_t and rho_t = sigma_t^2 / alpha_t^2,

    J(x, t) = f I - 1/2 rho' H(y),   H = -sum_k w_k C_k^-1 + Cov_w(s_k),   C_k = S_k + rho I,

s_k = -C_k^-1 (y - mu_k) the component scores and w_k the responsibilities (the Hessian of the
log density in EDM coordinates). Its eigenvalues lie in [a_lo - b, a_hi] with

    a_hi = f + rho' / (2 min_k(lambda_min(S_k) + rho)),  a_lo = f + rho' / (2 max_k(lambda_max(S_k) + rho)),
    b    = rho' / 2 * sup_y lambda_max Cov_w(s_k)   (= rho' D^2 / (8 (s^2 + rho)^2) for a shared S = s^2 I,
                                                     D the largest distance between means, by Popoviciu).

The two-sided bound is L(t) = max(|a_hi|, |a_lo|) + b and the one-sided expansion rate in the
generation direction (t decreasing) is l+(t) = b - a_lo. For isotropic shared variance these are
the closed forms of the reference note, L = |a| + b, l+ = b - a, and the cumulative coordinate
Lambda(t1, t2) = int L dt is closed form; otherwise it is computed by quadrature (and, for
components with different covariances, b is a numerical supremum over probe points, flagged by
:func:`bound_info`). Groenwall: Lip(Phi_{t2 -> t1}) <= exp(Lambda(t1, t2)).

A stability-balanced grid has equal increments of Lambda; :func:`make_time_grid` builds it and the
schedule-only grids of :func:`pfd.schedules.time_grid` under one name.

>>> import pfd
>>> gmm = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.05, 0.05])
>>> grid = pfd.stability.balanced_grid(gmm, 4, t_min=1e-3, t_max=3.0)
>>> [round(float(t), 4) for t in grid]
[3.0, 0.0916, 0.0305, 0.0106, 0.001]
>>> amp = pfd.stability.amplification_factors(gmm, grid)
>>> bool(abs(amp / amp[0] - 1).max() < 1e-8)   # equal per-segment amplification
True
"""

from __future__ import annotations

import itertools
import math
import weakref
from typing import Any

import numpy as np
import torch
from scipy.integrate import quad
from scipy.optimize import brentq

from pfd._checks import as_float_array, check_callable, check_positive_float, check_positive_int
from pfd.analytic.gmm import GaussianMixture
from pfd.schedules import GRID_KINDS, Process, check_time_range, get_process, time_grid

__all__ = [
    "GRID_MAKERS",
    "RATES",
    "amplification_factors",
    "balanced_grid",
    "bound_info",
    "cumulative",
    "expansion_rate",
    "grid_from_rate",
    "hessian_log_prob",
    "lipschitz_bound",
    "make_time_grid",
    "propagated_error_bound",
    "segment_increments",
    "velocity",
    "velocity_jacobian",
]

RATES = ("sum", "plus")
GRID_MAKERS = (*GRID_KINDS, "balanced-sum", "balanced-plus")
_F64 = torch.float64
_PROBES = 512


def _check_gmm(gmm: Any) -> GaussianMixture:
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a pfd.GaussianMixture, got {type(gmm).__name__}")
    return gmm


def _check_rate(rate: str) -> str:
    if rate not in RATES:
        raise ValueError(f"rate must be one of {RATES}, got {rate!r}")
    return rate


def _check_t_scalar(t: Any, name: str = "t") -> float:
    return check_positive_float(t, name)


# ------------------------------------------------------------------------------------ pointwise
def _ve_terms(gmm: GaussianMixture, y: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, Hessian) of log p at y in EDM coordinates with sigma^2 = rho; dense over components."""
    S = gmm.component_covs()
    d = gmm.dim
    C = S + rho * torch.eye(d, dtype=_F64)
    evals = torch.linalg.eigvalsh(C)
    if float(evals.min()) <= 0:
        raise ValueError("t must be > 0 for a mixture with degenerate (zero-variance) components")
    Cinv = torch.linalg.inv(C)
    Cinv = 0.5 * (Cinv + Cinv.transpose(1, 2))
    logdet = torch.log(evals).sum(1)
    diff = y[:, None, :] - gmm.means[None]  # (B,K,d)
    sk = -torch.einsum("kde,bke->bkd", Cinv, diff)
    logit = gmm.log_weights[None] + 0.5 * (diff * sk).sum(2) - 0.5 * logdet[None]
    w = torch.softmax(logit, dim=1)
    mean_s = torch.einsum("bk,bkd->bd", w, sk)
    dev = sk - mean_s[:, None, :]
    cov_s = torch.einsum("bk,bkd,bke->bde", w, dev, dev)
    H = -torch.einsum("bk,kde->bde", w, Cinv) + cov_s
    return mean_s, H


def _check_points(gmm: GaussianMixture, x: Any) -> torch.Tensor:
    return gmm._check_x(x).to(_F64)


def _at(gmm: Any, x: Any, t: Any, process: str | Process):
    """Validated (gmm, x, process, t, alpha(t)) and the VE score / Hessian terms at x / alpha."""
    gmm = _check_gmm(gmm)
    proc = get_process(process)
    t = _check_t_scalar(t)
    x = _check_points(gmm, x)
    a = float(proc.alpha(t))
    score_ve, H = _ve_terms(gmm, x / a, float(proc.inv_snr(t)))
    return gmm, x, proc, t, a, score_ve, H


def hessian_log_prob(gmm: GaussianMixture, x: torch.Tensor, t: float, process: str | Process = "ou") -> torch.Tensor:
    """Hessian of log p_t at x (B, d) in process coordinates, (B, d, d)."""
    *_, a, _, H = _at(gmm, x, t, process)
    return H / (a * a)


def velocity(gmm: GaussianMixture, x: torch.Tensor, t: float, process: str | Process = "ou") -> torch.Tensor:
    """PF-ODE velocity dx/dt = f x - 1/2 g^2 grad log p_t(x) at x (B, d), float64.

    >>> import torch, pfd
    >>> g = pfd.GaussianMixture([1.0], [[0.0]], [1.0])   # N(0, 1) is stationary under OU
    >>> abs(float(pfd.stability.velocity(g, torch.tensor([[0.7]]), 0.5))) < 1e-14
    True
    """
    _, x, proc, t, a, score_ve, _ = _at(gmm, x, t, process)
    return float(proc.f(t)) * x - 0.5 * a * float(proc.dinv_snr(t)) * score_ve


def velocity_jacobian(gmm: GaussianMixture, x: torch.Tensor, t: float, process: str | Process = "ou") -> torch.Tensor:
    """Exact Jacobian J(x, t) = d v / d x of the PF-ODE velocity, (B, d, d), float64."""
    gmm, _, proc, t, _, _, H = _at(gmm, x, t, process)
    eye = torch.eye(gmm.dim, dtype=_F64)
    return float(proc.f(t)) * eye - 0.5 * float(proc.dinv_snr(t)) * H


# ------------------------------------------------------------------------------------ bounds
def _cov_spectrum(gmm: GaussianMixture) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """Per-component (lambda_min, lambda_max) of S_k; shared covariance?; isotropic shared?"""
    S = gmm.component_covs()
    ev = torch.linalg.eigvalsh(S).numpy()
    shared = bool((S - S[0:1]).abs().max() <= 1e-14 * max(1.0, float(S.abs().max())))
    iso_shared = shared and bool(np.ptp(ev[0]) <= 1e-14 * max(1.0, float(np.abs(ev[0]).max())))
    return ev[:, 0].clip(min=0.0), ev[:, -1].clip(min=0.0), shared, iso_shared


def _diameter(gmm: GaussianMixture) -> float:
    mu = gmm.means
    return float(torch.cdist(mu, mu).max()) if mu.shape[0] > 1 else 0.0


_PROBE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _probe_base(gmm: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed probe set for the numerical supremum of Cov_w(s_k) (seeded, cached per mixture):
    data samples x0 with noise directions eps (probe y = x0 + sqrt(rho) eps, a sample of p_rho in
    EDM coordinates) and points on the segments between pairs of means."""
    hit = _PROBE_CACHE.get(gmm)
    if hit is not None:
        return hit
    g = torch.Generator().manual_seed(12345)
    x0 = gmm.sample(_PROBES, seed=777)
    eps = torch.randn(x0.shape, generator=g, dtype=_F64)
    k = gmm.n_components
    seg = torch.zeros(0, gmm.dim, dtype=_F64)
    if k > 1:
        i, j = torch.triu_indices(k, k, 1)
        sel = torch.randperm(i.numel(), generator=g)[:64]
        i, j = i[sel], j[sel]
        s = torch.linspace(0.0, 1.0, 17, dtype=_F64)[:, None, None]
        seg = (gmm.means[i][None] * (1 - s) + gmm.means[j][None] * s).reshape(-1, gmm.dim)
    out = (x0, eps, seg)
    _PROBE_CACHE[gmm] = out
    return out


def _kappa_many(gmm: GaussianMixture, rhos: np.ndarray) -> np.ndarray:
    """max over the probe set of lambda_max Cov_w(s_k)(y), for each rho (vectorised)."""
    x0, eps, seg = _probe_base(gmm)
    lam, U = torch.linalg.eigh(gmm.component_covs())  # (K,d), (K,d,d)
    lam = lam.clamp_min(0.0)
    P, d, K = x0.shape[0] + seg.shape[0], gmm.dim, gmm.n_components
    m = max(1, (1 << 22) // (P * K * d * max(d, 2)))
    r_all = torch.as_tensor(np.asarray(rhos, dtype=np.float64).ravel())
    out = []
    for start in range(0, r_all.numel(), m):
        r = r_all[start : start + m]
        n = r.numel()
        y = torch.cat([x0[None] + r.sqrt()[:, None, None] * eps[None], seg[None].expand(n, -1, -1)], 1)  # (n,P,d)
        inv = 1.0 / (lam[None] + r[:, None, None])  # (n,K,d)
        Cinv = torch.einsum("kde,nke,kfe->nkdf", U, inv, U)
        logdet = torch.log(lam[None] + r[:, None, None]).sum(2)  # (n,K)
        diff = y[:, :, None, :] - gmm.means[None, None]  # (n,P,K,d)
        sk = -torch.einsum("nkde,npke->npkd", Cinv, diff)
        w = torch.softmax(gmm.log_weights + 0.5 * (diff * sk).sum(3) - 0.5 * logdet[:, None, :], dim=2)
        dev = sk - torch.einsum("npk,npkd->npd", w, sk)[:, :, None, :]
        cov = torch.einsum("npk,npkd,npke->npde", w, dev, dev)
        out.append(torch.linalg.eigvalsh(cov)[..., -1].amax(1))
    return torch.cat(out).numpy().reshape(np.shape(rhos))


def _coeffs(gmm: GaussianMixture, t: np.ndarray, proc: Process) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a_hi, a_lo, b) at times t (array)."""
    lmin, lmax, shared, _ = _cov_spectrum(gmm)
    f = np.asarray(proc.f(t), dtype=np.float64)
    rho = np.asarray(proc.inv_snr(t), dtype=np.float64)
    dr = np.asarray(proc.dinv_snr(t), dtype=np.float64)
    if np.any(lmin.min() + rho <= 0):
        raise ValueError("t must be > 0 for a mixture with degenerate (zero-variance) components")
    a_hi = f + 0.5 * dr / (lmin.min() + rho)
    a_lo = f + 0.5 * dr / (lmax.max() + rho)
    if shared:
        D = _diameter(gmm)
        b = dr * D * D / (8.0 * (lmin[0] + rho) ** 2)
    else:
        b = 0.5 * dr * _kappa_many(gmm, rho)
    return a_hi, a_lo, b


def _times(t: Any) -> np.ndarray:
    arr = as_float_array(t, "t")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError("t must be finite and > 0")
    return arr


def _ret(arr: np.ndarray) -> float | np.ndarray:
    return float(arr) if arr.ndim == 0 else arr


def lipschitz_bound(gmm: GaussianMixture, t: Any, process: str | Process = "ou") -> float | np.ndarray:
    """Two-sided bound L(t) >= sup_x ||J(x, t)||_2 (float or array like ``t``).

    Isotropic shared variance s^2: L = |a| + b with a = c'/(2c), b = g^2 alpha^2 D^2 / (8 c^2),
    c = alpha^2 s^2 + sigma^2; for OU, L = |1/c - 1| + alpha^2 D^2 / (4 c^2).

    >>> import pfd
    >>> g = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.5, 0.5])
    >>> c = math.exp(-2) * 0.5 + 1 - math.exp(-2)
    >>> abs(pfd.stability.lipschitz_bound(g, 1.0) - (abs(1 / c - 1) + math.exp(-2) * 4 / (4 * c * c))) < 1e-14
    True
    """
    gmm = _check_gmm(gmm)
    proc = get_process(process)
    tt = _times(t)
    a_hi, a_lo, b = _coeffs(gmm, tt, proc)
    return _ret(np.maximum(np.abs(a_hi), np.abs(a_lo)) + b)


def expansion_rate(gmm: GaussianMixture, t: Any, process: str | Process = "ou") -> float | np.ndarray:
    """One-sided expansion rate l+(t) = b - a >= -lambda_min(J(x, t)) for all x (generation direction).

    It may be negative (contraction everywhere) at large t when modes are close.
    """
    gmm = _check_gmm(gmm)
    proc = get_process(process)
    tt = _times(t)
    _, a_lo, b = _coeffs(gmm, tt, proc)
    return _ret(b - a_lo)


def bound_info(gmm: GaussianMixture) -> dict[str, Any]:
    """How the bounds are computed for this mixture: ``closed_form`` (isotropic shared variance),
    ``shared_covariance`` (Popoviciu bound, Lambda by quadrature) or ``numerical`` (the covariance
    term is a supremum over probe points, not a proof)."""
    gmm = _check_gmm(gmm)
    _, _, shared, iso = _cov_spectrum(gmm)
    kind = "closed_form" if iso else ("shared_covariance" if shared else "numerical")
    return {"method": kind, "rigorous": kind != "numerical", "diameter": _diameter(gmm)}


def _closed_parts(gmm: GaussianMixture, t1: float, t2: float, proc: Process) -> tuple[float, float]:
    """(1/2 ln(c2/c1), D^2/8 [1/(s^2+rho1) - 1/(s^2+rho2)]) for isotropic shared s^2."""
    lmin, _, _, _ = _cov_spectrum(gmm)
    s2 = float(lmin[0])
    D = _diameter(gmm)
    r1, r2 = float(proc.inv_snr(t1)), float(proc.inv_snr(t2))
    a1, a2 = float(proc.alpha(t1)), float(proc.alpha(t2))
    # ln c = 2 ln alpha + ln(s^2 + rho)
    half_log = math.log(a2 / a1) + 0.5 * math.log((s2 + r2) / (s2 + r1))
    cov_term = D * D / 8.0 * (1.0 / (s2 + r1) - 1.0 / (s2 + r2))
    return half_log, cov_term


def _quad(fn, t1: float, t2: float, epsrel: float = 1e-11) -> float:
    """int_{t1}^{t2} fn(t) dt in u = ln t (the rates vary on a log scale near t = 0)."""
    if t1 == t2:
        return 0.0
    val, _ = quad(lambda u: float(fn(math.exp(u))) * math.exp(u), math.log(t1), math.log(t2),
                  limit=200, epsabs=0.0, epsrel=epsrel)
    return val


def cumulative(
    gmm: GaussianMixture, t1: float, t2: float, process: str | Process = "ou", rate: str = "sum",
    method: str = "auto",
) -> float:
    """Cumulative stability coordinate Lambda(t1, t2) = int_{t1}^{t2} L dt (``rate="sum"``) or
    Lambda+ = int l+ dt (``rate="plus"``), 0 < t1 <= t2.

    ``method``: ``"auto"`` (closed form for isotropic shared variance, quadrature otherwise),
    ``"closed"`` or ``"quad"``.

    >>> import pfd
    >>> g = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1])
    >>> lam = pfd.stability.cumulative(g, 0.01, 2.0)
    >>> abs(lam - pfd.stability.cumulative(g, 0.01, 2.0, method="quad")) < 1e-8
    True
    """
    gmm = _check_gmm(gmm)
    proc = get_process(process)
    _check_rate(rate)
    t1 = _check_t_scalar(t1, "t1")
    t2 = _check_t_scalar(t2, "t2")
    if t1 > t2:
        raise ValueError(f"t1 must be <= t2, got t1={t1}, t2={t2}")
    if method not in ("auto", "closed", "quad"):
        raise ValueError(f"method must be 'auto', 'closed' or 'quad', got {method!r}")
    iso = _cov_spectrum(gmm)[3]
    if method == "closed" and not iso:
        raise ValueError("method='closed' needs an isotropic shared variance (all covs equal, isotropic)")
    if method == "closed" or (method == "auto" and iso):
        half_log, cov_term = _closed_parts(gmm, t1, t2, proc)
        # the first term a = c'/(2c) keeps one sign for OU, VP and VE, so int |a| = |int a|
        return (abs(half_log) if rate == "sum" else -half_log) + cov_term
    fn = (lambda t: lipschitz_bound(gmm, t, proc)) if rate == "sum" else (lambda t: expansion_rate(gmm, t, proc))
    if _cov_spectrum(gmm)[2]:
        return _quad(fn, t1, t2)
    # a numerical supremum over probe points is only piecewise smooth in t (adaptive quadrature
    # would subdivide endlessly): composite Gauss-Legendre in ln t, one vectorised evaluation
    if t1 == t2:
        return 0.0
    xg, wg = np.polynomial.legendre.leggauss(16)
    edges = np.linspace(math.log(t1), math.log(t2), 17)
    half = 0.5 * np.diff(edges)
    u = (0.5 * (edges[1:] + edges[:-1]))[:, None] + half[:, None] * xg[None]
    tt = np.exp(u)
    return float(np.sum(np.asarray(fn(tt)) * tt * wg[None] * half[:, None]))


# ------------------------------------------------------------------------------------ grids
def _coordinate(gmm: GaussianMixture, t_min: float, t_max: float, proc: Process, rate: str):
    """A non-decreasing coordinate G(t) = int_{t_min}^t r (r = L, or max(l+, 0) for "plus") and
    whether it is exact (closed form) or tabulated."""
    iso = _cov_spectrum(gmm)[3]
    if iso:
        if rate == "sum":
            return (lambda t: cumulative(gmm, t_min, t, proc, "sum")), True
        # positive part of l+: split [t_min, t_max] where l+ changes sign (closed form on each piece)
        u = np.linspace(math.log(t_min), math.log(t_max), 4001)
        lp = np.asarray(expansion_rate(gmm, np.exp(u), proc))
        roots = []
        for i in np.nonzero(np.sign(lp[:-1]) * np.sign(lp[1:]) < 0)[0]:
            roots.append(math.exp(brentq(lambda v: float(expansion_rate(gmm, math.exp(v), proc)), u[i], u[i + 1],
                                         xtol=1e-15, rtol=4 * np.finfo(float).eps)))
        knots = [t_min, *roots, t_max]

        def G(t: float) -> float:
            total = 0.0
            for lo, hi in itertools.pairwise(knots):
                if lo >= t:
                    break
                hi = min(hi, t)
                mid = math.sqrt(lo * hi)
                if float(expansion_rate(gmm, mid, proc)) > 0:
                    total += cumulative(gmm, lo, hi, proc, "plus")
            return total

        return G, True
    # general covariances: tabulate the rate on a fine log grid
    fn = (lambda t: lipschitz_bound(gmm, t, proc)) if rate == "sum" else (lambda t: np.maximum(expansion_rate(gmm, t, proc), 0.0))
    return _tabulated(fn, t_min, t_max, 513), False


def _tabulated(rate_fn, t_min: float, t_max: float, n_table: int = 1025):
    """G(t) = int_{t_min}^t rate by the trapezoid rule in u = ln t on n_table points, interpolated."""
    u = np.linspace(math.log(t_min), math.log(t_max), n_table)
    tt = np.exp(u)
    r = np.asarray(rate_fn(tt), dtype=np.float64)
    if r.shape != tt.shape or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError("rate must return finite values >= 0 of the same shape as its (array) input")
    integrand = r * tt
    table = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(u))])

    def G_tab(t: float) -> float:
        return float(np.interp(math.log(t), u, table))

    return G_tab


def _invert(G, total: float, K: int, t_min: float, t_max: float) -> torch.Tensor:
    times = [t_max]
    for j in range(1, K):
        target = total * (K - j) / K
        t = brentq(lambda v, target=target: G(math.exp(v)) - target, math.log(t_min), math.log(t_max),
                   xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
        times.append(math.exp(t))
    times.append(t_min)
    return torch.tensor(times, dtype=_F64)


def grid_from_rate(rate, K: int, t_min: float, t_max: float, n_table: int = 4097) -> torch.Tensor:
    """Balanced grid of any non-negative rate function r(t) (vectorised over a numpy array):
    K + 1 times from t_max down to t_min with equal increments of int r dt (trapezoid table in
    ln t, inverted by interpolation). A constant factor in r does not change the grid.

    >>> g1 = grid_from_rate(lambda t: 1.0 / t, 2, 1.0, 100.0)   # uniform in ln t
    >>> [round(float(t), 6) for t in g1]
    [100.0, 10.0, 1.0]
    """
    check_callable(rate, "rate", "callable r(t) on a numpy array")
    check_positive_int(K, "K")
    check_positive_int(n_table, "n_table", minimum=3)
    t_min, t_max = check_time_range(t_min, t_max)
    G = _tabulated(rate, t_min, t_max, n_table)
    total = G(t_max)
    if not total > 0:
        raise ValueError("the rate integrates to zero on [t_min, t_max]; no balanced grid exists")
    return _invert(G, total, K, t_min, t_max)


def balanced_grid(
    gmm: GaussianMixture, K: int, t_min: float, t_max: float, process: str | Process = "ou", rate: str = "sum"
) -> torch.Tensor:
    """Stability-balanced grid: K + 1 times from t_max down to t_min with equal increments of the
    cumulative coordinate (Lambda for ``rate="sum"``; for ``rate="plus"`` the positive part of
    l+ is integrated, so the coordinate is non-decreasing). A constant factor in the rate does not
    change the grid. Exact inversion (brentq on the closed form) for isotropic shared variance.
    """
    gmm = _check_gmm(gmm)
    check_positive_int(K, "K")
    t_min, t_max = check_time_range(t_min, t_max)
    proc = get_process(process)
    _check_rate(rate)
    G, _ = _coordinate(gmm, t_min, t_max, proc, rate)
    total = G(t_max)
    if not total > 0:
        raise ValueError(f"the {rate!r} stability coordinate is zero on [t_min, t_max]; no balanced grid exists")
    return _invert(G, total, K, t_min, t_max)


def _check_times(grid: Any) -> np.ndarray:
    g = _times(grid)
    if g.ndim != 1 or g.shape[0] < 2:
        raise ValueError(f"grid must be a 1-D sequence of >= 2 times, got shape {g.shape}")
    if not np.all(np.diff(g) < 0):
        raise ValueError("grid must be strictly decreasing (from t_max down to t_min)")
    return g


def segment_increments(gmm: GaussianMixture, grid: Any, process: str | Process = "ou", rate: str = "sum") -> np.ndarray:
    """Delta Lambda_j = Lambda(t_{j+1}, t_j) for each segment of a decreasing grid (generation order)."""
    gmm = _check_gmm(gmm)
    proc = get_process(process)
    _check_rate(rate)
    g = _check_times(grid)
    return np.array([cumulative(gmm, float(lo), float(hi), proc, rate) for hi, lo in itertools.pairwise(g)])


def amplification_factors(gmm: GaussianMixture, grid: Any, process: str | Process = "ou", rate: str = "sum") -> np.ndarray:
    """exp(Delta Lambda_j) per segment of a decreasing grid: Groenwall bounds on each segment map's
    Lipschitz constant (``rate="plus"``: the one-sided bound in the generation direction)."""
    return np.exp(segment_increments(gmm, grid, process, rate))


def propagated_error_bound(local_errors: Any, increments: Any) -> float:
    """sum_j eps_j exp(sum_{i>j} Delta Lambda_i): the bound on the end-to-end error of a composition
    of K learned segment maps with local errors eps_j (segments in generation order).

    >>> propagated_error_bound([0.1, 0.1], [math.log(3.0), math.log(2.0)])   # 0.1 * 2 + 0.1
    0.30000000000000004
    """
    eps = np.asarray(local_errors, dtype=np.float64)
    inc = np.asarray(increments, dtype=np.float64)
    if eps.ndim != 1 or inc.shape != eps.shape:
        raise ValueError(f"local_errors and increments must be 1-D of equal length, got {eps.shape} and {inc.shape}")
    if np.any(eps < 0) or not np.all(np.isfinite(eps)) or not np.all(np.isfinite(inc)):
        raise ValueError("local_errors must be finite and >= 0, increments finite")
    after = np.concatenate([np.cumsum(inc[::-1])[::-1][1:], [0.0]])  # sum_{i>j}
    return float(np.sum(eps * np.exp(after)))


def make_time_grid(
    kind: str, K: int, t_min: float, t_max: float, gmm: GaussianMixture | None = None,
    process: str | Process = "ou", rho: float = 7.0,
) -> torch.Tensor:
    """Any grid by name: ``"uniform"``, ``"logsnr"``, ``"edm"`` (see :func:`pfd.schedules.time_grid`)
    or ``"balanced-sum"``, ``"balanced-plus"`` (need ``gmm``). K + 1 times, t_max down to t_min.

    >>> import pfd
    >>> g = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.05, 0.05])
    >>> [round(float(t), 3) for t in make_time_grid("uniform", 2, 0.5, 1.5, g)]
    [1.5, 1.0, 0.5]
    """
    if kind in GRID_KINDS:
        return time_grid(K, t_min, t_max, kind, process, rho)
    if kind in ("balanced-sum", "balanced-plus"):
        if gmm is None:
            raise ValueError(f"grid kind {kind!r} needs the mixture: pass gmm=")
        return balanced_grid(gmm, K, t_min, t_max, process, rate=kind.split("-")[1])
    raise ValueError(f"kind must be one of {GRID_MAKERS}, got {kind!r}")
