"""Internals shared by pfd's noise-to-data maps: the map base class and its helpers.

:class:`MapBase` holds what every model-backed map declares (``shape``, ``name``, the model's
dtype, ``last_nfe``, ``nfe_per_sample``) and the common part of ``describe()``; the helpers
validate noise and find a model's dtype and device. Students given to the monitor or the metric
as bare modules become maps through :func:`as_student_map`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pfd._checks import check_callable, check_shape, find_modules


def model_dtype(fn: Callable[..., Any], override: torch.dtype | None) -> torch.dtype:
    """``override`` if given (a floating dtype), else the dtype of the model's first floating
    parameter, float64 for plain functions."""
    if override is not None:
        if not isinstance(override, torch.dtype) or not override.is_floating_point:
            raise TypeError(f"model_dtype must be a floating torch.dtype, got {override!r}")
        return override
    for mod in find_modules(fn):
        for p in mod.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
    return torch.float64


def model_device(fn: Callable[..., Any]) -> torch.device | None:
    """The device of the model's first parameter (None for plain functions)."""
    for mod in find_modules(fn):
        for p in mod.parameters():
            return p.device
    return None


def check_shape_arg(shape: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if shape is None else check_shape(shape)


def infer_shape(fn: Callable[..., Any]) -> tuple[int, ...] | None:
    """``event_shape`` of the object a bound method belongs to (or of ``fn`` itself)."""
    owner = getattr(fn, "__self__", None)
    shape = getattr(owner, "event_shape", None) if owner is not None else getattr(fn, "event_shape", None)
    return tuple(shape) if shape is not None else None


def check_z(z: Any, shape: tuple[int, ...] | None, who: str) -> torch.Tensor:
    """Validate a noise batch (a floating (n, *shape) tensor)."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{who}: noise z must be a torch.Tensor, got {type(z).__name__}")
    if not z.dtype.is_floating_point:
        raise TypeError(f"{who}: noise z must be a floating-point tensor, got {z.dtype}")
    if z.ndim < 2:
        raise ValueError(f"{who}: noise z must have shape (n, *shape) with a batch dimension, got {tuple(z.shape)}")
    if shape is not None and tuple(z.shape[1:]) != shape:
        raise ValueError(f"{who}: noise z must have shape (n, {', '.join(map(str, shape))}), got {tuple(z.shape)}")
    return z


def check_conditional(flag: Any) -> bool:
    if not isinstance(flag, bool):
        raise TypeError(f"conditional must be a bool, got {type(flag).__name__}")
    return flag


def check_call_labels(labels: Any, conditional: bool, n: int, device: torch.device, who: str) -> torch.Tensor | None:
    if labels is None:
        if conditional:
            raise ValueError(f"{who} is conditional: call it as m(z, labels) with one condition per row "
                             "(pfd.distance(..., labels=...) does this)")
        return None
    if not conditional:
        raise ValueError(f"{who} is not conditional (it maps z -> x); labels were given. "
                         "Build it with conditional=True if its model takes a condition")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{who}: labels must be a torch.Tensor of shape ({n}, ...), got {type(labels).__name__}")
    if labels.ndim < 1 or labels.shape[0] != n:
        raise ValueError(f"{who}: labels must have one row per noise sample, shape ({n}, ...), got {tuple(labels.shape)}")
    return labels.to(device)


class MapBase:
    """Base of pfd's model-backed maps: ``shape``, ``name``, model dtype, NFE, ``describe()``.

    Subclasses call :meth:`_init_map` and extend :meth:`describe` with their own fields.
    """

    shape: tuple[int, ...] | None
    name: str
    last_nfe: int | float | None
    nfe_per_sample: int | None = None
    conditional: bool = False

    def _init_map(self, model: Callable[..., Any], shape: Sequence[int] | None, dtype: torch.dtype | None,
                  name: str | None, *, conditional: bool = False) -> None:
        self.conditional = check_conditional(conditional)
        self.shape = check_shape_arg(shape)
        self._model_dtype = model_dtype(model, dtype)
        self.name = name or getattr(model, "__qualname__", type(model).__name__)
        self.last_nfe = None

    def describe(self) -> dict[str, Any]:
        """Provenance: the map's type, name, model dtype and NFE per sample (when fixed)."""
        d: dict[str, Any] = {"type": type(self).__name__, "name": self.name,
                             "model_dtype": str(self._model_dtype).replace("torch.", "")}
        if self.nfe_per_sample is not None:
            d["nfe"] = self.nfe_per_sample
        if self.conditional:
            d["conditional"] = True
        return d

    def _check_z(self, z: Any) -> torch.Tensor:
        return check_z(z, self.shape, type(self).__name__)

    def _check_labels(self, labels: Any, n: int, device: torch.device) -> torch.Tensor | None:
        return check_call_labels(labels, self.conditional, n, device, self.name)


def as_student_map(student: Any, shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A student given as a ``torch.nn.Module`` G(z) becomes a :class:`pfd.OneStepMap`; a map is kept."""
    if isinstance(student, torch.nn.Module):
        from pfd.maps import OneStepMap

        return OneStepMap(student, shape=shape, name=type(student).__name__)
    check_callable(student, "student", "a noise-to-data map or a torch.nn.Module G(z)")
    return student


def models_behind(student: Any) -> list[Any]:
    """The student and the models inside a pfd map (so that eval_mode reaches them)."""
    out = [student]
    for attr in ("denoiser", "fn", "base"):
        inner = getattr(student, attr, None)
        if inner is not None and callable(inner):
            out.append(inner)
    return out
