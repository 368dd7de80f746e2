"""Named analytic teachers, in one registry.

Every named teacher pfd knows (the demo's hexagon, the generalization analyses' cross, the
mixtures of ``pfd grid``) is a factory in :data:`TEACHERS`; :func:`get_teacher` builds one by
name and :func:`register_teacher` adds one. A factory runs only when its teacher is asked for,
so a teacher that is expensive to build (e.g. fitted to a data set) costs nothing until used.

>>> from pfd.analytic.teachers import get_teacher, register_teacher
>>> get_teacher("cross4d").event_shape
(4,)
>>> @register_teacher("tiny1d")
... def tiny():
...     return GaussianMixture([1.0], [[0.0]], [1.0])
>>> get_teacher("tiny1d").event_shape
(1,)
>>> del TEACHERS["tiny1d"]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pfd._checks import check_callable
from pfd.analytic.gmm import GaussianMixture

__all__ = ["TEACHERS", "cross_teacher", "get_teacher", "hexagon_teacher", "register_teacher"]

TEACHERS: dict[str, Callable[[], GaussianMixture]] = {}
"""Teacher name -> factory (called with no arguments, returns the teacher)."""


def register_teacher(name: str, factory: Callable[[], GaussianMixture] | None = None):
    """Register ``factory`` as the teacher ``name`` (usable as a decorator); a name already taken
    by a different factory is refused."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")

    def add(fn: Callable[[], GaussianMixture]) -> Callable[[], GaussianMixture]:
        check_callable(fn, "factory", "callable () -> teacher")
        if TEACHERS.get(name, fn) is not fn:
            raise ValueError(f"teacher {name!r} is already registered")
        TEACHERS[name] = fn
        return fn

    return add if factory is None else add(factory)


def get_teacher(name: str) -> GaussianMixture:
    """The named teacher (built by its factory); see :data:`TEACHERS` for the names."""
    if name not in TEACHERS:
        raise ValueError(f"teacher must be one of {sorted(TEACHERS)}, got {name!r}")
    return TEACHERS[name]()


@register_teacher("hexagon2d")
def hexagon_teacher() -> GaussianMixture:
    """Six anisotropic Gaussians on a hexagon of radius 2 with unequal weights (2-D): the demo's teacher."""
    k = 6
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    weights = torch.tensor([0.22, 0.12, 0.18, 0.16, 0.10, 0.22], dtype=torch.float64)
    covs = []
    for a in angles:
        u = torch.stack([a.cos(), a.sin()])  # radial direction
        v = torch.stack([-a.sin(), a.cos()])  # tangential direction
        covs.append(0.08 * torch.outer(u, u) + 0.02 * torch.outer(v, v))
    return GaussianMixture(weights, means, torch.stack(covs))


@register_teacher("digits")
def _digits_teacher() -> GaussianMixture:
    """The 64-D digits mixture (:func:`pfd.analytic.digits_teacher` with its defaults)."""
    from pfd.analytic.digits import digits_teacher

    return digits_teacher()


@register_teacher("digits-conditional")
def _digits_conditional_teacher():
    """The class-conditional digits teacher (:func:`pfd.analytic.digits_conditional_teacher`): a
    :class:`pfd.ConditionalGaussianMixture`, for conditional maps (``ode_map(guidance=w)``)."""
    from pfd.analytic.digits import digits_conditional_teacher

    return digits_conditional_teacher()


@register_teacher("cross4d")
def cross_teacher() -> GaussianMixture:
    """Four isotropic modes (variance 0.1) at +-2 e1, +-2 e2 in R^4 with weights 0.3/0.2/0.3/0.2:
    the default teacher of the generalization analyses."""
    means = [[2.0, 0, 0, 0], [-2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, -2.0, 0, 0]]
    return GaussianMixture([0.3, 0.2, 0.3, 0.2], means, [0.1, 0.1, 0.1, 0.1])


# the mixtures of `pfd grid`: (weights, means, isotropic variances)
for _name, _params in {
    "two-mode": ([0.5, 0.5], [[-1.0], [1.0]], [0.01, 0.01]),
    "two-mode-wide": ([0.5, 0.5], [[-1.0], [1.0]], [0.25, 0.25]),
    "four-mode": ([0.25] * 4, [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], [0.01] * 4),
}.items():
    register_teacher(_name, lambda p=_params: GaussianMixture(*p))
