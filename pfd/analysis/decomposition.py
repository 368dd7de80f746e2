"""Bias-variance decomposition of the generalization error over training sets.

For students theta(D_1..D_K) trained on independent training sets, with the mean map
m(z) = (1/K) sum_k Psi(Phi_k(z)):

    E_bias^2 = E_z ||Psi Phi_data(z) - m(z)||^2,   E_var = (1/K) sum_k E_z ||Psi Phi_k(z) - m(z)||^2,
    (1/K) sum_k E_gen,k^2 = E_bias^2 + E_var     (exactly: the cross term sums to zero over k).

Everything is evaluated on one canonical noise bank; sums are exact (the reduction core's exact sums, as in :func:`pfd.distance`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pfd._checks import call_descriptor, call_map, check_positive_int
from pfd._reduce import ExactSum, SquaredDistances
from pfd.analysis.students import TrainConfig
from pfd.maps import map_shape
from pfd.noise import NoiseSource

__all__ = ["BiasVariance", "bias_variance", "bias_variance_study"]

Map = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BiasVariance:
    """E_bias^2, E_var, the mean E_gen^2 over students and the identity's residual."""

    bias2: float
    var: float
    mean_gen2: float
    e_gen: list[float]
    e_gen_ci95: list[tuple[float, float]]
    n: int
    k: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def identity_residual(self) -> float:
        """|mean E_gen^2 - (E_bias^2 + E_var)| / mean E_gen^2 (relative; 0 if all are 0)."""
        scale = abs(self.mean_gen2)
        diff = abs(self.mean_gen2 - (self.bias2 + self.var))
        return diff / scale if scale > 0 else diff

    def to_dict(self) -> dict[str, Any]:
        return {"bias2": self.bias2, "var": self.var, "bias2_plus_var": self.bias2 + self.var,
                "mean_gen2": self.mean_gen2, "identity_residual": self.identity_residual,
                "e_gen": self.e_gen, "e_gen_ci95": [list(c) for c in self.e_gen_ci95], "n": self.n, "k": self.k,
                **self.extra}


def bias_variance(
    students: Sequence[Map],
    teacher: Map,
    *,
    n: int = 4096,
    seed: int = 0,
    batch_size: int = 1024,
    shape: Sequence[int] | None = None,
    descriptor: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> BiasVariance:
    """Bias-variance decomposition of K >= 2 students' maps against the teacher's map.

    >>> import pfd
    >>> teacher = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    >>> students = [pfd.GaussianMixture([1.0], [[m, 0.0]], [1.0]).ode_map() for m in (0.4, 0.6)]
    >>> bv = bias_variance(students, teacher.ode_map(), n=64)
    >>> round(bv.bias2 / bv.mean_gen2, 3), bv.identity_residual < 1e-12
    (0.962, True)
    """
    students = list(students)
    if len(students) < 2:
        raise ValueError(f"students must hold at least 2 maps (K independent training runs), got {len(students)}")
    for i, s in enumerate(students):
        if not callable(s):
            raise TypeError(f"students[{i}] must be a callable noise-to-data map, got {type(s).__name__}")
    if not callable(teacher):
        raise TypeError(f"teacher must be a callable noise-to-data map, got {type(teacher).__name__}")
    n = check_positive_int(n, "n", minimum=2)
    batch_size = check_positive_int(batch_size, "batch_size")
    shp = tuple(shape) if shape is not None else map_shape(teacher)
    shp = shp or next((map_shape(s) for s in students if map_shape(s)), None)
    if shp is None:
        raise ValueError("shape= is required: no map declares the shape of a sample")
    def psi(x: torch.Tensor, label: str, offset: int) -> torch.Tensor:
        return x if descriptor is None else call_descriptor(descriptor, x, label, offset)
    src = NoiseSource(seed, shp)
    k = len(students)
    bias, var = ExactSum(), ExactSum()
    gen = [SquaredDistances() for _ in range(k)]
    for start in range(0, n, batch_size):
        z = src.get(start, min(n, start + batch_size))
        b = z.shape[0]
        t = psi(call_map(teacher, z, "teacher", start), "teacher", start).reshape(b, -1)
        outs = torch.stack([psi(call_map(s, z, f"students[{j}]", start), f"students[{j}]", start).reshape(b, -1)
                            for j, s in enumerate(students)])  # (K, B, D); every map gets its own copy of z
        mean = outs.mean(0)
        bias.add_many((t - mean).pow(2).sum(1))
        var.add_many((outs - mean).pow(2).sum(2).reshape(-1))
        for j in range(k):
            gen[j].add(outs[j], t)
    stats = [g.summary(n) for g in gen]
    mean_gen2 = ExactSum([g.s2.value for g in gen]).value / (k * n)
    return BiasVariance(bias.value / n, var.value / (k * n), mean_gen2, [s[0] for s in stats], [s[2] for s in stats], n, k,
                        {"seed": seed})


def bias_variance_study(
    teacher: Any,
    n_train: int,
    k: int = 5,
    *,
    seed: int = 0,
    config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train K DSM students on K independent training sets of N teacher samples (dataset and
    initialisation seeds seed..seed+K-1) and decompose their E_gen^2; the empirical (memorizing)
    models of the same K training sets are decomposed alongside, as the pure-memorization case.
    ``config`` (:class:`pfd.analysis.TrainConfig`) sets the students' training and evaluation."""
    from tqdm.auto import tqdm

    from pfd.analysis._runs import train_dsm
    from pfd.analytic.gmm import GaussianMixture
    from pfd.maps import CachedMap

    if not isinstance(teacher, GaussianMixture):
        raise TypeError(f"teacher must be a pfd.GaussianMixture, got {type(teacher).__name__}")
    k = check_positive_int(k, "k", minimum=2)
    n_train = check_positive_int(n_train, "n_train", minimum=2)
    cfg = config or TrainConfig()
    solver = cfg.solver.kwargs()
    tmap = CachedMap(teacher.ode_map(**solver))
    students, memorizers, params = [], [], None
    for j in tqdm(range(k), desc="bias-variance", unit="run", disable=not cfg.progress, leave=False):
        tr, data, _ = train_dsm(teacher, n_train, seed + j, cfg)
        params = tr.n_params
        students.append(tr.ode_map(**solver))
        memorizers.append(GaussianMixture.empirical(data).ode_map(**solver))
    st = bias_variance(students, tmap, n=cfg.n_eval, seed=cfg.eval_seed)
    mem = bias_variance(memorizers, tmap, n=cfg.n_eval, seed=cfg.eval_seed)
    return {"config": {"n_train": n_train, "k": k, **cfg.to_dict(), "n_params": params, "seed": seed},
            "students": st.to_dict(), "empirical": mem.to_dict()}
