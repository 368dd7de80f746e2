"""Class-conditional Gaussian mixtures and classifier-free guidance, in closed form.

A :class:`ConditionalGaussianMixture` is a mixture p_0 = sum_k pi_k N(mu_k, S_k) whose components
carry class labels l_k. The class-c distribution is the sub-mixture of the components with
l_k = c, weights renormalised: p_0(x | c) = sum_{k: l_k = c} pi_k N(mu_k, S_k) / P(c), with
P(c) = sum_{k: l_k = c} pi_k. Under the VE process both stay mixtures, so every denoiser is exact:

    D_uncond(x; sigma)  = E[x_0 | x_sigma = x]            (all components)
    D_cond(x; sigma, c) = E[x_0 | x_sigma = x, c]         (class-c components only)

Classifier-free guidance with scale ``w`` (the convention of Ho & Salimans, 2022):

    D_w(x; sigma, c) = D_uncond + (1 + w) (D_cond - D_uncond),

so w = 0 is the plain conditional denoiser and w = -1 the unconditional one. For w != 0, D_w is
not the posterior mean of any distribution; its PF-ODE map is still well defined and is what
guided samplers (and students distilled from them) integrate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pfd._checks import as_sigma, check_positive_int
from pfd.analytic.gmm import GaussianMixture
from pfd.noise import derive_seed

__all__ = ["ConditionalGaussianMixture", "check_guidance", "check_labels"]

_STREAM_CLASS_SAMPLE = 0x51A55


def check_guidance(guidance: Any) -> float:
    """Validate a guidance scale ``w`` (a finite real number)."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.integer, np.floating)):
        raise TypeError(f"guidance must be a real number w (D_w = D_u + (1 + w)(D_c - D_u)), got {type(guidance).__name__}")
    w = float(guidance)
    if not np.isfinite(w):
        raise ValueError(f"guidance must be finite, got {w}")
    return w


def check_labels(labels: Any, batch: int, name: str = "labels") -> torch.Tensor:
    """Validate class labels for a batch: an int (one class for every row) or a (batch,) integer
    tensor/array; returns a (batch,) int64 CPU tensor."""
    if isinstance(labels, bool):
        raise TypeError(f"{name} must be an int or an integer tensor of shape ({batch},), got bool")
    if isinstance(labels, (int, np.integer)):
        return torch.full((batch,), int(labels), dtype=torch.long)
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an int or an integer tensor of shape ({batch},), got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {labels.dtype}")
    if labels.ndim == 0:
        labels = labels.expand(batch)
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},) (one label per row), got {tuple(labels.shape)}")
    return labels.detach().to("cpu", torch.long)


class ConditionalGaussianMixture:
    """A Gaussian mixture whose components carry class labels; exact conditional, unconditional
    and classifier-free-guided denoisers.

    Parameters
    ----------
    weights, means, covs, event_shape:
        As for :class:`pfd.GaussianMixture` (weights are normalised over all components; the
        class frequencies are P(c) = sum of the weights of class c's components).
    labels:
        (K,) non-negative integer class label of each component.

    Example
    -------
    >>> import torch, pfd
    >>> cgmm = pfd.analytic.ConditionalGaussianMixture(
    ...     [0.25, 0.25, 0.5], [[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]], [0.1, 0.1, 0.2], labels=[0, 0, 1])
    >>> cgmm.classes, [round(p, 2) for p in cgmm.class_probs.tolist()]
    ([0, 1], [0.5, 0.5])
    >>> x = torch.zeros(2, 2, dtype=torch.float64)
    >>> d_c = cgmm.denoiser(x, 1.0, labels=torch.tensor([1, 1]))
    >>> torch.allclose(d_c, cgmm.class_mixture(1).denoiser(x, 1.0))
    True
    >>> torch.allclose(cgmm.denoiser(x, 1.0, labels=1, guidance=-1.0), cgmm.denoiser(x, 1.0))
    True
    """

    def __init__(self, weights: Any, means: Any, covs: Any, labels: Any, *, event_shape: Sequence[int] | None = None) -> None:
        self.mixture = GaussianMixture(weights, means, covs, event_shape=event_shape)
        k = self.mixture.n_components
        lab = torch.as_tensor(np.asarray(labels))
        if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.ndim != 1 or lab.shape[0] != k:
            raise ValueError(f"labels must be ({k},) integer class ids, one per component; got {tuple(lab.shape)} {lab.dtype}")
        lab = lab.to(torch.long)
        if bool((lab < 0).any()):
            raise ValueError("labels must be >= 0")
        self.component_labels = lab
        self.classes: list[int] = sorted(int(c) for c in torch.unique(lab).tolist())
        self._class_mix: dict[int, GaussianMixture] = {}
        probs = []
        for c in self.classes:
            idx = torch.nonzero(lab == c).flatten()
            self._class_mix[c] = self.mixture.subset(idx)
            probs.append(float(self.mixture.weights[idx].sum()))
        self.class_probs = torch.tensor(probs, dtype=torch.float64)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_classes(
        cls, mixtures: Sequence[GaussianMixture], class_probs: Any, labels: Sequence[int] | None = None
    ) -> ConditionalGaussianMixture:
        """Build from one :class:`pfd.GaussianMixture` per class and the class frequencies.

        ``labels`` names the classes (default 0..C-1). Every mixture must have the same dimension
        and covariance type.
        """
        if not mixtures:
            raise ValueError("mixtures must hold at least one class mixture")
        p = torch.as_tensor(np.asarray(class_probs, dtype=np.float64))
        if p.ndim != 1 or p.shape[0] != len(mixtures) or bool((p <= 0).any()):
            raise ValueError(f"class_probs must be ({len(mixtures)},) positive numbers, got {tuple(p.shape)}")
        p = p / p.sum()
        names = list(range(len(mixtures))) if labels is None else [int(c) for c in labels]
        if len(names) != len(mixtures):
            raise ValueError("labels must name every class mixture")
        kinds = {m.cov_type for m in mixtures}
        dims = {m.dim for m in mixtures}
        if len(kinds) != 1 or len(dims) != 1:
            raise ValueError(f"class mixtures must share dimension and covariance type, got dims {dims}, types {kinds}")
        w = torch.cat([pc * m.weights for pc, m in zip(p, mixtures, strict=True)])
        mu = torch.cat([m.means for m in mixtures])
        cov = torch.cat([m.covs for m in mixtures])
        lab = torch.cat([torch.full((m.n_components,), c, dtype=torch.long) for c, m in zip(names, mixtures, strict=True)])
        return cls(w, mu, cov, lab, event_shape=mixtures[0].event_shape)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.mixture.dim

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return self.mixture.event_shape

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        m = self.mixture
        return f"ConditionalGaussianMixture(K={m.n_components}, classes={self.n_classes}, d={self.dim}, covs={m.cov_type})"

    def class_mixture(self, c: int) -> GaussianMixture:
        """The class-c distribution: the sub-mixture of class c's components, renormalised."""
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"c must be an int class label, got {type(c).__name__}")
        if int(c) not in self._class_mix:
            raise ValueError(f"unknown class {c}; classes are {self.classes}")
        return self._class_mix[int(c)]

    # ------------------------------------------------------------------ denoisers
    def _flat(self, x: Any) -> tuple[torch.Tensor, tuple[int, ...]]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, *{self.event_shape}), got {type(x).__name__}")
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != self.dim:
            raise ValueError(f"x must have shape (B, *{self.event_shape}) for this {self.dim}-D mixture, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim), tuple(x.shape)

    def _conditional(self, x: torch.Tensor, sig: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x, dtype=torch.float64)
        lab = labels.to(x.device)
        for c in torch.unique(labels).tolist():
            if c not in self._class_mix:
                raise ValueError(f"labels hold class {c}, which this mixture does not have (classes {self.classes})")
            idx = torch.nonzero(lab == c).flatten()
            out[idx] = self._class_mix[c].denoiser(x[idx], sig[idx])
        return out

    def denoiser(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: Any = None, guidance: float = 0.0) -> torch.Tensor:
        """Exact denoiser: unconditional (``labels=None``), class-conditional, or CFG-guided.

        ``labels``: None, an int, or a (B,) integer tensor; ``guidance`` w gives
        D_w = D_uncond + (1 + w)(D_cond - D_uncond) (w = 0 conditional, w = -1 unconditional).
        """
        w = check_guidance(guidance)
        xf, shape = self._flat(x)
        sig = as_sigma(sigma, xf.shape[0], xf.device)
        if labels is None:
            if w != 0.0:
                raise ValueError("guidance needs labels: the guided denoiser mixes D_cond(c) with D_uncond")
            return self.mixture.denoiser(xf, sig).reshape(shape)
        lab = check_labels(labels, xf.shape[0])
        d_c = self._conditional(xf.to(torch.float64), sig, lab)
        if w == 0.0:
            return d_c.reshape(shape)
        d_u = self.mixture.denoiser(xf, sig)
        return (d_u + (1.0 + w) * (d_c - d_u)).reshape(shape)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: Any = None, guidance: float = 0.0) -> torch.Tensor:
        """(D_w(x; sigma, c) - x) / sigma^2: the (guided) score of the VE-noised distribution."""
        xf, shape = self._flat(x)
        sig = as_sigma(sigma, xf.shape[0], xf.device)
        d = self.denoiser(x, sigma, labels=labels, guidance=guidance).reshape(xf.shape)
        return ((d - xf.to(torch.float64)) / sig[:, None] ** 2).reshape(shape)

    # ------------------------------------------------------------------ sampling and maps
    def sample(self, n: int, seed: int = 0, labels: Any = None) -> torch.Tensor:
        """n samples (n, *event_shape): from p_0 (``labels=None``) or from p_0(x | labels[i])."""
        check_positive_int(n, "n")
        if labels is None:
            return self.mixture.sample(n, seed=seed).reshape(n, *self.event_shape)
        lab = check_labels(labels, n)
        out = torch.empty(n, self.dim, dtype=torch.float64)
        for c in torch.unique(lab).tolist():
            idx = torch.nonzero(lab == c).flatten()
            draw = self.class_mixture(c).sample(idx.numel(), seed=derive_seed(seed, _STREAM_CLASS_SAMPLE, c))
            out[idx] = draw.reshape(idx.numel(), self.dim)
        return out.reshape(n, *self.event_shape)

    def ode_map(self, *, labels: int | None = None, guidance: float = 0.0, **solver_options: Any):
        """The PF-ODE noise-to-data map of the (guided) denoiser: a :class:`pfd.DiffusionMap`.

        With ``labels=None`` the map is conditional: call it as ``m(z, labels)`` with one label
        per row (``pfd.distance(..., labels=...)`` does this). With an int ``labels=c`` every
        sample is of class c and the map is a plain ``m(z)``. Other keyword arguments go to
        :class:`pfd.DiffusionMap` (``solver``, ``steps``, ...).
        """
        from pfd.maps import DiffusionMap

        w = check_guidance(guidance)
        solver_options.setdefault("shape", self.event_shape)
        tag = f"w={w:g}"
        if labels is None:
            solver_options.setdefault("name", f"{self!r}[{tag}]")

            def guided(x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
                return self.denoiser(x, sigma, labels=c, guidance=w)

            return DiffusionMap(guided, conditional=True, **solver_options)
        cls = int(check_labels(labels, 1)[0])
        self.class_mixture(cls)  # validates the class
        solver_options.setdefault("name", f"{self!r}[class {cls}, {tag}]")

        def bound(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.denoiser(x, sigma, labels=cls, guidance=w)

        return DiffusionMap(bound, **solver_options)
