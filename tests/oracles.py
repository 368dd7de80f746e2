"""Independent closed forms and reference computations (numpy / scipy only, no pfd code).

Conventions: VE/EDM process x_sigma = x_0 + sigma * eps; a noise-to-data map starts at
x(sigma_max) = sigma_max * z.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.integrate import solve_ivp
from scipy.special import logsumexp
from scipy.stats import multivariate_normal


def full_covs(covs: np.ndarray, d: int) -> np.ndarray:
    covs = np.asarray(covs, dtype=float)
    if covs.ndim == 1:
        return covs[:, None, None] * np.eye(d)
    if covs.ndim == 2:
        return np.stack([np.diag(c) for c in covs])
    return covs


def gmm_log_prob(x: np.ndarray, w, mus, covs, sigma: float) -> np.ndarray:
    """log p_sigma(x) of a mixture, via scipy's multivariate normal densities."""
    mus = np.asarray(mus, float)
    d = mus.shape[1]
    cs = full_covs(covs, d) + sigma**2 * np.eye(d)
    comps = np.stack([multivariate_normal(m, c).logpdf(x) for m, c in zip(mus, cs, strict=True)], -1)
    comps = np.atleast_2d(comps) if comps.ndim == 1 and x.ndim == 1 else comps
    return logsumexp(comps + np.log(np.asarray(w, float) / np.sum(w)), axis=-1)


def gmm_denoiser(x: np.ndarray, w, mus, covs, sigma: float) -> np.ndarray:
    """E[x0 | x] by the textbook formula: responsibilities times per-component posterior means."""
    mus = np.asarray(mus, float)
    w = np.asarray(w, float) / np.sum(w)
    d = mus.shape[1]
    S = full_covs(covs, d)
    logr = np.zeros((x.shape[0], len(w)))
    post = np.zeros((x.shape[0], len(w), d))
    for k in range(len(w)):
        C = S[k] + sigma**2 * np.eye(d)
        logr[:, k] = np.log(w[k]) + multivariate_normal(mus[k], C).logpdf(x)
        post[:, k] = mus[k] + (x - mus[k]) @ np.linalg.solve(C, S[k])  # row form of S C^-1 (x - mu)
    r = np.exp(logr - logsumexp(logr, axis=1, keepdims=True))
    return np.einsum("bk,bkd->bd", r, post)


def gaussian_map(z: np.ndarray, m, S, sigma_max: float, sigma_min: float = 0.0) -> np.ndarray:
    """Exact PF-ODE map of N(m, S) from sigma_max * z to sigma_min; if sigma_min > 0, followed by
    the final denoise step x <- D(x; sigma_min) (the pfd convention)."""
    m = np.asarray(m, float)
    S = np.asarray(S, float)
    d = m.shape[0]
    eye = np.eye(d)

    def root(sig: float, power: float) -> np.ndarray:
        lam, U = np.linalg.eigh(S + sig**2 * eye)
        return (U * lam**power) @ U.T

    x0 = sigma_max * z
    x = m + (x0 - m) @ (root(sigma_min, 0.5) @ root(sigma_max, -0.5)).T
    if sigma_min > 0:
        x = m + (x - m) @ (S @ np.linalg.inv(S + sigma_min**2 * eye)).T
    return x


def iso_pfd_squared(m1, s1: float, m2, s2: float, sigma_max: float) -> float:
    """PFD^2 between N(m1, s1^2 I) and N(m2, s2^2 I) (exact maps to sigma = 0)."""
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    d = m1.shape[0]
    a1 = s1 / np.sqrt(s1**2 + sigma_max**2)
    a2 = s2 / np.sqrt(s2**2 + sigma_max**2)
    return float(np.sum(((1 - a1) * m1 - (1 - a2) * m2) ** 2) + d * sigma_max**2 * (a1 - a2) ** 2)


def gaussian_pfd_squared(m1, S1, m2, S2, sigma_max: float) -> float:
    """PFD^2 between two full-covariance Gaussians (exact affine maps to sigma = 0).

    ``sigma_max = inf`` gives the limit ||m1 - m2||^2 + ||S1^1/2 - S2^1/2||_F^2."""
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    d = m1.shape[0]
    eye = np.eye(d)
    if np.isinf(sigma_max):
        r = np.real(linalg.sqrtm(np.asarray(S1, float))) - np.real(linalg.sqrtm(np.asarray(S2, float)))
        return float(np.sum((m1 - m2) ** 2) + np.sum(r**2))

    def A(S):
        return np.real(linalg.sqrtm(S)) @ np.real(linalg.inv(linalg.sqrtm(S + sigma_max**2 * eye)))

    A1, A2 = A(np.asarray(S1, float)), A(np.asarray(S2, float))
    off = (eye - A1) @ m1 - (eye - A2) @ m2
    return float(off @ off + sigma_max**2 * np.sum((A1 - A2) ** 2))


def w2_gaussian(m1, S1, m2, S2) -> float:
    """Wasserstein-2 distance between Gaussians (Bures formula)."""
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    r1 = np.real(linalg.sqrtm(S1))
    cross = np.real(linalg.sqrtm(r1 @ S2 @ r1))
    val = np.sum((m1 - m2) ** 2) + np.trace(S1 + S2 - 2 * cross)
    return float(np.sqrt(max(val, 0.0)))


def solve_ivp_map(z: np.ndarray, w, mus, covs, sigma_max: float, sigma_min: float, rtol: float = 1e-11) -> np.ndarray:
    """The mixture's PF-ODE map by scipy's DOP853 in sigma, one sample at a time, then the
    final denoise step; the denoiser is this module's numpy formula."""
    out = []
    for zi in np.atleast_2d(z):

        def rhs(sig, x):
            return (x - gmm_denoiser(x[None], w, mus, covs, sig)[0]) / sig

        sol = solve_ivp(rhs, (sigma_max, sigma_min), sigma_max * zi, method="DOP853", rtol=rtol, atol=1e-12)
        assert sol.success, sol.message
        xe = sol.y[:, -1]
        out.append(gmm_denoiser(xe[None], w, mus, covs, sigma_min)[0])
    return np.array(out)


def gaussian_map_law(m, S, sigma_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the exact map's output on z ~ N(0, I): Phi(z) = m + A(sigma_max z - m),
    A = S^1/2 (S + sigma_max^2 I)^-1/2. It equals N(m, S) only as sigma_max -> inf, because the
    sampler starts from N(0, sigma_max^2 I) instead of p_{sigma_max} = N(m, S + sigma_max^2 I)."""
    m, S = np.asarray(m, float), np.asarray(S, float)
    d = m.shape[0]
    A = np.real(linalg.sqrtm(S)) @ np.real(linalg.inv(linalg.sqrtm(S + sigma_max**2 * np.eye(d))))
    return m - A @ m, sigma_max**2 * A @ A.T
