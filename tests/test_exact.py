"""Exact Gaussian-mixture flow maps against independent solves (scipy in OU coordinates, pfd.DiffusionMap
in EDM coordinates), closed forms, composition and inverses."""

import math

import numpy as np
import pytest
import torch
from oracles import gmm_denoiser
from scipy.integrate import solve_ivp

import pfd
from pfd.analytic import exact_map, exact_method
from pfd.schedules import get_process

F64 = torch.float64


def ou_solve(x, gmm, t_from, t_to, rtol=1e-12):
    """Independent reference: the OU PF-ODE dx/dt = -x - grad log p_t(x), with the numpy textbook
    denoiser (tests/oracles.py): grad log p_t(x) = (alpha D(x / alpha; sqrt(rho)) - x) / sigma_t^2."""
    w, mus, covs = gmm.weights.numpy(), gmm.means.numpy(), gmm.covs.numpy()

    def rhs(t, xf):
        xx = xf.reshape(x.shape)
        a, s2 = math.exp(-t), -math.expm1(-2 * t)
        D = gmm_denoiser(xx / a, w, mus, covs, math.sqrt(math.expm1(2 * t)))
        return (-xx - (a * D - xx) / s2).ravel()

    sol = solve_ivp(rhs, (t_from, t_to), np.asarray(x, float).ravel(), method="DOP853", rtol=rtol, atol=1e-13)
    return sol.y[:, -1].reshape(x.shape)


def test_methods_detected(two_modes, mixed_full):
    assert exact_method(pfd.GaussianMixture([1.0], [[0.0, 1.0]], [0.3])) == "gaussian"
    assert exact_method(pfd.GaussianMixture([0.3, 0.7], [[0.0], [2.0]], [0.1, 0.5])) == "cdf"
    assert exact_method(pfd.GaussianMixture([0.5, 0.5], [[-1.0, 1.0, 0.0], [2.0, -2.0, 0.0]], [0.1, 0.1])) == "line"
    four = pfd.GaussianMixture([0.25] * 4, [[-1, -1], [-1, 1], [1, -1], [1, 1]], [0.04] * 4)
    assert exact_method(four) == "product"
    assert exact_method(two_modes) == "ode"  # different variances, not a product
    assert exact_method(mixed_full) == "ode"
    _, info = exact_map(mixed_full, torch.zeros(1, 2, dtype=F64), 0.5, 0.4, return_info=True)
    assert info == {"method": "ode", "numerical": True, "process": "ou"}


def test_single_gaussian_closed_form():
    S = np.array([[0.5, 0.2], [0.2, 0.3]])
    g = pfd.GaussianMixture([1.0], [[1.0, -2.0]], torch.tensor(S)[None])
    x = torch.tensor([[0.3, 0.2], [-1.0, 2.0]], dtype=F64)
    y = exact_map(g, x, 2.0, 0.05)
    np.testing.assert_allclose(y.numpy(), ou_solve(x.numpy(), g, 2.0, 0.05), rtol=1e-9, atol=1e-10)
    # pushes the Gaussian to the Gaussian: covariance C_t = alpha^2 S + sigma^2 I exactly (linear map A)
    ou = get_process("ou")
    eye = np.eye(2)
    base = exact_map(g, x[:1], 2.0, 0.05)
    A = np.stack([(exact_map(g, x[:1] + e, 2.0, 0.05) - base).numpy()[0] for e in torch.eye(2, dtype=F64)], 1)
    C = lambda t: ou.alpha(t) ** 2 * S + ou.sigma(t) ** 2 * eye  # noqa: E731
    np.testing.assert_allclose(A @ C(2.0) @ A.T, C(0.05), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("s2", [0.01, 0.2])
def test_one_d_cdf_map_against_scipy(s2):
    g = pfd.GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [s2, 2 * s2])
    x = torch.linspace(-2.0, 2.0, 9, dtype=F64)[:, None]
    y = exact_map(g, x, 3.0, 0.05)
    ref = ou_solve(x.numpy(), g, 3.0, 0.05)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-8, atol=1e-8)


def test_against_pfd_diffusion_map():
    """OU and EDM: x_OU = alpha_t x_VE at sigma_VE = sqrt(e^{2t} - 1). pfd.DiffusionMap (dopri5, tight)
    from sigma_max * z to sigma_min, then denoise == denoise(exact OU map / alpha)."""
    g = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.05, 0.05])
    ou = get_process("ou")
    T, delta = 2.0, 0.02
    smax, smin = ou.sigma_ve(T), ou.sigma_ve(delta)
    dm = pfd.DiffusionMap(g.denoiser, sigma_max=smax, sigma_min=smin, solver="dopri5", rtol=1e-10, atol=1e-12)
    z = pfd.canonical_noise(16, (1,), seed=3)
    ref = dm(z)
    x_T = ou.alpha(T) * smax * z  # = sigma_T z
    y = exact_map(g, x_T, T, delta)
    mine = g.denoiser(y / ou.alpha(delta), smin)
    torch.testing.assert_close(mine, ref, rtol=1e-7, atol=1e-7)


def test_product_and_line_maps_against_the_ode():
    four = pfd.GaussianMixture([0.25] * 4, [[-1, -1], [-1, 1], [1, -1], [1, 1]], [0.04] * 4)
    x = torch.tensor([[0.3, -0.2], [1.2, 0.01], [-0.5, 2.0]], dtype=F64)
    np.testing.assert_allclose(exact_map(four, x, 2.0, 0.05).numpy(), ou_solve(x.numpy(), four, 2.0, 0.05), rtol=1e-8, atol=1e-8)
    u = torch.tensor([1.0, 2.0, -1.0, 0.5, 0.0, 0.3, -0.7, 1.1], dtype=F64)
    u = u / u.norm()
    line = pfd.GaussianMixture([0.3, 0.3, 0.4], torch.stack([-2 * u, 0.5 * u, 1.5 * u]) + 0.2, [0.03] * 3)
    assert exact_method(line) == "line"
    x8 = torch.randn(3, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    ref = ou_solve(x8.numpy(), line, 2.0, 0.05)
    np.testing.assert_allclose(exact_map(line, x8, 2.0, 0.05).numpy(), ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("process", ["ou", "vp", "ve"])
def test_cdf_map_equals_ode_fallback_in_every_process(process):
    g = pfd.GaussianMixture([0.4, 0.6], [[-1.0], [1.0]], [0.1, 0.1])
    x = torch.tensor([[-0.8], [0.1], [0.9]], dtype=F64)
    t0, t1 = (0.9, 0.05) if process != "ve" else (5.0, 0.05)
    a = exact_map(g, x, t0, t1, process)
    b = exact_map(g, x, t0, t1, process, method="ode")
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_composition_and_inverse():
    g = pfd.GaussianMixture([0.25] * 4, [[-1, -1], [-1, 1], [1, -1], [1, 1]], [0.02] * 4)
    x = g.sample(64, seed=5) * math.exp(-3.0) + 0.999 * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    direct = exact_map(g, x, 3.0, 0.01)
    grid = pfd.stability.balanced_grid(g.subset([0, 1]), 5, 0.01, 3.0)  # any grid
    y = x
    for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        y = exact_map(g, y, t0, t1)
    torch.testing.assert_close(y, direct, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(exact_map(g, direct, 0.01, 3.0), x, rtol=1e-10, atol=1e-10)


def test_map_pushes_p_s_to_p_t():
    """Samples of p_s mapped to t have the moments of p_t (mixture mean and variance in closed form)."""
    g = pfd.GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.05, 0.05])
    ou = get_process("ou")
    s, t, n = 1.5, 0.1, 40000
    x0 = g.sample(n, seed=2)
    x = ou.alpha(s) * x0 + ou.sigma(s) * torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(9))
    y = exact_map(g, x, s, t)
    mean_t = ou.alpha(t) * float(g.mean()[0])
    var_t = ou.alpha(t) ** 2 * float(g.covariance()[0, 0]) + ou.sigma(t) ** 2
    assert abs(float(y.mean()) - mean_t) < 4 * math.sqrt(var_t / n)
    assert abs(float(y.var()) / var_t - 1) < 0.03


def test_bad_input(two_modes):
    g1 = pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1])
    x = torch.zeros(2, 1, dtype=F64)
    with pytest.raises(TypeError, match="gmm must be a pfd.GaussianMixture"):
        exact_map("g", x, 1.0, 0.1)
    with pytest.raises(ValueError, match="t_from must be a finite time >= 0"):
        exact_map(g1, x, -1.0, 0.1)
    with pytest.raises(TypeError, match="t_to must be a number"):
        exact_map(g1, x, 1.0, "0.1")
    with pytest.raises(ValueError, match="shape"):
        exact_map(g1, torch.zeros(2, 3, dtype=F64), 1.0, 0.1)
    with pytest.raises(ValueError, match="method must be 'auto' or one of"):
        exact_map(g1, x, 1.0, 0.1, method="magic")
    with pytest.raises(ValueError, match="method='cdf' needs a 1-D mixture"):
        exact_map(two_modes, torch.zeros(1, 2, dtype=F64), 1.0, 0.1, method="cdf")
    with pytest.raises(ValueError, match="method='product' needs a product mixture"):
        exact_map(two_modes, torch.zeros(1, 2, dtype=F64), 1.0, 0.1, method="product")
    with pytest.raises(ValueError, match="degenerate"):
        exact_map(pfd.GaussianMixture.empirical([[0.0], [1.0]]), x, 1.0, 0.0)
    with pytest.raises(ValueError, match="needs t_from > 0 and t_to > 0"):
        exact_map(two_modes, torch.zeros(1, 2, dtype=F64), 1.0, 0.0)
    # t = 0 is fine with non-degenerate components (the data distribution itself)
    assert torch.isfinite(exact_map(g1, x, 1.0, 0.0)).all()
