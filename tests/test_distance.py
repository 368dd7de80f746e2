"""The PFD estimator: closed forms, metric axioms, W2 bound, invariance, uncertainty, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import gaussian_map, gaussian_map_law, gaussian_pfd_squared, iso_pfd_squared, w2_gaussian

import pfd
from pfd.estimator import ExactSum, summarize

F64 = torch.float64
TIGHT = {"solver": "rk4", "steps": 120, "sigma_min": 1e-4}  # map error ~1e-6 (see test_maps)


def test_two_isotropic_gaussians_closed_form():
    d = 3
    m1, s1 = np.array([0.5, -1.0, 2.0]), 0.7
    m2, s2 = np.array([0.0, 0.3, 1.5]), 1.3
    p = pfd.GaussianMixture([1.0], [m1.tolist()], [s1**2])
    q = pfd.GaussianMixture([1.0], [m2.tolist()], [s2**2])
    n = 4000
    res = pfd.distance(p.ode_map(**TIGHT), q.ode_map(**TIGHT), n=n, seed=5, progress=False)
    # same noise through the exact affine maps: agreement to solver accuracy
    z = pfd.canonical_noise(n, (d,), seed=5).numpy()
    exact_maps = gaussian_map(z, m1, s1**2 * np.eye(d), 80.0) - gaussian_map(z, m2, s2**2 * np.eye(d), 80.0)
    assert res.value == pytest.approx(np.sqrt(np.mean(np.sum(exact_maps**2, 1))), rel=1e-5)
    # population value within the reported uncertainty
    pop = math.sqrt(iso_pfd_squared(m1, s1, m2, s2, 80.0))
    assert abs(res.value - pop) < 4 * res.stderr
    assert res.ci95[0] < pop < res.ci95[1] or abs(res.value - pop) < 3 * res.stderr
    assert res.nfe[0] > 10 and res.n == n


def test_full_covariance_gaussians_population_value():
    S1 = np.array([[1.0, 0.4], [0.4, 0.6]])
    S2 = np.array([[0.3, -0.1], [-0.1, 0.9]])
    m1, m2 = np.array([1.0, 0.0]), np.array([-0.5, 0.5])
    p = pfd.GaussianMixture([1.0], [m1.tolist()], torch.tensor(S1)[None])
    q = pfd.GaussianMixture([1.0], [m2.tolist()], torch.tensor(S2)[None])
    res = pfd.distance(p.ode_map(**TIGHT), q.ode_map(**TIGHT), n=8000, progress=False)
    pop = math.sqrt(gaussian_pfd_squared(m1, S1, m2, S2, 80.0))
    assert abs(res.value - pop) < 4 * res.stderr, (res.value, pop, res.stderr)
    # the coupling bound: W2 between the laws the two maps produce <= PFD
    assert w2_gaussian(*gaussian_map_law(m1, S1, 80.0), *gaussian_map_law(m2, S2, 80.0)) <= pop + 1e-12
    assert w2_gaussian(m1, S1, m2, S2) <= math.sqrt(gaussian_pfd_squared(m1, S1, m2, S2, np.inf)) + 1e-12


@st.composite
def _gaussians(draw):
    d = draw(st.integers(1, 3))
    vals = st.floats(-2, 2, allow_nan=False)

    def spd():
        a = np.array(draw(st.lists(vals, min_size=d * d, max_size=d * d))).reshape(d, d)
        return a @ a.T + draw(st.floats(0.05, 1.0)) * np.eye(d)

    m1 = np.array(draw(st.lists(vals, min_size=d, max_size=d)))
    m2 = np.array(draw(st.lists(vals, min_size=d, max_size=d)))
    return m1, spd(), m2, spd()


@settings(max_examples=60, deadline=None)
@given(_gaussians())
def test_w2_below_pfd_for_gaussians(g):
    m1, S1, m2, S2 = g
    # compare squares: W2^2 carries a round-off of ~1e-16 x the scale through sqrtm, which a square
    # root would blow up to ~1e-8 when p = q
    tol = 1e-12 * (np.trace(S1) + np.trace(S2) + m1 @ m1 + m2 @ m2)
    # (Phi_p(z), Phi_q(z)) couples the two maps' output laws, so W2 of those laws <= PFD exactly
    w2_laws = w2_gaussian(*gaussian_map_law(m1, S1, 80.0), *gaussian_map_law(m2, S2, 80.0))
    assert w2_laws**2 <= gaussian_pfd_squared(m1, S1, m2, S2, 80.0) * (1 + 1e-9) + tol
    # the laws tend to p and q as sigma_max -> inf, where W2(p, q) <= PFD
    assert w2_gaussian(m1, S1, m2, S2) ** 2 <= gaussian_pfd_squared(m1, S1, m2, S2, np.inf) * (1 + 1e-9) + tol
    # and the finite-sigma_max value approaches that limit
    assert math.isclose(gaussian_pfd_squared(m1, S1, m2, S2, 1e4), gaussian_pfd_squared(m1, S1, m2, S2, np.inf),
                        rel_tol=1e-2, abs_tol=1e-6)


def _affine(seed: int, d: int):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=gen, dtype=F64)
    b = torch.randn(d, generator=gen, dtype=F64)
    return pfd.OneStepMap(lambda z: z @ A.T + b + 0.3 * torch.sin(z), shape=(d,))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 4), st.integers(2, 300))
def test_metric_axioms(s1, s2, s3, d, n):
    a, b, c = _affine(s1, d), _affine(s2, d), _affine(s3, d)
    kw = {"n": n, "seed": s1 % 7, "progress": False}
    ab, ba = pfd.distance(a, b, **kw).value, pfd.distance(b, a, **kw).value
    assert ab == ba
    assert pfd.distance(a, a, **kw).value == 0.0
    ac, cb = pfd.distance(a, c, **kw).value, pfd.distance(c, b, **kw).value
    assert ab <= ac + cb + 1e-12 * (ac + cb)


def test_identical_maps_give_zero_with_zero_uncertainty(two_modes):
    res = pfd.distance(two_modes.ode_map(), two_modes.ode_map(), n=100, progress=False)
    assert res.value == 0.0 and res.stderr == 0.0 and res.ci95 == (0.0, 0.0)


def test_batch_size_invariance_is_exact(two_modes):
    a = two_modes.ode_map()
    b = pfd.GaussianMixture([0.4, 0.6], [[-1.1, 0.5], [1.5, -0.4]], [0.25, 0.1]).ode_map(solver="euler", steps=12)
    vals = {bs: pfd.distance(a, b, n=1100, batch_size=bs, progress=False) for bs in (1, 13, 256, 1024, 4096)}
    assert len({r.value for r in vals.values()}) == 1
    assert len({r.stderr for r in vals.values()}) == 1
    # explicit noise equal to the canonical noise gives the same value
    z = pfd.canonical_noise(1100, (2,), seed=0)
    assert pfd.distance(a, b, noise=z, batch_size=333, progress=False).value == vals[1].value


def test_descriptor_is_applied(two_modes):
    a, b = two_modes.ode_map(steps=8), two_modes.ode_map(steps=18)
    plain = pfd.distance(a, b, n=300, progress=False)
    scaled = pfd.distance(a, b, n=300, descriptor=lambda x: 3.0 * x, progress=False)
    assert scaled.value == pytest.approx(3.0 * plain.value, rel=1e-12)
    first = pfd.distance(a, b, n=300, descriptor=lambda x: x[:, :1], progress=False)
    z = pfd.canonical_noise(300, (2,), seed=0)
    want = (a(z)[:, 0] - b(z)[:, 0]).pow(2).mean().sqrt()
    assert first.value == pytest.approx(float(want), rel=1e-12)


def test_stderr_matches_spread_across_seeds():
    a, b = _affine(1, 2), _affine(2, 2)
    runs = [pfd.distance(a, b, n=400, seed=s, progress=False) for s in range(150)]
    values = np.array([r.value for r in runs])
    mean_se = np.mean([r.stderr for r in runs])
    assert 0.8 < values.std(ddof=1) / mean_se < 1.25
    big = pfd.distance(a, b, n=100_000, seed=999, progress=False, batch_size=20_000)
    inside = np.mean([(r.ci95[0] <= big.value <= r.ci95[1]) for r in runs])
    assert 0.88 < inside <= 1.0  # ~95% coverage


def test_result_dict_and_provenance(two_modes):
    res = pfd.distance(two_modes.ode_map(), two_modes.ode_map(steps=6), n=50, seed=3, progress=False)
    d = res.to_dict()
    assert d["n"] == 50 and d["nfe"] == [35.0, 11.0]
    prov = d["provenance"]
    assert prov["noise"]["seed"] == 3 and prov["a"]["solver"] == "heun" and prov["b"]["steps"] == 6
    assert {"pfd", "torch", "numpy", "python"} <= set(prov["versions"])
    assert "PFD =" in str(res)


def test_exact_sum_is_order_independent():
    rng = np.random.default_rng(0)
    vals = rng.standard_normal(5000) * 10.0 ** rng.integers(-12, 12, 5000)
    s1, s2 = ExactSum(), ExactSum()
    s1.add_many(vals)
    s2.add_many(vals[::-1])
    assert s1.value == s2.value == math.fsum(vals)
    half = ExactSum(vals[:2500].tolist())
    half.merge(ExactSum(vals[2500:].tolist()))
    assert half.value == math.fsum(vals)
    v, se, ci, msq = summarize(8.0, 32.0, 2)  # d^2 = (4, 4): zero variance
    assert (v, se, ci, msq) == (2.0, 0.0, (2.0, 2.0), 4.0)


def test_nonfinite_map_reports_global_indices(two_modes):
    good = two_modes.ode_map(steps=4)

    def bad(z):
        out = z.clone()
        out[(z[:, 0] > 2.5)] = float("nan")
        return out

    z = pfd.canonical_noise(3000, (2,), seed=0)
    expected = torch.nonzero(z[:, 0] > 2.5).flatten().tolist()
    with pytest.raises(pfd.NonFiniteError) as info:
        pfd.distance(good, pfd.OneStepMap(bad), n=3000, batch_size=100, progress=False)
    assert info.value.indices == expected[: len(info.value.indices)] and info.value.indices[0] == expected[0]


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda a, b: pfd.distance(a, b, n=1), ValueError, "n must be >= 2"),
        (lambda a, b: pfd.distance(a, b, n=10, batch_size=0), ValueError, "batch_size must be >= 1"),
        (lambda a, b: pfd.distance(a, b, n=10, seed=-1), ValueError, "seed must be >= 0"),
        (lambda a, b: pfd.distance(a, b, n=10, shape=(3,)), ValueError, "does not match the maps' sample shape"),
        (lambda a, b: pfd.distance(a, pfd.GaussianMixture([1.0], [[0.0] * 3], [1.0]).ode_map()), ValueError,
         "different sample shapes"),
        (lambda a, b: pfd.distance(lambda z: z, lambda z: z, n=10), ValueError, "shape= is required"),
        (lambda a, b: pfd.distance(a, b, noise=torch.zeros(10, 3)), ValueError, "shape"),
        (lambda a, b: pfd.distance(a, b, noise=torch.zeros(10, 2), n=5), ValueError, "does not match the 10 rows"),
        (lambda a, b: pfd.distance(a, b, noise=np.zeros((10, 2))), TypeError, "noise must be a torch.Tensor"),
        (lambda a, b: pfd.distance(a, "b"), TypeError, "b must be a callable"),
        (lambda a, b: pfd.distance(a, lambda z: z[:, :1], n=10, shape=(2,)), ValueError, "map b returned shape"),
        (lambda a, b: pfd.distance(a, b, n=10, descriptor=lambda x: x[: len(x) // 2]), ValueError, "descriptor must return"),
    ],
)
def test_bad_arguments(two_modes, call, exc, match):
    a, b = two_modes.ode_map(steps=3), two_modes.ode_map(steps=4)
    with pytest.raises(exc, match=match):
        call(a, b)
