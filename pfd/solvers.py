"""Integration of the PF-ODE dx/dsigma = (x - D(x; sigma)) / sigma in EDM coordinates.

Two families:

* built-in fixed-grid Runge-Kutta methods (``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"``)
  stepping in sigma on a given grid (EDM's sampler is ``"heun"`` on the Karras grid), and
  multistep exponential integrators in the data-prediction (denoiser) parametrisation
  (``"dpm2m"``, ``"dpm3m"``, ``"unipc3"``; one model call per step, see
  :func:`_multistep`). They treat every sample independently, so results never depend
  on batch composition;
* any method of ``torchdiffeq`` (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"adaptive_heun"``,
  ``"torchdiffeq:rk4"``, ...), integrating in u = log(sigma), where the ODE reads
  dx/du = x - D(x; e^u) and is far less stiff. torchdiffeq's adaptive methods share one step
  size across a batch; pfd gives them a norm that is the *maximum* over samples of each
  sample's RMS error, so every sample meets the tolerance, but the step sequence (and so the
  result, at the level of the tolerance) still depends on the batch-mates.

All solvers stop at sigma_min > 0; the caller takes the final denoise step x <- D(x; sigma_min).
Every solver is one entry of :data:`SOLVERS` (a :class:`Solver`), with one stepper signature
``integrate(denoise, x, sigmas, *, rtol, atol)``; :class:`pfd.DiffusionMap`, the adapters' grid
maps, the CLI and the docs' solver table all read it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "SOLVERS", "SOLVER_ALIASES", "Denoise", "Solver", "SolverSettings", "get_solver",
           "solver_table"]

Denoise = Callable[[torch.Tensor, float], torch.Tensor]
"""D(x, sigma) on float64 state with a scalar sigma (the map broadcasts it to the batch)."""

Integrate = Callable[..., torch.Tensor]
"""The one stepper signature: ``integrate(denoise, x, sigmas, *, rtol, atol) -> x`` integrates
from sigmas[0] to sigmas[-1] (all > 0); fixed-grid methods ignore the tolerances."""

DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-8


@dataclass(frozen=True)
class Solver:
    """One entry of the solver registry :data:`SOLVERS`.

    ``adaptive`` methods get only the two end points of the grid (their NFE varies per call);
    ``evals_per_step`` and ``order`` are None where pfd does not count them (torchdiffeq's).

    >>> s = get_solver("heun")
    >>> s.backend, s.evals_per_step, s.order, s.nfe(18)
    ('builtin', 2, 2, 35)
    """

    name: str
    backend: str
    method: str
    adaptive: bool
    evals_per_step: int | None
    order: int | None
    integrate: Integrate

    def nfe(self, grid_points: int) -> int | None:
        """Denoiser evaluations per sample on a grid, final denoise included (None if adaptive)."""
        if self.evals_per_step is None:
            return None
        return self.evals_per_step * (grid_points - 1) + 1


# --- fixed-grid Runge-Kutta methods in sigma -------------------------------------------------

_Slope = Callable[[torch.Tensor, float], torch.Tensor]


def _euler(f: _Slope, x: torch.Tensor, s0: float, s1: float, h: float) -> torch.Tensor:
    return x + h * f(x, s0)


def _heun(f: _Slope, x: torch.Tensor, s0: float, s1: float, h: float) -> torch.Tensor:
    """EDM's second-order method: an Euler predictor and a trapezoidal corrector."""
    d0 = f(x, s0)
    x_pred = x + h * d0
    return x + 0.5 * h * (d0 + f(x_pred, s1))


def _midpoint(f: _Slope, x: torch.Tensor, s0: float, s1: float, h: float) -> torch.Tensor:
    d0 = f(x, s0)
    return x + h * f(x + 0.5 * h * d0, s0 + 0.5 * h)


def _rk4(f: _Slope, x: torch.Tensor, s0: float, s1: float, h: float) -> torch.Tensor:
    k1 = f(x, s0)
    k2 = f(x + 0.5 * h * k1, s0 + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, s0 + 0.5 * h)
    k4 = f(x + h * k3, s1)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _runge_kutta(step: Callable[[_Slope, torch.Tensor, float, float, float], torch.Tensor]) -> Integrate:
    def integrate(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, rtol: float = DEFAULT_RTOL,
                  atol: float = DEFAULT_ATOL) -> torch.Tensor:
        def f(y: torch.Tensor, sig: float) -> torch.Tensor:
            return (y - denoise(y, sig)) / sig

        for s0, s1 in itertools.pairwise([float(v) for v in sigmas]):
            x = step(f, x, s0, s1, s1 - s0)
        return x

    return integrate


# --- torchdiffeq, in u = log sigma -----------------------------------------------------------

# torchdiffeq's public methods (its ``odeint(method=...)`` names); scipy_solver is left out
_TORCHDIFFEQ_ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
_TORCHDIFFEQ_FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")


def _max_sample_rms(t: torch.Tensor) -> torch.Tensor:
    """Norm for torchdiffeq: the worst sample's RMS, so each sample meets the tolerance."""
    if t.ndim == 0:
        return t.abs()
    return t.reshape(t.shape[0], -1).pow(2).mean(1).sqrt().max()


def _torchdiffeq(method: str) -> Integrate:
    adaptive = method in _TORCHDIFFEQ_ADAPTIVE

    def integrate(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, rtol: float = DEFAULT_RTOL,
                  atol: float = DEFAULT_ATOL) -> torch.Tensor:
        """Adaptive methods get only the two end points; fixed methods step on log(sigmas)."""
        import torchdiffeq

        def func(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return y - denoise(y, float(torch.exp(u)))

        if adaptive:
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

    return integrate


# ---------------------------------------------------------------------------------------------
# Multistep exponential integrators in the data-prediction parametrisation.
#
# With lambda = -log(sigma) the PF-ODE reads dx/dlambda = D(x; sigma) - x. Its linear part is
# integrated exactly (variation of constants): over a step lambda_0 -> lambda_0 + h,
#
#     x_1 = e^{-h} x_0 + int_0^h e^{-(h - tau)} D(lambda_0 + tau) dtau,
#
# and only the denoiser along the path is approximated, by the polynomial P(tau) that
# interpolates the denoiser values of the last steps (exponential Adams-Bashforth; these are
# DPM-Solver++(2M)/(3M) with the exact phi-function weights). For P = b0 + b1 tau + b2 tau^2,
#
#     x_1 = e^{-h} x_0 + c0(h) b0 + c1(h) b1 + c2(h) b2,
#     c0 = 1 - e^{-h},  c1 = h - 1 + e^{-h},  c2 = h^2 - 2h + 2 - 2 e^{-h}.
#
# The peers' variants differ only in the weights of the higher differences:
#   "dpm2m_mid"  (k-diffusion's DPM++ 2M, diffusers' solver_type="midpoint"): c0 h / 2 instead of c1;
#   "dpm3m_half" (k-diffusion's DPM++ 3M SDE at eta = 0, diffusers' solver_order=3): h^2/2 - c1 instead
#                of c2 -- half the exact third-order weight (h^2/2 - c1 = h^3/6 + ..., c2 = h^3/3 + ...),
#                which leaves the method second order (measured in docs/core.md).
# A single point mass (D constant) is integrated exactly by every order. "unipc3" adds a
# corrector (exponential Adams-Moulton, as in UniPC): the model value at the new point, which
# the next step needs anyway, re-interpolates the step's integrand through (lambda_1, D_1),
# (lambda_0, D_0), (lambda_-1, D_-1), raising the order to 3 at no extra model call.
# ---------------------------------------------------------------------------------------------



def _phi_weights(h: float) -> tuple[float, float, float]:
    """(c0, c1, c2) = int_0^h e^{-(h - t)} t^k dt for k = 0, 1, 2 (series for small h)."""
    if h < 1e-2:
        h2 = h * h
        c0 = h * (1.0 - h / 2.0 + h2 / 6.0 - h2 * h / 24.0 + h2 * h2 / 120.0)
        c1 = h2 * (0.5 - h / 6.0 + h2 / 24.0 - h2 * h / 120.0 + h2 * h2 / 720.0)
        c2 = h2 * h * (1.0 / 3.0 - h / 12.0 + h2 / 60.0 - h2 * h / 360.0 + h2 * h2 / 2520.0)
        return c0, c1, c2
    c0 = -math.expm1(-h)
    return c0, h - c0, h * h - 2.0 * h + 2.0 * c0


def _half_c2(h: float) -> float:
    """h^2/2 - c1(h): the peers' third-order weight (series for small h, where it cancels)."""
    if h < 1e-2:
        return h**3 * (1.0 / 6.0 - h / 24.0 + h * h / 120.0 - h**3 / 720.0)
    return 0.5 * h * h - (h + math.expm1(-h))


def _ab_coeffs(
    d_hist: list[torch.Tensor], lam_hist: list[float], order: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Newton coefficients (b0, b1, b2) in tau = lambda - lambda_0 of the polynomial through the
    last ``order`` denoiser values (d_hist[-1] is at lambda_0)."""
    d0 = d_hist[-1]
    if order == 1 or len(d_hist) < 2:
        return d0, None, None
    h0 = lam_hist[-1] - lam_hist[-2]
    f01 = (d0 - d_hist[-2]) / h0
    if order == 2 or len(d_hist) < 3:
        return d0, f01, None
    h1 = lam_hist[-2] - lam_hist[-3]
    f12 = (d_hist[-2] - d_hist[-3]) / h1
    f012 = (f01 - f12) / (h0 + h1)
    return d0, f01 + f012 * h0, f012


def _multistep(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, method: str, order: int) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1] (all > 0, decreasing) with a multistep exponential
    integrator: ``"dpm2m"`` (order 2), ``"dpm3m"`` (order 3) or ``"unipc3"`` (2M predictor with an
    order-3 corrector). One model evaluation per step, at the start of the step.

    The first steps use the history available (order 1 = DDIM, which in EDM coordinates equals
    Euler in sigma); grids may be arbitrary (differences are divided by the actual steps).
    """
    corrector = method == "unipc3"
    if corrector:
        order = 2
    s = [float(v) for v in sigmas]
    lam = [-math.log(v) for v in s]
    d_hist: list[torch.Tensor] = []
    lam_hist: list[float] = []
    d_next: torch.Tensor | None = None
    for i in range(len(s) - 1):
        d_cur = d_next if d_next is not None else denoise(x, s[i])
        d_next = None
        d_hist.append(d_cur)
        lam_hist.append(lam[i])
        if len(d_hist) > 3:
            d_hist.pop(0)
            lam_hist.pop(0)
        h = lam[i + 1] - lam[i]
        c0, c1, c2 = _phi_weights(h)
        decay = s[i + 1] / s[i]  # e^{-h}, exactly from the grid
        b0, b1, b2 = _ab_coeffs(d_hist, lam_hist, order)
        if method == "dpm2m_mid":
            c1 = 0.5 * h * c0
        elif method == "dpm3m_half":
            c2 = _half_c2(h)
        x_new = decay * x + c0 * b0
        if b1 is not None:
            x_new = x_new + c1 * b1
        if b2 is not None:
            x_new = x_new + c2 * b2
        if corrector and i + 2 < len(s):
            # the model value at the predicted point is the next step's D_0; reuse it to correct
            d_new = denoise(x_new, s[i + 1])
            d_next = d_new
            g01 = (d_new - d_cur) / h
            if len(d_hist) >= 2:
                h0 = lam_hist[-1] - lam_hist[-2]
                back = (d_cur - d_hist[-2]) / h0
                f3 = (g01 - back) / (h + h0)
                x_new = decay * x + c0 * d_cur + c1 * (g01 - h * f3) + c2 * f3
            else:
                x_new = decay * x + c0 * d_cur + c1 * g01
        x = x_new
    return x


def _exponential(method: str, order: int) -> Integrate:
    def integrate(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, rtol: float = DEFAULT_RTOL,
                  atol: float = DEFAULT_ATOL) -> torch.Tensor:
        return _multistep(denoise, x, sigmas, method, order)

    return integrate


# --- the registry ----------------------------------------------------------------------------

SOLVERS: dict[str, Solver] = {
    "euler": Solver("euler", "builtin", "euler", False, 1, 1, _runge_kutta(_euler)),
    "heun": Solver("heun", "builtin", "heun", False, 2, 2, _runge_kutta(_heun)),
    "midpoint": Solver("midpoint", "builtin", "midpoint", False, 2, 2, _runge_kutta(_midpoint)),
    "rk4": Solver("rk4", "builtin", "rk4", False, 4, 4, _runge_kutta(_rk4)),
    # multistep exponential integrators: one evaluation per step (first steps at lower order)
    "dpm2m": Solver("dpm2m", "builtin", "dpm2m", False, 1, 2, _exponential("dpm2m", 2)),
    "dpm3m": Solver("dpm3m", "builtin", "dpm3m", False, 1, 3, _exponential("dpm3m", 3)),
    "unipc3": Solver("unipc3", "builtin", "unipc3", False, 1, 3, _exponential("unipc3", 3)),
    # the peers' weights (k-diffusion / diffusers; see _multistep); dpm3m_half's measured order is 2
    "dpm2m_mid": Solver("dpm2m_mid", "builtin", "dpm2m_mid", False, 1, 2, _exponential("dpm2m_mid", 2)),
    "dpm3m_half": Solver("dpm3m_half", "builtin", "dpm3m_half", False, 1, 2, _exponential("dpm3m_half", 3)),
    **{m: Solver(m, "torchdiffeq", m, True, None, None, _torchdiffeq(m)) for m in _TORCHDIFFEQ_ADAPTIVE},
    **{s.name: s for s in (Solver(f"torchdiffeq:{m}" if m in ("euler", "midpoint", "rk4") else m, "torchdiffeq", m,
                                  False, None, None, _torchdiffeq(m)) for m in _TORCHDIFFEQ_FIXED)},
}
"""Every solver by name: the built-in fixed-grid methods, then torchdiffeq's (a torchdiffeq
method whose name a built-in one takes is registered as ``"torchdiffeq:<method>"``)."""


SOLVER_ALIASES: dict[str, str] = {
    # k-diffusion sampler names (sample_<name>) and diffusers scheduler settings -> pfd method
    "ddim": "euler",  # DDIM (eta = 0) is Euler in sigma in EDM coordinates
    "dpmpp_2m": "dpm2m_mid",  # k-diffusion sample_dpmpp_2m; diffusers DPMSolverMultistep(solver_type="midpoint")
    "dpmpp_2m_heun": "dpm2m",  # diffusers DPMSolverMultistep(solver_order=2, solver_type="heun")
    "dpmpp_3m": "dpm3m_half",  # k-diffusion sample_dpmpp_3m_sde(eta=0); diffusers DPMSolverMultistep(solver_order=3)
}
"""Peer solver names accepted by :func:`get_solver` (see docs/core.md for the exact equivalences)."""

# peer names that have no pfd equivalent: why, and the nearest pfd method
_REJECTED: dict[str, tuple[str, str]] = {
    "unipc": ("diffusers' UniPC (B(h) variants bh1/bh2) is not implemented; pfd's unipc3 is a 2M predictor with an "
              "exact-weight order-3 corrector", "unipc3"),
    "uni_pc": ("see 'unipc'", "unipc3"),
    "lms": ("k-diffusion's linear multistep in sigma is not implemented", "dpm3m"),
    "dpm_2": ("k-diffusion's DPM-Solver-2 steps in log sigma with a geometric-mean midpoint; pfd's midpoint steps in "
              "sigma", "midpoint"),
    "dpm_fast": ("k-diffusion's DPM-Solver-fast is not implemented", "dpm3m"),
    "dpm_adaptive": ("k-diffusion's adaptive DPM-Solver is not implemented; pfd's adaptive methods are torchdiffeq's",
                     "dopri5"),
}


def _nearest(name: str) -> str | None:
    import difflib

    pool = [*(k for k, v in SOLVERS.items() if v.backend == "builtin" or v.adaptive), *SOLVER_ALIASES]
    hit = difflib.get_close_matches(name, pool, n=1, cutoff=0.5)
    if not hit:
        return None
    return SOLVER_ALIASES.get(hit[0], hit[0])


def get_solver(solver: str) -> Solver:
    """The registry entry of a solver name (case-insensitive; ``"torchdiffeq:<method>"`` forces
    torchdiffeq's implementation).

    Peer names (:data:`SOLVER_ALIASES`: k-diffusion's ``dpmpp_2m``, ``dpmpp_3m``, ...) resolve to
    the pfd method that computes the same thing; stochastic samplers and peer methods pfd does not
    implement are rejected with the nearest pfd method.

    >>> get_solver("torchdiffeq:dopri5").adaptive, get_solver("rk4").backend
    (True, 'builtin')
    >>> get_solver("dpmpp_2m").name
    'dpm2m_mid'
    >>> get_solver("dpmpp_2m_sde")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: solver 'dpmpp_2m_sde' is a stochastic (SDE / ancestral) sampler; ... nearest pfd method: 'dpm2m_mid'
    """
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a string, got {type(solver).__name__}")
    name = solver.strip().lower()
    name = SOLVER_ALIASES.get(name, name)
    if name in SOLVERS:
        return SOLVERS[name]
    if name.startswith("torchdiffeq:") and name.split(":", 1)[1] in SOLVERS:
        entry = SOLVERS[name.split(":", 1)[1]]
        if entry.backend == "torchdiffeq":
            return entry
    if name in _REJECTED:
        why, near = _REJECTED[name]
        raise ValueError(f"solver {solver!r}: {why}; nearest pfd method: {near!r}")
    base = name
    for tag in ("_sde_gpu", "_sde", "_ancestral", "_a"):
        base = base.removesuffix(tag)
    if base != name:
        near = SOLVER_ALIASES.get(base, base) if SOLVER_ALIASES.get(base, base) in SOLVERS else _nearest(base)
        raise ValueError(f"solver {solver!r} is a stochastic (SDE / ancestral) sampler; pfd integrates the "
                         f"deterministic probability-flow ODE; nearest pfd method: {near!r}")
    builtin = sorted(k for k, v in SOLVERS.items() if v.backend == "builtin")
    other = [v.method for v in SOLVERS.values() if v.backend == "torchdiffeq"]
    near = _nearest(name)
    hint = f"; nearest pfd method: {near!r}" if near else ""
    raise ValueError(
        f"solver must be one of the built-in fixed-grid methods {builtin}, a peer name {sorted(SOLVER_ALIASES)} or a "
        f"torchdiffeq method {other} (prefix 'torchdiffeq:' to force it), got {solver!r}{hint}"
    )


def solver_table() -> str:
    """The markdown table of the built-in solvers (docs/performance.md shows it verbatim)."""
    nfe = {1: "steps", 2: "2·steps − 1", 4: "4·steps − 3"}
    rows = ["| solver | calls / step | order | NFE for `steps` grid points |", "|---|---|---|---|"]
    for s in SOLVERS.values():
        if s.backend == "builtin":
            peer = [k for k, v in SOLVER_ALIASES.items() if v == s.name and k != "ddim"]
            label = f"`{s.name}` (EDM)" if s.name == "heun" else f"`{s.name}`"
            label += f" (peers' `{peer[0]}`)" if peer else ""
            rows.append(f"| {label} | {s.evals_per_step} | {s.order} | {nfe[s.evals_per_step]} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class SolverSettings:
    """The solver of a :class:`pfd.DiffusionMap` as one value (EDM's Heun on 18 grid points by
    default); ``kwargs()`` are the map's keyword arguments, ``to_dict()`` the same for records.

    >>> SolverSettings().to_dict()
    {'solver': 'heun', 'steps': 18}
    >>> SolverSettings("dopri5", rtol=1e-8).kwargs()
    {'solver': 'dopri5', 'rtol': 1e-08}
    """

    solver: str = "heun"
    steps: int = 18
    rtol: float | None = None
    atol: float | None = None

    def __post_init__(self) -> None:
        get_solver(self.solver)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 2:
            raise ValueError(f"steps must be an int >= 2 (grid points), got {self.steps!r}")

    @classmethod
    def of(cls, value: SolverSettings | dict[str, Any] | None) -> SolverSettings:
        """``value`` itself, the default for None, or the settings of a dict of the same keys."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"solver", "steps", "rtol", "atol"}
            if unknown:
                raise ValueError(f"solver settings take solver, steps, rtol, atol; got {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"solver must be a SolverSettings, a dict or None, got {type(value).__name__}")

    def kwargs(self) -> dict[str, Any]:
        d: dict[str, Any] = {"solver": self.solver}
        if not get_solver(self.solver).adaptive:  # an adaptive solver picks its own steps
            d["steps"] = self.steps
        if self.rtol is not None:
            d["rtol"] = self.rtol
        if self.atol is not None:
            d["atol"] = self.atol
        return d

    def to_dict(self) -> dict[str, Any]:
        return self.kwargs()
