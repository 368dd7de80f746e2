"""Integration of the PF-ODE dx/dsigma = (x - D(x; sigma)) / sigma in EDM coordinates.

Two families:

* built-in fixed-grid Runge-Kutta methods (``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"``)
  stepping in sigma on a given grid (EDM's sampler is ``"heun"`` on the Karras grid). They treat
  every sample independently, so results never depend on batch composition;
* any method of ``torchdiffeq`` (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"adaptive_heun"``,
  ``"torchdiffeq:rk4"``, ...), integrating in u = log(sigma), where the ODE reads
  dx/du = x - D(x; e^u) and is far less stiff. torchdiffeq's adaptive methods share one step
  size across a batch; pfd gives them a norm that is the *maximum* over samples of each
  sample's RMS error, so every sample meets the tolerance, but the step sequence (and so the
  result, at the level of the tolerance) still depends on the batch-mates.

All solvers stop at sigma_min > 0; the caller takes the final denoise step x <- D(x; sigma_min).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

__all__ = [
    "ADAPTIVE_TORCHDIFFEQ",
    "BUILTIN_SOLVERS",
    "Denoise",
    "fixed_nfe",
    "integrate_fixed",
    "integrate_torchdiffeq",
    "resolve_solver",
]

Denoise = Callable[[torch.Tensor, float], torch.Tensor]
"""D(x, sigma) on float64 state with a scalar sigma (the map broadcasts it to the batch)."""

# name -> (denoiser evaluations per step, order)
BUILTIN_SOLVERS: dict[str, tuple[int, int]] = {
    "euler": (1, 1),
    "heun": (2, 2),
    "midpoint": (2, 2),
    "rk4": (4, 4),
}
ADAPTIVE_TORCHDIFFEQ = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def _torchdiffeq_methods() -> list[str]:
    import importlib

    try:
        solvers = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS
    except (ImportError, AttributeError):  # pragma: no cover - private layout changed
        return [*ADAPTIVE_TORCHDIFFEQ, "euler", "midpoint", "rk4", "heun2", "heun3"]
    return [m for m in solvers if m != "scipy_solver"]


def resolve_solver(solver: str) -> tuple[str, str]:
    """Return (backend, method) for a solver name; backend is "builtin" or "torchdiffeq"."""
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a string, got {type(solver).__name__}")
    name = solver.strip().lower()
    if name.startswith("torchdiffeq:"):
        method = name.split(":", 1)[1]
        if method not in _torchdiffeq_methods():
            raise ValueError(f"solver: unknown torchdiffeq method {method!r}; known: {_torchdiffeq_methods()}")
        return "torchdiffeq", method
    if name in BUILTIN_SOLVERS:
        return "builtin", name
    if name in _torchdiffeq_methods():
        return "torchdiffeq", name
    raise ValueError(
        f"solver must be one of the built-in fixed-grid methods {sorted(BUILTIN_SOLVERS)} or a "
        f"torchdiffeq method {_torchdiffeq_methods()} (prefix 'torchdiffeq:' to force it), got {solver!r}"
    )


def fixed_nfe(method: str, grid_points: int) -> int:
    """Denoiser evaluations per sample of a built-in method on a grid, final denoise included."""
    per_step, _ = BUILTIN_SOLVERS[method]
    return per_step * (grid_points - 1) + 1


def integrate_fixed(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, method: str) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1] (all > 0) with a built-in method.

    ``heun`` is EDM's second-order method: an Euler predictor and a trapezoidal corrector.
    """
    s = [float(v) for v in sigmas]

    def f(y: torch.Tensor, sig: float) -> torch.Tensor:
        return (y - denoise(y, sig)) / sig

    for s0, s1 in itertools.pairwise(s):
        h = s1 - s0
        if method == "euler":
            x = x + h * f(x, s0)
        elif method == "heun":
            d0 = f(x, s0)
            x_pred = x + h * d0
            x = x + 0.5 * h * (d0 + f(x_pred, s1))
        elif method == "midpoint":
            d0 = f(x, s0)
            x = x + h * f(x + 0.5 * h * d0, s0 + 0.5 * h)
        elif method == "rk4":
            k1 = f(x, s0)
            k2 = f(x + 0.5 * h * k1, s0 + 0.5 * h)
            k3 = f(x + 0.5 * h * k2, s0 + 0.5 * h)
            k4 = f(x + h * k3, s1)
            x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        else:  # pragma: no cover - resolve_solver guards this
            raise ValueError(f"unknown built-in method {method!r}")
    return x


def _max_sample_rms(t: torch.Tensor) -> torch.Tensor:
    """Norm for torchdiffeq: the worst sample's RMS, so each sample meets the tolerance."""
    if t.ndim == 0:
        return t.abs()
    return t.reshape(t.shape[0], -1).pow(2).mean(1).sqrt().max()


def integrate_torchdiffeq(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    method: str,
    rtol: float,
    atol: float,
) -> torch.Tensor:
    """Integrate in u = log sigma with torchdiffeq from sigmas[0] to sigmas[-1].

    Adaptive methods get only the two end points; fixed methods step on log(sigmas).
    """
    import torchdiffeq

    def func(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y - denoise(y, float(torch.exp(u)))

    if method in ADAPTIVE_TORCHDIFFEQ:
        u = torch.log(torch.stack([sigmas[0], sigmas[-1]])).to(x.device)
        options = {"norm": _max_sample_rms}
    else:
        u = torch.log(sigmas).to(x.device)
        options = None
    try:
        out = torchdiffeq.odeint(func, x, u, method=method, rtol=rtol, atol=atol, options=options)
    except AssertionError as exc:  # torchdiffeq signals step-size underflow with assert
        raise RuntimeError(
            f"torchdiffeq {method} failed ({exc}); the ODE may be too stiff for rtol={rtol}, "
            f"atol={atol}: loosen them or use a fixed-grid solver"
        ) from None
    return out[-1]
