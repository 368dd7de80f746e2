"""Bias-variance decomposition of the generalization error over training sets.

For students theta(D_1..D_K) trained on K independent training sets, with outputs
o_k(z) = Psi(Phi_k(z)), the teacher's t(z) = Psi(Phi_data(z)) and the sample mean map
m_K(z) = (1/K) sum_k o_k(z), the plug-in terms are

    bias2_plugin = E_z ||t(z) - m_K(z)||^2,   var_plugin = (1/K) sum_k E_z ||o_k(z) - m_K(z)||^2,
    (1/K) sum_k E_gen,k^2 = bias2_plugin + var_plugin     (exactly: the cross term sums to zero).

Over the draw of the K training sets, E[bias2_plugin] = bias2 + var/K and E[var_plugin] =
(K-1)/K var, where bias2 = E_z ||t - E_D o||^2 and var = E_z E_D ||o - E_D o||^2 are the
population terms. The unbiased estimates are therefore

    var = K/(K-1) var_plugin,    bias2 = bias2_plugin - var/K,

and they sum to the same mean E_gen^2. Everything is evaluated on one canonical noise bank;
sums are exact (the reduction core's exact sums, as in :func:`pfd.distance`), so nothing depends on
the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pfd._checks import call_descriptor, call_map, check_callable, check_positive_int
from pfd._reduce import Z95, ExactSum, SquaredDistances
from pfd.analysis.students import TrainConfig
from pfd.maps import map_shape
from pfd.noise import NoiseSource

__all__ = ["BiasVariance", "bias_variance", "bias_variance_study"]

Map = Callable[[torch.Tensor], torch.Tensor]

_TERMS = ("bias2", "var", "bias2_plugin", "var_plugin", "mean_gen2")


@dataclass(frozen=True)
class BiasVariance:
    """Unbiased E_bias^2 and E_var, the plug-in terms, the mean E_gen^2 and 95% CIs over noise.

    ``bias2`` / ``var`` are unbiased over the draw of the K training sets (``bias2`` can come out
    slightly negative when the bias is small); ``bias2_plugin`` / ``var_plugin`` are the terms
    of the mean map m_K, for which mean E_gen^2 = bias2_plugin + var_plugin holds exactly
    (``identity_residual``; bias2 + var equals it as well). ``ci95`` holds a normal-theory 95%
    interval over the n noise samples for each term and for ``bias_share`` = bias2 / mean E_gen^2
    (delta method). These intervals cover the noise sampling only, not the randomness of the K
    training sets; for K >= 3, ``extra["ci95_students"]`` holds leave-one-student-out jackknife
    intervals (t quantile with K - 1 degrees of freedom) of bias2, var, mean_gen2 and bias_share,
    which do.
    """

    bias2: float
    var: float
    bias2_plugin: float
    var_plugin: float
    mean_gen2: float
    e_gen: list[float]
    e_gen_ci95: list[tuple[float, float]]
    n: int
    k: int
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def identity_residual(self) -> float:
        """|mean E_gen^2 - (bias2_plugin + var_plugin)| / mean E_gen^2 (relative; 0 if all are 0)."""
        scale = abs(self.mean_gen2)
        diff = abs(self.mean_gen2 - (self.bias2_plugin + self.var_plugin))
        return diff / scale if scale > 0 else diff

    @property
    def bias_share(self) -> float:
        """Unbiased bias fraction bias2 / mean E_gen^2 (nan if mean E_gen^2 is 0)."""
        return self.bias2 / self.mean_gen2 if self.mean_gen2 > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"bias2": self.bias2, "var": self.var, "bias2_plus_var": self.bias2 + self.var,
                "bias2_plugin": self.bias2_plugin, "var_plugin": self.var_plugin, "mean_gen2": self.mean_gen2,
                "bias_share": self.bias_share, "identity_residual": self.identity_residual,
                "ci95": {key: list(v) for key, v in self.ci95.items()},
                "e_gen": self.e_gen, "e_gen_ci95": [list(c) for c in self.e_gen_ci95], "n": self.n, "k": self.k,
                **self.extra}


def _mean_ci(values: torch.Tensor) -> tuple[float, tuple[float, float]]:
    """Exact mean of per-sample values and its normal-theory 95% interval."""
    n = values.numel()
    vals = values.tolist()
    mean = math.fsum(vals) / n
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / n)
    return mean, (mean - half, mean + half)


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

    Returns the unbiased ``bias2`` / ``var`` and the plug-in ``bias2_plugin`` / ``var_plugin``
    (see the module docstring), each with a 95% CI over the noise sample. Two students offset
    from the teacher by 0.4 e1 and 0.6 e1 (mean offset 0.5, spread 0.1):

    >>> import torch, pfd
    >>> teacher = pfd.OneStepMap(lambda z: z, shape=(2,))
    >>> students = [pfd.OneStepMap(lambda z, c=c: z + torch.tensor([c, 0.0]), shape=(2,)) for c in (0.4, 0.6)]
    >>> bv = bias_variance(students, teacher, n=64)
    >>> round(bv.bias2_plugin, 6), round(bv.var_plugin, 6), round(bv.var, 6), round(bv.bias2, 6)
    (0.25, 0.01, 0.02, 0.24)
    >>> bv.identity_residual < 1e-12
    True
    """
    students = list(students)
    if len(students) < 2:
        raise ValueError(f"students must hold at least 2 maps (K independent training runs), got {len(students)}")
    for i, s in enumerate(students):
        check_callable(s, f"students[{i}]", "a callable noise-to-data map")
    check_callable(teacher, "teacher", "a callable noise-to-data map")
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
    gen = [SquaredDistances() for _ in range(k)]
    b_z, v_z = [], []  # per-noise-sample plug-in terms ||t - m||^2 and (1/K) sum_k ||o_k - m||^2
    loo_b, loo_v = [], []  # the same with student i left out (jackknife over training sets), (K, B)
    for start in range(0, n, batch_size):
        z = src.get(start, min(n, start + batch_size))
        b = z.shape[0]
        t = psi(call_map(teacher, z, "teacher", start), "teacher", start).reshape(b, -1)
        outs = torch.stack([psi(call_map(s, z, f"students[{j}]", start), f"students[{j}]", start).reshape(b, -1)
                            for j, s in enumerate(students)])  # (K, B, D); every map gets its own copy of z
        mean = outs.mean(0)
        b_z.append((t - mean).pow(2).sum(1))
        v_z.append((outs - mean).pow(2).sum(2).mean(0))
        if k >= 3:
            means_loo = (k * mean[None] - outs) / (k - 1)  # (K, B, D): mean of the others
            loo_b.append((t[None] - means_loo).pow(2).sum(2))
            spread = (outs[None] - means_loo[:, None]).pow(2).sum(3)  # (K_left_out, K, B)
            spread = spread.sum(1) - spread.diagonal(dim1=0, dim2=1).T  # drop the left-out student
            loo_v.append(spread / (k - 1))
        for j in range(k):
            gen[j].add(outs[j], t)
    bz, vz = torch.cat(b_z), torch.cat(v_z)
    per_sample = {"bias2_plugin": bz, "var_plugin": vz, "var": vz * (k / (k - 1)),
                  "bias2": bz - vz / (k - 1), "mean_gen2": bz + vz}
    vals, ci = {}, {}
    for key in _TERMS:
        vals[key], ci[key] = _mean_ci(per_sample[key])
    if vals["mean_gen2"] > 0:  # delta method for the ratio of two means over the same noise
        share = vals["bias2"] / vals["mean_gen2"]
        _, (lo, hi) = _mean_ci((per_sample["bias2"] - share * per_sample["mean_gen2"]) / vals["mean_gen2"])
        ci["bias_share"] = (share + lo, share + hi)
    stats = [g.summary(n) for g in gen]
    mean_gen2 = ExactSum([g.s2.value for g in gen]).value / (k * n)
    extra: dict[str, Any] = {"seed": seed}
    if k >= 3:
        extra["ci95_students"] = _jackknife(torch.cat(loo_b, 1), torch.cat(loo_v, 1), k, vals)
    return BiasVariance(vals["bias2"], vals["var"], vals["bias2_plugin"], vals["var_plugin"], mean_gen2,
                        [s[0] for s in stats], [s[2] for s in stats], n, k, ci, extra)


def _jackknife(loo_b: torch.Tensor, loo_v: torch.Tensor, k: int, full: dict[str, float]) -> dict[str, list[float]]:
    """Leave-one-student-out jackknife 95% intervals (t quantile, K - 1 dof) of the unbiased terms:
    they carry the randomness of the K training sets, which the intervals over noise do not."""
    from scipy.stats import t as t_dist

    km = k - 1  # students in each leave-one-out estimate
    reps: dict[str, list[float]] = {"bias2": [], "var": [], "mean_gen2": [], "bias_share": []}
    for i in range(k):
        b = math.fsum(loo_b[i].tolist()) / loo_b.shape[1]
        v = math.fsum(loo_v[i].tolist()) / loo_v.shape[1]
        var_u = v * km / (km - 1)
        bias_u = b - var_u / km
        reps["bias2"].append(bias_u)
        reps["var"].append(var_u)
        reps["mean_gen2"].append(b + v)
        reps["bias_share"].append(bias_u / (b + v) if b + v > 0 else math.nan)
    q = float(t_dist.ppf(0.975, k - 1))
    out = {}
    for key, r in reps.items():
        centre = full[key] if key != "bias_share" else (full["bias2"] / full["mean_gen2"] if full["mean_gen2"] > 0
                                                        else math.nan)
        rbar = math.fsum(r) / k
        se = math.sqrt((k - 1) / k * math.fsum((x - rbar) ** 2 for x in r))
        out[key] = [centre - q * se, centre + q * se]
    return out


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
