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
import itertools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pfd._checks import check_positive_float, check_positive_int
from pfd._train import TrainConfig, atomic_torch_save
from pfd.noise import derive_seed

__all__ = ["DSMTrainer", "DenoiserMLP", "EnsembleDSMTrainer", "EnsembleDenoiser", "MemberDenoiser", "TrainConfig", "dsm_loss",
           "sample_sigma"]


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


# ---------------------------------------------------------------------------------------------
# Ensembles: many independent students (one per training set) trained in one batched pass.


def _uniform_init(shape: tuple[int, ...], fan_in: int, g: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=g) * 2.0 - 1.0) * bound


ARCHS = ("mlp", "resmlp", "conv")
"""The architectures of :class:`EnsembleDenoiser`."""


class EnsembleDenoiser(torch.nn.Module):
    """``R`` independent EDM-preconditioned denoisers evaluated in one batched pass.

    Member r sees only its own weights (batched matrix products / grouped convolutions), so the
    members are exactly independent networks; training them together only shares the kernels.

    ``arch="mlp"``: the flattened input (``c_in x``) and ``n_freq`` sine/cosine features of
    ``c_noise = ln(sigma)/4`` feed ``depth`` hidden SiLU layers of ``width`` units.
    ``arch="resmlp"``: the same input into ``width`` units, then ``depth`` pre-activation
    residual blocks h <- h + W (SiLU(h) * (1 + S emb)) + b + E emb, each with its own shift E
    and scale S of the noise features (FiLM: every block, not only the input layer, knows sigma,
    and can scale its features by a function of sigma, as EDM's F = (D - c_skip x) / c_out needs),
    and a read-out W_out (SiLU(h) * (1 + S_out emb)) + b_out. The scales start at 0.
    ``arch="conv"`` (image event shapes (C, H, W)): a residual 3x3 conv net of ``depth`` blocks
    of ``width`` channels, each block adding a per-channel bias computed from the noise
    features (h <- h + SiLU(conv(h) + emb)). Member r is initialised from ``seeds[r]``.

    >>> import torch
    >>> ens = EnsembleDenoiser((1, 4, 4), arch="conv", width=8, depth=2, seeds=[0, 1, 2])
    >>> ens(torch.zeros(3, 5, 1, 4, 4), torch.ones(3, 5)).shape
    torch.Size([3, 5, 1, 4, 4])
    >>> ens.n_params_per_member == EnsembleDenoiser((1, 4, 4), arch="conv", width=8, depth=2, seeds=[0]).n_params
    True
    """

    def __init__(self, event_shape: tuple[int, ...] | list[int], *, arch: str = "mlp", width: int = 256,
                 depth: int = 3, seeds: list[int] | tuple[int, ...] = (0,), sigma_data: float | list[float] = 1.0,
                 n_freq: int = 8) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(map(repr, ARCHS))}, got {arch!r}")
        self.event_shape = tuple(int(s) for s in event_shape)
        if not self.event_shape or any(s < 1 for s in self.event_shape):
            raise ValueError(f"event_shape must be positive ints, got {event_shape!r}")
        if arch == "conv" and len(self.event_shape) != 3:
            raise ValueError(f"arch='conv' needs an image event shape (C, H, W), got {self.event_shape}")
        self.arch, self.width, self.depth = arch, check_positive_int(width, "width"), check_positive_int(depth, "depth")
        self.n_freq = check_positive_int(n_freq, "n_freq")
        self.seeds = [int(s) for s in seeds]
        r = len(self.seeds)
        if r < 1:
            raise ValueError("seeds must name at least one member")
        sd = torch.as_tensor(sigma_data, dtype=torch.float32).reshape(-1)
        if sd.numel() == 1:
            sd = sd.expand(r)
        if sd.numel() != r or not bool((sd > 0).all()):
            raise ValueError(f"sigma_data must be > 0, one value or one per member ({r}), got {sigma_data!r}")
        self.register_buffer("sigma_data", sd.clone())
        self.register_buffer("freqs", torch.arange(1, n_freq + 1, dtype=torch.float32) * math.pi / 2)
        self.dim = math.prod(self.event_shape)
        gens = [torch.Generator().manual_seed(derive_seed(s, 11) % (2**63)) for s in self.seeds]

        def stack(shape: tuple[int, ...], fan_in: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.stack([_uniform_init(shape, fan_in, g) for g in gens]))

        e = 2 * n_freq
        if arch == "mlp":
            sizes = [self.dim + e] + [width] * depth + [self.dim]
            self.weights = torch.nn.ParameterList([stack((a, b), a) for a, b in itertools.pairwise(sizes)])
            self.biases = torch.nn.ParameterList([stack((b,), a) for a, b in itertools.pairwise(sizes)])
        elif arch == "resmlp":
            self.w_in, self.b_in = stack((self.dim + e, width), self.dim + e), stack((width,), self.dim + e)
            self.weights = torch.nn.ParameterList([stack((width, width), width) for _ in range(depth)])
            self.biases = torch.nn.ParameterList([stack((width,), width) for _ in range(depth)])
            self.emb_w = torch.nn.ParameterList([stack((e, width), e) for _ in range(depth)])
            # scales start at 0 (modulation 1 + emb S = 1): the net starts as the unmodulated one
            self.emb_s = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(r, e, width)) for _ in range(depth + 1)])
            self.w_out, self.b_out = stack((width, self.dim), width), stack((self.dim,), width)
        else:
            c = self.event_shape[0]
            self.conv_in = stack((width, c, 3, 3), 9 * c)
            self.bias_in = stack((width,), 9 * c)
            self.convs = torch.nn.ParameterList([stack((width, width, 3, 3), 9 * width) for _ in range(depth)])
            self.emb_w = torch.nn.ParameterList([stack((e, width), e) for _ in range(depth)])
            self.emb_b = torch.nn.ParameterList([stack((width,), e) for _ in range(depth)])
            self.conv_out = stack((c, width, 3, 3), 9 * width)
            self.bias_out = stack((c,), 9 * width)

    @property
    def n_members(self) -> int:
        return len(self.seeds)

    @property
    def n_params_per_member(self) -> int:
        """|theta| of one member."""
        return sum(p[0].numel() for p in self.parameters())

    n_params = n_params_per_member

    def config(self) -> dict[str, Any]:
        return {"event_shape": list(self.event_shape), "arch": self.arch, "width": self.width, "depth": self.depth,
                "n_freq": self.n_freq, "seeds": self.seeds}

    def _raw(self, h: torch.Tensor, emb: torch.Tensor, idx: slice) -> torch.Tensor:
        """The raw network F on preconditioned input h (R', B, *event) and noise features (R', B, e)."""
        rr, b = h.shape[:2]
        if self.arch == "mlp":
            h = torch.cat([h.reshape(rr, b, self.dim), emb], dim=2)
            n = len(self.weights)
            for i, (w, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
                h = torch.baddbmm(bias[idx][:, None, :], h, w[idx])
                if i < n - 1:
                    h = torch.nn.functional.silu(h)
            return h.reshape(rr, b, *self.event_shape)
        if self.arch == "resmlp":
            h = torch.baddbmm(self.b_in[idx][:, None, :], torch.cat([h.reshape(rr, b, self.dim), emb], dim=2),
                              self.w_in[idx])
            scales = [1.0 + torch.bmm(emb, es[idx]) for es in self.emb_s]  # (R', B, width) each
            for w, bias, ew, sc in zip(self.weights, self.biases, self.emb_w, scales, strict=False):
                pre = torch.baddbmm(bias[idx][:, None, :], torch.nn.functional.silu(h) * sc, w[idx])
                h = h + torch.baddbmm(pre, emb, ew[idx])
            h = torch.baddbmm(self.b_out[idx][:, None, :], torch.nn.functional.silu(h) * scales[-1], self.w_out[idx])
            return h.reshape(rr, b, *self.event_shape)
        c, hh, ww = self.event_shape
        fw = self.width
        x = h.transpose(0, 1).reshape(b, rr * c, hh, ww)
        x = torch.nn.functional.conv2d(x, self.conv_in[idx].reshape(rr * fw, c, 3, 3),
                                       self.bias_in[idx].reshape(-1), padding=1, groups=rr)
        for conv, ew, eb in zip(self.convs, self.emb_w, self.emb_b, strict=True):
            bias = torch.baddbmm(eb[idx][:, None, :], emb, ew[idx])  # (R', B, width)
            y = torch.nn.functional.conv2d(x, conv[idx].reshape(rr * fw, fw, 3, 3), padding=1, groups=rr)
            x = x + torch.nn.functional.silu(y + bias.transpose(0, 1).reshape(b, rr * fw, 1, 1))
        x = torch.nn.functional.conv2d(x, self.conv_out[idx].reshape(rr * c, fw, 3, 3),
                                       self.bias_out[idx].reshape(-1), padding=1, groups=rr)
        return x.reshape(b, rr, c, hh, ww).transpose(0, 1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """D(x; sigma) for inputs x (R', B, *event_shape) and sigma (R', B) of members ``members``
        (default: all R)."""
        idx = slice(None) if members is None else members
        dtype = self.freqs.dtype
        x = x.to(dtype)
        s = sigma.to(dtype)
        sd = self.sigma_data[idx][:, None]
        sd2 = sd * sd
        c_skip = sd2 / (s * s + sd2)
        c_out = s * sd / (s * s + sd2).sqrt()
        c_in = 1.0 / (s * s + sd2).sqrt()
        ang = (s.log() / 4.0)[..., None] * self.freqs
        emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
        expand = (...,) + (None,) * len(self.event_shape)
        out = self._raw(c_in[expand] * x, emb, idx)
        return c_skip[expand] * x + c_out[expand] * out

    def member(self, r: int, *, clamp: float | None = None) -> MemberDenoiser:
        """Member ``r`` as a stand-alone denoiser ``D(x (B, *event_shape), sigma (B,))``; with
        ``clamp`` its output is projected onto the box [-clamp, clamp]^d."""
        if not 0 <= int(r) < self.n_members:
            raise ValueError(f"r must be a member index in [0, {self.n_members}), got {r!r}")
        return MemberDenoiser(self, int(r), clamp=clamp)


class MemberDenoiser(torch.nn.Module):
    """One member of an :class:`EnsembleDenoiser` (shares its weights; no copy).

    ``clamp``: project the output onto [-clamp, clamp]^d (as samplers' "clip denoised"). The
    DSM optimum for a training set, its empirical denoiser, is a convex combination of the
    training points, so for data in a box inside [-clamp, clamp]^d the projection can only
    move the student towards it; it bounds the PF-ODE trajectory (each Euler/Heun step mixes x
    with D), which stops a rare off-data trajectory from diverging.
    """

    def __init__(self, ensemble: EnsembleDenoiser, r: int, *, clamp: float | None = None) -> None:
        super().__init__()
        self.ensemble, self.r = ensemble, r
        self.event_shape = ensemble.event_shape
        self.clamp = None if clamp is None else check_positive_float(clamp, "clamp")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, device=x.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        out = self.ensemble(x[None], s[None], members=slice(self.r, self.r + 1))[0]
        return out if self.clamp is None else out.clamp(-self.clamp, self.clamp)


def sample_sigma(shape: tuple[int, ...], g: torch.Generator, *, p_mean: float, p_std: float, p_uniform: float,
                 sigma_min: float, sigma_max: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training noise levels: with probability ``p_uniform`` log-uniform on [sigma_min, sigma_max]
    (so the whole range the PF-ODE map visits, up to sigma_max, is trained), else EDM's
    log-normal ln sigma ~ N(p_mean, p_std^2)."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    u = torch.rand(shape, generator=g, device=device)
    ln_uni = lo + (hi - lo) * torch.rand(shape, generator=g, device=device)
    ln_norm = p_mean + p_std * torch.randn(shape, generator=g, device=device)
    return torch.where(u < p_uniform, ln_uni, ln_norm).exp()


class EnsembleDSMTrainer:
    """Train one student per training set, all in one batched pass, each until its loss plateaus.

    ``datasets``: a list of R tensors (N_r, *event_shape) (the sets may differ in size);
    ``seeds[r]`` initialises member r. Every step each member takes a minibatch of
    ``batch_size`` points drawn uniformly (with replacement) from its own set, each with a
    fresh noise level from :func:`sample_sigma` and fresh noise, and one Adam step on the EDM
    loss (learning rate warmed up linearly over ``warmup`` steps). An EMA of the weights
    (``ema``) is what is evaluated.

    Stopping rule (per member), checked every ``check_every`` steps on the DSM loss of the EMA
    weights on the member's training set with FIXED noise (common random numbers, so two checks
    differ only by training): an improvement is a drop below (1 - ``tol``) x the best so far;
    after ``patience`` checks without one the learning rate is multiplied by ``lr_decay``, and
    after ``max_decays`` such decays the member has converged and is frozen (its step count is
    recorded). ``max_steps`` caps every member ("cap"); a ``wall_budget`` in seconds stops all
    ("wall"); a non-finite loss freezes the member ("diverged").

    ``target="posterior"`` replaces the DSM target y by the exact empirical denoiser of the
    member's training set at the noisy input (:meth:`posterior_mean`; a variance-reduced target
    with the same minimiser, as in stable-target-field training with the whole set as reference
    batch). The check loss stays the plain DSM loss.
    """

    def __init__(
        self,
        datasets: list[torch.Tensor],
        seeds: list[int],
        *,
        arch: str = "mlp",
        width: int = 256,
        depth: int = 3,
        lr: float = 1e-3,
        batch_size: int = 256,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        p_uniform: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        ema: float = 0.999,
        warmup: int = 200,
        check_every: int = 500,
        patience: int = 3,
        tol: float = 0.005,
        lr_decay: float = 0.3,
        max_decays: int = 2,
        min_steps: int = 2000,
        max_steps: int = 40000,
        n_check: int = 1024,
        target: str = "sample",
        device: str | torch.device = "cpu",
        noise_seed: int = 0,
    ) -> None:
        if not datasets or len(datasets) != len(seeds):
            raise ValueError("datasets and seeds must be non-empty lists of the same length")
        shape = tuple(datasets[0].shape[1:])
        if any(tuple(d.shape[1:]) != shape or d.shape[0] < 1 for d in datasets):
            raise ValueError("every dataset must be (N_r >= 1, *event_shape) with one common event shape")
        if target not in ("sample", "posterior"):
            raise ValueError(f"target must be 'sample' (DSM) or 'posterior' (exact empirical denoiser), got {target!r}")
        self.target = target
        self.device = torch.device(device)
        self.r = len(datasets)
        self.n = torch.tensor([d.shape[0] for d in datasets], device=self.device)
        nmax = int(self.n.max())
        data = torch.zeros(self.r, nmax, *shape)
        for i, d in enumerate(datasets):
            data[i, : d.shape[0]] = d.detach().to(torch.float32)
        self.data = data.to(self.device)
        sd = [float(d.std()) if d.numel() > 1 and float(d.std()) > 0 else 1.0 for d in datasets]
        self.model = EnsembleDenoiser(shape, arch=arch, width=width, depth=depth, seeds=seeds,
                                      sigma_data=sd).to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.params = list(self.model.parameters())
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.lr0 = check_positive_float(lr, "lr")
        self.lr = torch.full((self.r,), self.lr0, device=self.device)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.sig = {"p_mean": float(p_mean), "p_std": check_positive_float(p_std, "p_std"),
                    "p_uniform": float(p_uniform), "sigma_min": check_positive_float(sigma_min, "sigma_min"),
                    "sigma_max": check_positive_float(sigma_max, "sigma_max")}
        if not 0.0 <= self.sig["p_uniform"] <= 1.0:
            raise ValueError(f"p_uniform must be in [0, 1], got {p_uniform!r}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be a decay in [0, 1), got {ema!r}")
        self.ema, self.warmup = float(ema), int(warmup)
        self.check_every, self.patience = check_positive_int(check_every, "check_every"), int(patience)
        self.tol, self.lr_decay, self.max_decays = float(tol), float(lr_decay), int(max_decays)
        self.min_steps, self.max_steps = int(min_steps), check_positive_int(max_steps, "max_steps")
        self.gen = torch.Generator(device=self.device).manual_seed(derive_seed(int(noise_seed), 12) % (2**63))
        # fixed check set: every training point equally often, seeded noise levels and noise
        gc = torch.Generator().manual_seed(derive_seed(int(noise_seed), 13) % (2**63))
        idx = torch.stack([torch.arange(n_check) % int(n) for n in self.n.cpu()])
        self._check_y = self.data[torch.arange(self.r, device=self.device)[:, None], idx.to(self.device)]
        self._check_sigma = sample_sigma((self.r, n_check), gc, **self.sig).to(self.device)
        self._check_eps = torch.randn((self.r, n_check, *shape), generator=gc).to(self.device)
        self.step = 0
        self.active = torch.ones(self.r, dtype=torch.bool)
        self._act_dev = torch.ones(self.r, device=self.device)
        self.steps_used = [0] * self.r
        self.stopped_by: list[str | None] = [None] * self.r
        self.best = [math.inf] * self.r
        self.bad = [0] * self.r
        self.decays = [0] * self.r
        self.history: list[list[float]] = []

    @property
    def n_params(self) -> int:
        return self.model.n_params_per_member

    def _loss(self, model: EnsembleDenoiser, y: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
              target: str = "sample") -> torch.Tensor:
        """(R,) mean EDM-weighted loss per member; ``target="posterior"`` regresses on the exact
        empirical denoiser of the member's training set at the noisy input instead of on y."""
        sd = model.sigma_data[:, None]
        weight = (sigma * sigma + sd * sd) / (sigma * sd) ** 2
        expand = (...,) + (None,) * (y.ndim - 2)
        x = y + sigma[expand] * eps
        out = model(x, sigma)
        goal = y if target == "sample" else self.posterior_mean(x, sigma)
        per = (out - goal).pow(2).flatten(2).mean(2)
        return (weight * per).mean(1)

    def posterior_mean(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The empirical denoiser of each member's training set, E[y | y + sigma eps = x] =
        sum_j softmax_j(-||x - y_j||^2 / (2 sigma^2)) y_j, for x (R, B, *event) and sigma (R, B)."""
        r, b = x.shape[:2]
        xf = x.reshape(r, b, -1)
        yf = self.data.reshape(r, self.data.shape[1], -1)
        d2 = (xf.pow(2).sum(2, keepdim=True) - 2 * torch.bmm(xf, yf.transpose(1, 2))
              + yf.pow(2).sum(2)[:, None, :])  # (R, B, Nmax)
        valid = torch.arange(yf.shape[1], device=x.device)[None, :] < self.n[:, None]
        logits = (-d2 / (2 * sigma[..., None] ** 2)).masked_fill(~valid[:, None, :], float("-inf"))
        w = torch.softmax(logits, dim=2)
        return torch.bmm(w, yf).reshape(x.shape)

    def check_loss(self) -> list[float]:
        """Fixed-noise DSM loss of the EMA weights on each member's training set."""
        with torch.no_grad():
            return self._loss(self.ema_model, self._check_y, self._check_sigma, self._check_eps).tolist()

    def _adam(self, lr_eff: torch.Tensor, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        t = self.step
        c1, c2 = 1 - b1**t, 1 - b2**t
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                g = p.grad
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                upd = (m / c1) / ((v / c2).sqrt_().add_(eps))
                p.sub_(upd * lr_eff.reshape(-1, *([1] * (p.ndim - 1))))

    def _check(self) -> None:
        losses = self.check_loss()
        self.history.append([self.step, *losses])
        for i, val in enumerate(losses):
            if not self.active[i]:
                continue
            if not math.isfinite(val):
                self._freeze(i, "diverged")
                continue
            if val < self.best[i] * (1.0 - self.tol):
                self.best[i], self.bad[i] = val, 0
            else:
                self.bad[i] += 1
            if self.bad[i] >= self.patience and self.step >= self.min_steps:
                if self.decays[i] < self.max_decays:
                    self.decays[i] += 1
                    self.bad[i] = 0
                    self.lr[i] *= self.lr_decay
                else:
                    self._freeze(i, "plateau")

    def _freeze(self, i: int, why: str) -> None:
        self.active[i] = False
        self._act_dev[i] = 0.0
        self.steps_used[i] = self.step
        self.stopped_by[i] = why

    def train(self, *, wall_budget: float | None = None, progress: bool = False) -> list[dict[str, Any]]:
        """Train until every member has stopped; return per member: steps, stopped_by, final
        check loss, learning-rate decays."""
        import time

        from tqdm.auto import tqdm

        t0 = time.monotonic()
        rows = torch.arange(self.r, device=self.device)
        bar = tqdm(total=self.max_steps, desc=f"train {self.model.arch} w={self.model.width}", disable=not progress,
                   leave=False)
        while bool(self.active.any()):
            if self.step >= self.max_steps or (wall_budget is not None and time.monotonic() - t0 >= wall_budget):
                why = "cap" if self.step >= self.max_steps else "wall"
                for i in range(self.r):
                    if self.active[i]:
                        self._freeze(i, why)
                break
            b = self.batch_size
            idx = (torch.rand(self.r, b, generator=self.gen, device=self.device) * self.n[:, None]).long()
            y = self.data[rows[:, None], idx]
            sigma = sample_sigma((self.r, b), self.gen, device=self.device, **self.sig)
            eps = torch.randn(y.shape, generator=self.gen, device=self.device)
            loss = self._loss(self.model, y, sigma, eps, self.target)
            for p in self.params:
                p.grad = None
            loss.sum().backward()
            self.step += 1
            act = self._act_dev
            warm = min(1.0, self.step / self.warmup) if self.warmup > 0 else 1.0
            self._adam(self.lr * act * warm)
            d = min(self.ema, (1.0 + self.step) / (10.0 + self.step))
            keep = torch.where(act > 0, torch.full_like(act, d), torch.ones_like(act))
            with torch.no_grad():
                for pe, p in zip(self.ema_model.parameters(), self.params, strict=True):
                    k = keep.reshape(-1, *([1] * (p.ndim - 1)))
                    pe.mul_(k).add_(p * (1.0 - k))
            if self.step % self.check_every == 0:
                self._check()
            bar.update(1)
        bar.close()
        final = self.check_loss()
        return [{"steps": self.steps_used[i], "stopped_by": self.stopped_by[i], "check_loss": final[i],
                 "lr_decays": self.decays[i]} for i in range(self.r)]

    def state_dict(self) -> dict[str, Any]:
        """Everything training depends on (weights, EMA, Adam moments, learning rates, step, the
        noise generator and the stopping-rule state): :meth:`load_state_dict` on a trainer built
        with the same arguments continues bit-for-bit as if never interrupted."""
        return {"model": self.model.state_dict(), "ema_model": self.ema_model.state_dict(),
                "m": [t.clone() for t in self.m], "v": [t.clone() for t in self.v], "lr": self.lr.clone(),
                "step": self.step, "gen": self.gen.get_state(), "active": self.active.clone(),
                "act_dev": self._act_dev.clone(), "steps_used": list(self.steps_used),
                "stopped_by": list(self.stopped_by), "best": list(self.best), "bad": list(self.bad),
                "decays": list(self.decays), "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (of a trainer with the same members and settings)."""
        if len(state["steps_used"]) != self.r:
            raise ValueError(f"state has {len(state['steps_used'])} members, this trainer {self.r}")
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema_model"])
        with torch.no_grad():
            for dst, src in zip(self.m + self.v, list(state["m"]) + list(state["v"]), strict=True):
                dst.copy_(src)
        self.lr = state["lr"].to(self.device).clone()
        self.step = int(state["step"])
        self.gen.set_state(state["gen"])
        self.active = state["active"].clone()
        self._act_dev = state["act_dev"].to(self.device).clone()
        self.steps_used, self.stopped_by = list(state["steps_used"]), list(state["stopped_by"])
        self.best, self.bad, self.decays = list(state["best"]), list(state["bad"]), list(state["decays"])
        self.history = [list(h) for h in state["history"]]

    def resume(self, max_steps: int) -> None:
        """Raise the step cap to ``max_steps`` and reactivate the members that stopped at the old
        cap (or the wall budget), so :meth:`train` continues them; converged or diverged members
        stay frozen."""
        self.max_steps = check_positive_int(max_steps, "max_steps")
        for i in range(self.r):
            if self.stopped_by[i] in ("cap", "wall") and self.step < self.max_steps:
                self.active[i] = True
                self._act_dev[i] = 1.0
                self.stopped_by[i] = None

    def ode_map(self, r: int, *, clamp: float | None = None, **solver_options: Any):
        """Member ``r``'s PF-ODE noise-to-data map (EMA weights; EDM Heun 18 by default); with
        ``clamp`` the denoiser output is projected onto [-clamp, clamp]^d."""
        from pfd.maps import DiffusionMap

        net = self.ema_model.member(r, clamp=clamp)
        solver_options.setdefault("shape", net.event_shape)
        solver_options.setdefault("name", f"{self.model.arch}(w={self.model.width}, d={self.model.depth})[{r}]")
        return DiffusionMap(net, **solver_options)
