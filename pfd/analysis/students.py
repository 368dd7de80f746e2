"""Small EDM-preconditioned MLP denoisers trained by denoising score matching (CPU-sized).

The student of the analytic teacher-student protocol: a denoiser D_theta(x; sigma) trained on N
points drawn from a teacher mixture. With EDM preconditioning (Karras et al. 2022)

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
    c_skip = s_d^2 / (sigma^2 + s_d^2),  c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
    c_in = 1 / sqrt(sigma^2 + s_d^2),    c_noise = ln(sigma) / 4,

and the EDM loss E_{sigma, y, eps} lambda(sigma) ||D(y + sigma eps; sigma) - y||^2 with
lambda = 1 / c_out^2 and ln sigma ~ N(P_mean, P_std^2). Trained long enough on few points the
network approaches the empirical (memorizing) denoiser; on many points, the teacher's.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pfd._checks import check_positive_float, check_positive_int
from pfd._train import atomic_torch_save
from pfd.noise import derive_seed
from pfd.solvers import SolverSettings

__all__ = ["DSMTrainer", "DenoiserMLP", "TrainConfig", "dsm_loss"]


@dataclass(frozen=True)
class TrainConfig:
    """How the analyses train a DSM student (:class:`DSMTrainer`) and score it: MLP ``width`` and
    ``depth``, ``train_steps`` Adam steps of ``batch_size`` at learning rate ``lr``, PFDs on
    ``n_eval`` shared noise samples of ``eval_seed`` with the maps' ``solver``.

    >>> cfg = TrainConfig(width=32, train_steps=500)
    >>> cfg.depth, cfg.solver.to_dict()
    (3, {'solver': 'heun', 'steps': 18})
    >>> cfg.replace(width=8).width
    8
    """

    width: int = field(default=64, metadata={"help": "MLP width"})
    depth: int = field(default=3, metadata={"help": "hidden layers of the MLP denoiser"})
    train_steps: int = field(default=2000, metadata={"help": "optimizer steps per student"})
    batch_size: int = field(default=256, metadata={"help": "training batch size"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate"})
    n_eval: int = field(default=2048, metadata={"help": "shared noise samples per PFD"})
    eval_seed: int = field(default=0, metadata={"help": "seed of the shared evaluation noise"})
    solver: SolverSettings = field(default_factory=SolverSettings)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("width", "depth", "train_steps", "batch_size"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.n_eval, "n_eval", minimum=2)
        check_positive_float(self.lr, "lr")
        if isinstance(self.eval_seed, bool) or not isinstance(self.eval_seed, int) or self.eval_seed < 0:
            raise ValueError(f"eval_seed must be an int >= 0, got {self.eval_seed!r}")
        if not isinstance(self.solver, SolverSettings):
            raise TypeError(f"solver must be a pfd.solvers.SolverSettings, got {type(self.solver).__name__}")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON (without ``progress``, which never changes a result)."""
        d = asdict(self)
        d.pop("progress")
        d["solver"] = self.solver.to_dict()
        return d


class DenoiserMLP(torch.nn.Module):
    """EDM-preconditioned MLP denoiser ``D(x, sigma)`` for vectors in R^dim.

    The raw network F sees ``c_in x`` concatenated with ``n_freq`` sine/cosine features of
    ``c_noise = ln(sigma)/4``; ``depth`` hidden layers of ``width`` SiLU units.

    >>> import torch
    >>> net = DenoiserMLP(2, width=16, depth=2)
    >>> net.n_params
    610
    >>> net(torch.zeros(3, 2), torch.ones(3)).shape
    torch.Size([3, 2])
    """

    def __init__(self, dim: int, width: int = 64, depth: int = 3, *, sigma_data: float = 1.0, n_freq: int = 8) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.width = check_positive_int(width, "width")
        self.depth = check_positive_int(depth, "depth")
        self.n_freq = check_positive_int(n_freq, "n_freq")
        self.sigma_data = check_positive_float(sigma_data, "sigma_data")
        self.register_buffer("freqs", torch.arange(1, n_freq + 1, dtype=torch.float32) * math.pi / 2)
        layers: list[torch.nn.Module] = []
        fan_in = dim + 2 * n_freq
        for _ in range(depth):
            layers += [torch.nn.Linear(fan_in, width), torch.nn.SiLU()]
            fan_in = width
        layers.append(torch.nn.Linear(fan_in, dim))
        self.net = torch.nn.Sequential(*layers)
        self.event_shape = (dim,)

    @property
    def n_params(self) -> int:
        """Number of trainable parameters |theta|."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "width": self.width, "depth": self.depth,
                "sigma_data": self.sigma_data, "n_freq": self.n_freq}

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        dtype = self.freqs.dtype
        x = x.to(dtype)
        s = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        s = s[:, None]
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s * s + sd2)
        c_out = s * self.sigma_data / (s * s + sd2).sqrt()
        c_in = 1.0 / (s * s + sd2).sqrt()
        c_noise = s.log() / 4.0
        ang = c_noise * self.freqs
        h = torch.cat([c_in * x, ang.sin(), ang.cos()], dim=1)
        return c_skip * x + c_out * self.net(h)


def dsm_loss(model: DenoiserMLP, y: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Mean EDM-weighted denoising loss lambda(sigma) ||D(y + sigma eps; sigma) - y||^2 / dim."""
    sd2 = model.sigma_data**2
    s = sigma.reshape(-1, 1)
    weight = (s * s + sd2) / (s * model.sigma_data) ** 2
    out = model(y + s * eps, sigma)
    return (weight * (out - y).pow(2)).sum(1).mean() / y.shape[1]


class DSMTrainer:
    """Seeded, checkpointable denoising-score-matching training of a :class:`DenoiserMLP`.

    One epoch is one pass over the training set in shuffled minibatches of ``batch_size``
    points, each with a fresh (seeded) noise level and noise. A set smaller than ``batch_size``
    is repeated ceil(batch_size / N) times, so an epoch is then one step on a full batch in
    which every point appears equally often. Everything
    random comes from one ``torch.Generator`` seeded by ``seed``; its state is checkpointed with
    the weights and optimizer, so a resumed run continues bit-for-bit. With ``ema`` (default
    0.999, with a short warm-up) an exponential moving average of the weights is kept and is what
    :meth:`ode_map` and :meth:`fixed_loss` evaluate (as in EDM); ``ema=None`` evaluates the raw
    weights.

    >>> import pfd
    >>> teacher = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.05, 0.05])
    >>> tr = DSMTrainer(teacher.sample(32, seed=1), width=16, depth=2, seed=0)
    >>> losses = tr.train(epochs=3)
    >>> tr.epoch, len(losses)
    (3, 3)
    """

    def __init__(
        self,
        data: torch.Tensor,
        *,
        width: int = 64,
        depth: int = 3,
        seed: int = 0,
        lr: float = 2e-3,
        batch_size: int = 256,
        sigma_data: float | None = None,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        ema: float | None = 0.999,
    ) -> None:
        if not isinstance(data, torch.Tensor) or data.ndim != 2 or data.shape[0] < 1:
            raise ValueError("data must be a (N, dim) tensor of training points with N >= 1")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data must be finite")
        self.data = data.detach().to(torch.float32)
        self.seed = int(seed)
        self.lr = check_positive_float(lr, "lr")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.p_mean = float(p_mean)
        self.p_std = check_positive_float(p_std, "p_std")
        sd = float(self.data.std()) if sigma_data is None and self.data.numel() > 1 else (sigma_data or 1.0)
        sd = sd if sd > 0 else 1.0
        with torch.random.fork_rng():
            torch.manual_seed(derive_seed(self.seed, 11) % (2**63))
            self.model = DenoiserMLP(self.data.shape[1], width, depth, sigma_data=sd)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        if ema is not None and not (isinstance(ema, (int, float)) and 0.0 <= ema < 1.0):
            raise ValueError(f"ema must be a decay in [0, 1) or None, got {ema!r}")
        self.ema_decay = None if ema is None else float(ema)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if ema is not None else None
        self.gen = torch.Generator().manual_seed(derive_seed(self.seed, 12) % (2**63))
        self.epoch = 0
        self.step = 0

    @property
    def n_params(self) -> int:
        return self.model.n_params

    @property
    def eval_model(self) -> DenoiserMLP:
        """The network that is evaluated: the EMA weights when ``ema`` is set, else the raw ones."""
        return self.ema_model if self.ema_model is not None else self.model

    def _update_ema(self) -> None:
        if self.ema_model is None:
            return
        # warm-up: decay min(ema, (1 + step) / (10 + step)) so early averages are not dominated by the init
        d = min(self.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        with torch.no_grad():
            for pe, p in zip(self.ema_model.parameters(), self.model.parameters(), strict=True):
                pe.mul_(d).add_(p, alpha=1.0 - d)

    def train(self, epochs: int, *, callback: Callable[[DSMTrainer, float], None] | None = None) -> list[float]:
        """Train ``epochs`` more epochs; return the mean training loss of each.

        ``callback(trainer, epoch_loss)`` runs after every epoch (e.g. to evaluate).
        """
        check_positive_int(epochs, "epochs")
        n = self.data.shape[0]
        reps = -(-self.batch_size // n) if n < self.batch_size else 1
        data = self.data.repeat(reps, 1)
        m = data.shape[0]
        bs = min(self.batch_size, n) * reps
        out = []
        self.model.train()
        for _ in range(epochs):
            perm = torch.randperm(m, generator=self.gen)
            tot, cnt = 0.0, 0
            for i in range(0, m - bs + 1, bs):
                y = data[perm[i:i + bs]]
                sigma = (self.p_mean + self.p_std * torch.randn(bs, generator=self.gen)).exp()
                eps = torch.randn(y.shape, generator=self.gen)
                loss = dsm_loss(self.model, y, sigma, eps)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.step += 1
                self._update_ema()
                tot += float(loss.detach()) * bs
                cnt += bs
            self.epoch += 1
            out.append(tot / cnt)
            if callback is not None:
                callback(self, out[-1])
        self.model.eval()
        return out

    def fixed_loss(self, points: torch.Tensor, *, draws: int = 8, seed: int = 0) -> float:
        """DSM loss on ``points`` with fixed (seeded) noise levels and noise: comparable across
        epochs. Use the training set for the train loss, fresh teacher samples for held-out."""
        g = torch.Generator().manual_seed(derive_seed(seed, 13) % (2**63))
        y = points.detach().to(torch.float32).repeat(draws, 1)
        sigma = (self.p_mean + self.p_std * torch.randn(y.shape[0], generator=g)).exp()
        eps = torch.randn(y.shape, generator=g)
        net = self.eval_model
        was = net.training
        net.eval()
        with torch.no_grad():
            val = float(dsm_loss(net, y, sigma, eps))
        net.train(was)
        return val

    def _settings(self) -> dict[str, Any]:
        """What determines the training trajectory besides the architecture: data, seed, lr, batch
        size and the noise-level distribution."""
        import hashlib

        data = hashlib.sha256(self.data.contiguous().numpy().tobytes()).hexdigest()[:16]
        return {"data_sha256": data, "n_train": int(self.data.shape[0]), "seed": self.seed, "lr": self.lr,
                "batch_size": self.batch_size, "p_mean": self.p_mean, "p_std": self.p_std}

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self._settings(),
                "model": self.model.state_dict(), "config": self.model.config(), "opt": self.opt.state_dict(),
                "ema": None if self.ema_model is None else self.ema_model.state_dict(), "ema_decay": self.ema_decay,
                "gen": self.gen.get_state(), "epoch": self.epoch, "step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config") != self.model.config():
            raise ValueError(f"checkpoint config {state.get('config')} does not match the model {self.model.config()}")
        if state.get("ema_decay") != self.ema_decay:
            raise ValueError(f"checkpoint ema={state.get('ema_decay')} does not match the trainer's ema={self.ema_decay}")
        if "settings" in state:
            from pfd.analysis._runkey import check_settings

            check_settings(state["settings"], self._settings(), "checkpoint",
                           "resume with the trainer settings it was saved with, or start a new run")
        self.model.load_state_dict(state["model"])
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint atomically (weights, optimizer, RNG state, epoch)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise ValueError(f"path: folder {str(path.parent)!r} does not exist")
        atomic_torch_save(self.state_dict(), path)
        return path

    def load(self, path: str | os.PathLike[str]) -> None:
        """Resume from a checkpoint written by :meth:`save`."""
        from pfd.analysis._runkey import load_checkpoint

        self.load_state_dict(load_checkpoint(path, "checkpoint"))

    def ode_map(self, **solver_options: Any):
        """The student's PF-ODE noise-to-data map (a :class:`pfd.DiffusionMap`, EDM Heun 18 by default)."""
        from pfd.maps import DiffusionMap

        net = self.eval_model
        solver_options.setdefault("shape", net.event_shape)
        solver_options.setdefault("name", f"DenoiserMLP(w={net.width}, d={net.depth}, N={self.data.shape[0]})")
        return DiffusionMap(net, **solver_options)
