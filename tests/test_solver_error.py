"""The solver-error estimate against exact answers: Gaussians in closed form, exact 1-D and
line-mixture maps, and its bookkeeping (exact maps 0, opaque maps unknown, value untouched)."""

import math

import numpy as np
import pytest
import torch

import pfd
from pfd.analytic import exact_map
from pfd.solver_error import SolverError, classify_map, inclusion_probabilities, refined_map, retuned_map

SMAX, SMIN = 80.0, 0.002


def exact_outputs(gmm: pfd.GaussianMixture, z: torch.Tensor) -> torch.Tensor:
    """The exact map of DiffusionMap: the PF-ODE from SMAX to SMIN (closed form), then D(x; SMIN)."""
    x = exact_map(gmm, SMAX * z, SMAX, SMIN, process="ve")
    return gmm.denoiser(x, SMIN)


def true_error(res, p, q, z) -> float:
    exact = float((exact_outputs(p, z) - exact_outputs(q, z)).pow(2).sum(1).mean().sqrt())
    return abs(res.value - exact)


def assert_calibrated(res, true: float) -> None:
    se = res.solver_error
    assert se.status == "estimated" and se.value > 0
    assert true <= 3 * se.value, (true, se.value)
    assert se.value <= 10 * true or se.value < res.stderr / 4, (true, se.value, res.stderr)


@pytest.mark.parametrize("solver, steps", [("heun", 6), ("euler", 10), ("unipc3", 8)])
def test_gaussians_closed_form(solver, steps):
    # N(m1, s1^2 I) vs N(m2, s2^2 I): the exact maps are affine, so the exact PFD on the same noise is known
    p = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [0.3])
    q = pfd.GaussianMixture([1.0], [[0.6, -0.2]], [0.5])
    z = pfd.canonical_noise(500, (2,), seed=4)
    res = pfd.distance(p.ode_map(solver=solver, steps=steps), q.ode_map(solver=solver, steps=steps), noise=z,
                       progress=False, solver_error=True)
    assert_calibrated(res, true_error(res, p, q, z))
    # a single Gaussian is smooth: the estimate's point value is close to the truth, not just within 3x
    assert abs(res.solver_error.delta) == pytest.approx(true_error(res, p, q, z), rel=0.2)


def test_one_dimensional_mixtures_exact_map():
    p = pfd.GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.02, 0.05])
    q = pfd.GaussianMixture([0.4, 0.6], [[-1.1], [0.9]], [0.03, 0.05])
    z = pfd.canonical_noise(1000, (1,), seed=5)
    res = pfd.distance(p.ode_map(solver="heun", steps=10), q.ode_map(solver="heun", steps=10), noise=z,
                       progress=False, solver_error=True)
    assert_calibrated(res, true_error(res, p, q, z))


def test_two_dimensional_line_mixture_with_separatrix():
    # isotropic, collinear means: the exact ("line") map; samples near the separatrix carry the error
    p = pfd.GaussianMixture([0.5, 0.5], [[-1.0, -0.5], [1.0, 0.5]], [0.01, 0.01])
    q = pfd.GaussianMixture([0.45, 0.55], [[-1.1, -0.5], [1.0, 0.6]], [0.01, 0.01])
    z = pfd.canonical_noise(4000, (2,), seed=6)
    for solver, steps in (("heun", 18), ("euler", 18)):
        res = pfd.distance(p.ode_map(solver=solver, steps=steps), q.ode_map(solver=solver, steps=steps), noise=z,
                           progress=False, solver_error=True)
        assert_calibrated(res, true_error(res, p, q, z))


def test_value_untouched_and_cost_reported():
    p = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.05, 0.05])
    q = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.1], [1.1, 0.0]], [0.05, 0.05])
    a, b = p.ode_map(), q.ode_map()
    plain = pfd.distance(a, b, n=600, progress=False, batch_size=128)
    res = pfd.distance(a, b, n=600, progress=False, batch_size=256, solver_error="thorough")
    assert res.value == plain.value and res.stderr == plain.stderr
    se = res.solver_error
    assert se.mode == "thorough" and 0 < se.m <= 600 and se.seconds > 0 and se.nfe > 0
    assert se.reference["a"]["solver"] == "rk4"
    d = res.to_dict()
    assert d["solver_error"]["value"] == se.value and "± " in str(res) and "(solver)" in str(res)
    # deterministic: same seed, same subsample, same estimate
    assert pfd.distance(a, b, n=600, progress=False, solver_error="thorough").solver_error.value == se.value


def test_exact_maps_contribute_zero_and_opaque_maps_are_unknown():
    g = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    one = pfd.OneStepMap(lambda z: 2.0 * z, shape=(2,))
    two = pfd.OneStepMap(lambda z: z + 1.0, shape=(2,))
    res = pfd.distance(one, two, n=64, progress=False, solver_error=True)
    assert res.solver_error.value == 0.0 and res.solver_error.status == "exact"
    opaque = pfd.distance(lambda z: z, g.ode_map(), n=64, shape=(2,), progress=False, solver_error=True)
    assert opaque.solver_error.value is None and opaque.solver_error.status == "unknown"
    assert "opaque" in opaque.solver_error.reason and "solver error unknown" in str(opaque)
    # a one-step student against a diffusion map: only the diffusion map is re-solved
    mixed = pfd.distance(one, g.ode_map(solver="euler", steps=8), n=256, progress=False, solver_error=True)
    assert mixed.solver_error.value > 0 and set(mixed.solver_error.reference) >= {"b"}
    assert "a" not in mixed.solver_error.reference
    ex = pfd.distill.ExactFlowMap(pfd.GaussianMixture([1.0], [[2.0]], [1.0]), 0.1, 5.0)
    assert classify_map(ex)[0] == "exact"
    assert classify_map(pfd.maps.CachedMap(g.ode_map()))[0] == "ode"


def test_adaptive_map_refined_by_tolerance():
    g = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    h = pfd.GaussianMixture([1.0], [[0.5, 0.0]], [1.0])
    m = g.ode_map(solver="dopri5", rtol=1e-5, atol=1e-5)
    assert refined_map(m, 0).rtol == pytest.approx(1e-7)
    res = pfd.distance(m, h.ode_map(solver="dopri5", rtol=1e-5, atol=1e-5), n=64, progress=False, solver_error=True)
    exact = 0.5 * (1 - 1 / math.sqrt(1 + SMAX**2))  # closed form, noise-independent (equal covariances)
    assert abs(res.value - exact) <= 3 * res.solver_error.value


def test_rtol_picks_a_grid_meeting_the_target():
    p = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.05, 0.05])
    q = pfd.GaussianMixture([0.5, 0.5], [[-1.1, 0.0], [1.1, 0.0]], [0.05, 0.05])
    z = pfd.canonical_noise(3000, (2,), seed=7)
    res = pfd.distance(p.ode_map(), q.ode_map(), noise=z, rtol=0.002, progress=False)
    auto = res.provenance["auto_solver"]
    assert auto["met"] and auto["chosen"]["solver"] == "unipc3" and res.solver_error.value <= 0.002 * res.value
    assert auto["attempts"][-1]["steps"] == auto["chosen"]["steps"] == res.provenance["a"]["steps"]
    # the true error (line mixture: exact map) is within the target up to the estimate's calibration
    assert true_error(res, p, q, z) <= 3 * 0.002 * res.value
    with pytest.raises(ValueError, match="rtol"):
        pfd.distance(p.ode_map(), q.ode_map(), n=64, rtol=0.0, progress=False)
    with pytest.raises(ValueError, match="opaque"):
        pfd.distance(lambda z: z, q.ode_map(), n=64, shape=(2,), rtol=0.01, progress=False)


def test_bad_arguments_and_helpers():
    g = pfd.GaussianMixture([1.0], [[0.0]], [1.0])
    with pytest.raises(ValueError, match="solver_error"):
        pfd.distance(g.ode_map(), g.ode_map(), n=8, progress=False, solver_error="fast")
    pi = inclusion_probabilities(np.array([1.0, 2.0, 3.0, 50.0, 4.0]), 3)
    assert pi.sum() == pytest.approx(3.0) and pi[3] == 1.0 and np.all(pi <= 1.0)
    assert np.all(inclusion_probabilities(np.ones(4), 9) == 1.0)
    r = retuned_map(g.ode_map(), "unipc3", 10)
    assert r.nfe_per_sample == 10 and r.sigmas.numel() == 10
    with pytest.raises(TypeError, match="DiffusionMap"):
        refined_map(pfd.OneStepMap(lambda z: z, shape=(1,)))
    assert isinstance(SolverError(None, "unknown", "x").to_dict(), dict)
