"""Trajectory distillation on a time grid: K-segment residual students of the exact PF-ODE map.

A student Phi_hat = Phi_hat_K o ... o Phi_hat_1 maps x_{t_0} (t_0 = t_max, noise) to x_{t_K}
(t_K = t_min, data) through residual segments Phi_hat_j(x) = x + h_j(x), each h_j a small MLP
(separate per segment, or one shared MLP conditioned on the segment's end-point log-SNRs). Each
segment is trained by regression on exact pairs (x, Phi_{t_j -> t_{j+1}}(x)), x ~ p_{t_j}, from
:func:`pfd.analytic.exact_map`. A one-step student is K = 1.

The student is a trajectory student in the sense of docs/students: it approximates the teacher's
PF-ODE map itself, so scoring its map against the exact map on shared noise is meaningful:
``student.as_map()`` is a noise-to-data map (x_{t_max} = sigma_{t_max} z, as in EDM where
x(sigma_max) = sigma_max z), and :class:`ExactFlowMap` is the matching exact reference.

>>> import torch, pfd
>>> from pfd.distill import train_trajectory_student, ExactFlowMap
>>> gmm = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1])
>>> grid = pfd.stability.make_time_grid("balanced-sum", 2, 1e-2, 3.0, gmm)
>>> cfg = pfd.distill.TRAJECTORY_TRAIN.replace(train_steps=100, width=16)
>>> student, hist = train_trajectory_student(gmm, grid, n_train=512, seed=0, config=cfg)
>>> res = pfd.distance(student.as_map(), ExactFlowMap(gmm, 1e-2, 3.0), n=128, progress=False)
>>> res.value < 0.5, student.as_map().describe()["student_kind"]
(True, 'trajectory')
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np
import torch

from pfd._checks import check_positive_float, check_positive_int
from pfd._train import TrainConfig, train_config
from pfd.analytic.exact import exact_map, exact_method
from pfd.analytic.gmm import GaussianMixture
from pfd.noise import derive_seed
from pfd.report import progress_range
from pfd.schedules import Process, get_process

__all__ = ["TRAJECTORY_TRAIN", "ExactFlowMap", "TrajectoryMap", "TrajectoryStudent", "exact_pairs",
           "train_trajectory_student"]

_F64 = torch.float64
TRAJECTORY_TRAIN = TrainConfig(width=64, depth=2, train_steps=2000, batch_size=256, lr=2e-3)
""":func:`train_trajectory_student`'s default training."""


def _check_times(grid: Any) -> torch.Tensor:
    if isinstance(grid, bool):
        raise TypeError("grid must be a decreasing sequence of times, got bool")
    try:
        g = torch.as_tensor(np.asarray(grid.detach().cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.float64))
    except (TypeError, ValueError):
        raise TypeError(f"grid must be a decreasing sequence of times, got {type(grid).__name__}") from None
    if g.ndim != 1 or g.shape[0] < 2:
        raise ValueError(f"grid must be 1-D with K + 1 >= 2 times (t_max ... t_min), got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()) or bool((g <= 0).any()):
        raise ValueError("grid times must be finite and > 0")
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError("grid must be strictly decreasing, from t_max (noise) down to t_min (data)")
    return g.to(_F64)


class TrajectoryStudent(torch.nn.Module):
    """A K-segment residual student on a decreasing time grid (K = len(grid) - 1).

    Parameters
    ----------
    grid:
        K + 1 process times from t_max down to t_min.
    dim:
        Data dimension d.
    width, depth:
        Width and number of hidden layers (SiLU) of each segment's MLP h_j.
    time_conditioned:
        One MLP shared by all segments, given the segment's end-point log-SNRs as extra inputs
        (default: a separate MLP per segment). The last layer starts at zero, so an untrained
        student is the identity map.
    process:
        The forward process of the grid (for the log-SNR features and :meth:`as_map`).
    seed:
        Seed of the initial weights.
    """

    student_kind = "trajectory"

    def __init__(
        self,
        grid: Any,
        dim: int,
        width: int = 64,
        depth: int = 2,
        *,
        time_conditioned: bool = False,
        process: str | Process = "ou",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        g = _check_times(grid)
        self.dim = check_positive_int(dim, "dim")
        self.width = check_positive_int(width, "width")
        self.depth = check_positive_int(depth, "depth")
        if not isinstance(time_conditioned, bool):
            raise TypeError(f"time_conditioned must be a bool, got {type(time_conditioned).__name__}")
        self.process = get_process(process)
        self.time_conditioned = time_conditioned
        self.register_buffer("grid", g)
        K = g.shape[0] - 1
        self.K = K
        lsnr = torch.as_tensor(np.asarray(self.process.log_snr(g.numpy())), dtype=_F64)
        feats = torch.stack([lsnr[:-1], lsnr[1:]], 1) / 10.0  # (K, 2)
        self.register_buffer("time_features", feats.to(dtype))
        n_nets = 1 if time_conditioned else K
        d_in = self.dim + (2 if time_conditioned else 0)
        gen = torch.Generator().manual_seed(derive_seed(seed, 0x7A1))
        sizes = [d_in] + [self.width] * self.depth + [self.dim]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            last = i == len(sizes) - 2
            bound = 1.0 / math.sqrt(a)
            if last:
                w, bias = torch.zeros(n_nets, a, b, dtype=dtype), torch.zeros(n_nets, 1, b, dtype=dtype)
            else:
                w = (torch.rand(n_nets, a, b, generator=gen, dtype=dtype) * 2 - 1) * bound
                bias = (torch.rand(n_nets, 1, b, generator=gen, dtype=dtype) * 2 - 1) * bound
            self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(bias))

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _mlp(self, h: torch.Tensor, idx: slice | int) -> torch.Tensor:
        """h: (n, B, d_in) with n matching the selected nets; returns (n, B, d)."""
        n_layers = len(self.weights)
        for i in range(n_layers):
            w = self.weights[i] if self.time_conditioned else self.weights[i][idx]
            b = self.biases[i] if self.time_conditioned else self.biases[i][idx]
            h = torch.baddbmm(b, h, w.expand(h.shape[0], -1, -1))
            if i < n_layers - 1:
                h = torch.nn.functional.silu(h)
        return h

    def segments_forward(self, xs: torch.Tensor) -> torch.Tensor:
        """Apply every segment to its own batch: xs (K, B, d) -> (K, B, d) (used for training)."""
        if xs.ndim != 3 or xs.shape[0] != self.K or xs.shape[2] != self.dim:
            raise ValueError(f"xs must have shape (K={self.K}, B, d={self.dim}), got {tuple(xs.shape)}")
        dtype = self.weights[0].dtype
        h = xs.to(dtype)
        if self.time_conditioned:
            tf = self.time_features[:, None, :].expand(self.K, xs.shape[1], 2)
            h = torch.cat([h, tf], 2)
        return xs.to(dtype) + self._mlp(h, slice(None))

    def segment(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Phi_hat_j(x) for one segment j in 0..K-1 (generation order), x (B, d)."""
        if not 0 <= j < self.K:
            raise ValueError(f"segment index j must be in [0, {self.K - 1}], got {j}")
        dtype = self.weights[0].dtype
        h = x.to(dtype)[None]
        if self.time_conditioned:
            h = torch.cat([h, self.time_features[j][None, None, :].expand(1, x.shape[0], 2)], 2)
        return x.to(dtype) + self._mlp(h, slice(j, j + 1))[0]

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """The composition Phi_hat_K o ... o Phi_hat_1 (x at t_max, result at t_min), or the first
        ``upto`` segments."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be a tensor of shape (B, {self.dim})")
        out = x
        for j in range(self.K if upto is None else upto):
            out = self.segment(j, out)
        return out

    def as_map(self) -> TrajectoryMap:
        """This student as a noise-to-data map z -> Phi_hat(sigma_{t_max} z) for :func:`pfd.distance`."""
        return TrajectoryMap(self)


class TrajectoryMap:
    """Noise-to-data map of a :class:`TrajectoryStudent` (declared a trajectory student)."""

    student_kind = "trajectory"

    def __init__(self, student: TrajectoryStudent) -> None:
        if not isinstance(student, TrajectoryStudent):
            raise TypeError(f"student must be a TrajectoryStudent, got {type(student).__name__}")
        self.student = student
        self.shape = (student.dim,)
        self.scale = float(student.process.sigma(float(student.grid[0])))
        self.nfe_per_sample = student.K
        self.last_nfe: int | None = None
        self.name = f"TrajectoryStudent(K={student.K})"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.student.dim:
            raise ValueError(f"noise z must be a tensor of shape (n, {self.student.dim})")
        was = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                out = self.student(self.scale * z.to(_F64)).to(_F64)
        finally:
            self.student.train(was)
        self.last_nfe = self.student.K
        return out

    def describe(self) -> dict[str, Any]:
        s = self.student
        return {
            "type": "TrajectoryStudent", "student_kind": "trajectory", "K": s.K, "nfe": s.K,
            "grid": [float(t) for t in s.grid], **s.process.describe(), "width": s.width, "depth": s.depth,
            "time_conditioned": s.time_conditioned, "params": s.n_params,
            "start": "x_{t_max} = sigma_{t_max} z", "output": "x_{t_min} (process coordinates)",
        }


class ExactFlowMap:
    """The exact PF-ODE map of a mixture as a noise-to-data map: z -> Phi_{t_max -> t_min}(sigma_{t_max} z).

    >>> import torch, pfd
    >>> m = pfd.distill.ExactFlowMap(pfd.GaussianMixture([1.0], [[2.0]], [1.0]), 0.1, 5.0)
    >>> m.describe()["method"], m(torch.zeros(1, 1)).shape
    ('gaussian', torch.Size([1, 1]))
    """

    def __init__(self, gmm: GaussianMixture, t_min: float, t_max: float, process: str | Process = "ou") -> None:
        if not isinstance(gmm, GaussianMixture):
            raise TypeError(f"gmm must be a pfd.GaussianMixture, got {type(gmm).__name__}")
        self.t_max = check_positive_float(t_max, "t_max")
        self.t_min = check_positive_float(t_min, "t_min")
        if not self.t_min < self.t_max:
            raise ValueError(f"t_min must be < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        self.gmm = gmm
        self.process = get_process(process)
        self.shape = gmm.event_shape
        self.scale = float(self.process.sigma(self.t_max))
        self.method = exact_method(gmm)
        self.last_nfe: int | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        out = exact_map(self.gmm, self.scale * z.to(_F64), self.t_max, self.t_min, self.process)
        self.last_nfe = 0
        return out

    def describe(self) -> dict[str, Any]:
        return {"type": "ExactFlowMap", "method": self.method, "numerical": self.method == "ode",
                "t_max": self.t_max, "t_min": self.t_min, **self.process.describe()}


def exact_pairs(
    gmm: GaussianMixture, grid: Any, n: int, seed: int = 0, process: str | Process = "ou"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact training pairs for every segment: X (K, n, d) with X[j] ~ p_{t_j} and
    Y[j] = Phi_{t_j -> t_{j+1}}(X[j]), float64."""
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a pfd.GaussianMixture, got {type(gmm).__name__}")
    g = _check_times(grid)
    check_positive_int(n, "n")
    proc = get_process(process)
    xs, ys = [], []
    for j in range(g.shape[0] - 1):
        t0, t1 = float(g[j]), float(g[j + 1])
        x0 = gmm.sample(n, seed=derive_seed(seed, 0xDA7A, j))
        gen = torch.Generator().manual_seed(derive_seed(seed, 0x2015E, j))
        x = float(proc.alpha(t0)) * x0 + float(proc.sigma(t0)) * torch.randn(x0.shape, generator=gen, dtype=_F64)
        xs.append(x)
        ys.append(exact_map(gmm, x, t0, t1, proc))
    return torch.stack(xs), torch.stack(ys)


def train_trajectory_student(
    gmm: GaussianMixture,
    grid: Any,
    *,
    process: str | Process = "ou",
    n_train: int = 8192,
    time_conditioned: bool = False,
    seed: int = 0,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    plateau: bool = False,
    eval_every: int = 50,
    patience: int = 6,
    rel_tol: float = 0.01,
    n_val: int = 2048,
    config: TrainConfig | None = None,
) -> tuple[TrajectoryStudent, dict[str, Any]]:
    """Train a :class:`TrajectoryStudent` on ``grid`` by regression on exact segment pairs.

    ``config`` (:class:`pfd.TrainConfig`, default :data:`TRAJECTORY_TRAIN`: width 64, depth 2,
    2000 steps of batch 256, lr 2e-3) sizes the segment MLPs and the budget: ``train_steps`` Adam
    steps (cosine-decayed ``lr``); every step draws one minibatch of ``batch_size`` pairs for
    every segment from a pool of ``n_train`` exact pairs per segment (or the given ``pairs`` from
    :func:`exact_pairs`). Returns the student (in eval mode) and a history dict (final training
    loss per segment, seconds, parameters). ``progress=False`` hides the progress bar (stderr).

    ``plateau=True``: per-segment validation plateau as the stopping rule, with ``train_steps`` as the
    cap. Every ``eval_every`` steps each segment's loss on ``n_val`` held-out exact pairs is
    measured; a segment whose loss has not dropped below (1 - ``rel_tol``) x its best for
    ``patience`` evaluations is stopped (its loss leaves the objective), training ends when every
    segment has stopped, and each segment gets back its best weights (one shared MLP for
    ``time_conditioned``: the total validation loss decides). The history then also holds
    ``stop_step`` per segment, ``steps_used`` and the final validation loss per segment.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a pfd.GaussianMixture, got {type(gmm).__name__}")
    g = _check_times(grid)
    cfg = train_config(config, TRAJECTORY_TRAIN)
    check_positive_int(n_train, "n_train")
    proc = get_process(process)
    K = g.shape[0] - 1
    t_start = time.perf_counter()
    if pairs is None:
        X, Y = exact_pairs(gmm, g, n_train, seed=seed, process=proc)
    else:
        X, Y = pairs
        if X.shape != Y.shape or X.ndim != 3 or X.shape[0] != K or X.shape[2] != gmm.dim:
            raise ValueError(f"pairs must be two tensors of shape (K={K}, n, d={gmm.dim})")
    if not isinstance(plateau, bool):
        raise TypeError(f"plateau must be a bool, got {type(plateau).__name__}")
    val = None
    if plateau:
        check_positive_int(eval_every, "eval_every")
        check_positive_int(patience, "patience")
        check_positive_int(n_val, "n_val")
        rel_tol = check_positive_float(rel_tol, "rel_tol", allow_zero=True)
        val = exact_pairs(gmm, g, n_val, seed=derive_seed(seed, 0x7A1D), process=proc)
    student = TrajectoryStudent(g, gmm.dim, cfg.width, cfg.depth, time_conditioned=time_conditioned, process=proc, seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and immune to oversubscription
    try:
        last, stop = _fit(student, X, Y, cfg, seed, val, eval_every, patience, rel_tol)
    finally:
        torch.set_num_threads(threads)
    student.eval()
    hist = {"final_loss_per_segment": last.tolist(), "seconds": time.perf_counter() - t_start, "params": student.n_params,
            "steps": cfg.train_steps, "batch_size": cfg.batch_size, "n_train": X.shape[1], "lr": cfg.lr, **stop}
    return student, hist


def _val_losses(student: TrajectoryStudent, val: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    dtype = student.weights[0].dtype
    with torch.no_grad():
        xv = val[0].to(dtype)
        pred = student.segments_forward(xv).to(_F64)
    return ((pred - val[1]) ** 2).sum(2).mean(1)


def _fit(student: TrajectoryStudent, X: torch.Tensor, Y: torch.Tensor, cfg: TrainConfig, seed: int,
         val: tuple[torch.Tensor, torch.Tensor] | None = None, eval_every: int = 50, patience: int = 6,
         rel_tol: float = 0.01) -> tuple[torch.Tensor, dict[str, Any]]:
    steps, batch_size, lr = cfg.train_steps, cfg.batch_size, cfg.lr
    K = student.K
    dtype = student.weights[0].dtype
    Xd, Rd = X.to(dtype), (Y - X).to(dtype)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.01)
    gen = torch.Generator().manual_seed(derive_seed(seed, 0xBA7C))
    n = X.shape[1]
    ar = torch.arange(K)[:, None]
    student.train()
    last = torch.zeros(K, dtype=_F64)
    # plateau bookkeeping: units are segments (or the one shared net of a time-conditioned student)
    units = 1 if student.time_conditioned else K
    active = torch.ones(K, dtype=torch.bool)
    best = torch.full((units,), math.inf, dtype=_F64)
    ref = torch.full((units,), math.inf, dtype=_F64)
    since = torch.zeros(units, dtype=torch.long)
    stop_step = [steps] * units
    best_state = [p.detach().clone() for p in student.parameters()]
    done = 0
    for i in progress_range(steps, "trajectory student", cfg.progress):
        idx = torch.randint(0, n, (K, min(batch_size, n)), generator=gen)
        xb, rb = Xd[ar, idx], Rd[ar, idx]
        pred = student.segments_forward(xb) - xb
        per_seg = ((pred - rb) ** 2).sum(2).mean(1)
        loss = per_seg[active].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        last = per_seg.detach().to(_F64)
        done = i + 1
        if val is not None and (done % eval_every == 0 or done == steps):
            vl = _val_losses(student, val)
            vu = vl.sum()[None] if units == 1 else vl
            for u in range(units):
                if stop_step[u] < steps or (units > 1 and not bool(active[u])):
                    continue
                v = float(vu[u])
                if v < float(best[u]):  # checkpoint the best weights
                    best[u] = v
                    with torch.no_grad():
                        for bs, p in zip(best_state, student.parameters(), strict=True):
                            if units == 1:
                                bs.copy_(p)
                            else:
                                bs[u].copy_(p[u])
                if v < (1.0 - rel_tol) * float(ref[u]):  # a real improvement resets the patience
                    ref[u], since[u] = v, 0
                else:
                    since[u] += 1
                    if since[u] >= patience:
                        stop_step[u] = done
                        if units == 1:
                            active[:] = False
                        else:
                            active[u] = False
            if not bool(active.any()):
                break
    info: dict[str, Any] = {}
    if val is not None:
        with torch.no_grad():  # every unit back to its best validated weights
            for bs, p in zip(best_state, student.parameters(), strict=True):
                p.copy_(bs)
        info = {"stop_step": stop_step, "steps_used": done, "val_loss_per_segment": _val_losses(student, val).tolist(),
                "plateaued": [s < steps for s in stop_step]}
    return last, info
