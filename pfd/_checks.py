"""Input validation and small shared helpers (internal).

Every public entry point validates its arguments here so that bad input fails early with a
message that names the argument and says what was expected, instead of deep inside torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "NonFiniteError",
    "SolveBudgetError",
    "as_sigma",
    "call_descriptor",
    "call_map",
    "call_model",
    "check_output",
    "check_positive_float",
    "check_positive_int",
    "eval_mode",
    "find_modules",
    "is_int",
]


class NonFiniteError(FloatingPointError):
    """A model produced NaN or infinite values during a solve.

    Attributes
    ----------
    indices:
        Sample indices (global noise indices when raised from :func:`pfd.distance`)
        whose values were not finite.
    sigma:
        The noise level at which the non-finite value appeared (``None`` when it is not
        a noise level, e.g. for a one-step map).
    where:
        Which callable produced it.
    """

    def __init__(self, indices: Sequence[int], sigma: float | None, where: str) -> None:
        self.indices = [int(i) for i in indices]
        self.sigma = sigma
        self.where = where
        super().__init__(self._message())

    def _message(self) -> str:
        shown = ", ".join(str(i) for i in self.indices[:10])
        more = f" (and {len(self.indices) - 10} more)" if len(self.indices) > 10 else ""
        at = f" at sigma={self.sigma:.6g}" if self.sigma is not None else ""
        return (
            f"{self.where} returned non-finite values (NaN or inf){at} for "
            f"{len(self.indices)} sample(s): indices [{shown}]{more}"
        )

    def shifted(self, offset: int) -> NonFiniteError:
        """The same error with indices shifted by ``offset`` (batch-local -> global)."""
        return NonFiniteError([i + offset for i in self.indices], self.sigma, self.where)

    def __reduce__(self):  # keep picklable across processes
        return (NonFiniteError, (self.indices, self.sigma, self.where))


class SolveBudgetError(RuntimeError):
    """An adaptive solve used up its budget of model evaluations (``max_nfe``) before reaching
    sigma_min. ``budget`` is that budget, ``sigma`` the noise level the solve had reached.

    >>> import torch, pfd
    >>> g = torch.Generator().manual_seed(0)
    >>> noisy = lambda x, s: x + 1e-3 * torch.randn(x.shape, dtype=x.dtype, generator=g)  # not smooth
    >>> m = pfd.DiffusionMap(noisy, shape=(2,), solver="dopri5", max_nfe=50, progress=False)
    >>> try:
    ...     m(torch.zeros(2, 2))
    ... except pfd.SolveBudgetError as err:
    ...     print(err.budget, err.sigma < 80)
    50 True
    """

    def __init__(self, message: str, budget: int, sigma: float) -> None:
        super().__init__(message)
        self.budget = budget
        self.sigma = sigma

    def __reduce__(self):
        return (SolveBudgetError, (str(self), self.budget, self.sigma))


def check_finite(x: torch.Tensor, sigma: float | None, where: str) -> None:
    """Raise :class:`NonFiniteError` naming the offending samples if ``x`` is not finite."""
    if not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        raise NonFiniteError(torch.nonzero(bad).flatten().tolist(), sigma, where)


def is_int(value: Any) -> bool:
    """True for Python and numpy integers (``np.int64(64)``), False for bools and floats."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_callable(obj: Any, name: str, expected: str) -> Any:
    """``obj`` if it is callable, else a TypeError: "``name`` must be ``expected``, got <type>"."""
    if not callable(obj):
        raise TypeError(f"{name} must be {expected}, got {type(obj).__name__}")
    return obj


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum``; numpy integers are accepted (not bools or floats)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_shape(shape: Any, name: str = "shape") -> tuple[int, ...]:
    """A sample shape as a non-empty tuple of positive ints (an int is a 1-tuple)."""
    if is_int(shape):
        shape = (shape,)
    try:
        entries = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of positive ints, got {shape!r}") from None
    if not all(is_int(s) for s in entries):
        raise TypeError(f"{name} must be a tuple of positive ints, got {shape!r}")
    out = tuple(int(s) for s in entries)
    if not out or any(s < 1 for s in out):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {shape!r}")
    return out


def check_positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        what = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {what}, got {value}")
    return value


def as_sigma(sigma: Any, batch: int, device: torch.device, name: str = "sigma") -> torch.Tensor:
    """Validate a noise level given as a float or a (B,) tensor; return a (B,) float64 tensor."""
    if isinstance(sigma, bool):
        raise TypeError(f"{name} must be a float or a ({batch},) tensor, got bool")
    if isinstance(sigma, numbers.Real):
        s = torch.full((batch,), float(sigma), dtype=torch.float64, device=device)
    elif isinstance(sigma, torch.Tensor):
        s = sigma.detach().to(device=device, dtype=torch.float64)
        if s.ndim == 0:
            s = s.expand(batch)
        elif s.ndim != 1 or s.shape[0] != batch:
            raise ValueError(
                f"{name} must be a float or a tensor of shape ({batch},) matching the batch, "
                f"got shape {tuple(s.shape)}"
            )
    else:
        raise TypeError(f"{name} must be a float or a torch.Tensor, got {type(sigma).__name__}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} must be finite, got non-finite values")
    if bool((s <= 0).any()):
        raise ValueError(
            f"{name} must be > 0 (the PF-ODE stops at sigma_min > 0 and ends with a denoise "
            f"step), got min {float(s.min()):.6g}"
        )
    return s


def check_output(out: Any, shape: Sequence[int] | None, who: str, of: str = "noise") -> torch.Tensor:
    """A model's or map's output, checked: a real floating-point tensor holding values (not on the
    meta device) of ``shape`` (the shape of its input, named ``of``). Returned unchanged."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{who} must return a torch.Tensor, got {type(out).__name__}")
    if out.is_complex() or not out.dtype.is_floating_point:
        raise TypeError(f"{who} must return a real floating-point tensor, got {out.dtype}")
    if out.device.type == "meta":
        raise ValueError(f"{who} returned a meta tensor (shapes only, no values); it must compute on a CPU or CUDA device")
    if shape is not None and tuple(out.shape) != tuple(shape):
        raise ValueError(f"{who} returned shape {tuple(out.shape)} for {of} of shape {tuple(shape)}")
    return out


def call_model(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a user's model on private copies of its tensor arguments.

    A model may modify its input in place (``nn.ReLU(inplace=True)`` as a first layer, ``x.mul_(2)``);
    the caller's tensors -- the shared noise, the solver state -- must not change with it. Every
    tensor argument is cloned (one copy of the state per model call).
    """
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return fn(*args, **kwargs)


def is_conditional(m: Callable[..., Any]) -> bool:
    """Whether a map takes a condition: ``m(z, labels)`` (its ``conditional`` attribute)."""
    return bool(getattr(m, "conditional", False)) and not isinstance(m, torch.Tensor)


def call_map(m: Callable[[torch.Tensor], Any], z: torch.Tensor, who: str, offset: int = 0,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """The one path by which pfd evaluates a noise-to-data map on a noise batch.

    A conditional map (``m.conditional``) is called as ``m(z, labels)`` with the shared
    conditions of these rows; any other map as ``m(z)``.
    The map gets its own copy of ``z`` (so one map cannot change the noise another map sees);
    its output is checked (:func:`check_output`: a real floating tensor of the noise's shape)
    and must be finite (:class:`NonFiniteError` with indices shifted by ``offset``, the global
    index of row 0). Returns the output as float64.
    """
    cond = labels is not None and is_conditional(m)
    try:
        out = call_model(m, z, labels) if cond else call_model(m, z)
    except NonFiniteError as exc:
        raise exc.shifted(offset) from None
    out = check_output(out, tuple(z.shape), who)
    out = out.to(torch.float64)
    try:
        check_finite(out, None, who)
    except NonFiniteError as exc:
        raise exc.shifted(offset) from None
    return out


_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("pfd_progress", default=True)


def progress_enabled() -> bool:
    """Whether progress bars inside a computation (e.g. of one long adaptive solve) may be shown:
    False inside ``pfd.distance(..., progress=False)`` and other calls made with ``progress=False``."""
    return _PROGRESS.get()


@contextlib.contextmanager
def progress_context(show: bool) -> Iterator[None]:
    """Within this block, :func:`progress_enabled` is ``show`` (nested bars follow the caller's choice)."""
    token = _PROGRESS.set(bool(show) and _PROGRESS.get())
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def call_descriptor(descriptor: Callable[[torch.Tensor], Any], x: torch.Tensor, label: str, start: int = 0) -> torch.Tensor:
    """Psi(x) of the outputs of ``label`` (e.g. ``"map a"``), checked like a map's output: a torch tensor
    (not numpy), real floating, one row per sample, finite (:class:`NonFiniteError` with rows shifted by
    ``start``). Returned as float64."""
    where = f"descriptor (on the outputs of {label})"
    try:
        out = call_model(descriptor, x)
    except NonFiniteError as exc:
        raise exc.shifted(start) from None
    if type(out).__module__ == "numpy":
        raise TypeError("descriptor must return a torch.Tensor, got a numpy array (on the outputs of "
                        f"{label}); convert it with torch.from_numpy(...)")
    out = check_output(out, None, "descriptor")
    if out.ndim < 1 or out.shape[0] != x.shape[0]:
        raise ValueError(f"descriptor must return one row per sample, shape ({x.shape[0]}, ...), got "
                         f"{tuple(out.shape)} (on the outputs of {label})")
    out = out.to(torch.float64)
    try:
        check_finite(out.reshape(out.shape[0], -1), None, where)
    except NonFiniteError as exc:
        raise exc.shifted(start) from None
    return out


def find_modules(obj: Any) -> list[torch.nn.Module]:
    """The torch modules behind a callable: the object itself, a bound method's owner,
    or a ``functools.partial``'s function."""
    seen: list[torch.nn.Module] = []
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.nn.Module):
            if all(o is not m for m in seen):
                seen.append(o)
            continue
        owner = getattr(o, "__self__", None)
        if owner is not None and owner is not o:
            stack.append(owner)
        func = getattr(o, "func", None)
        if func is not None and callable(func) and func is not o:
            stack.append(func)
    return seen


@contextlib.contextmanager
def eval_mode(*callables: Callable[..., Any] | None) -> Iterator[None]:
    """Put every torch module behind ``callables`` in eval mode and restore each
    module's (and submodule's) training flag afterwards, also on error."""
    modules: list[torch.nn.Module] = []
    for c in callables:
        if c is not None:
            modules.extend(find_modules(c))
    saved = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def as_float_array(t: Any, name: str = "t") -> np.ndarray:
    """A number, sequence or tensor of times as a float64 numpy array (finiteness not checked)."""
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a number or an array of numbers, got bool")
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    try:
        return np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or an array of numbers, got {type(t).__name__}") from None
