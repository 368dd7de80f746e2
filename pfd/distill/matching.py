"""Distribution-matching students whose law is known exactly: DiffRatio vs DMD/VSD inside training.

The fair test of DiffRatio's claim (lower generator-gradient bias than two-score distillation,
with a smaller auxiliary network) needs the exact score difference s_q - s_p at every training
step. :class:`MixtureGenerator` provides it: G(z)_i = mu_c + A_c z_i with the component c = i mod K
fixed by the row, so the generator's law is exactly the Gaussian mixture
q = (1/K) sum_c N(mu_c, A_c A_c^T), and q_sigma (EDM noising x + sigma eps) is one too.

:func:`train_matching` trains such a generator with one of several arms, from the same
initialisation, with the same generator optimiser, batches, sigma law and weight w(sigma) = sigma;
the arms differ only in the estimate delta(x, sigma) of s_q - s_p used in the generator step
(see :func:`pfd.distill.diffratio.score_difference_surrogate`):

* ``"oracle"``: the exact s_q - s_p (no auxiliary network; the best any arm can do);
* ``"diffratio"``: grad_x r of a ratio network trained online (balanced logistic loss, student
  samples vs reference samples); no teacher score is used;
* ``"dmd"``: s_fake - s_teacher, a FROZEN pre-trained teacher score network (with its real
  pre-training error) and a fake-score network tracking the generator online by denoising score
  matching on its samples, initialised from the teacher (as DMD / VSD do);
* ``"dmd-exact-teacher"``: s_fake - s_p with the exact teacher score (isolates the fake-score lag).

Each auxiliary network gets ``aux_steps`` Adam updates per generator step on batches of the same
size (equal auxiliary budgets). Along training, :func:`gradient_bias` measures the
training-weighted, sigma-integrated bias of the arm's generator gradient against the exact one:
the same (z, sigma, eps) draws, sigma from the training law, weight sigma.

>>> import pfd
>>> from pfd.distill.matching import MATCHING_TRAIN, MixtureGenerator, train_matching
>>> target = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.05, 0.05])
>>> gen = MixtureGenerator.initial(target, seed=0)
>>> cfg = MATCHING_TRAIN.replace(train_steps=20, progress=False)
>>> res = train_matching(target, gen, "oracle", eval_every=10, config=cfg)
>>> [round(h["cosine"], 6) for h in res.history]       # the oracle's gradient is the exact one
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pfd._checks import check_positive_float, check_positive_int
from pfd._train import TrainConfig, log_uniform, torch_threads, train_config
from pfd.adapters.ratio import RatioNet, grad_log_ratio, ratio_loss
from pfd.analytic.gmm import GaussianMixture
from pfd.distill.diffratio import ScoreNet, dsm_loss, generator_gradient, score_difference_surrogate
from pfd.noise import derive_seed
from pfd.report import progress_range
from pfd.schedules import check_sigma_range

__all__ = ["ARMS", "MATCHING_TRAIN", "MatchingResult", "MixtureGenerator", "gradient_bias", "n_params", "train_matching"]

_F64 = torch.float64
ARMS = ("oracle", "diffratio", "dmd", "dmd-exact-teacher")
MATCHING_TRAIN = TrainConfig(width=64, depth=3, train_steps=1500, batch_size=256, lr=5e-3, n_eval=4096)
""":func:`train_matching`'s default training (``width`` x ``depth``: the auxiliary network)."""


def n_params(module: torch.nn.Module) -> int:
    """Number of trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class MixtureGenerator(torch.nn.Module):
    """A one-step generator with an exactly known law: G(z)_i = mu_c + A_c z_i, c = i mod K.

    Its law is ``law()`` = (1/K) sum_c N(mu_c, A_c A_c^T) (rows are assigned to components
    cyclically, so every batch is stratified over the components). Parameters are float64.

    >>> import torch
    >>> from pfd.distill import MixtureGenerator
    >>> g = MixtureGenerator([[0.0, 0.0], [2.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]] * 2)
    >>> g(torch.zeros(3, 2)).tolist(), g.law().n_components
    ([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]], 2)
    """

    def __init__(self, means: Any, scales: Any) -> None:
        super().__init__()
        mu = torch.as_tensor(means, dtype=_F64)
        a = torch.as_tensor(scales, dtype=_F64)
        if mu.ndim != 2 or mu.shape[0] < 1:
            raise ValueError(f"means must have shape (K, d), got {tuple(mu.shape)}")
        k, d = mu.shape
        if a.shape != (k, d, d):
            raise ValueError(f"scales must have shape (K, d, d) = ({k}, {d}, {d}), got {tuple(a.shape)}")
        self.means = torch.nn.Parameter(mu.clone())
        self.scales = torch.nn.Parameter(a.clone())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def initial(cls, target: GaussianMixture, n_components: int | None = None, *, shrink: float = 0.5,
                rotate: float = 0.2, jitter: float = 0.1, scale: float = 0.4, seed: int = 0) -> MixtureGenerator:
        """A perturbed start for matching ``target``: component c at shrink * R(rotate) mu_c + jitter N(0, I)
        (means of ``target`` cycled if ``n_components`` differs), A_c = scale I."""
        if not isinstance(target, GaussianMixture):
            raise TypeError(f"target must be a pfd.GaussianMixture, got {type(target).__name__}")
        k = target.n_components if n_components is None else check_positive_int(n_components, "n_components")
        d = target.dim
        mu = target.means[torch.arange(k) % target.n_components].clone()
        if d >= 2:
            c, s = math.cos(rotate), math.sin(rotate)
            rot = torch.eye(d, dtype=_F64)
            rot[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=_F64)
            mu = mu @ rot.T
        g = torch.Generator().manual_seed(derive_seed(seed, 0x6E0))
        mu = shrink * mu + jitter * torch.randn(mu.shape, generator=g, dtype=_F64)
        return cls(mu, scale * torch.eye(d, dtype=_F64).expand(k, d, d))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be a tensor of shape (n, {self.dim})")
        c = torch.arange(z.shape[0], device=z.device) % self.n_components
        return self.means[c] + torch.einsum("nde,ne->nd", self.scales[c], z.to(_F64))

    def law(self) -> GaussianMixture:
        """The exact law of G(z), z ~ N(0, I): a GaussianMixture with full covariances A_c A_c^T."""
        with torch.no_grad():
            a = self.scales.detach()
            cov = a @ a.transpose(1, 2)
            return GaussianMixture(torch.ones(self.n_components, dtype=_F64), self.means.detach().clone(),
                                   0.5 * (cov + cov.transpose(1, 2)))


def _exact_delta(law: GaussianMixture, target: Any):
    def delta(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return law.score(x, s) - target.score(x, s)
    return delta


def gradient_bias(generator: torch.nn.Module, delta: Any, exact: Any, *, n: int = 4096, sigma_min: float = 0.02,
                  sigma_max: float = 5.0, seed: int = 0, n_bands: int = 4) -> dict[str, Any]:
    """Training-weighted, sigma-integrated bias of a generator gradient.

    With n draws (z, sigma, eps), sigma log-uniform in [sigma_min, sigma_max] (the training law)
    and weight w(sigma) = sigma, g = E[w (dG/dtheta)^T delta(G(z) + sigma eps, sigma)] for the
    estimate ``delta`` and g* for ``exact``, on the SAME draws (so the sampling noise of the two
    gradients cancels in their difference). Returns ``rel`` = ||g - g*|| / ||g*||, ``cosine``,
    ``err_sq`` = ||g - g*||^2, ``exact_sq`` = ||g*||^2 and ``field_rel_mse`` = E||delta - delta*||^2 /
    E||delta*||^2 at the noised generator samples; ``rel_by_band``: ``rel`` restricted to each of
    ``n_bands`` equal bands of log sigma (``band_edges``).

    >>> import torch, pfd
    >>> from pfd.distill.matching import MixtureGenerator, gradient_bias
    >>> p = pfd.GaussianMixture([1.0], [[1.0, 0.0]], [0.1])
    >>> gen = MixtureGenerator([[0.0, 0.0]], [[[0.5, 0.0], [0.0, 0.5]]])
    >>> ex = lambda x, s: gen.law().score(x, s) - p.score(x, s)
    >>> gradient_bias(gen, lambda x, s: 2 * ex(x, s), ex, n=256)["rel"]   # twice the exact gradient
    1.0
    """
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    check_positive_int(n, "n")
    check_positive_int(n_bands, "n_bands")
    d = _gen_dim(generator)
    g = torch.Generator().manual_seed(derive_seed(seed, 0xB1A5))
    z = torch.randn(n, d, generator=g, dtype=_F64)
    eps = torch.randn(n, d, generator=g, dtype=_F64)
    s = log_uniform(n, lo, hi, g)
    g_est = generator_gradient(generator, delta, z, s, eps)
    g_ex = generator_gradient(generator, exact, z, s, eps)
    with torch.no_grad():
        x = generator(z).to(_F64) + s[:, None] * eps
        d_est, d_ex = delta(x, s).to(_F64), exact(x, s).to(_F64)
    bands = []
    edges = torch.exp(torch.linspace(math.log(lo), math.log(hi), n_bands + 1, dtype=_F64))
    for j in range(n_bands):
        m = (s >= edges[j]) & (s <= edges[j + 1])
        if int(m.sum()) < 2:
            bands.append(float("nan"))
            continue
        ge = generator_gradient(generator, delta, z[m], s[m], eps[m])
        gx = generator_gradient(generator, exact, z[m], s[m], eps[m])
        bands.append(float((ge - gx).norm() / gx.norm().clamp_min(1e-300)))
    err_sq = float((g_est - g_ex).pow(2).sum())
    exact_sq = float(g_ex.pow(2).sum())
    cos = float(g_est @ g_ex / (g_est.norm() * g_ex.norm()).clamp_min(1e-300))
    return {"rel": math.sqrt(err_sq / max(exact_sq, 1e-300)), "cosine": cos, "err_sq": err_sq, "exact_sq": exact_sq,
            "field_rel_mse": float((d_est - d_ex).pow(2).sum(1).mean() / d_ex.pow(2).sum(1).mean().clamp_min(1e-300)),
            "rel_by_band": bands, "band_edges": edges.tolist()}


def _gen_dim(generator: torch.nn.Module) -> int:
    if isinstance(generator, MixtureGenerator):
        return generator.dim
    first = next(m for m in generator.modules() if isinstance(m, torch.nn.Linear))
    return first.in_features


@dataclass
class MatchingResult:
    """A generator trained by :func:`train_matching`, its arm, and the measurements along training."""

    generator: MixtureGenerator
    arm: str
    aux_params: int
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Bias over the whole run: ``grad_bias`` = sqrt(sum_t ||g_t - g*_t||^2 / sum_t ||g*_t||^2) over the
        checkpoints, ``cosine`` = mean cosine, ``field_rel_mse`` = mean field error."""
        h = self.history
        err = sum(r["err_sq"] for r in h)
        ex = sum(r["exact_sq"] for r in h)
        return {"grad_bias": math.sqrt(err / max(ex, 1e-300)), "cosine": sum(r["cosine"] for r in h) / len(h),
                "field_rel_mse": sum(r["field_rel_mse"] for r in h) / len(h)}


def train_matching(
    target: GaussianMixture,
    generator: MixtureGenerator,
    arm: str,
    *,
    reference: torch.Tensor | None = None,
    teacher: ScoreNet | None = None,
    aux_steps: int = 2,
    aux_lr: float = 1e-3,
    sigma_min: float = 0.02,
    sigma_max: float = 5.0,
    eval_every: int = 100,
    seed: int = 0,
    num_threads: int | None = 1,
    config: TrainConfig | None = None,
) -> MatchingResult:
    """Train (a copy of) ``generator`` towards ``target`` with one arm (see the module docstring).

    ``reference``: (N, d) samples of the target (the data / teacher samples; needed by
    ``"diffratio"``; default 65536 samples of ``target``). ``teacher``: the frozen pre-trained
    teacher score network (needed by ``"dmd"``; the fake score starts from a copy of it, also for
    ``"dmd-exact-teacher"`` when given). ``config`` (:class:`pfd.TrainConfig`, default
    :data:`MATCHING_TRAIN`: width 64, depth 3, 1500 steps of batch 256, lr 5e-3, n_eval 4096):
    ``width`` x ``depth`` is the size of the one network built here, the ratio network
    (``"diffratio"``) or the fake score when no teacher network is given; the generator gets
    ``train_steps`` Adam steps (``lr``, betas (0, 0.99)) of batch ``batch_size``; the auxiliary
    network ``aux_steps`` Adam updates (``aux_lr``, betas (0.5, 0.99)) of the same batch size per
    generator step. Every ``eval_every`` steps (and at 0 and the end) the history records
    :func:`gradient_bias` on ``n_eval`` fixed evaluation draws and the auxiliary loss.
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target must be a pfd.GaussianMixture, got {type(target).__name__}")
    if not isinstance(generator, MixtureGenerator):
        raise TypeError(f"generator must be a MixtureGenerator, got {type(generator).__name__}")
    if generator.dim != target.dim:
        raise ValueError(f"generator dim {generator.dim} != target dim {target.dim}")
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    cfg = train_config(config, MATCHING_TRAIN)
    check_positive_int(aux_steps, "aux_steps")
    check_positive_int(eval_every, "eval_every")
    aux_lr = check_positive_float(aux_lr, "aux_lr")
    train_steps = cfg.train_steps
    if arm == "dmd" and teacher is None:
        raise ValueError("arm 'dmd' needs the pre-trained teacher score network (teacher=ScoreNet)")
    if teacher is not None and not isinstance(teacher, ScoreNet):
        raise TypeError(f"teacher must be a ScoreNet, got {type(teacher).__name__}")
    gen = copy.deepcopy(generator)
    d, b = gen.dim, cfg.batch_size
    if reference is None:
        reference = target.sample(65536, seed=derive_seed(seed, 0x5EF))
    data = torch.as_tensor(reference, dtype=_F64)
    if data.ndim != 2 or data.shape[1] != d:
        raise ValueError(f"reference must have shape (N, {d}), got {tuple(data.shape)}")
    data32 = data.float()
    g = torch.Generator().manual_seed(derive_seed(seed, 0x3A7C))
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(0.0, 0.99))
    aux: torch.nn.Module | None = None
    if arm == "diffratio":
        aux = RatioNet(d, cfg.width, cfg.depth, sigma_data=float(data.std(0).mean()), seed=derive_seed(seed, 0x3A7D))
    elif arm.startswith("dmd"):
        aux = (copy.deepcopy(teacher) if teacher is not None else
               ScoreNet(d, cfg.width, cfg.depth, sigma_data=float(data.std(0).mean()), seed=derive_seed(seed, 0x3A7E)))
        aux.requires_grad_(True)
        aux.train()
    if teacher is not None:
        teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    opt_a = torch.optim.Adam(aux.parameters(), lr=aux_lr, betas=(0.5, 0.99)) if aux is not None else None

    def delta_fn(law: GaussianMixture):
        if arm == "oracle":
            return _exact_delta(law, target)
        if arm == "diffratio":
            return lambda x, s: grad_log_ratio(aux, x, s)
        s_p = teacher if arm == "dmd" else target.score

        def delta(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return aux(x, s).to(_F64) - s_p(x, s).to(_F64)
        return delta

    history: list[dict[str, float]] = []
    aux_loss = float("nan")
    t0 = time.perf_counter()

    def record(step: int) -> None:
        law = gen.law()
        m = gradient_bias(gen, delta_fn(law), _exact_delta(law, target), n=cfg.n_eval, sigma_min=lo, sigma_max=hi,
                          seed=derive_seed(seed, 0xE7A1))
        history.append({"step": step, **m, "aux_loss": aux_loss, "seconds": time.perf_counter() - t0})

    with torch_threads(num_threads):
        record(0)
        for i in progress_range(train_steps, f"matching[{arm}]", cfg.progress):
            if aux is not None:
                for _ in range(aux_steps):
                    with torch.no_grad():
                        xq = gen(torch.randn((b, d), generator=g, dtype=_F64)).float()
                    sq = log_uniform(b, lo, hi, g).float()
                    eq = torch.randn((b, d), generator=g)
                    if arm == "diffratio":
                        xp = data32[torch.randint(0, data.shape[0], (b,), generator=g)]
                        sp = log_uniform(b, lo, hi, g).float()
                        loss_a = ratio_loss(aux, xq + sq[:, None] * eq, sq,
                                            xp + sp[:, None] * torch.randn((b, d), generator=g), sp)
                    else:
                        loss_a = dsm_loss(aux, xq, sq, eq)
                    opt_a.zero_grad(set_to_none=True)
                    loss_a.backward()
                    opt_a.step()
                aux_loss = float(loss_a.detach())
            z = torch.randn((b, d), generator=g, dtype=_F64)
            s = log_uniform(b, lo, hi, g)
            eps = torch.randn((b, d), generator=g, dtype=_F64)
            x = gen(z)
            law = gen.law() if arm in ("oracle",) else None
            delta = delta_fn(law)(x.detach() + s[:, None] * eps, s)
            loss_g = score_difference_surrogate(x, delta, s)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if (i + 1) % eval_every == 0 or i + 1 == train_steps:
                record(i + 1)
    return MatchingResult(gen.eval(), arm, n_params(aux) if aux is not None else 0, train_steps, time.perf_counter() - t0,
                          history)
