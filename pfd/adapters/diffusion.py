"""Diffusion models from the wild as EDM denoisers D(x, sigma), and maps on explicit grids.

Every adapter converts one parametrisation into the EDM/VE convention x = x0 + sigma * eps,
so that :class:`pfd.DiffusionMap` (or :class:`GridMap`) integrates the same PF-ODE
dx/dsigma = (x - D(x; sigma)) / sigma for all of them. Conversions (see docs/students.md):

* VP with a discrete alpha-bar schedule: x_VP = sqrt(abar) x_VE, sigma = sqrt((1 - abar)/abar);
  epsilon: D = x - sigma eps;  v: D = abar x - sigma abar v;  sample: D = x0_hat.
* flow matching x_t = (1 - t) x0 + t eps, v = eps - x0: t = sigma/(1 + sigma),
  x_t = x/(1 + sigma), D = x_t - t v.
* score of a process X_t = alpha_t X_0 + sqrt(1 - alpha_t^2) Z (OU, VP) or X = X_0 + sigma Z (VE):
  D = (alpha x_VE + (1 - alpha^2) s) / alpha with s evaluated at alpha x_VE.

The adapters never guess: prediction type, time convention and time scale are explicit
arguments. They are ``torch.nn.Module`` objects holding the wrapped network, so the maps find
its dtype/device and put it in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pfd._checks import as_sigma, call_model, check_callable, check_positive_float, eval_mode
from pfd._maps import model_device
from pfd.maps import DiffusionMap, check_in_range
from pfd.solvers import SOLVERS, get_solver

__all__ = [
    "EDMDenoiser",
    "FlowMatchingDenoiser",
    "GridMap",
    "ScoreDenoiser",
    "VPDenoiser",
    "diffusers_denoiser",
    "vp_sigmas",
]

_F64 = torch.float64
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _unwrap(out: Any, who: str) -> torch.Tensor:
    """Model outputs are tensors, or diffusers-style objects with a ``sample`` tensor."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"{who}: the model must return a tensor (or an object with a .sample tensor), got {type(out).__name__}")


def _param_dtype(module: Any) -> torch.dtype:
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
    return _F64


class _Adapter(torch.nn.Module):
    """Common part: holds the model (as a submodule when it is one), validates inputs and passes
    a condition (with optional classifier-free guidance) to the model.

    Subclasses implement ``_denoise(x, sigma, cond)`` where ``cond`` holds the keyword arguments
    for the model call. With ``condition="class_labels"`` (diffusers' class-conditional
    ``UNet2DModel``) or ``condition="encoder_hidden_states"`` (``UNet2DConditionModel``) the
    adapter is conditional: ``D(x, sigma, labels)`` calls ``model(..., **{condition: labels})``.
    With ``guidance=w`` (needs ``null_condition``, the unconditional input: the null class id or
    the empty-prompt embedding) it returns the two-call classifier-free-guided denoiser
    D_w = D(null) + (1 + w) (D(labels) - D(null)) (w = 0: plain conditional).
    """

    def __init__(self, model: Callable[..., Any], name: str, *, condition: str | None = None,
                 guidance: float = 0.0, null_condition: Any = None) -> None:
        super().__init__()
        if isinstance(model, torch.nn.Module):
            self.model = model
        else:
            self._fn = model
        self.name = name
        if condition is not None and (not isinstance(condition, str) or not condition.isidentifier()):
            raise TypeError(f"condition must be the name of the model's keyword argument for the condition "
                            f"(e.g. 'class_labels'), got {condition!r}")
        from pfd.analytic.conditional import check_guidance

        self.condition = condition
        self.guidance = check_guidance(guidance)
        if self.guidance != 0.0 and condition is None:
            raise ValueError("guidance needs a conditional model: pass condition='class_labels' (or the model's keyword)")
        if self.guidance != 0.0 and null_condition is None:
            raise ValueError("guidance != 0 needs null_condition: the unconditional input of the model "
                             "(the null class id, or the empty-prompt embedding of shape (1, ...))")
        self.null_condition = null_condition

    @property
    def fn(self) -> Callable[..., Any]:
        return self.model if "model" in self._modules else self._fn

    @property
    def conditional(self) -> bool:
        """Whether the model takes a condition (``D(x, sigma, labels)``)."""
        return self.condition is not None

    def _null(self, labels: torch.Tensor) -> torch.Tensor:
        null = self.null_condition
        if not isinstance(null, torch.Tensor):
            fill = float(null) if labels.dtype.is_floating_point else int(null)
            return torch.full_like(labels, fill)
        null = null.to(labels.device)
        if null.ndim == labels.ndim and null.shape[0] == 1:
            return null.expand(labels.shape[0], *null.shape[1:])
        if null.ndim == labels.ndim - 1:
            return null.unsqueeze(0).expand(labels.shape[0], *null.shape)
        raise ValueError(f"{self.name}: null_condition of shape {tuple(null.shape)} does not fit "
                         f"labels of shape {tuple(labels.shape)}")

    def forward(self, x: torch.Tensor, sigma: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            if self.condition is not None:
                raise ValueError(f"{self.name} is conditional ({self.condition}=...): call it as D(x, sigma, labels)")
            return self._denoise(x, sigma, {})
        if self.condition is None:
            raise ValueError(f"{self.name} is not conditional; build it with condition='<the model keyword>' to pass labels")
        d = self._denoise(x, sigma, {self.condition: labels})
        if self.guidance == 0.0:
            return d
        d_u = self._denoise(x, sigma, {self.condition: self._null(labels)})
        return d_u + (1.0 + self.guidance) * (d - d_u)

    def _denoise(self, x: torch.Tensor, sigma: Any, cond: dict[str, Any]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _prep(self, x: torch.Tensor, sigma: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{self.name}: x must be a floating-point torch.Tensor")
        if x.ndim < 2:
            raise ValueError(f"{self.name}: x must have shape (B, ...), got {tuple(x.shape)}")
        s = as_sigma(sigma, x.shape[0], x.device)
        return x.to(_F64), s

    @staticmethod
    def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return s.reshape(-1, *([1] * (x.ndim - 1)))




class EDMDenoiser(_Adapter):
    """An EDM / k-diffusion denoiser ``net(x, sigma, **cond) -> x0`` with bound conditioning.

    ``sigma`` is passed as a (B,) tensor in the network's dtype. If the net exposes
    ``round_sigma`` it is applied (as EDM's sampler does).

    >>> import torch, pfd
    >>> gmm = pfd.GaussianMixture([1.0], [[0.0, 1.0]], [0.5])
    >>> d = pfd.adapters.EDMDenoiser(lambda x, sigma, scale: scale * gmm.denoiser(x, sigma), scale=1.0)
    >>> x = torch.ones(3, 2, dtype=torch.float64)
    >>> torch.allclose(d(x, 0.7), gmm.denoiser(x, 0.7))
    True
    """

    def __init__(self, net: Callable[..., Any], *, name: str | None = None, condition: str | None = None,
                 guidance: float = 0.0, null_condition: Any = None, **cond: Any) -> None:
        check_callable(net, "net", "callable net(x, sigma, **cond)")
        super().__init__(net, name or "EDMDenoiser", condition=condition, guidance=guidance, null_condition=null_condition)
        self.cond = cond

    def _denoise(self, x: torch.Tensor, sigma: Any, cond: dict[str, Any]) -> torch.Tensor:
        x64, s = self._prep(x, sigma)
        dt = _param_dtype(self.fn)
        rs = getattr(self.fn, "round_sigma", None)
        s_in = rs(s) if callable(rs) else s
        out = _unwrap(call_model(self.fn, x64.to(dt), s_in.to(dt), **self.cond, **cond), self.name)
        return out.to(_F64).to(x.dtype)


def vp_sigmas(alphas_cumprod: Any) -> torch.Tensor:
    """EDM noise levels sigma_t = sqrt((1 - abar_t) / abar_t) of a discrete VP schedule (float64).

    >>> s = vp_sigmas([0.99, 0.5, 0.01])
    >>> [round(float(v), 4) for v in s]
    [0.1005, 1.0, 9.9499]
    """
    a = torch.as_tensor(alphas_cumprod).detach().to("cpu", _F64).flatten()
    if a.numel() < 2:
        raise ValueError(f"alphas_cumprod must have at least 2 entries, got {a.numel()}")
    if not bool(((a > 0) & (a < 1)).all()):
        raise ValueError("alphas_cumprod must lie strictly inside (0, 1)")
    if not bool((a[1:] < a[:-1]).all()):
        raise ValueError("alphas_cumprod must be strictly decreasing in the timestep")
    return torch.sqrt((1.0 - a) / a)


class VPDenoiser(_Adapter):
    """A VP model ``model(x_vp, t)`` on a discrete alpha-bar schedule, as an EDM denoiser.

    Parameters
    ----------
    model:
        Called as ``model(x_vp, t)`` with ``x_vp = sqrt(abar) * x`` in the model's dtype and
        ``t`` a (B,) tensor of timesteps; may return a tensor or an object with ``.sample``
        (diffusers ``UNet2DModel``).
    alphas_cumprod:
        (T,) cumulative products abar_0 > ... > abar_{T-1} (e.g. ``scheduler.alphas_cumprod``).
    prediction:
        ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (the diffusers names). Required.
    timesteps:
        ``"continuous"`` (default): t is the float timestep at which the schedule's log sigma,
        linearly interpolated between integer steps, equals log sigma (k-diffusion's convention);
        ``"nearest"``: t is rounded to the nearest integer step (int64).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        alphas_cumprod: Any,
        prediction: str,
        *,
        timesteps: str = "continuous",
        name: str | None = None,
        condition: str | None = None,
        guidance: float = 0.0,
        null_condition: Any = None,
    ) -> None:
        check_callable(model, "model", "callable model(x_vp, t)")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if timesteps not in ("continuous", "nearest"):
            raise ValueError(f"timesteps must be 'continuous' or 'nearest', got {timesteps!r}")
        super().__init__(model, name or f"VPDenoiser({prediction})", condition=condition, guidance=guidance,
                         null_condition=null_condition)
        self.prediction = prediction
        self.timesteps = timesteps
        self.register_buffer("log_sigmas", vp_sigmas(alphas_cumprod).log(), persistent=False)

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Timestep (float) whose interpolated log sigma equals log(sigma); inside the schedule only."""
        ls = self.log_sigmas.to(sigma.device)
        lo, hi = float(ls[0]), float(ls[-1])
        u = sigma.to(_F64).log()
        tol = 1e-6  # float32 models get float32 sigmas
        if float(u.min()) < lo - tol or float(u.max()) > hi + tol:
            raise ValueError(
                f"{self.name}: sigma must lie inside the schedule's range [{math.exp(lo):.6g}, {math.exp(hi):.6g}], "
                f"got [{float(sigma.min()):.6g}, {float(sigma.max()):.6g}]"
            )
        u = u.clamp(lo, hi)
        i = torch.searchsorted(ls, u).clamp(1, ls.numel() - 1)
        w = (u - ls[i - 1]) / (ls[i] - ls[i - 1])
        return (i - 1).to(_F64) + w

    def _denoise(self, x: torch.Tensor, sigma: Any, cond: dict[str, Any]) -> torch.Tensor:
        x64, s = self._prep(x, sigma)
        t = self.sigma_to_t(s)
        t_in = t.round().long() if self.timesteps == "nearest" else t
        sb = self._bcast(s, x64)
        c = 1.0 / torch.sqrt(1.0 + sb * sb)  # sqrt(abar)
        dt = _param_dtype(self.fn)
        t_arg = t_in if self.timesteps == "nearest" else t_in.to(dt)
        out = _unwrap(call_model(self.fn, (c * x64).to(dt), t_arg, **cond), self.name)
        if out.shape != x.shape:
            raise ValueError(f"{self.name}: model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        out = out.to(_F64)
        if self.prediction == "epsilon":
            d = x64 - sb * out
        elif self.prediction == "v_prediction":
            d = c * c * x64 - sb * c * out
        else:
            d = out
        return d.to(x.dtype)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max) of the schedule: the model cannot be evaluated outside it."""
        return self.sigma_min, self.sigma_max

    def schedule_sigmas(self, steps: int) -> torch.Tensor:
        """The DDIM-style grid of ``steps`` points inside the schedule: the noise levels of the
        timesteps ``round(linspace(T - 1, 0, steps))`` (diffusers' ``timestep_spacing="linspace"``).

        >>> import torch
        >>> den = VPDenoiser(lambda x, t: x, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0),
        ...                  "epsilon")
        >>> sigmas = [round(float(s), 4) for s in den.schedule_sigmas(4)]
        >>> sigmas
        [157.4073, 9.4889, 1.4624, 0.01]
        """
        from pfd._checks import check_positive_int

        n = self.log_sigmas.numel()
        steps = check_positive_int(steps, "steps", minimum=2)
        if steps > n:
            raise ValueError(f"steps must be <= the schedule's {n} timesteps, got {steps}")
        t = torch.linspace(n - 1, 0, steps, dtype=_F64).round().long()
        return self.log_sigmas[t].exp().cpu()

    def ode_map(self, *, start: str = "vp", grid: str | None = None, **kw: Any) -> GridMap:
        """PF-ODE map inside the schedule's sigma range (default Heun on 18 points).

        ``grid="schedule"``: the DDIM-style timestep grid (:meth:`schedule_sigmas`); ``"karras"``
        (rho = ``rho``, default 7) or ``"loglinear"`` over [``sigma_min``, ``sigma_max``] (default
        the schedule's range; a range outside it is rejected). Default (None): ``"loglinear"`` for
        the multistep exponential integrators (dpm2m, dpm3m, ...), ``"schedule"`` for the others,
        the better grid of each at every step count measured (benchmarks/results/vp_grid.json).
        ``start="vp"`` starts from x_VE = z / sqrt(abar_T) (the VP sampler's x_T = z);
        ``start="ve"`` from sigma_max * z (the EDM convention).
        """
        from pfd.schedules import check_grid_name, make_grid

        lo = kw.pop("sigma_min", None)
        hi = kw.pop("sigma_max", None)
        steps = kw.pop("steps", None) or 18
        rho = kw.pop("rho", 7.0)
        solver = kw.pop("solver", "heun")
        if grid is None:
            entry = get_solver(solver)  # multistep exponential integrators: one call per step, order >= 2
            grid = "loglinear" if entry.backend == "builtin" and entry.evals_per_step == 1 and entry.order > 1 else "schedule"
        if grid == "schedule":
            if lo is not None or hi is not None:
                raise ValueError("sigma_min/sigma_max apply to grid='karras' or 'loglinear'; the 'schedule' grid "
                                 "spans the whole schedule")
            sigmas = self.schedule_sigmas(steps)
        else:
            lo = self.sigma_min if lo is None else lo
            hi = self.sigma_max if hi is None else hi
            check_in_range(self, float(lo), float(hi))
            sigmas = make_grid(check_grid_name(grid), steps, lo, hi, rho)
        return GridMap(self, sigmas, solver=solver, start=start, **kw)


def diffusers_denoiser(unet: torch.nn.Module, scheduler: Any, *, timesteps: str = "continuous", condition: str | None = None,
                       guidance: float = 0.0, null_condition: Any = None) -> VPDenoiser:
    """A diffusers ``UNet2DModel`` + scheduler (``alphas_cumprod``, ``config.prediction_type``) as a
    :class:`VPDenoiser` (the prediction type is read from the scheduler's config, not guessed).

    Conditional UNets: ``condition="class_labels"`` for a class-conditional ``UNet2DModel``
    (``num_class_embeds``), ``condition="encoder_hidden_states"`` for a ``UNet2DConditionModel``;
    ``guidance`` and ``null_condition`` give a two-call classifier-free-guided teacher."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise TypeError("scheduler must have alphas_cumprod (a diffusers DDPM/DDIM-style scheduler)")
    pred = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if pred is None:
        raise TypeError("scheduler.config.prediction_type is missing; use VPDenoiser(..., prediction=...) instead")
    return VPDenoiser(unet, abar, pred, timesteps=timesteps, name=f"diffusers:{type(unet).__name__}({pred})",
                      condition=condition, guidance=guidance, null_condition=null_condition)


class FlowMatchingDenoiser(_Adapter):
    """A flow-matching / rectified-flow velocity model ``velocity(x_t, t)`` as an EDM denoiser.

    ``time="noise_at_1"`` (default): x_t = (1 - t) x0 + t eps, v = eps - x0 (rectified flow,
    SD3). ``time="data_at_1"``: x_t = t x0 + (1 - t) eps, v = x0 - eps. The model receives
    ``t * t_scale`` (e.g. ``t_scale=1000`` for models trained on 0..1000).

    >>> import torch, pfd
    >>> gmm = pfd.GaussianMixture([1.0], [[1.0, 0.0]], [0.2])
    >>> def velocity(xt, t):  # exact velocity of the mixture, noise at t = 1
    ...     tb = t[:, None]; s = tb / (1 - tb); x = xt / (1 - tb)
    ...     d = gmm.denoiser(x, s.flatten())
    ...     return (x - d) / s - d
    >>> den = pfd.adapters.FlowMatchingDenoiser(velocity)
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> torch.allclose(den(x, 0.5), gmm.denoiser(x, 0.5))
    True
    """

    def __init__(self, velocity: Callable[..., Any], *, time: str = "noise_at_1", t_scale: float = 1.0,
                 name: str | None = None, condition: str | None = None, guidance: float = 0.0,
                 null_condition: Any = None) -> None:
        check_callable(velocity, "velocity", "callable velocity(x_t, t)")
        if time not in ("noise_at_1", "data_at_1"):
            raise ValueError(f"time must be 'noise_at_1' or 'data_at_1', got {time!r}")
        super().__init__(velocity, name or f"FlowMatchingDenoiser({time})", condition=condition, guidance=guidance,
                         null_condition=null_condition)
        self.time = time
        self.t_scale = check_positive_float(t_scale, "t_scale")

    def _denoise(self, x: torch.Tensor, sigma: Any, cond: dict[str, Any]) -> torch.Tensor:
        x64, s = self._prep(x, sigma)
        t = s / (1.0 + s)  # noise fraction
        tb = self._bcast(t, x64)
        xt = x64 / (1.0 + self._bcast(s, x64))
        dt = _param_dtype(self.fn)
        t_model = t if self.time == "noise_at_1" else 1.0 - t
        v = _unwrap(call_model(self.fn, xt.to(dt), (t_model * self.t_scale).to(dt), **cond), self.name).to(_F64)
        if v.shape != x.shape:
            raise ValueError(f"{self.name}: model returned shape {tuple(v.shape)} for input {tuple(x.shape)}")
        if self.time == "data_at_1":
            v = -v
        return (xt - tb * v).to(x.dtype)


class ScoreDenoiser(_Adapter):
    """A score model ``score(x_t, t)`` of a forward process, as an EDM denoiser (Tweedie).

    process:
        ``"ve"``: X = X0 + t Z (time = sigma); ``"ou"``: dX = -X dt + sqrt(2) dW, alpha = e^{-t};
        ``"vp"``: linear-beta VP SDE, alpha = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2) / 2)
        (score-SDE defaults beta_min=0.1, beta_max=20).
    The model gets x_t = alpha * x (the process's own coordinates) and t as a (B,) tensor.
    """

    def __init__(self, score: Callable[..., Any], process: str, *, beta_min: float = 0.1, beta_max: float = 20.0,
                 name: str | None = None, condition: str | None = None, guidance: float = 0.0,
                 null_condition: Any = None) -> None:
        check_callable(score, "score", "callable score(x_t, t)")
        if process not in ("ve", "ou", "vp"):
            raise ValueError(f"process must be 've', 'ou' or 'vp', got {process!r}")
        super().__init__(score, name or f"ScoreDenoiser({process})", condition=condition, guidance=guidance,
                         null_condition=null_condition)
        self.process = process
        self.beta_min = check_positive_float(beta_min, "beta_min", allow_zero=True)
        self.beta_max = check_positive_float(beta_max, "beta_max")
        if process == "vp" and not self.beta_max > self.beta_min:
            raise ValueError(f"beta_max must be > beta_min, got {beta_max} <= {beta_min}")

    @property
    def trained_sigma_range(self) -> tuple[float, float] | None:
        """(0, sigma at t = 1) for the VP process (its time runs over [0, 1]); None otherwise."""
        if self.process != "vp":
            return None
        return 0.0, math.sqrt(math.expm1(self.beta_min + 0.5 * (self.beta_max - self.beta_min)))

    def time_of_sigma(self, s: torch.Tensor) -> torch.Tensor:
        """The process time with EDM noise level sigma."""
        if self.process == "ve":
            return s
        big = torch.log1p(s * s)  # = -2 log alpha = integral of beta
        if self.process == "ou":
            return 0.5 * big
        a, b = 0.5 * (self.beta_max - self.beta_min), self.beta_min  # a t^2 + b t = big
        return 2.0 * big / (b + torch.sqrt(b * b + 4.0 * a * big))

    def _denoise(self, x: torch.Tensor, sigma: Any, cond: dict[str, Any]) -> torch.Tensor:
        x64, s = self._prep(x, sigma)
        t = self.time_of_sigma(s)
        sb = self._bcast(s, x64)
        dt = _param_dtype(self.fn)
        if self.process == "ve":
            sc = _unwrap(call_model(self.fn, x64.to(dt), t.to(dt), **cond), self.name).to(_F64)
            d = x64 + sb * sb * sc
        else:
            alpha = 1.0 / torch.sqrt(1.0 + sb * sb)
            xp = alpha * x64
            sc = _unwrap(call_model(self.fn, xp.to(dt), t.to(dt), **cond), self.name).to(_F64)
            d = (xp + (1.0 - alpha * alpha) * sc) / alpha
        if d.shape != x.shape:
            raise ValueError(f"{self.name}: model returned shape {tuple(d.shape)} for input {tuple(x.shape)}")
        return d.to(x.dtype)


class GridMap(DiffusionMap):
    """The PF-ODE map of a denoiser on an explicit, user-given sigma grid (a sampler's own grid).

    ``sigmas`` strictly decreasing and > 0, optionally ending in 0 as k-diffusion's grids do (the
    step to 0 is the final denoise, so ``[80, 1, 0.1, 0]`` is the same map as ``[80, 1, 0.1]``);
    built-in fixed-grid ``solver`` (``"euler"`` is DDIM in EDM coordinates); the last positive
    grid point is followed by the final denoise x <- D(x; sigmas[-1]). A one-point grid is a single
    denoise from sigmas[0]. The start x(sigmas[0]) from the noise z:

    * ``start="ve"``: sigmas[0] * z (EDM, k-diffusion);
    * ``start="vp"``: sqrt(1 + sigmas[0]^2) * z (a VP sampler's x_T = z);
    * ``start="fm"``: (1 + sigmas[0]) * z (a flow-matching sampler's x_t = z at t = s/(1 + s)).

    A denoiser with a ``sigma_range`` (a :class:`VPDenoiser`) rejects a grid leaving it.

    >>> import pfd
    >>> gmm = pfd.GaussianMixture([1.0], [[1.0, -1.0]], [0.5])
    >>> m = pfd.adapters.GridMap(gmm.denoiser, [80.0, 10.0, 1.0, 0.1], solver="euler", shape=(2,))
    >>> _ = m(pfd.canonical_noise(4, (2,))); m.last_nfe
    4
    >>> k = pfd.adapters.GridMap(gmm.denoiser, [80.0, 10.0, 1.0, 0.1, 0.0], solver="euler", shape=(2,))
    >>> bool((k(pfd.canonical_noise(4, (2,))) == m(pfd.canonical_noise(4, (2,)))).all())
    True
    """

    STARTS = ("ve", "vp", "fm")

    def __init__(self, denoiser: Callable[..., Any], sigmas: Sequence[float] | torch.Tensor, solver: str = "euler",
                 *, start: str = "ve", kind: str = "trajectory", shape: Sequence[int] | None = None,
                 model_dtype: torch.dtype | None = None, name: str | None = None, conditional: bool | None = None) -> None:
        from pfd.adapters.students import check_kind

        grid = torch.as_tensor(sigmas, dtype=_F64).detach().flatten().cpu()
        ends_in_zero = grid.numel() > 1 and float(grid[-1]) == 0.0
        if ends_in_zero:
            grid = grid[:-1]
        if grid.numel() < 1 or not bool(torch.isfinite(grid).all()) or bool((grid <= 0).any()):
            raise ValueError("sigmas must be a non-empty sequence of finite noise levels > 0 (only the last may be 0, "
                             "the final denoise)")
        if grid.numel() > 1 and not bool((grid[1:] < grid[:-1]).all()):
            raise ValueError("sigmas must be strictly decreasing (from noise to data)")
        entry = get_solver(solver)
        if entry.backend != "builtin":
            builtin = sorted(k for k, v in SOLVERS.items() if v.backend == "builtin")
            raise ValueError(f"solver must be a built-in fixed-grid method {builtin}, got {solver!r}")
        if start not in self.STARTS:
            raise ValueError(f"start must be one of {self.STARTS}, got {start!r}")
        hi = float(grid[0])
        lo = float(grid[-1]) if grid.numel() > 1 else hi / 2.0
        self._grid_range = (float(grid[-1]), hi)
        super().__init__(denoiser, sigma_min=lo, sigma_max=hi, solver=entry.name, steps=max(2, grid.numel()),
                         shape=shape, model_dtype=model_dtype, name=name, conditional=conditional)
        self.sigmas = grid
        self.start = start
        self.ends_in_zero = ends_in_zero
        self.kind = check_kind(kind)

    @property
    def nfe_per_sample(self) -> int:
        return self.stepper.nfe(self.sigmas.numel()) if self.sigmas.numel() > 1 else 1

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(type="GridMap", grid="explicit", sigmas=self.sigmas.tolist(), start=self.start, kind=self.kind,
                 nfe=self.nfe_per_sample, sigma_min=float(self.sigmas[-1]))
        if self.ends_in_zero:
            d["final_step"] = "denoise at sigmas[-2] (grid ends in 0)"
        d.pop("rho", None)
        d.pop("steps", None)
        return d

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self._check_z(z)
        s0 = float(self.sigmas[0])
        if self.start == "vp":
            z = z * (math.sqrt(1.0 + s0 * s0) / s0)
        elif self.start == "fm":
            z = z * ((1.0 + s0) / s0)
        if self.sigmas.numel() > 1:
            return super().__call__(z, labels)
        device = model_device(self.denoiser) or z.device
        labels = self._check_labels(labels, z.shape[0], device)
        counter = [0]
        denoise = self._make_denoise(device, counter, labels=labels)
        with torch.no_grad(), eval_mode(self.denoiser):
            x = denoise(s0 * z.to(device=device, dtype=_F64), s0)
        self.last_nfe = counter[0]
        return x
