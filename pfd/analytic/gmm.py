"""Gaussian mixtures: the analytic ground truth of pfd.

Under the variance-exploding (EDM) process x_sigma = x_0 + sigma * eps, a mixture
p_0 = sum_k pi_k N(mu_k, S_k) stays a mixture, p_sigma = sum_k pi_k N(mu_k, S_k + sigma^2 I),
so its optimal denoiser D(x; sigma) = E[x_0 | x_sigma = x] and its score are closed form:

    r_k(x)  = softmax_k( ln pi_k - 1/2 (x - mu_k)^T C_k^{-1} (x - mu_k) - 1/2 ln det C_k ),
    D(x)    = sum_k r_k [ mu_k + S_k C_k^{-1} (x - mu_k) ],      C_k = S_k + sigma^2 I,
    score   = (D(x) - x) / sigma^2.

The empirical distribution of a training set is the special case S_k = 0 (the memorizing
model): D(x) = sum_i softmax_i(-||x - y_i||^2 / (2 sigma^2)) y_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pfd._checks import as_sigma, check_positive_int
from pfd.noise import derive_seed

__all__ = ["GaussianMixture"]

_F64 = torch.float64
# elements of the largest (batch x components) temporary in the isotropic path
_ISO_CHUNK_ELEMS = 1 << 18
# elements of the largest (batch x components x dim) temporary in the diag/full path
_DENSE_CHUNK_ELEMS = 1 << 23
# elements of the largest (rows x components) temporary in the diagonal matrix-product path
_GEMM_CHUNK_ELEMS = 1 << 20
# elements of the largest (rows x components x dim) temporary in the full-covariance GEMM path
_FULL_CHUNK_ELEMS = 1 << 20
# at most this many distinct noise levels in one call are grouped onto the matrix-product path
_DIAG_MAX_LEVELS = 16


def _as_f64(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu", _F64)
    else:
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be array-like of numbers: {exc}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return t


class GaussianMixture:
    """A Gaussian mixture sum_k pi_k N(mu_k, S_k) in R^d with closed-form VE denoiser and score.

    Parameters
    ----------
    weights:
        (K,) positive mixture weights; normalised to sum to one.
    means:
        (K, d) component means.
    covs:
        Component covariances: (K,) isotropic variances (S_k = v_k I), (K, d) diagonals,
        or (K, d, d) symmetric positive semi-definite matrices. Zero covariance is allowed
        (point masses; see :meth:`empirical`).

    Example
    -------
    >>> import torch, pfd
    >>> gmm = pfd.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.25, 0.25])
    >>> x = gmm.sample(4, seed=0)
    >>> gmm.denoiser(x, 1e-3).sub(x).abs().max().item() < 1e-5
    True
    >>> gmm.score(torch.zeros(1, 2), 1.0).shape
    torch.Size([1, 2])
    """

    def __init__(self, weights: Any, means: Any, covs: Any, *, event_shape: Sequence[int] | None = None) -> None:
        w = _as_f64(weights, "weights")
        mu = _as_f64(means, "means")
        cov = _as_f64(covs, "covs")
        if w.ndim != 1 or w.shape[0] < 1:
            raise ValueError(f"weights must have shape (K,) with K >= 1, got {tuple(w.shape)}")
        if bool((w <= 0).any()):
            raise ValueError("weights must all be > 0")
        k = w.shape[0]
        if mu.ndim != 2 or mu.shape[0] != k:
            raise ValueError(f"means must have shape (K, d) = ({k}, d), got {tuple(mu.shape)}")
        d = mu.shape[1]
        if d < 1:
            raise ValueError("means must have at least one dimension (d >= 1)")
        if cov.shape == (k,):
            kind = "iso"
            if bool((cov < 0).any()):
                raise ValueError("covs (isotropic variances) must be >= 0")
        elif cov.shape == (k, d):
            kind = "diag"
            if bool((cov < 0).any()):
                raise ValueError("covs (diagonal variances) must be >= 0")
        elif cov.shape == (k, d, d):
            kind = "full"
            scale = float(cov.abs().amax()) if cov.numel() else 0.0
            if float((cov - cov.transpose(1, 2)).abs().amax()) > 1e-10 * max(scale, 1.0):
                raise ValueError("covs must be symmetric matrices")
            cov = 0.5 * (cov + cov.transpose(1, 2))
            evals, evecs = torch.linalg.eigh(cov)
            if float(evals.min()) < -1e-10 * max(scale, 1.0):
                bad = torch.nonzero(evals.min(dim=1).values < -1e-10 * max(scale, 1.0))
                raise ValueError(
                    "covs must be positive semi-definite; component(s) "
                    f"{bad.flatten().tolist()} have negative eigenvalues "
                    f"(min {float(evals.min()):.3g})"
                )
            self._evals = evals.clamp_min(0.0)
            self._evecs = evecs
        else:
            raise ValueError(
                f"covs must have shape (K,)=({k},), (K, d)=({k}, {d}) or (K, d, d)=({k}, {d}, {d}); "
                f"got {tuple(cov.shape)}"
            )
        if event_shape is None:
            shape: tuple[int, ...] = (d,)
        else:
            try:
                shape = tuple(int(v) for v in event_shape)
            except (TypeError, ValueError):
                raise TypeError(f"event_shape must be a sequence of ints, got {event_shape!r}") from None
            if not shape or any(v < 1 for v in shape) or math.prod(shape) != d:
                raise ValueError(f"event_shape must be positive ints whose product is d = {d}, got {shape}")
        self._event_shape = shape
        self.weights = w / w.sum()
        self.log_weights = self.weights.log()
        self.means = mu
        self.covs = cov
        self.cov_type = kind
        self.is_empirical = False
        self._device_cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def empirical(cls, points: Any, weights: Any | None = None) -> GaussianMixture:
        """The memorizing model of a training set: point masses at ``points`` (N, d).

        Its denoiser is the closed-form softmax average of the training points, computed in
        chunks (memory O(batch x chunk)) so N up to 10^5 and beyond works, and numerically
        stable as sigma -> 0 (it tends to the nearest training point).

        >>> import pfd
        >>> emp = pfd.GaussianMixture.empirical([[0.0, 0.0], [1.0, 1.0]])
        >>> emp.denoiser(torch.tensor([[0.9, 1.2]], dtype=torch.float64), 0.01)
        tensor([[1., 1.]], dtype=torch.float64)
        """
        pts = _as_f64(points, "points")
        if pts.ndim < 2:
            raise ValueError(f"points must have shape (N, d) or (N, *event_shape), got {tuple(pts.shape)}")
        if pts.shape[0] == 0:
            raise ValueError("points must contain at least one training point (got N = 0)")
        n = pts.shape[0]
        w = torch.full((n,), 1.0 / n, dtype=_F64) if weights is None else weights
        gmm = cls(w, pts.reshape(n, -1), torch.zeros(n, dtype=_F64), event_shape=pts.shape[1:])
        gmm.is_empirical = True
        return gmm

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GaussianMixture:
        """Inverse of :meth:`to_dict` (also reads ``{"points": ...}`` as an empirical model)."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        if "points" in data:
            return cls.empirical(data["points"], data.get("weights"))
        missing = [k for k in ("weights", "means", "covs") if k not in data]
        if missing:
            raise ValueError(f"data is missing the key(s) {missing}")
        return cls(data["weights"], data["means"], data["covs"], event_shape=data.get("event_shape"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (weights, means, covs; event_shape when not (d,))."""
        out: dict[str, Any] = {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covs": self.covs.tolist(),
        }
        if self._event_shape != (self.dim,):
            out["event_shape"] = list(self._event_shape)
        return out

    @classmethod
    def fit(
        cls,
        x: Any,
        n_components: int,
        *,
        covariance: str = "full",
        reg: float = 1e-3,
        seed: int = 0,
        max_iter: int = 200,
    ) -> GaussianMixture:
        """Fit a mixture to data ``x`` (N, d) or (N, *event_shape) by EM (scikit-learn).

        ``covariance`` is ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"`` (tied is stored
        as K copies of the shared matrix); ``reg`` is added to every covariance's diagonal
        (scikit-learn's ``reg_covar``); ``seed`` fixes the k-means initialisation. The event
        shape of ``x`` is kept: samples, denoiser inputs and outputs have it.

        >>> import torch, pfd
        >>> x = torch.cat([torch.randn(200, 2) - 3, torch.randn(200, 2) + 3])
        >>> gmm = pfd.GaussianMixture.fit(x, 2, seed=0)
        >>> sorted(round(float(m), 0) for m in gmm.means[:, 0])
        [-3.0, 3.0]
        """
        from sklearn.mixture import GaussianMixture as _SkGMM

        data = _as_f64(x, "x")
        if data.ndim < 2 or data.shape[0] < 2:
            raise ValueError(f"x must have shape (N, d) or (N, *event_shape) with N >= 2, got {tuple(data.shape)}")
        k = check_positive_int(n_components, "n_components")
        if k > data.shape[0]:
            raise ValueError(f"n_components must be <= the number of points N = {data.shape[0]}, got {k}")
        kinds = {"full": "full", "diag": "diag", "spherical": "spherical", "tied": "tied"}
        if covariance not in kinds:
            raise ValueError(f"covariance must be one of {sorted(kinds)}, got {covariance!r}")
        if not (isinstance(reg, (int, float)) and not isinstance(reg, bool) and reg >= 0 and math.isfinite(reg)):
            raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")
        flat = data.reshape(data.shape[0], -1).numpy()
        sk = _SkGMM(k, covariance_type=covariance, reg_covar=float(reg), random_state=int(seed),
                    max_iter=check_positive_int(max_iter, "max_iter")).fit(flat)
        covs = np.asarray(sk.covariances_, dtype=np.float64)
        if covariance == "tied":
            covs = np.broadcast_to(covs, (k, *covs.shape)).copy()
        return cls(sk.weights_, sk.means_, covs, event_shape=data.shape[1:])

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Dimension d of the data space."""
        return int(self.means.shape[1])

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(d,)`` unless the mixture was built with another ``event_shape``
        (e.g. ``(1, 8, 8)`` images), whose product is d."""
        return self._event_shape

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    def __repr__(self) -> str:
        tag = "empirical, " if self.is_empirical else ""
        return (
            f"GaussianMixture({tag}K={self.n_components}, d={self.dim}, covs={self.cov_type})"
        )

    def mean(self) -> torch.Tensor:
        """Mean of the mixture, (d,)."""
        return self.weights @ self.means

    def component_covs(self) -> torch.Tensor:
        """Covariances as full (K, d, d) matrices."""
        eye = torch.eye(self.dim, dtype=_F64)
        if self.cov_type == "iso":
            return self.covs[:, None, None] * eye
        if self.cov_type == "diag":
            return torch.diag_embed(self.covs)
        return self.covs.clone()

    def covariance(self) -> torch.Tensor:
        """Covariance of the mixture, (d, d)."""
        m = self.mean()
        dm = self.means - m
        return (self.weights[:, None, None] * (self.component_covs() + dm[:, :, None] * dm[:, None, :])).sum(0)

    # ------------------------------------------------------------------ internals
    def _params(self, device: torch.device) -> dict[str, torch.Tensor]:
        p = self._device_cache.get(device)
        if p is None:
            p = {
                "logw": self.log_weights.to(device),
                "mu": self.means.to(device),
                "cov": self.covs.to(device),
                "mu_sq": (self.means**2).sum(1).to(device),
                "center": self.mean().to(device),
            }
            if self.cov_type == "diag":
                p["mu_c"] = (self.means - self.mean()).to(device)
            if self.cov_type == "full":
                p["evals"] = self._evals.to(device)
                p["evecs"] = self._evecs.to(device)
                p["mu_rot"] = torch.einsum("kd,kde->ke", self.means, self._evecs).to(device)
                k, d = self.means.shape
                # all eigenbases side by side: x @ u_all gives every U_k^T x in one GEMM
                p["u_all"] = self._evecs.permute(1, 0, 2).reshape(d, k * d).contiguous().to(device)
            self._device_cache[device] = p
        return p

    def _check_x(self, x: Any, name: str = "x") -> torch.Tensor:
        """Validate x of shape (B, d) or (B, *event_shape); return it flattened to (B, d)."""
        ev = self._event_shape
        want = f"(B, {self.dim})" + ("" if ev == (self.dim,) else f" or (B, {', '.join(map(str, ev))})")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got {type(x).__name__}")
        if x.ndim >= 2 and tuple(x.shape[1:]) == ev and ev != (self.dim,):
            x = x.reshape(x.shape[0], self.dim)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape {want} for this {self.dim}-D mixture, got {tuple(x.shape)}")
        if not (x.dtype.is_floating_point):
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        return x

    def _posterior(self, x: torch.Tensor, sig2: torch.Tensor, want_mean: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (log p_sigma(x) up to the 2*pi constant, posterior mean E[x0|x] or None).

        x: (B, d) float64, sig2: (B,) float64 (> 0 or = 0 for non-degenerate components).
        """
        if self.cov_type == "iso":
            return self._posterior_iso(x, sig2, want_mean)
        if self.cov_type == "diag" and x.shape[0] > 0:
            # the PF-ODE calls the denoiser with one sigma per batch: then every term is a
            # (B x K) matrix product, no (B x K x d) temporaries
            if bool(sig2.min() == sig2.max()):
                return self._posterior_diag_uniform(x, float(sig2[0]), want_mean)
            levels = torch.unique(sig2)
            if levels.numel() <= _DIAG_MAX_LEVELS:
                logp = torch.empty(x.shape[0], dtype=_F64, device=x.device)
                mean = torch.empty_like(x) if want_mean else None
                for lev in levels.tolist():
                    idx = torch.nonzero(sig2 == lev).flatten()
                    lp, mn = self._posterior_diag_uniform(x[idx], lev, want_mean)
                    logp[idx] = lp
                    if mean is not None:
                        mean[idx] = mn
                return logp, mean
        if self.cov_type == "full" and x.shape[0] > 0 and bool(sig2.min() == sig2.max()):
            return self._posterior_full_uniform(x, float(sig2[0]), want_mean)
        return self._posterior_dense(x, sig2, want_mean)

    def _posterior_full_uniform(self, x, s2: float, want_mean):
        """Full covariances, one noise level for every row: y_k = U_k^T x - U_k^T mu_k for all k
        is one (rows x d) @ (d x K d) GEMM, and the posterior correction sum_k r_k U_k (a_k * y_k)
        another one (rows x K d) @ (K d x d); rows are chunked so temporaries stay bounded."""
        p = self._params(x.device)
        b, d = x.shape
        k = self.n_components
        c = p["evals"] + s2  # (K,d) eigenvalues of C_k
        inv = 1.0 / c
        const = p["logw"] - 0.5 * torch.log(c).sum(1)
        rows = max(1, min(b, _FULL_CHUNK_ELEMS // (k * d)))
        u_back = p["u_all"].T if want_mean else None  # (K d, d)
        a = p["evals"] * inv
        logps, means = [], []
        for start in range(0, b, rows):
            xs = x[start : start + rows]
            y = (xs @ p["u_all"]).view(-1, k, d).sub_(p["mu_rot"])  # (rows,K,d)
            logit = torch.einsum("bkd,kd->bk", y * y, inv).mul_(-0.5).add_(const)
            lp = torch.logsumexp(logit, dim=1)
            logps.append(lp)
            if want_mean:
                r = logit.sub_(lp[:, None]).exp_()
                shrunk = y.mul_(a).mul_(r[:, :, None]).view(-1, k * d)
                means.append(torch.addmm(r @ p["mu"], shrunk, u_back))
        logp = torch.cat(logps) if len(logps) > 1 else logps[0]
        if not want_mean:
            return logp, None
        return logp, (torch.cat(means) if len(means) > 1 else means[0])

    def _posterior_diag_uniform(self, x, s2: float, want_mean):
        """Diagonal covariances, one noise level s2 for every row, as matrix products.

        With C_k = diag(lam_k) + s2 I and coordinates centred at the mixture mean m,
        -1/2 (x - mu_k)^T C_k^{-1} (x - mu_k) = -1/2 (x*x) . c_k^{-1} + x . (mu_k / c_k) - 1/2 mu_k . (mu_k / c_k),
        so the logits are one (B x 2d) @ (2d x K) product; the posterior mean is
        m + r @ (mu_k (1 - a_k)) + x * (r @ a_k) with a_k = lam_k / c_k. Memory O(rows x K).
        """
        p = self._params(x.device)
        b, d = x.shape
        k = self.n_components
        lam = p["cov"]
        c = lam + s2  # (K,d)
        inv = 1.0 / c
        mu = p["mu_c"]
        const = p["logw"] - 0.5 * (mu * mu * inv).sum(1) - 0.5 * torch.log(c).sum(1)  # (K,)
        weights = torch.cat([-0.5 * inv, mu * inv], dim=1).T.contiguous()  # (2d, K)
        if want_mean:
            a = lam * inv
            mu_keep = mu * (1.0 - a)
        rows = max(1, min(b, _GEMM_CHUNK_ELEMS // max(k, 2 * d, 1)))
        logps, means = [], []
        for start in range(0, b, rows):
            xc = x[start : start + rows] - p["center"]
            logit = torch.addmm(const[None, :], torch.cat([xc * xc, xc], dim=1), weights)  # (rows, K)
            lp = torch.logsumexp(logit, dim=1)
            logps.append(lp)
            if want_mean:
                r = logit.sub_(lp[:, None]).exp_()
                means.append(torch.addmm(p["center"][None, :], r, mu_keep).addcmul_(xc, r @ a))
        logp = torch.cat(logps) if len(logps) > 1 else logps[0]
        if not want_mean:
            return logp, None
        return logp, (torch.cat(means) if len(means) > 1 else means[0])

    def _posterior_iso(self, x, sig2, want_mean):
        b = x.shape[0]
        rows = max(1, min(b, 2048))
        if rows >= b:
            return self._posterior_iso_rows(x, sig2, want_mean)
        parts = [self._posterior_iso_rows(x[i : i + rows], sig2[i : i + rows], want_mean) for i in range(0, b, rows)]
        logp = torch.cat([p[0] for p in parts])
        return logp, (torch.cat([p[1] for p in parts]) if want_mean else None)

    def _posterior_iso_rows(self, x, sig2, want_mean):
        """Streaming (online-softmax) pass over components in cache-sized chunks: memory is
        O(rows x chunk), never O(rows x K x d)."""
        p = self._params(x.device)
        b, d = x.shape
        k = self.n_components
        chunk = max(16, min(k, _ISO_CHUNK_ELEMS // max(b, 1)))
        x_sq = (x**2).sum(1, keepdim=True)  # (B,1)
        s2 = sig2[:, None]
        run_max = torch.full((b, 1), -math.inf, dtype=_F64, device=x.device)
        run_z = torch.zeros((b, 1), dtype=_F64, device=x.device)
        acc_mu = torch.zeros((b, d), dtype=_F64, device=x.device) if want_mean else None
        acc_a = torch.zeros((b, 1), dtype=_F64, device=x.device) if want_mean else None
        for start in range(0, k, chunk):
            sl = slice(start, min(k, start + chunk))
            mu = p["mu"][sl]
            v = p["cov"][sl]  # (Kc,)
            c = v[None, :] + s2  # (B,Kc)
            # logit = log w - |x - mu|^2 / (2c) - d/2 log c, built in place
            logit = torch.addmm(p["mu_sq"][sl][None, :] + x_sq, x, mu.T, alpha=-2.0).clamp_min_(0.0)
            logit.div_(c).mul_(-0.5).add_(p["logw"][sl][None, :]).sub_(torch.log(c).mul_(0.5 * d))
            new_max = torch.maximum(run_max, logit.amax(dim=1, keepdim=True))
            scale_old = torch.exp(run_max - new_max)
            e = logit.sub_(new_max).exp_()
            run_z = run_z * scale_old + e.sum(1, keepdim=True)
            if want_mean:
                if bool((v == 0).all()):  # point masses: no shrinkage term
                    acc_mu = acc_mu * scale_old + e @ mu
                    acc_a = acc_a * scale_old
                else:
                    a = v[None, :] / c  # shrinkage S_k C_k^{-1}
                    acc_mu = acc_mu * scale_old + (e * (1.0 - a)) @ mu
                    acc_a = acc_a * scale_old + (e * a).sum(1, keepdim=True)
            run_max = new_max
        logp = (run_max + torch.log(run_z)).squeeze(1)
        if not want_mean:
            return logp, None
        mean = acc_mu / run_z + (acc_a / run_z) * x
        return logp, mean

    def _posterior_dense(self, x, sig2, want_mean):
        p = self._params(x.device)
        b, d = x.shape
        k = self.n_components
        rows = max(1, _DENSE_CHUNK_ELEMS // max(k * d, 1))
        logps, means = [], []
        for start in range(0, b, rows):
            xs = x[start : start + rows]
            s2 = sig2[start : start + rows, None, None]  # (b,1,1)
            if self.cov_type == "diag":
                lam = p["cov"][None]  # (1,K,d)
                y = xs[:, None, :] - p["mu"][None]  # (b,K,d)
            else:
                lam = p["evals"][None]
                y = torch.einsum("bd,kde->bke", xs, p["evecs"]) - p["mu_rot"][None]
            c = lam + s2  # (b,K,d)
            logit = p["logw"][None] - 0.5 * (y * y / c).sum(2) - 0.5 * torch.log(c).sum(2)
            logp = torch.logsumexp(logit, dim=1)
            logps.append(logp)
            if want_mean:
                r = torch.exp(logit - logp[:, None])  # (b,K)
                shrunk = r[:, :, None] * (lam / c) * y  # (b,K,d)
                if self.cov_type == "diag":
                    corr = shrunk.sum(1)
                else:
                    corr = torch.einsum("bke,kde->bd", shrunk, p["evecs"])
                means.append(r @ p["mu"] + corr)
        logp = torch.cat(logps)
        return logp, (torch.cat(means) if want_mean else None)

    # ------------------------------------------------------------------ public maths
    def denoiser(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Optimal denoiser D(x; sigma) = E[x_0 | x_0 + sigma * eps = x].

        ``x`` is (B, d); ``sigma`` a float or a (B,) tensor, > 0. Computed in float64 and
        returned in ``x``'s dtype.
        """
        shape = getattr(x, "shape", None)
        x = self._check_x(x)
        s = as_sigma(sigma, x.shape[0], x.device)
        _, mean = self._posterior(x.to(_F64), s * s, want_mean=True)
        return mean.to(x.dtype).reshape(shape)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Score of the noised density, grad_x log p_sigma(x) = (D(x; sigma) - x) / sigma^2."""
        shape = getattr(x, "shape", None)
        x = self._check_x(x)
        s = as_sigma(sigma, x.shape[0], x.device)
        x64 = x.to(_F64)
        _, mean = self._posterior(x64, s * s, want_mean=True)
        return ((mean - x64) / (s * s)[:, None]).to(x.dtype).reshape(shape)

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """Log density of p_sigma (the mixture convolved with N(0, sigma^2 I)) at ``x``, (B,).

        ``sigma = 0`` (the default) is allowed when every component is non-degenerate.
        """
        x = self._check_x(x)
        b = x.shape[0]
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and float(sigma) == 0.0:
            s2 = torch.zeros(b, dtype=_F64, device=x.device)
            lam_min = {"iso": self.covs, "diag": self.covs, "full": getattr(self, "_evals", None)}[self.cov_type]
            if float(lam_min.min()) <= 0:
                raise ValueError("sigma must be > 0 for a mixture with degenerate (zero-variance) components")
        else:
            s = as_sigma(sigma, b, x.device)
            s2 = s * s
        logp, _ = self._posterior(x.to(_F64), s2, want_mean=False)
        return logp - 0.5 * self.dim * math.log(2.0 * math.pi)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Draw ``n`` samples (n, *event_shape), float64, reproducibly from ``seed``."""
        check_positive_int(n, "n")
        g = torch.Generator().manual_seed(derive_seed(seed, 0x5A3F))
        comp = torch.multinomial(self.weights, n, replacement=True, generator=g)
        eps = torch.randn(n, self.dim, generator=g, dtype=_F64)
        mu = self.means[comp]
        if self.cov_type == "iso":
            out = mu + self.covs[comp].sqrt()[:, None] * eps
        elif self.cov_type == "diag":
            out = mu + self.covs[comp].sqrt() * eps
        else:
            root = self._evecs * self._evals.sqrt()[:, None, :]  # U diag(sqrt(lam))
            out = mu + torch.einsum("nde,ne->nd", root[comp], eps)
        return out.reshape(n, *self._event_shape)

    def ode_map(self, **solver_options: Any):
        """The PF-ODE noise-to-data map of this mixture: a :class:`pfd.DiffusionMap`.

        Keyword arguments go to :class:`pfd.DiffusionMap` (``solver``, ``steps``,
        ``sigma_max``, ``sigma_min``, ``rtol``, ``atol``, ...).
        """
        from pfd.maps import DiffusionMap

        solver_options.setdefault("shape", self.event_shape)
        solver_options.setdefault("name", repr(self))
        return DiffusionMap(self.denoiser, **solver_options)

    def subset(self, index: Sequence[int] | torch.Tensor) -> GaussianMixture:
        """A mixture of the selected components (renormalised weights)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        out = GaussianMixture(self.weights[idx], self.means[idx], self.covs[idx], event_shape=self._event_shape)
        out.is_empirical = self.is_empirical
        return out
