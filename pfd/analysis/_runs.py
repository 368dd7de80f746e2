"""Shared pieces of the sweeps: one trained student, its errors, resumable JSONL records."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pfd._train import atomic_torch_save
from pfd.analysis._runkey import check_settings, load_checkpoint, run_settings, settings_diff, settings_key
from pfd.analysis.generalization import generalization_errors, memorization_breakdown, reference_maps
from pfd.analysis.students import DSMTrainer, TrainConfig
from pfd.analytic.gmm import GaussianMixture
from pfd.maps import CachedMap
from pfd.noise import derive_seed

__all__ = [
    "OnDevice",
    "epochs_for_steps",
    "read_records",
    "run_settings",
    "score_member",
    "settings_key",
    "train_dsm",
    "train_ensemble",
    "train_set",
    "train_student",
]


BREAKDOWN_FIELDS = ("copy_fraction", "basin_agreement", "e_mem_same_basin", "e_mem_switched")
"""Per-run fields of :func:`pfd.analysis.memorization_breakdown` kept in sweep records."""


def train_set(teacher: GaussianMixture, n_train: int, data_seed: int):
    """The N training points of dataset ``data_seed`` (a deterministic function of both)."""
    return teacher.sample(n_train, seed=derive_seed(data_seed, 31, n_train) % (2**62))


def epochs_for_steps(n_train: int, batch_size: int, steps: int) -> int:
    """Epochs giving at least ``steps`` optimizer steps (an epoch has max(1, floor(N / bs)) steps)."""
    per_epoch = max(1, n_train // batch_size)
    return max(1, math.ceil(steps / per_epoch))


def train_dsm(teacher: GaussianMixture, n_train: int, seed: int,
              config: TrainConfig) -> tuple[DSMTrainer, torch.Tensor, list[float]]:
    """A DSM student trained for at least ``config.train_steps`` steps on training set ``seed``
    (dataset and initialisation from ``seed``), its training set and its loss per epoch."""
    data = train_set(teacher, n_train, seed)
    tr = DSMTrainer(data, width=config.width, depth=config.depth, seed=seed, lr=config.lr, batch_size=config.batch_size)
    losses = tr.train(epochs_for_steps(n_train, config.batch_size, config.train_steps))
    return tr, data, losses


def train_student(
    teacher: GaussianMixture,
    n_train: int,
    config: TrainConfig,
    *,
    seed: int = 0,
    teacher_map: CachedMap | None = None,
) -> tuple[dict[str, Any], DSMTrainer]:
    """Train one DSM student on a fresh training set (dataset and init from ``seed``) and score it."""
    solver = config.solver.kwargs()
    t0 = time.perf_counter()
    tr, data, losses = train_dsm(teacher, n_train, seed, config)
    refs = reference_maps(teacher_map if teacher_map is not None else teacher, data, **solver)
    ev = {"n": config.n_eval, "seed": config.eval_seed, "references": refs}
    err = generalization_errors(tr.ode_map(**solver), None, None, **ev)
    emp_gen = generalization_errors(refs.empirical, None, None, **ev).e_gen
    rec = {
        "n_train": n_train, "width": config.width, "depth": config.depth, "n_params": tr.n_params, "seed": seed,
        "epochs": tr.epoch, "steps": tr.step, "train_loss": losses[-1],
        **err.to_dict(), "e_gen_empirical": emp_gen.value, "seconds": time.perf_counter() - t0,
    }
    return rec, tr


def read_records(
    path: str | os.PathLike[str], key_fields: Iterable[str], settings: dict[str, Any] | None = None
) -> dict[tuple, dict[str, Any]]:
    """Finished records of a JSONL sweep file keyed by ``key_fields`` (first occurrence wins;
    an incomplete or corrupt line, e.g. from a crash mid-write, is skipped).

    With ``settings`` (see :func:`pfd.analysis._runkey.run_settings`) only records made with
    exactly these settings (their ``settings_key``) are returned; the others stay in the file but
    are not reused, and a warning says how many were set aside and which settings differ.
    """
    out: dict[tuple, dict[str, Any]] = {}
    p = Path(path)
    if not p.exists():
        return out
    fields = tuple(key_fields)
    key = None if settings is None else settings_key(settings)
    other: dict[str, dict[str, Any] | None] = {}
    set_aside = 0
    with p.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                k = tuple(rec[f] for f in fields)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if key is not None and rec.get("settings_key") != key:
                other.setdefault(str(rec.get("settings_key")), rec.get("settings"))
                set_aside += 1
                continue
            out.setdefault(k, rec)
    if other:
        import warnings

        diffs = sorted({d for st in other.values() for d in settings_diff(st, settings or {})})
        warnings.warn(f"{p}: set aside {set_aside} run(s) made with other settings ("
                      f"{'; '.join(diffs) or 'records without settings, from an older pfd'}); they are not reused",
                      UserWarning, stacklevel=2)
    return out


class OnDevice:
    """A noise-to-data map evaluated on ``device``: the noise is moved there and the output
    back to the noise's device (e.g. a mixture's map on a GPU while pfd draws noise on the CPU)."""

    def __init__(self, base: Any, device: str | Any) -> None:
        import torch

        self.base, self.device = base, torch.device(device)
        self.shape = getattr(base, "shape", None)
        self.name = getattr(base, "name", type(base).__name__)

    def __call__(self, z):
        return self.base(z.to(self.device)).to(z.device)


def train_ensemble(
    teacher: GaussianMixture,
    n_trains: list[int],
    seeds: list[int],
    *,
    arch: str = "mlp",
    width: int = 256,
    depth: int = 3,
    train: dict[str, Any] | None = None,
    n_eval: int = 4096,
    eval_seed: int = 0,
    eval_batch: int = 4096,
    device: str = "cpu",
    teacher_map: CachedMap | None = None,
    solver: dict[str, Any] | None = None,
    wall_budget: float | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_settings: dict[str, Any] | None = None,
    checkpoint_every: float = 300.0,
    probe_fraction: float | None = None,
) -> list[dict[str, Any]]:
    """Train one student per (seed, N) in ``seeds`` x ``n_trains`` (training set and init from
    the seed) together as an :class:`pfd.analysis.students.EnsembleDSMTrainer`, each until it
    converges, then score each: E_gen, E_mem, the memorizer's E_gen, the steps used and why
    training stopped, and the split of E_mem into same-basin and switched-basin parts with the
    copy fraction (:func:`pfd.analysis.memorization_breakdown`, ``BREAKDOWN_FIELDS``).

    ``train`` holds the trainer's keyword arguments (lr, batch_size, sigma sampling, stopping
    rule, ...), optionally ``clamp`` (the students' denoiser outputs are projected onto
    [-clamp, clamp]^d when their maps are evaluated) and optionally ``lr_ref_width``: the learning rate is then scaled by
    min(1, sqrt(lr_ref_width / width)) (wide networks take smaller Adam steps). The teacher and
    empirical maps run on ``device`` (float64).

    ``checkpoint`` (a file path) makes the ensemble's training resumable: its trainer state
    (:meth:`~pfd.analysis.students.EnsembleDSMTrainer.state_dict`, with ``checkpoint_settings``,
    the settings that determine the unit) is written atomically every ``checkpoint_every``
    seconds of training, and an existing checkpoint is continued (bit for bit as if never
    interrupted) after its settings are checked against ``checkpoint_settings`` (a mismatch is
    a ValueError). When ``wall_budget`` runs out first the state is saved and nothing is scored:
    the return value is ``[]`` (the unit is unfinished). Without a checkpoint a wall stop scores
    the members as they are, marked ``stopped_by="wall"``.

    ``probe_fraction`` (in (0, 1)): when training reaches that fraction of ``max_steps``, the
    members still training are scored once more there, so a run that ends at the step cap tells
    how much its E_gen still moved over the rest of training: its record gets ``probe`` =
    {step, e_gen, e_gen_rel, copy_fraction} and ``e_gen_drift`` = |E_gen - E_gen(probe)| / E_gen.
    Stopping and continuing at the probe does not change training (it continues bit for bit)."""
    import math

    from pfd.analysis.students import EnsembleDSMTrainer

    train = dict(train or {})
    ref = train.pop("lr_ref_width", None)
    clamp = train.pop("clamp", None)
    if ref is not None:
        train["lr"] = train.get("lr", 1e-3) * min(1.0, math.sqrt(ref / width))
    solver = dict(solver or {})
    t0 = time.perf_counter()
    members = [(int(s), int(n)) for s in seeds for n in n_trains]
    data = [train_set(teacher, n, s) for s, n in members]
    tr = EnsembleDSMTrainer(data, [int(derive_seed(s, 7, n) % (2**31)) for s, n in members], arch=arch, width=width,
                            depth=depth, device=device, noise_seed=int(seeds[0]), **train)
    tmap = teacher_map if teacher_map is not None else CachedMap(OnDevice(teacher.ode_map(**solver), device))

    def score(i: int) -> dict[str, Any]:
        return score_member(tr, i, data[i], tmap, clamp=clamp, solver=solver, n_eval=n_eval, eval_seed=eval_seed,
                            eval_batch=eval_batch, device=device)

    probe_step = None
    if probe_fraction is not None:
        if not 0.0 < float(probe_fraction) < 1.0:
            raise ValueError(f"probe_fraction must be in (0, 1), got {probe_fraction!r}")
        probe_step = max(1, round(float(probe_fraction) * tr.max_steps))

    def probe(idx: list[int]) -> dict[int, dict[str, Any]]:
        out = {}
        for i in idx:
            sc = score(i)
            out[i] = {"step": tr.step, **{k: sc[k] for k in ("e_gen", "e_gen_rel", "copy_fraction")}}
        return out

    done = _train_resumable(tr, wall_budget=wall_budget, progress=progress, checkpoint=checkpoint,
                            settings=checkpoint_settings, every=checkpoint_every, probe_step=probe_step, probe=probe)
    if done is None:
        return []
    stats, probes = done
    t_train = time.perf_counter() - t0
    out = []
    for i, (s, n) in enumerate(members):
        rec = {**stats[i], **score(i), "n_train": n, "seed": s, "arch": arch, "width": width, "depth": depth,
               "lr": tr.lr0, "train_seconds_unit": t_train}
        if i in probes:
            rec["probe"] = probes[i]
            rec["e_gen_drift"] = abs(rec["e_gen"] - probes[i]["e_gen"]) / rec["e_gen"] if rec["e_gen"] > 0 else None
        out.append(rec)
    return out


def _train_resumable(tr: Any, *, wall_budget: float | None, progress: bool, checkpoint: str | os.PathLike[str] | None,
                     settings: dict[str, Any] | None, every: float, probe_step: int | None = None,
                     probe: Any = None) -> tuple[list[dict[str, Any]], dict[int, Any]] | None:
    """Train ``tr`` to the end, in slices of ``every`` seconds with a checkpoint after each when
    ``checkpoint`` is set; at ``probe_step`` (if below the cap) call ``probe(members still
    training)`` once. Returns (stats, probe results), or None when the wall budget ended training
    first and the state (with the probe results so far) was saved."""
    if checkpoint is not None:
        if settings is None:
            raise ValueError("checkpoint_settings must be given with checkpoint (the settings that determine the unit)")
        if not every > 0:
            raise ValueError(f"checkpoint_every must be > 0 seconds, got {every!r}")
    path = None if checkpoint is None else Path(checkpoint)
    cap = tr.max_steps
    probes: dict[int, Any] | None = None if probe_step is not None and probe_step < cap else {}
    if path is not None and path.exists():
        state = load_checkpoint(path, "ensemble checkpoint")
        check_settings(state.get("settings"), settings, f"ensemble checkpoint {str(path)!r}", "delete it to start over")
        tr.load_state_dict(state["trainer"])
        if state.get("probes") is not None:
            probes = {int(k): v for k, v in state["probes"].items()}
    deadline = None if wall_budget is None else time.monotonic() + float(wall_budget)
    while True:
        tr.resume(cap if probes is not None else probe_step)  # members stopped at a cap or the wall go on
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        budget = left if path is None else (every if left is None else min(left, every))
        stats = tr.train(wall_budget=budget, progress=progress)
        if any(s["stopped_by"] == "wall" for s in stats):
            if path is None:
                return stats, probes or {}
            atomic_torch_save({"settings": settings, "trainer": tr.state_dict(), "probes": probes}, path)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            continue
        if probes is None:  # reached the probe step
            probes = probe([i for i, s in enumerate(stats) if s["stopped_by"] == "cap"])
            continue
        return stats, probes


def score_member(trainer: Any, i: int, data: torch.Tensor, teacher_map: CachedMap, *, clamp: float | None,
                 solver: dict[str, Any], n_eval: int, eval_seed: int, eval_batch: int, device: str) -> dict[str, Any]:
    """Scores of member ``i`` of an :class:`pfd.analysis.students.EnsembleDSMTrainer` trained on
    ``data``: E_gen, E_mem (with CIs), the memorizer's E_gen, both relative to it, and the E_mem
    breakdown (``BREAKDOWN_FIELDS``), all on the canonical noise (``eval_seed``, ``n_eval``)."""
    t1 = time.perf_counter()
    kw = {"n": n_eval, "seed": eval_seed, "batch_size": eval_batch}
    emp = CachedMap(OnDevice(GaussianMixture.empirical(data).ode_map(**solver), device))
    refs = reference_maps(teacher_map, emp)
    smap = CachedMap(OnDevice(trainer.ode_map(i, clamp=clamp, **solver), device))  # solved once for both
    err = generalization_errors(smap, None, None, references=refs, **kw)
    brk = memorization_breakdown(smap, data, references=refs, **kw)
    emp_gen = generalization_errors(refs.empirical, None, None, references=refs, **kw).e_gen
    parts = brk.to_dict()
    return {**err.to_dict(), "n_train": int(data.shape[0]), "n_params": trainer.n_params, "e_gen_empirical": emp_gen.value,
            "e_gen_rel": err.e_gen.value / emp_gen.value if emp_gen.value > 0 else None,
            "e_mem_rel": err.e_mem.value / emp_gen.value if emp_gen.value > 0 else None,
            **{k: parts[k] for k in BREAKDOWN_FIELDS}, "eval_seconds": time.perf_counter() - t1,
            "device": str(trainer.device.type)}
