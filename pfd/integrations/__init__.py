"""Integrations with training frameworks, imported lazily.

``import pfd`` and ``import pfd.integrations`` import neither lightning nor torchmetrics; the
names below load their module (and its framework) on first access.

* :class:`pfd.integrations.lightning.PFDCallback`: a PyTorch Lightning callback.
* :class:`pfd.integrations.metric.PFDMetric`: a torchmetrics ``Metric``.
* :mod:`pfd.integrations.distributed`: torch.distributed helpers (rank, world size, shards).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["PFDCallback", "PFDMetric", "distributed"]

_LAZY = {"PFDCallback": "pfd.integrations.lightning", "PFDMetric": "pfd.integrations.metric",
         "distributed": "pfd.integrations.distributed"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = importlib.import_module(_LAZY[name])
        return mod if name == "distributed" else getattr(mod, name)
    raise AttributeError(f"module 'pfd.integrations' has no attribute {name!r}")
