"""Distilled students as noise-to-data maps, each declaring what kind of student it is.

``kind="trajectory"``: the student approximates the teacher's PF-ODE map itself (progressive,
consistency, regression and flow-map distillation); its raw map on the shared noise IS what PFD
compares. ``kind="distribution"``: the student only matches the distribution (DiffRatio, DMD,
GANs); its z -> G(z) coupling is arbitrary, so scoring the raw map measures the coupling, not the
distribution, and pfd warns (:class:`CouplingWarning`) and points to the distributional route
(:class:`pfd.adapters.RatioCorrectedMap`, :func:`pfd.adapters.fit_ratio`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pfd._checks import call_model, check_callable, check_finite, check_output, check_positive_float, eval_mode
from pfd._maps import MapBase, model_device
from pfd.maps import OneStepMap

__all__ = [
    "KINDS",
    "ConsistencyStudent",
    "CouplingWarning",
    "FlowMapStudent",
    "GeneratorStudent",
    "check_kind",
]

KINDS = ("trajectory", "distribution")
_F64 = torch.float64


class CouplingWarning(UserWarning):
    """A distribution-matching student is being scored by its raw noise-to-data map."""


def check_kind(kind: Any) -> str:
    """Validate a student kind declaration (no default: the user must say which)."""
    if kind not in KINDS:
        raise ValueError(
            f"kind must be declared as 'trajectory' (the student approximates the teacher's PF-ODE map) or "
            f"'distribution' (it only matches the distribution: DiffRatio, DMD, GANs), got {kind!r}"
        )
    return kind


COUPLING_MESSAGE = (
    "{name} is a distribution-matching student (kind='distribution'): PFD of its raw map z -> G(z) measures the "
    "coupling between noise and samples, not the distribution, and can be large even when the student's "
    "distribution equals the teacher's. Score PFD(q, p) instead through the student's PF-ODE map: "
    "pfd.adapters.RatioCorrectedMap(reference_denoiser, pfd.adapters.fit_ratio(student_sampler, reference_samples)) "
    "(see docs/students.md)"
)


class GeneratorStudent(OneStepMap):
    """A one-step generator ``G(z) -> x`` with a declared ``kind``.

    With ``kind="distribution"`` every call issues a :class:`CouplingWarning` (once per
    instance unless ``warn="always"``); ``warn=False`` silences it when the coupling is what
    you want to measure.

    >>> import warnings, torch, pfd
    >>> g = pfd.adapters.GeneratorStudent(lambda z: z + 1.0, kind="distribution", shape=(2,))
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     _ = g(torch.zeros(3, 2))
    >>> w[0].category.__name__
    'CouplingWarning'
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, kind: str, shape: Sequence[int] | None = None,
                 model_dtype: torch.dtype | None = None, name: str | None = None, warn: bool | str = True,
                 conditional: bool = False) -> None:
        super().__init__(fn, shape=shape, model_dtype=model_dtype, name=name, conditional=conditional)
        self.kind = check_kind(kind)
        if warn not in (True, False, "always"):
            raise ValueError(f"warn must be True, False or 'always', got {warn!r}")
        self.warn = warn
        self._warned = False

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["kind"] = self.kind
        if self.kind == "distribution":
            d["note"] = "raw map of a distribution-matching student: measures the coupling"
        return d

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "distribution" and self.warn and (self.warn == "always" or not self._warned):
            warnings.warn(COUPLING_MESSAGE.format(name=self.name), CouplingWarning, stacklevel=2)
            self._warned = True
        return super().__call__(z, labels)


class ConsistencyStudent(MapBase):
    """A consistency model ``f(x, sigma) -> x0`` used in one step from ``sigma_max``:
    x = f(sigma_max * z, sigma_max) (EDM coordinates; ``sigma`` is a (B,) tensor).

    >>> import pfd
    >>> gmm = pfd.GaussianMixture([1.0], [[1.0, 0.0]], [0.3])
    >>> cm = pfd.adapters.ConsistencyStudent(gmm.denoiser, sigma_max=80.0, shape=(2,))
    >>> cm(pfd.canonical_noise(2, (2,))).shape, cm.kind
    (torch.Size([2, 2]), 'trajectory')
    """

    def __init__(self, f: Callable[..., torch.Tensor], sigma_max: float = 80.0, *, kind: str = "trajectory",
                 shape: Sequence[int] | None = None, model_dtype: torch.dtype | None = None,
                 name: str | None = None, conditional: bool = False) -> None:
        check_callable(f, "f", "callable f(x, sigma)")
        self.f = f
        self.sigma_max = check_positive_float(sigma_max, "sigma_max")
        self.kind = check_kind(kind)
        self._init_map(f, shape, model_dtype, name, conditional=conditional)
        self.nfe_per_sample = 1

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sigma_max": self.sigma_max, "kind": self.kind}

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self._check_z(z)
        device = model_device(self.f) or z.device
        labels = self._check_labels(labels, z.shape[0], device)
        extra = () if labels is None else (labels,)
        x = (self.sigma_max * z.to(device=device, dtype=_F64)).to(self._model_dtype)
        sig = torch.full((z.shape[0],), self.sigma_max, dtype=self._model_dtype, device=device)
        with torch.no_grad(), eval_mode(self.f):
            out = call_model(self.f, x, sig, *extra)
        out = check_output(out, z.shape, f"ConsistencyStudent {self.name}").to(_F64)
        check_finite(out, self.sigma_max, f"ConsistencyStudent {self.name}")
        self.last_nfe = 1
        return out


_SIGNATURES = ("x,t,s", "x,s,t", "t,s,x", "s,t,x", "meanflow")


class FlowMapStudent(MapBase):
    """A flow-map (two-time) student composed over a declared grid: x <- G(x, t_i, t_{i+1}).

    Parameters
    ----------
    G:
        The flow map. ``signature`` names its argument order: ``"x,t,s"`` (default; jump from
        t to s, CTM / Align Your Flow), ``"x,s,t"``, ``"t,s,x"``, ``"s,t,x"``; or
        ``"meanflow"``: G is MeanFlow's average velocity u(z, r, t) and the jump is
        z_r = z_t - (t - r) u(z_t, r, t).
    grid:
        Times from noise to data, decreasing, in the model's own time variable (K + 1 points for
        K segments; K = 1 is a one-step flow map). The last point may be 0 if the model jumps to
        the data directly.
    sigma_of_time:
        EDM sigma of a model time, used for the start x = sigma(grid[0]) * z * start_scale.
        Default: the identity (the model's time is sigma, EDM coordinates).
    start_scale:
        Extra factor on the start state (e.g. 1 / sigma for a flow-matching time where
        x_1 = z: pass ``sigma_of_time=lambda t: 1.0``).

    Examples
    --------
    >>> import torch, pfd
    >>> mu = torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> def exact_jump(x, t, s):  # the exact flow map of N(mu, 0.3 I) in EDM time
    ...     return mu + (x - mu) * ((0.3 + s[:, None] ** 2) / (0.3 + t[:, None] ** 2)).sqrt()
    >>> fm = pfd.adapters.FlowMapStudent(exact_jump, grid=[80.0, 1.0, 0.0], shape=(2,))
    >>> fm.kind, fm.nfe_per_sample
    ('trajectory', 2)
    >>> z = pfd.canonical_noise(4, (2,))
    >>> exact = mu + (80.0 * z - mu) * (0.3 / (0.3 + 80.0**2)) ** 0.5
    >>> torch.allclose(fm(z), exact)
    True
    """

    def __init__(self, G: Callable[..., torch.Tensor], grid: Sequence[float] | torch.Tensor, *, signature: str = "x,t,s",
                 kind: str = "trajectory", sigma_of_time: Callable[[float], float] | None = None,
                 start_scale: float = 1.0, shape: Sequence[int] | None = None,
                 model_dtype: torch.dtype | None = None, name: str | None = None, conditional: bool = False) -> None:
        check_callable(G, "G", "a callable flow map")
        if signature not in _SIGNATURES:
            raise ValueError(f"signature must be one of {_SIGNATURES} (argument order of G), got {signature!r}")
        g = torch.as_tensor(grid, dtype=_F64).detach().flatten().cpu()
        if g.numel() < 2:
            raise ValueError(f"grid must have at least 2 times (K + 1 for K segments), got {g.numel()}")
        if not bool(torch.isfinite(g).all()) or bool((g < 0).any()) or not bool((g[1:] < g[:-1]).all()):
            raise ValueError("grid must be finite, >= 0 and strictly decreasing (from noise to data)")
        if float(g[0]) <= 0:
            raise ValueError("grid[0] (the noise end) must be > 0")
        self.G = G
        self.grid = g
        self.signature = signature
        self.kind = check_kind(kind)
        self.sigma_of_time = sigma_of_time or (lambda t: t)
        self.start_scale = check_positive_float(start_scale, "start_scale")
        self._init_map(G, shape, model_dtype, name, conditional=conditional)

    @property
    def nfe_per_sample(self) -> int:
        return self.grid.numel() - 1

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "signature": self.signature, "grid": self.grid.tolist(),
                "segments": self.nfe_per_sample, "kind": self.kind}

    def _jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, extra: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        sig = self.signature
        if sig == "x,t,s":
            return call_model(self.G, x, t, s, *extra)
        if sig == "x,s,t":
            return call_model(self.G, x, s, t, *extra)
        if sig == "t,s,x":
            return call_model(self.G, t, s, x, *extra)
        if sig == "s,t,x":
            return call_model(self.G, s, t, x, *extra)
        u = call_model(self.G, x, s, t, *extra)  # meanflow: u(z, r, t), r the target time
        return x - (t - s).reshape(-1, *([1] * (x.ndim - 1))) * u

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self._check_z(z)
        device = model_device(self.G) or z.device
        labels = self._check_labels(labels, z.shape[0], device)
        extra = () if labels is None else (labels,)
        dt = self._model_dtype
        x = float(self.sigma_of_time(float(self.grid[0]))) * self.start_scale * z.to(device=device, dtype=_F64)
        b = z.shape[0]
        with torch.no_grad(), eval_mode(self.G):
            for i in range(self.grid.numel() - 1):
                t = torch.full((b,), float(self.grid[i]), dtype=dt, device=device)
                s = torch.full((b,), float(self.grid[i + 1]), dtype=dt, device=device)
                out = self._jump(x.to(dt), t, s, extra)
                x = check_output(out, z.shape, f"FlowMapStudent {self.name}: G").to(_F64)
                check_finite(x, float(self.grid[i + 1]), f"FlowMapStudent {self.name}")
        self.last_nfe = self.nfe_per_sample
        return x
