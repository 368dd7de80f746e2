"""Generalization and memorization errors of a student (teacher-student protocol).

    E_gen = PFD(student, teacher),   E_mem = PFD(student, empirical model of the training set)

Both are estimated on the SAME canonical noise; the teacher's and the empirical model's maps are
wrapped in :class:`pfd.maps.CachedMap` (pass the returned ``references`` back in to reuse them
across students or epochs), and the student's map is evaluated once per noise batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pfd._checks import call_map, check_callable
from pfd.analytic.gmm import GaussianMixture
from pfd.estimator import PFDResult, distance
from pfd.maps import CachedMap

__all__ = ["GeneralizationErrors", "MemorizationBreakdown", "ReferenceMaps", "compare_metrics", "generalization_errors",
           "memorization_breakdown", "reference_maps"]

Map = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ReferenceMaps:
    """Cached maps of the teacher and of the empirical (memorizing) model of a training set."""

    teacher: CachedMap
    empirical: CachedMap
    n_train: int | None


def _as_map(obj: Any, what: str, solver: dict[str, Any]) -> CachedMap:
    if isinstance(obj, CachedMap):
        return obj
    if isinstance(obj, GaussianMixture):
        return CachedMap(obj.ode_map(**solver))
    if callable(obj):
        return CachedMap(obj)
    raise TypeError(f"{what} must be a GaussianMixture or a callable noise-to-data map, got {type(obj).__name__}")


def reference_maps(teacher: Any, train_set: Any, **solver: Any) -> ReferenceMaps:
    """Cached teacher map and empirical-model map of ``train_set``.

    ``teacher``: a :class:`pfd.GaussianMixture` (its PF-ODE map with ``solver`` options) or any
    map. ``train_set``: (N, d) or (N, *event_shape) training points (their empirical model's map is built), an
    empirical :class:`pfd.GaussianMixture`, or a ready map. ``solver`` goes to
    :class:`pfd.DiffusionMap` (default: EDM Heun, 18 grid points).
    """
    tmap = _as_map(teacher, "teacher", solver)
    n_train = None
    if isinstance(train_set, (CachedMap, GaussianMixture)) or (callable(train_set) and not isinstance(train_set, torch.Tensor)):
        emp = train_set
        if isinstance(train_set, GaussianMixture):
            n_train = train_set.n_components
    else:
        if isinstance(train_set, torch.Tensor) and train_set.ndim < 2:
            raise ValueError(f"train_set must be (N, d) or (N, *event_shape) points, got shape {tuple(train_set.shape)}")
        emp = GaussianMixture.empirical(train_set)
        n_train = emp.n_components
    return ReferenceMaps(tmap, _as_map(emp, "train_set", solver), n_train)


@dataclass(frozen=True)
class GeneralizationErrors:
    """E_gen and E_mem of one student, each a :class:`pfd.PFDResult` (value, stderr, CI)."""

    e_gen: PFDResult
    e_mem: PFDResult
    n_train: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"e_gen": self.e_gen.value, "e_gen_ci95": list(self.e_gen.ci95), "e_gen_stderr": self.e_gen.stderr,
                "e_mem": self.e_mem.value, "e_mem_ci95": list(self.e_mem.ci95), "e_mem_stderr": self.e_mem.stderr,
                "n": self.e_gen.n, "n_train": self.n_train}

    def __str__(self) -> str:
        g, m = self.e_gen, self.e_mem
        return f"E_gen = {g.value:.4g} ± {g.stderr:.2g}, E_mem = {m.value:.4g} ± {m.stderr:.2g}"


def generalization_errors(
    student: Map,
    teacher: Any,
    train_set: Any,
    *,
    n: int = 4096,
    seed: int = 0,
    batch_size: int = 1024,
    references: ReferenceMaps | None = None,
    progress: bool = False,
    **solver: Any,
) -> GeneralizationErrors:
    """E_gen = PFD(student, teacher) and E_mem = PFD(student, empirical model of ``train_set``).

    Both on the same canonical noise (``seed``, ``n``). Pass ``references=reference_maps(...)``
    to reuse cached teacher/empirical outputs across calls (``teacher``/``train_set`` are then
    ignored and may be None).

    >>> import pfd
    >>> from pfd.analysis import generalization_errors
    >>> teacher = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])
    >>> train = teacher.sample(8, seed=3)
    >>> memorizer = pfd.GaussianMixture.empirical(train).ode_map()
    >>> err = generalization_errors(memorizer, teacher, train, n=64)
    >>> err.e_mem.value, err.e_gen.value > 0.1
    (0.0, True)
    """
    check_callable(student, "student", "a callable noise-to-data map")
    refs = references if references is not None else reference_maps(teacher, train_set, **solver)
    if not isinstance(refs, ReferenceMaps):
        raise TypeError(f"references must come from reference_maps(), got {type(refs).__name__}")
    smap = student if isinstance(student, CachedMap) else CachedMap(student)
    kw = {"n": n, "seed": seed, "batch_size": batch_size, "progress": progress}
    e_gen = distance(smap, refs.teacher, **kw)
    e_mem = distance(smap, refs.empirical, **kw)
    return GeneralizationErrors(e_gen, e_mem, refs.n_train)


@dataclass(frozen=True)
class MemorizationBreakdown:
    """Where a student's E_mem comes from: wrong training points, or not a training point at all.

    On the shared noise z_i, let s_i = Psi student(z_i), e_i = Psi empirical(z_i) (a training
    point, up to the solver) and b(x) the index of the training point nearest x (x's "basin").
    Then exactly

        E_mem^2 = mean_i ||s_i - e_i||^2 = E_same^2 + E_switched^2,
        E_same^2     = mean_i ||s_i - e_i||^2 [b(s_i) = b(e_i)]   (right training point, not on it),
        E_switched^2 = mean_i ||s_i - e_i||^2 [b(s_i) != b(e_i)]  (noise sent to another point).

    ``basin_agreement`` is the fraction with b(s_i) = b(e_i) (Wilson 95% interval);
    ``copy_fraction`` the memorization ratio of the student's samples (d1/d2 < ``threshold``,
    bootstrap 95% interval). A student that copies training points (copy_fraction ~ 1) but
    routes the noise to them differently from the empirical model's PF-ODE has small E_same and
    large E_switched: it memorizes as a sampler while its map is not the memorizer's.
    """

    e_mem: float
    e_mem_same_basin: float
    e_mem_switched: float
    basin_agreement: float
    basin_agreement_ci95: tuple[float, float]
    copy_fraction: float
    copy_fraction_ci95: tuple[float, float]
    threshold: float
    n: int
    n_train: int

    def to_dict(self) -> dict[str, Any]:
        return {"e_mem": self.e_mem, "e_mem_same_basin": self.e_mem_same_basin, "e_mem_switched": self.e_mem_switched,
                "basin_agreement": self.basin_agreement, "basin_agreement_ci95": list(self.basin_agreement_ci95),
                "copy_fraction": self.copy_fraction, "copy_fraction_ci95": list(self.copy_fraction_ci95),
                "copy_threshold": self.threshold, "n": self.n, "n_train": self.n_train}

    def __str__(self) -> str:
        return (f"E_mem = {self.e_mem:.4g} (same basin {self.e_mem_same_basin:.3g}, switched {self.e_mem_switched:.3g}); "
                f"basin agreement {self.basin_agreement:.3f}, copies {self.copy_fraction:.3f}")


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion k / n."""
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def memorization_breakdown(
    student: Map,
    train_set: Any,
    *,
    n: int = 4096,
    seed: int = 0,
    batch_size: int = 1024,
    references: ReferenceMaps | None = None,
    threshold: float = 1 / 3,
    n_boot: int = 1000,
    **solver: Any,
) -> MemorizationBreakdown:
    """Split a student's E_mem into a same-basin and a switched-basin part (see
    :class:`MemorizationBreakdown`), with its copy fraction, on the canonical noise of
    (``seed``, ``n``) — the noise :func:`generalization_errors` uses, so cached maps are reused.

    ``train_set``: the (N, ...) training points (the empirical model's map is built with
    ``solver`` unless ``references`` from :func:`reference_maps` is given, whose empirical map is
    then used; ``train_set`` still gives the points).

    >>> import pfd
    >>> from pfd.analysis import memorization_breakdown
    >>> teacher = pfd.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.1, 0.1])
    >>> train = teacher.sample(4, seed=3)
    >>> memorizer = pfd.GaussianMixture.empirical(train).ode_map()
    >>> b = memorization_breakdown(memorizer, train, n=256)
    >>> b.e_mem, b.basin_agreement, b.copy_fraction
    (0.0, 1.0, 1.0)
    """
    from pfd._checks import check_positive_int
    from pfd.analysis.baselines import memorization_ratio
    from pfd.noise import NoiseSource

    check_callable(student, "student", "a callable noise-to-data map")
    points = torch.as_tensor(train_set, dtype=torch.float64) if not isinstance(train_set, torch.Tensor) else train_set
    if points.ndim < 2 or points.shape[0] < 2:
        raise ValueError(f"train_set must be (N >= 2, ...) training points, got shape {tuple(points.shape)}")
    n = check_positive_int(n, "n", minimum=2)
    batch_size = check_positive_int(batch_size, "batch_size")
    if references is not None and not isinstance(references, ReferenceMaps):
        raise TypeError(f"references must come from reference_maps(), got {type(references).__name__}")
    emp = references.empirical if references is not None else _as_map(GaussianMixture.empirical(points),
                                                                        "train_set", solver)
    shape = tuple(points.shape[1:])
    source = NoiseSource(seed, shape)
    y = points.detach().to("cpu", torch.float64).reshape(points.shape[0], -1)
    xs, xe = [], []
    for start in range(0, n, batch_size):  # the batches distance() uses: CachedMap hits
        z = source.get(start, min(n, start + batch_size))
        xs.append(call_map(student, z, "student", start).detach().to("cpu", torch.float64).reshape(z.shape[0], -1))
        xe.append(call_map(emp, z, "empirical model", start).detach().to("cpu", torch.float64).reshape(z.shape[0], -1))
    s, e = torch.cat(xs), torch.cat(xe)
    if s.shape[1] != y.shape[1]:
        raise ValueError(f"student outputs have {s.shape[1]} values per sample, training points {y.shape[1]}")
    sq = (s - e).pow(2).sum(1)
    agree = torch.cdist(s, y).argmin(1) == torch.cdist(e, y).argmin(1)
    k = int(agree.sum())
    copies = memorization_ratio(s, y, threshold=threshold, n_boot=n_boot, seed=seed)
    return MemorizationBreakdown(
        e_mem=float(sq.mean().sqrt()), e_mem_same_basin=float((sq * agree).sum().div(n).sqrt()),
        e_mem_switched=float((sq * ~agree).sum().div(n).sqrt()), basin_agreement=k / n,
        basin_agreement_ci95=_wilson(k, n), copy_fraction=copies["value"], copy_fraction_ci95=tuple(copies["ci95"]),
        threshold=copies["threshold"], n=n, n_train=int(points.shape[0]))


def compare_metrics(
    students: dict[str, tuple[Map, Any]],
    teacher: Any,
    test: Any,
    *,
    n: int = 2048,
    seed: int = 0,
    batch_size: int = 1024,
    baseline_seed: int = 0,
    **solver: Any,
) -> list[dict[str, Any]]:
    """Score students by PFD (E_gen, E_mem) and by every sample baseline, on the same samples.

    ``students`` maps a name to ``(map, train_set)``; the samples each baseline sees are the
    student's outputs on the same canonical noise (``seed``, ``n``) that PFD uses. ``test`` is a
    held-out sample of the data (for Fréchet, MMD, PRDC and C_T).
    """
    from pfd.analysis.baselines import all_baselines
    from pfd.noise import canonical_noise

    tmap = _as_map(teacher, "teacher", solver)
    rows = []
    for name, (smap, train) in students.items():
        refs = reference_maps(tmap, train, **solver)
        cached = smap if isinstance(smap, CachedMap) else CachedMap(smap)
        err = generalization_errors(cached, None, None, n=n, seed=seed, batch_size=batch_size, references=refs)
        shape = tmap.shape or (torch.as_tensor(train).shape[1],)
        z = canonical_noise(n, shape, seed=seed)
        samples = torch.cat([call_map(cached, z[i:i + batch_size], f"student {name!r}", i) for i in range(0, n, batch_size)])
        rows.append({"student": name, "n_train": int(torch.as_tensor(train).shape[0]), **err.to_dict(),
                     **all_baselines(samples, train, test, seed=baseline_seed)})
    return rows
