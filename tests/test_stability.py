"""PF-ODE stability of Gaussian mixtures: Jacobian, bounds, cumulative coordinate, balanced grids."""

import math

import numpy as np
import pytest
import torch

import pfd
from pfd import stability as S
from pfd.analytic import exact_map
from pfd.schedules import get_process

F64 = torch.float64


def two_modes(a=1.0, s2=0.05, d=1):
    mu = torch.zeros(2, d, dtype=F64)
    mu[0, 0], mu[1, 0] = -a, a
    return pfd.GaussianMixture([0.5, 0.5], mu, [s2, s2])


@pytest.fixture
def iso3():
    return pfd.GaussianMixture([0.2, 0.5, 0.3], [[-1.0, 0.5], [1.0, 1.0], [0.3, -1.2]], [0.1, 0.1, 0.1])


def test_attributes_after_import():
    import importlib

    mod = importlib.import_module("pfd")
    assert mod.stability is S and callable(mod.analytic.exact_map)


@pytest.mark.parametrize("process", ["ou", "vp", "ve"])
def test_velocity_is_the_pf_ode_drift(iso3, process):
    proc = get_process(process)
    t = 0.3
    x = torch.tensor([[0.2, -0.4], [1.5, 0.3]], dtype=F64)
    a, r = proc.alpha(t), proc.inv_snr(t)
    score_p = iso3.score(x / a, math.sqrt(r)) / a  # grad log p_t(x), p_t(x) = a^-d p_VE(x / a)
    ref = proc.f(t) * x - 0.5 * proc.g2(t) * score_p
    torch.testing.assert_close(S.velocity(iso3, x, t, process), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("process", ["ou", "ve"])
def test_jacobian_against_finite_differences(mixed_full, process):
    x = torch.tensor([[0.3, 0.1], [-1.0, 0.7], [0.5, -1.5]], dtype=F64)
    t = 0.4
    J = S.velocity_jacobian(mixed_full, x, t, process)
    h = 1e-5
    for j in range(2):
        e = torch.zeros(1, 2, dtype=F64)
        e[0, j] = h
        fd = (S.velocity(mixed_full, x + e, t, process) - S.velocity(mixed_full, x - e, t, process)) / (2 * h)
        torch.testing.assert_close(J[:, :, j], fd, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(J, J.transpose(1, 2), rtol=0, atol=1e-12)  # a gradient field's Jacobian


def test_hessian_is_grad_of_score(iso3):
    x = torch.tensor([[0.1, 0.2]], dtype=F64)
    t = 0.5
    proc = get_process("ou")
    a, r = proc.alpha(t), proc.inv_snr(t)
    h = 1e-5
    H = S.hessian_log_prob(iso3, x, t)
    for j in range(2):
        e = torch.zeros(1, 2, dtype=F64)
        e[0, j] = h
        fd = (iso3.score((x + e) / a, math.sqrt(r)) - iso3.score((x - e) / a, math.sqrt(r))) / (2 * h * a)
        torch.testing.assert_close(H[0, :, j], fd[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("process", ["ou", "vp", "ve"])
def test_bound_dominates_jacobian_norm_on_samples(iso3, process):
    proc = get_process(process)
    x0 = iso3.sample(400, seed=1)
    for t in (0.02, 0.1, 0.4, 0.9):
        a, sg = proc.alpha(t), proc.sigma(t)
        x = a * x0 + sg * torch.randn(x0.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
        ev = torch.linalg.eigvalsh(S.velocity_jacobian(iso3, x, t, process))
        assert float(ev.abs().max()) <= S.lipschitz_bound(iso3, t, process) * (1 + 1e-12)
        assert float(-ev.min()) <= S.expansion_rate(iso3, t, process) + 1e-12


def test_numerical_bound_for_general_covariances(mixed_full):
    info = S.bound_info(mixed_full)
    assert info["method"] == "numerical" and not info["rigorous"]
    x0 = mixed_full.sample(300, seed=3)
    for t in (0.05, 0.5):
        proc = get_process("ou")
        x = proc.alpha(t) * x0 + proc.sigma(t) * torch.randn(x0.shape, dtype=F64, generator=torch.Generator().manual_seed(4))
        ev = torch.linalg.eigvalsh(S.velocity_jacobian(mixed_full, x, t))
        assert float(ev.abs().max()) <= S.lipschitz_bound(mixed_full, t)
        assert float(-ev.min()) <= S.expansion_rate(mixed_full, t)


@pytest.mark.parametrize("s2", [0.05, 1.0, 2.5])
def test_bound_attained_on_the_separatrix(s2):
    """Two modes +-a e1 in 2-D: on the bisector the Jacobian's eigenvalues are exactly a_t - b_t (along
    the modes' axis) and a_t; so l+ = b - a is attained, and L = |a| + b is attained when a_t <= 0
    (OU with s^2 >= 1; for s^2 < 1 the tight norm is max(|a|, b - a) < L)."""
    g = two_modes(1.3, s2, d=2)
    for t in (0.05, 0.3, 1.2):
        proc = get_process("ou")
        c = proc.alpha(t) ** 2 * s2 + proc.sigma(t) ** 2
        a_t = 1 / c - 1
        b_t = proc.alpha(t) ** 2 * (2 * 1.3) ** 2 / (4 * c * c)
        x = torch.tensor([[0.0, 0.7], [0.0, -2.0]], dtype=F64)
        ev = torch.linalg.eigvalsh(S.velocity_jacobian(g, x, t))
        torch.testing.assert_close(ev, torch.tensor([[a_t - b_t, a_t]] * 2, dtype=F64).sort(1).values, rtol=1e-12, atol=1e-12)
        assert abs(S.expansion_rate(g, t) - float(-ev.min())) < 1e-12 * max(1, b_t)
        L = S.lipschitz_bound(g, t)
        assert abs(L - (abs(a_t) + b_t)) < 1e-12 * L
        if s2 >= 1:
            assert abs(L - float(ev.abs().max())) < 1e-12 * L


@pytest.mark.parametrize("process", ["ou", "vp", "ve"])
@pytest.mark.parametrize("rate", ["sum", "plus"])
def test_closed_form_lambda_against_quadrature(iso3, process, rate):
    for t1, t2 in ((0.01, 0.9), (0.2, 0.5)):
        closed = S.cumulative(iso3, t1, t2, process, rate, method="closed")
        quad = S.cumulative(iso3, t1, t2, process, rate, method="quad")
        assert abs(closed - quad) <= 1e-9 * max(1.0, abs(closed))
    # additivity
    assert abs(S.cumulative(iso3, 0.01, 0.9, process, rate)
               - S.cumulative(iso3, 0.01, 0.2, process, rate) - S.cumulative(iso3, 0.2, 0.9, process, rate)) < 1e-12


@pytest.mark.parametrize("rate", ["sum", "plus"])
@pytest.mark.parametrize("s2", [0.01, 0.3])
def test_balanced_grid_inverts_lambda(rate, s2):
    g = two_modes(1.0, s2)
    T, delta, K = 4.0, 1e-3, 8
    grid = S.balanced_grid(g, K, delta, T, rate=rate)
    assert grid.shape == (K + 1,) and float(grid[0]) == T and float(grid[-1]) == delta
    assert bool((grid[1:] < grid[:-1]).all())
    total = S.cumulative(g, delta, T, rate=rate)
    for j in range(K + 1):
        lam = S.cumulative(g, float(grid[j]), T, rate=rate)
        assert abs(lam - j * total / K) <= 1e-8 * total
    amp = S.amplification_factors(g, grid, rate=rate)
    np.testing.assert_allclose(amp, math.exp(total / K), rtol=1e-8)


def test_balanced_plus_with_sign_change():
    """Close, narrow modes: l+ < 0 at large t (contraction). The plus grid balances its positive part."""
    g = two_modes(0.3, 0.05)
    T, delta = 3.0, 1e-3
    lp = S.expansion_rate(g, np.array([delta, T]))
    assert lp[0] > 0 > lp[1]
    grid = S.balanced_grid(g, 4, delta, T, rate="plus")
    tt = np.exp(np.linspace(math.log(delta), math.log(T), 20001))
    r = np.maximum(S.expansion_rate(g, tt), 0.0)
    G = np.concatenate([[0.0], np.cumsum(0.5 * (r[1:] * tt[1:] + r[:-1] * tt[:-1]) * np.diff(np.log(tt)))])
    levels = np.interp(np.log(grid.numpy()), np.log(tt), G)
    np.testing.assert_allclose(levels, G[-1] * np.array([4, 3, 2, 1, 0]) / 4, atol=1e-5 * G[-1])


def test_grid_invariant_to_scaling_the_rate(mixed_full):
    def rate(t):
        return S.lipschitz_bound(mixed_full, t)

    g1 = S.grid_from_rate(rate, 6, 0.01, 2.0, n_table=257)
    g2 = S.grid_from_rate(lambda t: 37.5 * rate(t), 6, 0.01, 2.0, n_table=257)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=0)
    # and the tabulated route agrees with the exact inversion on a closed-form mixture
    g = two_modes(1.0, 0.05)
    exact = S.balanced_grid(g, 6, 0.01, 2.0)
    tab = S.grid_from_rate(lambda t: 5.0 * S.lipschitz_bound(g, t), 6, 0.01, 2.0)
    torch.testing.assert_close(tab, exact, rtol=1e-5, atol=0)


def test_general_covariance_grid_balances_quadrature(mixed_full):
    grid = S.balanced_grid(mixed_full, 3, 0.05, 1.5)
    # an independent, finer trapezoid integral of the same (numerical) rate
    tt = np.exp(np.linspace(math.log(0.05), math.log(1.5), 1501))
    r = S.lipschitz_bound(mixed_full, tt) * tt
    G = np.concatenate([[0.0], np.cumsum(0.5 * (r[1:] + r[:-1]) * np.diff(np.log(tt)))])
    levels = np.interp(np.log(grid.numpy()), np.log(tt), G)
    np.testing.assert_allclose(levels, G[-1] * np.array([3, 2, 1, 0]) / 3, atol=1e-3 * G[-1])
    # cumulative() by adaptive quadrature agrees with the table
    assert abs(S.cumulative(mixed_full, 0.5, 1.5) - (G[-1] - np.interp(math.log(0.5), np.log(tt), G))) < 1e-4 * G[-1]


def test_two_mode_slope_identity():
    """Phi'(0) = p_T(0) / p_delta(0) = exp(Lambda+(delta, T)) for two symmetric modes (1-D)."""
    g = two_modes(1.0, 0.1)
    T, delta = 2.5, 0.02
    proc = get_process("ou")
    h = 1e-6
    y = exact_map(g, torch.tensor([[-h], [h]], dtype=F64), T, delta)
    slope = float(y[1, 0] - y[0, 0]) / (2 * h)

    def dens0(t):  # OU density at 0: p_t(x) = alpha^-1 p_VE(x / alpha)
        return math.exp(float(g.log_prob(torch.zeros(1, 1, dtype=F64), proc.sigma_ve(t)))) / proc.alpha(t)

    ratio = dens0(T) / dens0(delta)
    lam_plus = S.cumulative(g, delta, T, rate="plus")
    assert abs(ratio - math.exp(lam_plus)) < 1e-10 * ratio
    assert abs(slope - ratio) < 1e-5 * ratio


def test_groenwall_error_propagation_bound():
    """Exact segment maps plus constant perturbations eps_j: the end-to-end error obeys
    sum_j eps_j exp(sum_{i>j} dLambda_i)."""
    g = two_modes(1.0, 0.05)
    grid = S.balanced_grid(g, 4, 0.01, 3.0)
    inc = S.segment_increments(g, grid)
    eps = [1e-3, 2e-3, 1e-3, 5e-4]
    x = torch.linspace(-2.5, 2.5, 201, dtype=F64)[:, None]
    exact = x.clone()
    pert = x.clone()
    for j in range(4):
        t0, t1 = float(grid[j]), float(grid[j + 1])
        exact = exact_map(g, exact, t0, t1)
        pert = exact_map(g, pert, t0, t1) + eps[j]
    err = float((pert - exact).abs().max())
    bound = S.propagated_error_bound(eps, inc)
    assert 0 < err <= bound
    assert S.propagated_error_bound(eps, S.segment_increments(g, grid, rate="plus")) >= err


def test_make_grid_names(iso3):
    for kind in S.GRID_MAKERS:
        grid = S.make_time_grid(kind, 4, 0.01, 2.0, iso3)
        assert grid.shape == (5,) and float(grid[0]) == 2.0 and float(grid[-1]) == 0.01


def test_bad_input(iso3):
    with pytest.raises(TypeError, match="gmm must be a pfd.GaussianMixture"):
        S.lipschitz_bound("gmm", 0.1)
    with pytest.raises(ValueError, match="rate must be one of"):
        S.cumulative(iso3, 0.1, 0.2, rate="max")
    with pytest.raises(ValueError, match="t1 must be <= t2"):
        S.cumulative(iso3, 0.5, 0.2)
    with pytest.raises(ValueError, match="method='closed' needs"):
        S.cumulative(pfd.GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [0.1, 0.2]), 0.1, 0.2, method="closed")
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        S.lipschitz_bound(iso3, 0.0)
    with pytest.raises(ValueError, match="K must be >= 1"):
        S.balanced_grid(iso3, 0, 0.1, 1.0)
    with pytest.raises(ValueError, match="t_min must be < t_max"):
        S.balanced_grid(iso3, 4, 1.0, 0.1)
    with pytest.raises(ValueError, match="needs the mixture"):
        S.make_time_grid("balanced-sum", 4, 0.1, 1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        S.make_time_grid("cosine", 4, 0.1, 1.0, iso3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.amplification_factors(iso3, [0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match="equal length"):
        S.propagated_error_bound([0.1], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        S.velocity_jacobian(iso3, torch.zeros(3, 5, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="rate must return finite values"):
        S.grid_from_rate(lambda t: -t, 2, 0.1, 1.0)


def test_cli_grid_json_matches_library(capsys, tmp_path):
    import json

    from pfd.cli import main

    assert main(["grid", "--K", "4", "--kind", "balanced-sum", "--mixture", "two-mode", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    g = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.01, 0.01])
    times = S.balanced_grid(g, 4, 0.01, 3.0)
    np.testing.assert_allclose(rep["grids"]["balanced-sum"]["times"], times.numpy(), rtol=1e-14)
    amp = [r["amplification"] for r in rep["grids"]["balanced-sum"]["segments"]]
    np.testing.assert_allclose(amp, math.exp(rep["Lambda_total"] / 4), rtol=1e-8)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(g.to_dict()))
    assert main(["grid", "--K", "2", "--kind", "all", "--gmm", str(path)]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in S.GRID_MAKERS) and "amplification" in out


def test_cli_grid_errors(capsys):
    from pfd.cli import main

    assert main(["grid", "--K", "0"]) == 2
    assert "--K must be >= 1" in capsys.readouterr().err
    assert main(["grid", "--kind", "cosine"]) == 2
    assert "--kind must be one of" in capsys.readouterr().err
    assert main(["grid", "--t-min", "2", "--t-max", "1"]) == 2
    assert "t_min must be < t_max" in capsys.readouterr().err
