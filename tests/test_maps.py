"""PF-ODE maps against closed forms, an independent scipy integration, and convergence theory."""

import math

import numpy as np
import pytest
import torch
from oracles import gaussian_map, solve_ivp_map

import pfd

F64 = torch.float64
S_FULL = np.array([[1.0, 0.3], [0.3, 0.5]])
M = np.array([0.5, -1.0])


def _gaussian():
    return pfd.GaussianMixture([1.0], [M.tolist()], torch.tensor(S_FULL)[None])


@pytest.mark.parametrize(
    ("solver", "kw", "tol"),
    [
        ("dopri5", {"rtol": 1e-10, "atol": 1e-12}, 1e-8),
        ("dopri8", {"rtol": 1e-11, "atol": 1e-12}, 1e-8),
        ("rk4", {"steps": 200}, 1e-6),
        ("heun", {"steps": 400}, 5e-4),
    ],
)
def test_single_gaussian_full_cov_closed_form(solver, kw, tol):
    z = pfd.canonical_noise(64, (2,), seed=3)
    m = _gaussian().ode_map(solver=solver, sigma_min=1e-3, **kw)
    got = m(z).numpy()
    want = gaussian_map(z.numpy(), M, S_FULL, 80.0, sigma_min=1e-3)
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    # and it is within O(sigma_min^2) of the exact map to sigma = 0
    np.testing.assert_allclose(got, gaussian_map(z.numpy(), M, S_FULL, 80.0), atol=tol + 1e-5, rtol=0)


def test_gmm_map_matches_scipy_solve_ivp(mixed_full):
    z = pfd.canonical_noise(6, (2,), seed=11)
    ours = mixed_full.ode_map(solver="dopri8", rtol=1e-12, atol=1e-12, sigma_max=20.0, sigma_min=0.01)(z).numpy()
    w, mus, covs = mixed_full.weights.numpy(), mixed_full.means.numpy(), mixed_full.component_covs().numpy()
    ref = solve_ivp_map(z.numpy(), w, mus, covs, 20.0, 0.01)
    np.testing.assert_allclose(ours, ref, atol=1e-7, rtol=0)


def _order(method, steps_list, gmm, z, ref):
    errs = []
    for s in steps_list:
        x = gmm.ode_map(solver=method, steps=s, sigma_min=0.05, sigma_max=10.0)(z)
        errs.append(float((x - ref).pow(2).sum(1).mean().sqrt()))
    slopes = [math.log(errs[i] / errs[i + 1]) / math.log((steps_list[i + 1] - 1) / (steps_list[i] - 1))
              for i in range(len(errs) - 1)]
    return errs, slopes


@pytest.mark.parametrize(("method", "order", "steps"), [("euler", 1, [65, 129, 257]), ("heun", 2, [33, 65, 129]),
                                                        ("midpoint", 2, [33, 65, 129]), ("rk4", 4, [17, 33, 65])])
def test_convergence_order(method, order, steps):
    gmm = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.2])
    z = pfd.canonical_noise(32, (2,), seed=0)
    ref = gmm.ode_map(solver="dopri8", rtol=1e-12, atol=1e-12, sigma_min=0.05, sigma_max=10.0)(z)
    errs, slopes = _order(method, steps, gmm, z, ref)
    assert errs[-1] < errs[0]
    assert abs(slopes[-1] - order) < 0.3, (errs, slopes)


def test_nfe_counts(two_modes):
    z = torch.zeros(4, 2, dtype=F64)
    for solver, steps, nfe in [("heun", 18, 35), ("euler", 18, 18), ("midpoint", 10, 19), ("rk4", 5, 17)]:
        m = two_modes.ode_map(solver=solver, steps=steps)
        m(z)
        assert m.last_nfe == m.nfe_per_sample == nfe
    ad = two_modes.ode_map(solver="dopri5")
    ad(z)
    assert ad.nfe_per_sample is None and ad.last_nfe > 20
    fixed_tdq = two_modes.ode_map(solver="torchdiffeq:rk4", steps=10)
    x1 = fixed_tdq(z)
    assert fixed_tdq.last_nfe == 4 * 9 + 1
    # torchdiffeq's rk4 (3/8 rule) in log sigma agrees with the reference to its own accuracy
    ref = two_modes.ode_map(solver="dopri5", rtol=1e-10, atol=1e-12)(z)
    assert float((x1 - ref).abs().max()) < 0.05


def test_empirical_map_sends_noise_onto_training_points():
    pts = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0]).sample(50, seed=1)
    emp = pfd.GaussianMixture.empirical(pts)
    x = emp.ode_map()(pfd.canonical_noise(500, (2,), seed=2))
    dist = torch.cdist(x, pts).min(1).values
    assert float(dist.max()) < 1e-6
    hit = torch.cdist(x, pts).argmin(1)
    assert len(torch.unique(hit)) > 25  # many training points are reached, not a collapse


def test_float32_module_denoiser_and_mode_restored(two_modes):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))
            self.seen = []

        def forward(self, x, sigma):
            self.seen.append((x.dtype, sigma.dtype, sigma.shape, self.training))
            return (two_modes.denoiser(x.double(), sigma.double()) * self.scale).float()

    net = Net().train()
    m = pfd.DiffusionMap(net, shape=(2,), steps=6)
    z = pfd.canonical_noise(3, (2,), seed=0)
    out = m(z)
    assert out.dtype == F64 and net.training
    assert set(net.seen) == {(torch.float32, torch.float32, torch.Size([3]), False)}
    torch.testing.assert_close(out, two_modes.ode_map(steps=6)(z), atol=1e-4, rtol=0)


def test_nonfinite_denoiser_names_samples_and_sigma(two_modes):
    def bad(x, sigma):
        out = two_modes.denoiser(x, sigma)
        if float(sigma[0]) < 1.0:
            out[[1, 3]] = float("nan")
        return out

    m = pfd.DiffusionMap(bad, shape=(2,))
    with pytest.raises(pfd.NonFiniteError, match=r"sigma=0\.\d+.*indices \[1, 3\]") as info:
        m(pfd.canonical_noise(5, (2,), seed=0))
    assert info.value.indices == [1, 3] and info.value.sigma < 1.0


def test_one_step_map_checks():
    m = pfd.OneStepMap(lambda z: z[:, :1], shape=(2,))
    with pytest.raises(ValueError, match="returned shape"):
        m(torch.zeros(2, 2))
    with pytest.raises(pfd.NonFiniteError, match="indices \\[0\\]"):
        pfd.OneStepMap(lambda z: z.log())(torch.tensor([[-1.0], [2.0]]))
    with pytest.raises(TypeError, match="fn must be callable"):
        pfd.OneStepMap(3)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma_min": 0.0}, ValueError, "sigma_min must be a finite number > 0"),
        ({"sigma_min": -1.0}, ValueError, "sigma_min must be a finite number > 0"),
        ({"sigma_min": 5.0, "sigma_max": 1.0}, ValueError, "sigma_min must be < sigma_max"),
        ({"solver": "rk45"}, ValueError, "solver must be one of"),
        ({"steps": 1}, ValueError, "steps must be >= 2"),
        ({"steps": 2.5}, TypeError, "steps must be an int"),
        ({"solver": "heun", "rtol": 1e-5}, ValueError, "rtol/atol apply to adaptive solvers only"),
        ({"solver": "dopri5", "rtol": -1.0}, ValueError, "rtol must be a finite number > 0"),
        ({"shape": (0,)}, ValueError, "shape must be a non-empty tuple"),
    ],
)
def test_bad_map_arguments(two_modes, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        two_modes.ode_map(**kwargs)


def test_bad_noise_and_denoiser(two_modes):
    m = two_modes.ode_map()
    with pytest.raises(ValueError, match=r"noise z must have shape \(n, 2\)"):
        m(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="noise z must be a torch.Tensor"):
        m(np.zeros((4, 2)))
    with pytest.raises(TypeError, match="denoiser must be callable"):
        pfd.DiffusionMap("not a model")
    wrong = pfd.DiffusionMap(lambda x, s: x[:, :1], shape=(2,))
    with pytest.raises(ValueError, match="returned shape"):
        wrong(torch.zeros(2, 2))
