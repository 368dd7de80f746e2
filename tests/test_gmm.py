"""GaussianMixture against independent numpy/scipy formulas."""

import numpy as np
import pytest
import torch
from oracles import gmm_denoiser, gmm_log_prob

import pfd

F64 = torch.float64


def _np(g: pfd.GaussianMixture):
    return g.weights.numpy(), g.means.numpy(), g.component_covs().numpy()


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 80.0])
def test_denoiser_full_matches_scipy_posterior(mixed_full, sigma):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * (1 + sigma)
    got = mixed_full.denoiser(x, sigma).numpy()
    want = gmm_denoiser(x.numpy(), *_np(mixed_full), sigma)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("sigma", [0.05, 1.0, 10.0])
def test_log_prob_matches_scipy(mixed_full, sigma):
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    np.testing.assert_allclose(mixed_full.log_prob(x, sigma).numpy(), gmm_log_prob(x.numpy(), *_np(mixed_full), sigma),
                               rtol=1e-11, atol=1e-11)


def test_log_prob_sigma_zero_and_degenerate():
    g = pfd.GaussianMixture([1.0], [[0.0]], [1.0])
    x = torch.tensor([[0.0], [1.0]], dtype=F64)
    np.testing.assert_allclose(g.log_prob(x).numpy(), -0.5 * np.log(2 * np.pi) - 0.5 * x.numpy()[:, 0] ** 2, rtol=1e-14)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        pfd.GaussianMixture.empirical([[0.0]]).log_prob(x)


def test_iso_diag_full_agree():
    mus = [[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]]
    iso = pfd.GaussianMixture([0.3, 0.7], mus, [0.2, 0.5])
    diag = pfd.GaussianMixture([0.3, 0.7], mus, [[0.2] * 3, [0.5] * 3])
    full = pfd.GaussianMixture([0.3, 0.7], mus, iso.component_covs())
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    sig = torch.linspace(0.01, 5.0, 50, dtype=F64)  # per-sample sigma
    d_iso = iso.denoiser(x, sig)
    torch.testing.assert_close(diag.denoiser(x, sig), d_iso, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full.denoiser(x, sig), d_iso, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full.log_prob(x, sig), iso.log_prob(x, sig), rtol=1e-12, atol=1e-12)


def test_diag_matches_scipy():
    g = pfd.GaussianMixture([1.0, 2.0], [[0.0, 0.0], [1.0, -1.0]], [[0.1, 0.4], [0.3, 0.02]])
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    np.testing.assert_allclose(g.denoiser(x, 0.2).numpy(), gmm_denoiser(x.numpy(), *_np(g), 0.2), rtol=1e-10, atol=1e-12)


def test_score_is_gradient_of_log_density(mixed_full):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    sigma = 0.4
    h = 1e-6
    fd = torch.zeros_like(x)
    for j in range(2):
        e = torch.zeros(2, dtype=F64)
        e[j] = h
        fd[:, j] = (mixed_full.log_prob(x + e, sigma) - mixed_full.log_prob(x - e, sigma)) / (2 * h)
    torch.testing.assert_close(mixed_full.score(x, sigma), fd, rtol=1e-6, atol=1e-6)
    # Tweedie: score = (D - x) / sigma^2
    torch.testing.assert_close(mixed_full.score(x, sigma), (mixed_full.denoiser(x, sigma) - x) / sigma**2)


def test_sample_moments(mixed_full):
    x = mixed_full.sample(200_000, seed=7)
    assert x.dtype == F64 and x.shape == (200_000, 2)
    torch.testing.assert_close(x.mean(0), mixed_full.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), mixed_full.covariance(), atol=0.02, rtol=0)
    assert torch.equal(mixed_full.sample(10, seed=7), mixed_full.sample(10, seed=7))
    assert not torch.equal(mixed_full.sample(10, seed=7), mixed_full.sample(10, seed=8))


def test_empirical_denoiser_is_softmax_average_and_stable():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=F64)
    emp = pfd.GaussianMixture.empirical(pts)
    x = torch.tensor([[0.2, 0.1], [0.9, 0.4]], dtype=F64)
    sigma = 0.7
    logits = -((x[:, None, :] - pts[None]) ** 2).sum(-1) / (2 * sigma**2)
    want = torch.softmax(logits, 1) @ pts
    torch.testing.assert_close(emp.denoiser(x, sigma), want, rtol=1e-13, atol=1e-13)
    # sigma -> 0: exactly the nearest point, no NaN
    for s in (1e-3, 1e-6, 1e-9):
        out = emp.denoiser(x, s)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, pts[[0, 1]], rtol=0, atol=1e-12)


def test_empirical_chunked_matches_dense():
    n = 20_000  # > the component chunk: exercises the online softmax across chunks
    pts = torch.randn(n, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    emp = pfd.GaussianMixture.empirical(pts)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    for sigma in (0.05, 0.5, 5.0):
        w = torch.softmax(-torch.cdist(x, pts) ** 2 / (2 * sigma**2), dim=1)
        torch.testing.assert_close(emp.denoiser(x, sigma), w @ pts, rtol=1e-10, atol=1e-10)


def test_empirical_large_n_runs_in_chunks():
    g = torch.arange(317, dtype=F64) * 0.01  # a 317 x 317 lattice: 100,489 points, spacing 0.01
    pts = torch.cartesian_prod(g, g)
    emp = pfd.GaussianMixture.empirical(pts)
    x = pts[::1571][:64] + 1e-4
    out = emp.denoiser(x, 1e-3)  # each query sits next to its own training point
    torch.testing.assert_close(out, pts[::1571][:64], rtol=0, atol=1e-12)


def test_float32_input_returns_float32(two_modes):
    x = torch.zeros(3, 2)
    assert two_modes.denoiser(x, 1.0).dtype == torch.float32


def test_roundtrip_dict(mixed_full):
    g2 = pfd.GaussianMixture.from_dict(mixed_full.to_dict())
    x = torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(g2.denoiser(x, 0.5), mixed_full.denoiser(x, 0.5))
    emp = pfd.GaussianMixture.from_dict({"points": [[0.0, 1.0]]})
    assert emp.is_empirical and emp.n_components == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [1.0, -1.0], "means": [[0.0], [1.0]], "covs": [1.0, 1.0]}, "weights must all be > 0"),
        ({"weights": [1.0], "means": [0.0, 1.0], "covs": [1.0]}, "means must have shape"),
        ({"weights": [1.0], "means": [[0.0, 1.0]], "covs": [[1.0, 2.0, 3.0]]}, "covs must have shape"),
        ({"weights": [1.0], "means": [[0.0, 0.0]], "covs": [-0.5]}, "covs .* must be >= 0"),
        ({"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 2.0], [2.0, 1.0]]]}, "positive semi-definite"),
        ({"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 0.5], [0.0, 1.0]]]}, "symmetric"),
        ({"weights": [1.0], "means": [[float("nan"), 0.0]], "covs": [1.0]}, "means must be finite"),
    ],
)
def test_bad_mixtures(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pfd.GaussianMixture(**kwargs)


def test_bad_denoiser_input(two_modes):
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        two_modes.denoiser(torch.zeros(3, 4), 1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        two_modes.denoiser(torch.zeros(3, 2), -1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        two_modes.denoiser(torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match=r"sigma must be a float or a tensor of shape \(3,\)"):
        two_modes.denoiser(torch.zeros(3, 2), torch.ones(4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        two_modes.denoiser(np.zeros((3, 2)), 1.0)
    with pytest.raises(ValueError, match="at least one training point"):
        pfd.GaussianMixture.empirical(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="n must be >= 1"):
        two_modes.sample(0)
