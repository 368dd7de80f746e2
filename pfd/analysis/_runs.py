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

from pfd.analysis._runkey import run_settings, settings_diff, settings_key
from pfd.analysis.generalization import generalization_errors, reference_maps
from pfd.analysis.students import DSMTrainer, TrainConfig
from pfd.analytic.gmm import GaussianMixture
from pfd.maps import CachedMap
from pfd.noise import derive_seed

__all__ = ["epochs_for_steps", "read_records", "run_settings", "settings_key", "train_dsm", "train_set", "train_student"]


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
