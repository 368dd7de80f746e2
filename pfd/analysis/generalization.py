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

__all__ = ["GeneralizationErrors", "ReferenceMaps", "compare_metrics", "generalization_errors", "reference_maps"]

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
