"""One-step students distilled by regression onto a teacher's noise-to-data map (optionally conditional).

The student G(z[, c]) is trained on pairs (z_i, c_i, Phi(z_i, c_i)) of canonical noise, canonical
labels and the teacher map's outputs (knowledge distillation in the sense of Luhman & Luhman,
2021: a trajectory student of the map itself), so its map is directly comparable with the
teacher's on shared noise. A conditional student sees the class as a one-hot vector; a teacher
with classifier-free guidance baked into its map gives a guidance-distilled student.

>>> import torch, pfd
>>> from pfd.distill.onestep import ONE_STEP_TRAIN, train_one_step_student
>>> gmm = pfd.GaussianMixture([1.0], [[1.0, -1.0]], [0.5])
>>> cfg = ONE_STEP_TRAIN.replace(train_steps=200, width=32, lr=3e-3, progress=False)
>>> student, hist = train_one_step_student(gmm.ode_map(steps=8), (2,), n_train=256, config=cfg)
>>> student.conditional, pfd.distance(student, gmm.ode_map(steps=8), n=256, progress=False).value < 0.2
(False, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pfd._checks import check_positive_int, check_shape
from pfd._train import TrainConfig, train_config
from pfd.maps import OneStepMap, is_conditional
from pfd.noise import LabelSource, NoiseSource, derive_seed
from pfd.report import progress_range

__all__ = ["ONE_STEP_TRAIN", "OneStepNet", "train_one_step_student"]

_STREAM_INIT = 0x0E57
ONE_STEP_TRAIN = TrainConfig(width=256, depth=3, train_steps=3000, batch_size=256, lr=1e-3)
""":func:`train_one_step_student`'s default training."""


class OneStepNet(torch.nn.Module):
    """MLP generator G(z[, one_hot(c)]) = z + h(z, c) on flattened samples (SiLU, ``depth`` hidden layers of
    ``width`` units)."""

    def __init__(self, shape: Sequence[int], *, n_classes: int = 0, width: int = 256, depth: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.shape = check_shape(shape)
        self.dim = int(math.prod(self.shape))
        self.n_classes = int(n_classes)
        g = torch.Generator().manual_seed(derive_seed(seed, _STREAM_INIT) % (2**63))
        layers: list[torch.nn.Module] = []
        fan_in = self.dim + self.n_classes
        for _ in range(check_positive_int(depth, "depth")):
            layers += [torch.nn.Linear(fan_in, check_positive_int(width, "width")), torch.nn.SiLU()]
            fan_in = width
        layers.append(torch.nn.Linear(fan_in, self.dim))
        self.net = torch.nn.Sequential(*layers)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p.shape[-1]) if p.ndim > 1 else 0.0))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = z.reshape(z.shape[0], -1)
        if self.n_classes:
            if labels is None:
                raise ValueError("this student is conditional: pass labels")
            h = torch.cat([h, torch.nn.functional.one_hot(labels.long(), self.n_classes).to(h.dtype)], 1)
        return (z.reshape(z.shape[0], -1) + self.net(h)).reshape(z.shape)


def train_one_step_student(
    teacher: Callable[..., torch.Tensor],
    shape: Sequence[int],
    *,
    label_probs: Any = None,
    n_train: int = 8192,
    seed: int = 0,
    data_seed: int = 10_000,
    config: TrainConfig | None = None,
) -> tuple[OneStepMap, dict[str, Any]]:
    """Distil ``teacher`` (a map, conditional if ``label_probs`` is given) into a one-step student.

    The training pairs use canonical noise and labels of ``data_seed`` (keep it different from
    the evaluation seed so the student is scored on unseen noise). ``config``
    (:class:`pfd.TrainConfig`, default :data:`ONE_STEP_TRAIN`: width 256, depth 3, 3000 steps of
    batch 256, lr 1e-3) sizes the :class:`OneStepNet` and its training: Adam with a cosine
    learning rate. Returns the student as a :class:`pfd.OneStepMap` (``conditional`` when labels
    are used) and a history (loss per 100 steps, seconds, parameter count).
    """
    shape = check_shape(shape)
    n_train = check_positive_int(n_train, "n_train", minimum=2)
    cfg = train_config(config, ONE_STEP_TRAIN)
    steps, batch_size = cfg.train_steps, cfg.batch_size
    cond = label_probs is not None
    if cond != is_conditional(teacher):
        raise ValueError("label_probs must be given exactly when the teacher map is conditional")
    t0 = time.perf_counter()
    z = NoiseSource(data_seed, shape).get(0, n_train)
    labels = LabelSource(data_seed, label_probs) if cond else None
    lab = labels.get(0, n_train) if labels is not None else None
    with torch.no_grad():
        chunks = []
        for s in range(0, n_train, 1024):
            zz = z[s : s + 1024]
            chunks.append(teacher(zz, lab[s : s + 1024]) if cond else teacher(zz))
        y = torch.cat(chunks).to(torch.float32)
    n_classes = int(labels.probs.numel()) if labels is not None else 0
    net = OneStepNet(shape, n_classes=n_classes, width=cfg.width, depth=cfg.depth, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(derive_seed(seed, 0xBA7C) % (2**63))
    zf = z.to(torch.float32)
    losses: list[float] = []
    run = 0.0
    for step in progress_range(steps, "one-step student", cfg.progress):
        idx = torch.randint(0, n_train, (batch_size,), generator=g)
        out = net(zf[idx], lab[idx] if cond else None)
        loss = (out - y[idx]).pow(2).reshape(batch_size, -1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run += float(loss.detach())
        if (step + 1) % 100 == 0:
            losses.append(run / 100)
            run = 0.0
    net.eval()
    student = OneStepMap(net, shape=shape, name=f"one-step student (width {cfg.width}, depth {cfg.depth})", conditional=cond)
    hist = {"loss": losses, "seconds": time.perf_counter() - t0, "params": sum(p.numel() for p in net.parameters()),
            "n_train": n_train, "steps": steps}
    return student, hist
