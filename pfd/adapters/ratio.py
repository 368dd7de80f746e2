"""Distributional PFD: the PF-ODE map of a student's distribution via a density-ratio correction.

If r_sigma(x) = log q_sigma(x) - log p_sigma(x) is the log ratio of the noised student and
reference marginals, the student's score is s_q = s_p + grad_x r, so its EDM denoiser is

    D_q(x; sigma) = D_p(x; sigma) + sigma^2 grad_x r_sigma(x),

and integrating the PF-ODE with D_q gives Phi_q, hence PFD(q, p) as defined, for any
black-box sampler. :func:`fit_ratio` fits r post hoc with a time-conditioned classifier
(balanced logistic loss, whose optimum is the log ratio) and reports its held-out loss;
:class:`RatioCorrectedMap` integrates the corrected ODE, applying the correction only inside the
sigma range the ratio was trained on. grad_x r is computed by autograd on a fresh leaf under a
local ``enable_grad`` (and outside inference mode), so evaluation works inside ``no_grad`` /
``inference_mode`` contexts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pfd._checks import as_sigma, check_callable, check_positive_float, check_positive_int
from pfd._train import TrainConfig, as_pool, log_uniform, torch_threads, train_config
from pfd.maps import DiffusionMap
from pfd.noise import derive_seed
from pfd.report import progress_range
from pfd.schedules import check_sigma_range

__all__ = ["RATIO_TRAIN", "RatioCorrectedMap", "RatioFit", "RatioNet", "fit_ratio", "grad_log_ratio", "ratio_heldout_loss",
           "ratio_loss"]

_F64 = torch.float64
CHANCE_LOSS = 2.0 * math.log(2.0)
RATIO_TRAIN = TrainConfig(width=128, depth=3, train_steps=2000, batch_size=512, lr=1e-3)
""":func:`fit_ratio`'s default training (and :func:`pfd.distill.fit_score_net`'s)."""


class RatioNet(torch.nn.Module):
    """A time-conditioned scalar network r(x, sigma): MLP on (x * c_in, Fourier features of log sigma).

    c_in = 1 / sqrt(sigma^2 + sigma_data^2) keeps inputs O(1) at every noise level.
    """

    def __init__(self, dim: int, width: int = 128, depth: int = 3, *, sigma_data: float = 1.0, n_freq: int = 4,
                 out_dim: int = 1, seed: int = 0) -> None:
        super().__init__()
        check_positive_int(dim, "dim")
        check_positive_int(width, "width")
        check_positive_int(depth, "depth")
        self.dim = dim
        self.out_dim = check_positive_int(out_dim, "out_dim")
        self.sigma_data = check_positive_float(sigma_data, "sigma_data")
        self.register_buffer("freqs", 0.5 * 2.0 ** torch.arange(check_positive_int(n_freq, "n_freq"), dtype=torch.float32))
        layers: list[torch.nn.Module] = []
        fan_in = dim + 1 + 2 * n_freq
        g = torch.Generator().manual_seed(derive_seed(seed, 0x7A11))
        for _ in range(depth):
            layers += [torch.nn.Linear(fan_in, width), torch.nn.SiLU()]
            fan_in = width
        layers.append(torch.nn.Linear(fan_in, out_dim))
        self.net = torch.nn.Sequential(*layers)
        with torch.no_grad():  # seeded initialisation, independent of the global RNG
            for m in self.net:
                if isinstance(m, torch.nn.Linear):
                    bound = 1.0 / math.sqrt(m.in_features)
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 * bound - bound)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 2 * bound - bound)

    def features(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        dt = self.freqs.dtype
        s = sigma.to(dt).reshape(-1, 1)
        c_in = 1.0 / torch.sqrt(s * s + self.sigma_data**2)
        ls = torch.log(s)
        ang = ls * self.freqs[None, :]
        return torch.cat([x.to(dt).reshape(x.shape[0], -1) * c_in, ls / 4.0, ang.sin(), ang.cos()], dim=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.net(self.features(x, sigma))
        return out.squeeze(1) if self.out_dim == 1 else out


def ratio_loss(r: Callable[..., torch.Tensor], x_student: torch.Tensor, s_student: torch.Tensor,
               x_ref: torch.Tensor, s_ref: torch.Tensor) -> torch.Tensor:
    """Balanced logistic loss softplus(-r(student)) + softplus(r(reference)) (mean over each class).
    Its minimiser is r = log q_sigma - log p_sigma; chance level (r = 0) is 2 log 2."""
    f = torch.nn.functional.softplus
    return f(-r(x_student, s_student)).mean() + f(r(x_ref, s_ref)).mean()


@dataclass
class RatioFit:
    """A fitted log-ratio network and how well it separates the classes on held-out data."""

    log_ratio: RatioNet
    heldout_loss: float
    chance_loss: float
    train_loss: float
    sigma_min: float
    sigma_max: float
    train_steps: int
    n_student: int
    n_reference: int
    seconds: float
    heldout_by_sigma: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "log_ratio"}


def _heldout(net: RatioNet, xq: torch.Tensor, xp: torch.Tensor, lo: float, hi: float, seed: int,
             bands: int = 4) -> tuple[float, list[dict[str, float]]]:
    g = torch.Generator().manual_seed(derive_seed(seed, 0x4E1D))
    sq, sp = log_uniform(xq.shape[0], lo, hi, g), log_uniform(xp.shape[0], lo, hi, g)
    nq = xq + sq[:, None] * torch.randn(xq.shape, generator=g, dtype=_F64)
    np_ = xp + sp[:, None] * torch.randn(xp.shape, generator=g, dtype=_F64)
    f = torch.nn.functional.softplus
    with torch.no_grad():
        lq, lp = f(-net(nq, sq)).double(), f(net(np_, sp)).double()
    total = float(lq.mean() + lp.mean())
    edges = torch.exp(torch.linspace(math.log(lo), math.log(hi), bands + 1, dtype=_F64))
    by = []
    for i in range(bands):
        mq = (sq >= edges[i]) & (sq <= edges[i + 1])
        mp = (sp >= edges[i]) & (sp <= edges[i + 1])
        if mq.any() and mp.any():
            by.append({"sigma_lo": float(edges[i]), "sigma_hi": float(edges[i + 1]),
                       "loss": float(lq[mq].mean() + lp[mp].mean())})
    return total, by


def fit_ratio(
    sampler: Any,
    reference_sampler: Any,
    *,
    sigma_min: float = 0.02,
    sigma_max: float = 5.0,
    n_samples: int = 65536,
    holdout: float = 0.1,
    sigma_data: float | None = None,
    seed: int = 0,
    net: RatioNet | None = None,
    betas: tuple[float, float] = (0.5, 0.99),
    lr_schedule: str = "constant",
    num_threads: int | None = 1,
    config: TrainConfig | None = None,
) -> RatioFit:
    """Fit the log ratio r_sigma = log q_sigma - log p_sigma between a black-box sampler and reference
    samples with a time-conditioned classifier (balanced logistic loss, sigma log-uniform in
    [sigma_min, sigma_max], fresh Gaussian noise per step, independent for both classes).

    ``sampler`` / ``reference_sampler``: a (N, d) tensor of samples or ``callable(n, seed)``
    returning ``n_samples`` samples. A fraction ``holdout`` of each is kept out of training; the
    returned :class:`RatioFit` carries the held-out loss (chance level 2 log 2 = 1.386: a value
    near it means the classifier cannot tell the distributions apart, at the level of its
    capacity). ``config`` (:class:`pfd.TrainConfig`, default :data:`RATIO_TRAIN`: width 128,
    depth 3, 2000 steps of batch 512, lr 1e-3) sizes the network (``width``, ``depth``) and the
    training (``train_steps``, ``batch_size``, ``lr``; ``progress=False`` hides the progress bar).
    Pass ``net`` to continue training an existing ratio network (e.g. DiffRatio's).
    Adam with ``betas``; ``lr_schedule="cosine"`` anneals the learning rate to 0 (a sharper fit of
    small ratios at high sigma). ``num_threads`` (default 1) is torch's thread count during the
    fit (restored after).

    >>> import torch, pfd
    >>> p = pfd.GaussianMixture([1.0], [[0.0]], [1.0])
    >>> q = pfd.GaussianMixture([1.0], [[1.0]], [1.0])
    >>> cfg = pfd.adapters.RATIO_TRAIN.replace(train_steps=100, width=32)
    >>> fit = pfd.adapters.fit_ratio(q.sample(2000, seed=1), p.sample(2000, seed=2), seed=0, config=cfg)
    >>> fit.heldout_loss < fit.chance_loss
    True
    """
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    cfg = train_config(config, RATIO_TRAIN)
    check_positive_int(n_samples, "n_samples", minimum=4)
    if not isinstance(holdout, float) or not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be a float in (0, 1), got {holdout!r}")
    xq = as_pool(sampler, n_samples, derive_seed(seed, 1), "sampler")
    xp = as_pool(reference_sampler, n_samples, derive_seed(seed, 2), "reference_sampler")
    if xq.shape[1:] != xp.shape[1:]:
        raise ValueError(
            f"sampler and reference_sampler give different sample shapes: {tuple(xq.shape[1:])} vs {tuple(xp.shape[1:])}"
        )
    g = torch.Generator().manual_seed(derive_seed(seed, 3))
    xq, xp = xq[torch.randperm(xq.shape[0], generator=g)], xp[torch.randperm(xp.shape[0], generator=g)]
    hq, hp = max(1, int(holdout * xq.shape[0])), max(1, int(holdout * xp.shape[0]))
    tq, tp, vq, vp = xq[hq:], xp[hp:], xq[:hq], xp[:hp]
    if sigma_data is None:
        sigma_data = float(tp.std(0).mean())
    if net is None:
        net = RatioNet(xq.shape[1], cfg.width, cfg.depth, sigma_data=sigma_data, seed=derive_seed(seed, 4))
    elif not isinstance(net, RatioNet):
        raise TypeError(f"net must be a pfd.adapters.RatioNet, got {type(net).__name__}")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=tuple(betas))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps) if lr_schedule == "cosine" else None
    with torch_threads(num_threads):
        return _train_ratio(net, opt, sched, tq, tp, vq, vp, lo, hi, cfg, g, seed)


def _train_ratio(net: RatioNet, opt: torch.optim.Optimizer, sched: Any, tq: torch.Tensor, tp: torch.Tensor, vq: torch.Tensor,
                 vp: torch.Tensor, lo: float, hi: float, cfg: TrainConfig, g: torch.Generator, seed: int) -> RatioFit:
    t0 = time.perf_counter()
    net.train()
    dt = net.freqs.dtype
    ema = None
    batch_size = cfg.batch_size
    for _ in progress_range(cfg.train_steps, "fit_ratio", cfg.progress):
        iq = torch.randint(0, tq.shape[0], (batch_size,), generator=g)
        ip = torch.randint(0, tp.shape[0], (batch_size,), generator=g)
        sq, sp = log_uniform(batch_size, lo, hi, g), log_uniform(batch_size, lo, hi, g)
        nq = tq[iq] + sq[:, None] * torch.randn((batch_size, tq.shape[1]), generator=g, dtype=_F64)
        np_ = tp[ip] + sp[:, None] * torch.randn((batch_size, tp.shape[1]), generator=g, dtype=_F64)
        loss = ratio_loss(net, nq.to(dt), sq.to(dt), np_.to(dt), sp.to(dt))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        lv = loss.item()
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
    net.eval()
    held, by = _heldout(net, vq, vp, lo, hi, seed)
    nq, np_ = int(tq.shape[0] + vq.shape[0]), int(tp.shape[0] + vp.shape[0])
    return RatioFit(net, held, CHANCE_LOSS, float(ema), lo, hi, cfg.train_steps, nq, np_,
                    time.perf_counter() - t0, by)


def ratio_heldout_loss(log_ratio: RatioNet, student_samples: torch.Tensor, reference_samples: torch.Tensor,
                       sigma_min: float, sigma_max: float, *, seed: int = 0) -> tuple[float, list[dict[str, float]]]:
    """Balanced logistic loss of a ratio network on (held-out) samples, sigma log-uniform in the range,
    noise fixed by ``seed``; also per quarter of the log-sigma range. Chance level: 2 log 2."""
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    xq = as_pool(student_samples, 0, 0, "student_samples")
    xp = as_pool(reference_samples, 0, 0, "reference_samples")
    return _heldout(log_ratio, xq, xp, lo, hi, seed)


def grad_log_ratio(log_ratio: Callable[..., torch.Tensor], x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """grad_x r(x, sigma), float64, computable inside no_grad / inference_mode (fresh leaf, local grad)."""
    dt = next((p.dtype for p in log_ratio.parameters()), _F64) if isinstance(log_ratio, torch.nn.Module) else _F64
    with torch.inference_mode(False), torch.enable_grad():
        xl = x.detach().clone().to(dt).requires_grad_(True)
        sl = sigma.detach().clone().to(dt)
        r = log_ratio(xl, sl)
        if not isinstance(r, torch.Tensor) or r.shape != (x.shape[0],):
            raise ValueError(f"log_ratio must return a tensor of shape ({x.shape[0]},), got "
                             f"{getattr(r, 'shape', type(r).__name__)}")
        (grad,) = torch.autograd.grad(r.sum(), xl)
    return grad.detach().to(_F64)


class _CorrectedDenoiser(torch.nn.Module):
    def __init__(self, reference: Callable[..., torch.Tensor], reference_type: str, log_ratio: Callable[..., torch.Tensor],
                 lo: float, hi: float) -> None:
        super().__init__()
        self.reference = reference
        self.reference_type = reference_type
        self.log_ratio = log_ratio
        self.lo, self.hi = lo, hi
        self.ratio_evals = 0

    def forward(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        x64 = x.to(_F64)
        s = as_sigma(sigma, x.shape[0], x.device)
        if self.reference_type == "denoiser":
            d = self.reference(x64, s).to(_F64)
        else:
            d = x64 + (s * s).reshape(-1, *([1] * (x64.ndim - 1))) * self.reference(x64, s).to(_F64)
        inside = (s >= self.lo * (1 - 1e-12)) & (s <= self.hi * (1 + 1e-12))
        if bool(inside.any()):
            idx = torch.nonzero(inside).flatten()
            gr = grad_log_ratio(self.log_ratio, x64[idx], s[idx])
            self.ratio_evals += 1
            d = d.clone()
            d[idx] = d[idx] + (s[idx] ** 2).reshape(-1, *([1] * (x64.ndim - 1))) * gr
        return d.to(x.dtype)


class RatioCorrectedMap(DiffusionMap):
    """The PF-ODE map of s_q = s_ref + grad_x r: a student's distribution seen through a reference.

    Parameters
    ----------
    reference:
        The reference's EDM denoiser ``D(x, sigma)`` (default), its score ``s(x, sigma)``
        (``reference_type="score"``), or a :class:`pfd.GaussianMixture`.
    log_ratio:
        r(x, sigma) -> (B,) estimating log q_sigma(x) - log p_sigma(x) against THE SAME reference
        (e.g. ``fit_ratio(...).log_ratio`` or DiffRatio's ratio network).
    ratio_sigma_min, ratio_sigma_max:
        The sigma range the ratio was trained on; outside it the reference is used unchanged.
        Taken from a :class:`RatioFit` when one is passed as ``log_ratio``.
    **kwargs:
        :class:`pfd.DiffusionMap` options (solver, steps, sigma_max, sigma_min, ...).

    Examples
    --------
    >>> import torch, pfd
    >>> p = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    >>> q = pfd.GaussianMixture([1.0], [[0.5, 0.0]], [1.0])
    >>> def exact_r(x, s):  # log q_s - log p_s of N((0.5, 0), I) vs N(0, I), noised
    ...     c = 1.0 + s**2
    ...     return (x.pow(2).sum(1) - (x - torch.tensor([0.5, 0.0])).pow(2).sum(1)) / (2 * c)
    >>> m = pfd.adapters.RatioCorrectedMap(p, exact_r, 0.002, 80.0, shape=(2,))
    >>> z = pfd.canonical_noise(64, (2,))
    >>> float((m(z) - q.ode_map()(z)).abs().max()) < 1e-6
    True
    """

    def __init__(self, reference: Any, log_ratio: Any, ratio_sigma_min: float | None = None,
                 ratio_sigma_max: float | None = None, *, reference_type: str = "denoiser",
                 shape: Sequence[int] | None = None, name: str | None = None, **kwargs: Any) -> None:
        from pfd.analytic.gmm import GaussianMixture

        if isinstance(log_ratio, RatioFit):
            ratio_sigma_min = log_ratio.sigma_min if ratio_sigma_min is None else ratio_sigma_min
            ratio_sigma_max = log_ratio.sigma_max if ratio_sigma_max is None else ratio_sigma_max
            self.ratio_fit: RatioFit | None = log_ratio
            log_ratio = log_ratio.log_ratio
        else:
            self.ratio_fit = None
        check_callable(log_ratio, "log_ratio", "callable r(x, sigma) -> (B,)")
        if ratio_sigma_min is None or ratio_sigma_max is None:
            raise ValueError("ratio_sigma_min and ratio_sigma_max (the sigma range the ratio was trained on) are required")
        lo, hi = check_sigma_range(ratio_sigma_min, ratio_sigma_max)
        if reference_type not in ("denoiser", "score"):
            raise ValueError(f"reference_type must be 'denoiser' or 'score', got {reference_type!r}")
        if isinstance(reference, GaussianMixture):
            shape = shape or reference.event_shape
            name = name or f"ratio-corrected {reference!r}"
            reference = reference.score if reference_type == "score" else reference.denoiser
        check_callable(reference, "reference", "a callable denoiser/score or a GaussianMixture")
        den = _CorrectedDenoiser(reference, reference_type, log_ratio, lo, hi)
        super().__init__(den, shape=shape, model_dtype=torch.float64, name=name or "RatioCorrectedMap", **kwargs)
        self.ratio_sigma_min, self.ratio_sigma_max = lo, hi

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(type="RatioCorrectedMap", ratio_sigma_range=[self.ratio_sigma_min, self.ratio_sigma_max],
                 correction="D_ref + sigma^2 grad_x r inside the ratio's sigma range",
                 note="each evaluation = one reference denoiser call + one ratio forward/backward")
        if self.ratio_fit is not None:
            d["ratio_fit"] = self.ratio_fit.to_dict()
        return d
