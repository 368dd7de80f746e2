"""Noise-to-data maps: callables z ~ N(0, I) of shape (n, *shape) -> samples (n, *shape).

Every object pfd compares is reduced to such a map; two maps are compared on the same noise.
Maps may expose ``shape`` (the shape of one sample), ``last_nfe`` (model evaluations per sample
in the last call) and ``describe()`` (provenance). Any plain callable works as a map too.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from pfd._checks import (
    SolveBudgetError,
    call_model,
    check_callable,
    check_finite,
    check_output,
    check_positive_float,
    check_positive_int,
    eval_mode,
    is_conditional,
    progress_enabled,
)
from pfd._maps import MapBase, infer_shape, model_device
from pfd.schedules import check_grid_name, check_sigma_range, make_grid
from pfd.solvers import DEFAULT_ATOL, DEFAULT_RTOL, get_solver

__all__ = ["CachedMap", "DiffusionMap", "NoiseToData", "OneStepMap", "check_in_range", "describe_map", "is_conditional",
           "map_shape"]

DEFAULT_STEPS = 18
DEFAULT_MAX_NFE = 10_000
"""Model evaluations one adaptive solve may make (per call, i.e. per noise batch) before it is stopped."""
SOLVE_BAR_DELAY = 2.0
"""Seconds an adaptive solve runs before its progress bar appears."""
MIN_TOL = 1e-13
"""Smallest rtol/atol of adaptive solves: float64 has a machine epsilon of 2.2e-16 and an embedded
error estimate carries round-off of ~100 eps on states of magnitude ~1-100, so a smaller tolerance
can never be met (the step size shrinks without end)."""


def _check_tol(value: Any, name: str, default: float) -> float:
    if value is None:
        return default
    tol = check_positive_float(value, name)
    if tol < MIN_TOL:
        raise ValueError(f"{name}={tol:g} is below what float64 can deliver (machine epsilon 2.2e-16; the solver's "
                         f"error estimate carries round-off of ~1e-14): use {name} >= {MIN_TOL:g}")
    return tol


@contextlib.contextmanager
def _solve_bar(show: bool, method: str) -> Iterator[Any]:
    """A progress bar of one adaptive solve in permille of log(sigma_max / sigma_min); shown only
    when the solve takes longer than :data:`SOLVE_BAR_DELAY` seconds."""
    if not show:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=1000, desc=f"{method} solve (log sigma, 1/1000)", delay=SOLVE_BAR_DELAY, leave=False, file=sys.stderr,
              unit="") as bar:
        yield bar


@runtime_checkable
class NoiseToData(Protocol):
    """Protocol of a noise-to-data map: ``map(z) -> x`` with ``x.shape == z.shape``."""

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...


def check_in_range(denoiser: Any, lo: float, hi: float, what: str = "grid") -> None:
    """Reject a noise range ``[lo, hi]`` outside the range a denoiser can be evaluated on.

    A denoiser declares that range by a ``sigma_range`` attribute ``(sigma_min, sigma_max)``
    (e.g. :class:`VPDenoiser`: its discrete schedule); others are not checked. A denoiser that can
    be evaluated anywhere but was trained on a range declares ``trained_sigma_range``: leaving it
    warns (a VP score model beyond t = 1, an EDM model beyond its scheduler's sigma_max).

    >>> import torch
    >>> from pfd.adapters import VPDenoiser
    >>> den = VPDenoiser(lambda x, t: x, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0),
    ...                  "epsilon")
    >>> check_in_range(den, 0.002, 80.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: grid [0.002, 80] leaves the range [0.01, 157.4] of VPDenoiser(epsilon) ...
    """
    tol = 1e-6
    trained = getattr(denoiser, "trained_sigma_range", None)
    if trained is not None:
        tmin, tmax = (float(v) for v in trained)
        if lo < tmin * (1 - tol) or hi > tmax * (1 + tol):
            import warnings

            name = getattr(denoiser, "name", type(denoiser).__name__)
            warnings.warn(f"{what} [{lo:.4g}, {hi:.4g}] leaves the noise range [{tmin:.4g}, {tmax:.4g}] {name} was "
                          "trained on: its outputs there are extrapolations", UserWarning, stacklevel=3)
    rng = getattr(denoiser, "sigma_range", None)
    if rng is None:
        return
    smin, smax = (float(v) for v in rng)
    if lo < smin * (1 - tol) or hi > smax * (1 + tol):
        name = getattr(denoiser, "name", type(denoiser).__name__)
        raise ValueError(f"{what} [{lo:.4g}, {hi:.4g}] leaves the range [{smin:.4g}, {smax:.4g}] of {name} (its "
                         "schedule has no noise levels outside it); use noise levels inside it, e.g. its "
                         "ode_map(...), which spans the schedule")


class DiffusionMap(MapBase):
    """The PF-ODE noise-to-data map of a denoiser, in EDM (variance-exploding) coordinates.

    Integrates dx/dsigma = (x - D(x; sigma)) / sigma from x(sigma_max) = sigma_max * z down to
    sigma_min, then takes the final step to sigma = 0, x <- D(x; sigma_min). The state is
    float64; the denoiser is called with ``x`` in ``model_dtype`` (default: the dtype of the
    module's parameters, float64 for plain functions) and ``sigma`` as a (B,) tensor.

    Parameters
    ----------
    denoiser:
        ``D(x, sigma) -> x0`` (EDM/k-diffusion convention), ``sigma`` a (B,) tensor.
    sigma_min, sigma_max:
        Integration range, 0 < sigma_min < sigma_max.
    solver:
        ``"heun"`` (EDM, default), ``"euler"``, ``"midpoint"``, ``"rk4"``, the multistep
        exponential integrators ``"dpm2m"``, ``"dpm3m"``, ``"unipc3"`` (one evaluation per
        step) on the fixed grid, or any torchdiffeq method (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"adaptive_heun"``,
        ``"torchdiffeq:rk4"``, ...) integrating in log sigma.
    steps:
        Grid points from sigma_max to sigma_min for fixed-grid solvers (default 18, EDM's: 17 Heun
        steps plus the final denoise = 35 evaluations). Adaptive methods choose their own steps;
        giving ``steps`` to one warns that it is ignored.
    rho:
        Exponent of the Karras grid.
    grid:
        Fixed grid: ``"karras"`` (default, EDM) or ``"loglinear"`` (uniform in log sigma, the
        natural grid of the exponential integrators); see :func:`pfd.schedules.make_grid`.
    rtol, atol:
        Tolerances of adaptive torchdiffeq methods (defaults 1e-6 and 1e-8; at least 1e-13,
        below which float64 round-off makes them unreachable).
    max_nfe:
        Budget of an adaptive solve: model evaluations per call (default 10,000). A solve that
        needs more (a non-smooth denoiser, too tight tolerances) stops with
        :class:`pfd.SolveBudgetError` naming the noise level it reached, instead of running for hours.
    progress:
        Show the progress of a long adaptive solve (in log sigma) on stderr; the bar appears
        only after 2 s, so short solves print nothing, and never inside a call made with
        ``progress=False`` (e.g. ``pfd.distance(..., progress=False)``, ``--no-progress``).
    shape:
        Shape of one sample; inferred when the denoiser is a bound method of an object with
        ``event_shape`` (e.g. :class:`pfd.GaussianMixture`).
    conditional:
        The denoiser takes a condition, ``D(x, sigma, labels)``, and the map is called as
        ``m(z, labels)`` (one condition per row: class ids or embeddings). Default: the
        denoiser's own ``conditional`` attribute (set by conditional adapters), else False.

    Example
    -------
    >>> import pfd
    >>> gmm = pfd.GaussianMixture([1.0], [[1.0, -1.0]], [0.5])
    >>> teacher = pfd.DiffusionMap(gmm.denoiser)
    >>> x = teacher(pfd.canonical_noise(8, (2,), seed=0))
    >>> x.shape, teacher.last_nfe
    (torch.Size([8, 2]), 35)
    """

    def __init__(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        solver: str = "heun",
        steps: int | None = None,
        rho: float = 7.0,
        rtol: float | None = None,
        atol: float | None = None,
        *,
        shape: Sequence[int] | None = None,
        model_dtype: torch.dtype | None = None,
        name: str | None = None,
        grid: str = "karras",
        conditional: bool | None = None,
        max_nfe: int | None = None,
        progress: bool = True,
    ) -> None:
        check_callable(denoiser, "denoiser", "callable D(x, sigma)")
        self.denoiser = denoiser
        self.sigma_min, self.sigma_max = check_sigma_range(sigma_min, sigma_max)
        check_in_range(denoiser, *getattr(self, "_grid_range", (self.sigma_min, self.sigma_max)),
                       what="grid" if hasattr(self, "_grid_range") else "sigma range")
        self.stepper = get_solver(solver)
        self.backend, self.method = self.stepper.backend, self.stepper.method
        self.solver = solver
        self.adaptive = self.stepper.adaptive
        if self.adaptive and steps is not None:
            warnings.warn(f"steps={steps} is ignored: {self.method} is an adaptive solver and chooses its own steps "
                          "(control its accuracy with rtol/atol, or pick a fixed-grid solver such as 'heun')",
                          UserWarning, stacklevel=2)
        self.steps = check_positive_int(DEFAULT_STEPS if steps is None else steps, "steps", minimum=2)
        self.rho = check_positive_float(rho, "rho")
        if not self.adaptive and (rtol is not None or atol is not None or max_nfe is not None):
            raise ValueError(f"rtol/atol apply to adaptive solvers only (and so does max_nfe); solver={solver!r} is fixed-grid")
        self.rtol = _check_tol(rtol, "rtol", DEFAULT_RTOL)
        self.atol = _check_tol(atol, "atol", DEFAULT_ATOL)
        self.max_nfe = check_positive_int(DEFAULT_MAX_NFE if max_nfe is None else max_nfe, "max_nfe")
        self.progress = bool(progress)
        self._init_map(denoiser, shape, model_dtype, name,
                       conditional=is_conditional(denoiser) if conditional is None else conditional)
        self.shape = self.shape or infer_shape(denoiser)
        self.grid = check_grid_name(grid)
        self.sigmas = make_grid(self.grid, self.steps, self.sigma_min, self.sigma_max, self.rho)

    @property
    def nfe_per_sample(self) -> int | None:
        """Denoiser evaluations per sample (None for adaptive methods: it varies)."""
        return self.stepper.nfe(self.steps)  # None for torchdiffeq: counted per call in ``last_nfe``

    def describe(self) -> dict[str, Any]:
        """Provenance: solver, grid, tolerances, dtype."""
        d = super().describe()
        d.update(solver=self.method, backend=self.backend, sigma_max=self.sigma_max, sigma_min=self.sigma_min,
                 state_dtype="float64", final_step="denoise at sigma_min")
        if self.adaptive:
            d.update(rtol=self.rtol, atol=self.atol, variable="log sigma")
        else:
            d.update(grid=self.grid, steps=self.steps)
            if self.grid == "karras":
                d["rho"] = self.rho
            if self.backend == "torchdiffeq":
                d["variable"] = "log sigma"
        return d

    def __repr__(self) -> str:
        grid = f"rtol={self.rtol:g}, atol={self.atol:g}" if self.adaptive else f"steps={self.steps}, rho={self.rho:g}"
        if not self.adaptive and self.grid != "karras":
            grid = f"steps={self.steps}, grid={self.grid!r}"
        return f"DiffusionMap({self.name}, solver={self.method!r}, {grid}, sigma=[{self.sigma_min:g}, {self.sigma_max:g}])"

    def _make_denoise(self, device: torch.device, counter: list[int], budget: int | None = None, bar: Any = None,
                      labels: torch.Tensor | None = None):
        fn = self.denoiser
        mdtype = self._model_dtype
        where = f"denoiser of {self.name}"
        reached = [self.sigma_max]
        span = math.log(self.sigma_max / self.sigma_min)
        extra = () if labels is None else (labels,)

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            if budget is not None and counter[0] >= budget:
                raise SolveBudgetError(
                    f"{self.method} solve of {self.name} stopped after max_nfe={budget} model evaluations at "
                    f"sigma={reached[0]:.6g} (integrating {self.sigma_max:g} -> {self.sigma_min:g}): the denoiser is "
                    f"probably not smooth in x or sigma (noisy, non-differentiable), or rtol={self.rtol:g}/"
                    f"atol={self.atol:g} are too tight. Loosen rtol/atol, raise max_nfe, or use a fixed-grid "
                    "solver (solver='heun', steps=...), whose cost is fixed", budget, reached[0])
            counter[0] += 1
            if sigma < reached[0]:
                reached[0] = sigma
                if bar is not None:
                    bar.update(max(0, min(1000, round(1000 * math.log(self.sigma_max / sigma) / span))) - bar.n)
            sig = torch.full((x.shape[0],), sigma, dtype=mdtype, device=device)
            out = check_output(call_model(fn, x.to(mdtype), sig, *extra), x.shape, where, "input")
            out = out.to(torch.float64)
            check_finite(out, sigma, where)
            return out

        return denoise

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Map noise z (n, *shape) to data (n, *shape), float64; a conditional map also takes
        one condition per row (``labels``: (n,) class ids or (n, ...) embeddings), passed to the
        denoiser as its third argument ``D(x, sigma, labels)``."""
        z = self._check_z(z)
        device = model_device(self.denoiser) or z.device
        labels = self._check_labels(labels, z.shape[0], device)
        x = self.sigma_max * z.to(device=device, dtype=torch.float64)
        counter = [0]
        show = self.adaptive and self.progress and progress_enabled()
        with torch.no_grad(), eval_mode(self.denoiser), _solve_bar(show, self.method) as bar:
            denoise = self._make_denoise(device, counter, self.max_nfe if self.adaptive else None, bar,
                                          labels=labels)
            x = self.stepper.integrate(denoise, x, self.sigmas, rtol=self.rtol, atol=self.atol)
            check_finite(x, self.sigma_min, f"ODE state of {self.name}")
            x = denoise(x, self.sigma_min)
        self.last_nfe = counter[0]
        return x


class OneStepMap(MapBase):
    """A one-step generator used as a noise-to-data map: ``x = fn(z)``.

    The generator is run under ``torch.no_grad`` in eval mode (its mode is restored after);
    its output must have the shape of ``z``. Counts one evaluation per sample.

    >>> import torch, pfd
    >>> student = pfd.OneStepMap(lambda z: 2.0 * z, shape=(3,))
    >>> student(torch.ones(2, 3))
    tensor([[2., 2., 2.],
            [2., 2., 2.]], dtype=torch.float64)
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        shape: Sequence[int] | None = None,
        model_dtype: torch.dtype | None = None,
        name: str | None = None,
        conditional: bool = False,
    ) -> None:
        check_callable(fn, "fn", "callable fn(z) -> x")
        self.fn = fn
        self._init_map(fn, shape, model_dtype, name, conditional=conditional)
        self.nfe_per_sample = 1

    def __repr__(self) -> str:
        return f"OneStepMap({self.name})"

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self._check_z(z)
        device = model_device(self.fn) or z.device
        labels = self._check_labels(labels, z.shape[0], device)
        extra = () if labels is None else (labels,)
        with torch.no_grad(), eval_mode(self.fn):
            out = call_model(self.fn, z.to(device=device, dtype=self._model_dtype), *extra)
        out = check_output(out, z.shape, f"OneStepMap {self.name}").to(torch.float64)
        check_finite(out, None, f"OneStepMap {self.name}")
        self.last_nfe = 1
        return out


class CachedMap:
    """Memoise a map's outputs by the content of the noise it is given.

    Evaluating a teacher once and scoring many students (or one student over many epochs)
    against it then costs only the students' maps. The key is a SHA-1 digest of the noise
    batch's bytes, so a cache can never return outputs for different noise. Memory grows with
    the number of distinct noise samples seen; :meth:`clear` empties it.

    >>> import torch, pfd
    >>> calls = []
    >>> base = pfd.OneStepMap(lambda z: calls.append(1) or z * 2, shape=(2,))
    >>> m = pfd.maps.CachedMap(base)
    >>> z = torch.zeros(3, 2)
    >>> _ = m(z); _ = m(z)
    >>> len(calls), m.hits
    (1, 1)
    """

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor]) -> None:
        check_callable(base, "base", "a callable map")
        self.base = base
        self.conditional = is_conditional(base)
        self.shape = map_shape(base)
        self.name = getattr(base, "name", type(base).__name__)
        self._store: dict[tuple[str, tuple[int, ...]], tuple[torch.Tensor, int | None]] = {}
        self.hits = 0
        self.misses = 0
        self.last_nfe: int | None = None

    @staticmethod
    def _key(z: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[str, tuple[int, ...]]:
        import hashlib

        h = hashlib.sha1(z.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        if labels is not None:
            h.update(b"labels")
            h.update(str(labels.dtype).encode())
            h.update(labels.detach().to("cpu").contiguous().numpy().tobytes())
        return h.hexdigest(), tuple(z.shape)

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        key = self._key(z, labels)
        hit = self._store.get(key)
        if hit is not None:
            self.hits += 1
            self.last_nfe = hit[1]
            return hit[0].clone()
        out = self.base(z) if labels is None else self.base(z, labels)
        self.misses += 1
        nfe = getattr(self.base, "last_nfe", None)
        self._store[key] = (out.detach().clone(), nfe)
        self.last_nfe = nfe
        return out

    def clear(self) -> None:
        self._store.clear()
        self.__dict__.pop("_refined_outputs", None)  # reference solves memoised by pfd.solver_error

    def describe(self) -> dict[str, Any]:
        return describe_map(self.base)

    def __repr__(self) -> str:
        return f"CachedMap({self.base!r}, entries={len(self._store)})"


def map_shape(m: Callable[..., Any]) -> tuple[int, ...] | None:
    """The declared sample shape of a map, if any."""
    shape = getattr(m, "shape", None)
    if shape is None or isinstance(m, torch.Tensor):
        return None
    try:
        return tuple(int(s) for s in shape)
    except TypeError:
        return None


def describe_map(m: Callable[..., Any]) -> dict[str, Any]:
    """Provenance of any map (``describe()`` if present, else its type and name)."""
    d = getattr(m, "describe", None)
    out = dict(d()) if callable(d) else {"type": type(m).__name__, "name": getattr(m, "__qualname__", repr(m))}
    source = getattr(m, "source", None)
    if isinstance(source, dict) and "source" not in out:
        out["source"] = source  # where the model was loaded from (e.g. a diffusers folder's configs)
    return out
