"""Conditions shared by both maps of a comparison: one per noise index, canonical like the noise.

``labels=`` in :func:`pfd.distance` (and the monitor, the metric and the CLI) is resolved here
into a row getter ``rows(start, stop)`` that gives the conditions of noise rows start..stop-1:

* an ``int`` K: classes 0..K-1 drawn uniformly; a 1-D float sequence (list, tuple, float
  array/tensor): class probabilities. Both are canonical: label i depends only on (seed, i) and
  the probabilities (:class:`pfd.noise.LabelSource`, a stream of its own, so the noise does not
  change when labels are added);
* an integer tensor/array of shape (n,): explicit class ids, one per noise row;
* a floating tensor of shape (n, ...) with at least 2 dimensions: explicit condition embeddings
  (e.g. text encoder states), one per noise row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pfd._checks import is_conditional
from pfd.noise import LabelSource


@dataclass(frozen=True)
class Conditions:
    """Resolved ``labels=``: the row getter, whether they are class ids, and their provenance."""

    rows: Callable[[int, int], torch.Tensor]
    class_ids: bool
    provenance: dict[str, Any]
    n: int | None = None  # rows of explicit conditions (None: canonical, any n)


def resolve_labels(labels: Any, seed: int, maps: Sequence[Any], n: int, names: Sequence[str] = ("a", "b")) -> Conditions | None:
    """Validate ``labels`` against the maps and the ``n`` noise rows; None when neither map is
    conditional and no labels are given."""
    conds = _resolve(labels, seed, maps, names)
    if conds is not None and conds.n is not None and conds.n != n:
        raise ValueError(f"labels has {conds.n} rows but n = {n}: give one label per noise row")
    return conds


def _resolve(labels: Any, seed: int, maps: Sequence[Any], names: Sequence[str]) -> Conditions | None:
    cond = [is_conditional(m) for m in maps]
    if labels is None:
        for c, name in zip(cond, names, strict=True):
            if c:
                raise ValueError(f"map {name} is conditional (it takes m(z, labels)): pass labels= "
                                 "(a number of classes, class probabilities, or one label per noise row)")
        return None
    if not any(cond):
        raise ValueError("labels= was given but neither map is conditional; build the maps with conditional=True "
                         "(or use conditional adapters) so that they take the condition")
    if isinstance(labels, bool):
        raise TypeError("labels must be a number of classes, class probabilities or a tensor of labels, got bool")
    if isinstance(labels, (int, np.integer)):
        src = LabelSource(seed, int(labels))
        return Conditions(src.get, True, {"kind": "canonical", "seed": seed, "probs": src.probs.tolist()})
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if isinstance(labels, torch.Tensor):
        if labels.dtype == torch.bool or labels.dtype.is_complex:
            raise TypeError(f"labels must hold class ids (integers), probabilities or embeddings (floats), got {labels.dtype}")
        if not labels.dtype.is_floating_point:
            if labels.ndim != 1:
                raise ValueError(f"integer labels must be class ids of shape (n,), got {tuple(labels.shape)}")
            if bool((labels < 0).any()):
                raise ValueError("class ids in labels must be >= 0")
            ids = labels.detach().to("cpu", torch.long)
            return Conditions(lambda a, b: ids[a:b], True, {"kind": "explicit", "type": "class ids"}, int(ids.shape[0]))
        if labels.ndim >= 2:
            if not bool(torch.isfinite(labels).all()):
                raise ValueError("label embeddings must be finite")
            emb = labels.detach()
            return Conditions(lambda a, b: emb[a:b], False,
                              {"kind": "explicit", "type": "embeddings", "shape": list(emb.shape[1:])}, int(emb.shape[0]))
        labels = labels.tolist()
    if isinstance(labels, (list, tuple)):
        src = LabelSource(seed, labels)
        return Conditions(src.get, True, {"kind": "canonical", "seed": seed, "probs": src.probs.tolist()})
    raise TypeError("labels must be a number of classes, a sequence of class probabilities, an integer tensor of class "
                    f"ids (n,) or a float tensor of embeddings (n, ...); got {type(labels).__name__}")
