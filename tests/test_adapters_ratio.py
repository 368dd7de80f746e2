"""Distributional PFD: the ratio-corrected PF-ODE map and the post-hoc ratio fit."""

import math

import pytest
import torch

import pfd
from pfd.adapters import RATIO_TRAIN, RatioCorrectedMap, fit_ratio, grad_log_ratio

F64 = torch.float64


def iso_logpdf(gmm, x, sigma):
    """log p_sigma(x) of an isotropic mixture, written with differentiable torch ops."""
    c = gmm.covs[None, :] + (sigma**2)[:, None]  # (B, K)
    d2 = (x[:, None, :] - gmm.means[None]).pow(2).sum(2)
    d = x.shape[1]
    return torch.logsumexp(gmm.log_weights[None] - 0.5 * d2 / c - 0.5 * d * torch.log(2 * math.pi * c), dim=1)


@pytest.fixture(scope="module")
def pq():
    p = pfd.GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.0]], [0.1, 0.1])
    q = pfd.GaussianMixture([0.3, 0.7], [[-1.2, 0.5], [1.5, -0.3]], [0.05, 0.2])
    return p, q


def test_exact_ratio_correction_reproduces_student_map(pq):
    p, q = pq

    def r(x, s):
        return iso_logpdf(q, x, s) - iso_logpdf(p, x, s)

    x = torch.randn(32, 2, dtype=F64)
    s = torch.full((32,), 0.7, dtype=F64)
    assert torch.allclose(grad_log_ratio(r, x, s), q.score(x, s) - p.score(x, s), atol=1e-10)
    m = RatioCorrectedMap(p, r, 0.002, 80.0)
    z = pfd.canonical_noise(128, (2,), seed=0)
    ref = q.ode_map()(z)
    assert float((m(z) - ref).abs().max()) < 1e-8
    # inside inference_mode (tensors that cannot enter autograd) it still works
    with torch.inference_mode():
        z_inf = z.clone()
        out = m(z_inf)
    assert float((out - ref).abs().max()) < 1e-8
    res = pfd.distance(m, q.ode_map(), n=128, progress=False)
    assert res.value < 1e-8
    d = res.provenance["a"]
    assert d["type"] == "RatioCorrectedMap" and d["ratio_sigma_range"] == [0.002, 80.0]


def test_correction_only_inside_trained_sigma_range(pq):
    p, q = pq

    def r(x, s):
        return iso_logpdf(q, x, s) - iso_logpdf(p, x, s)

    def piecewise(x, s):  # q's denoiser inside [0.5, 5], p's outside
        inside = (s >= 0.5) & (s <= 5.0)
        return torch.where(inside[:, None], q.denoiser(x, s), p.denoiser(x, s))

    z = pfd.canonical_noise(64, (2,), seed=1)
    got = RatioCorrectedMap(p.denoiser, r, 0.5, 5.0, shape=(2,))(z)
    ref = pfd.DiffusionMap(piecewise, shape=(2,))(z)
    assert float((got - ref).abs().max()) < 1e-8
    # a score reference gives the same map
    got_s = RatioCorrectedMap(p.score, r, 0.5, 5.0, reference_type="score", shape=(2,))(z)
    assert float((got_s - ref).abs().max()) < 1e-8


def test_fit_ratio_recovers_log_ratio_of_two_gaussians():
    """1-D N(0.8, 1) vs N(0, 1): log q_s/p_s = 0.8 x / (1 + s^2) - 0.32 / (1 + s^2), linear in x."""
    p = pfd.GaussianMixture([1.0], [[0.0]], [1.0])
    q = pfd.GaussianMixture([1.0], [[0.8]], [1.0])
    fit = fit_ratio(q.sample(20000, seed=1), p.sample(20000, seed=2), sigma_min=0.1, sigma_max=2.0, seed=0,
                    config=RATIO_TRAIN.replace(train_steps=600, width=32, depth=2))
    assert fit.n_student == 20000 and len(fit.heldout_by_sigma) == 4
    # the Bayes-optimal held-out loss, by Monte Carlo with the exact ratio
    g = torch.Generator().manual_seed(5)
    s = torch.exp(torch.empty(200000, dtype=F64).uniform_(math.log(0.1), math.log(2.0), generator=g))
    xq = 0.8 + torch.sqrt(1 + s * s) * torch.randn(200000, generator=g, dtype=F64)
    xp = torch.sqrt(1 + s * s) * torch.randn(200000, generator=g, dtype=F64)

    def exact(x, s):
        return (0.8 * x - 0.32) / (1 + s * s)

    f = torch.nn.functional.softplus
    best = float(f(-exact(xq, s)).mean() + f(exact(xp, s)).mean())
    with torch.no_grad():  # the fitted classifier's loss on the same large sample (paired with `best`)
        fitted = float(f(-fit.log_ratio(xq[:, None], s)).double().mean() + f(fit.log_ratio(xp[:, None], s)).double().mean())
    assert best - 1e-3 < fitted < best + 0.01 < fit.chance_loss - 0.1
    assert abs(fit.heldout_loss - fitted) < 0.04  # the reported held-out loss (2 x 2000 samples)
    x = torch.linspace(-2, 2, 9, dtype=F64)[:, None]
    for sig in (0.2, 1.0):
        sv = torch.full((9,), sig, dtype=F64)
        gr = grad_log_ratio(fit.log_ratio, x, sv).flatten()
        assert torch.allclose(gr, torch.full_like(gr, 0.8 / (1 + sig**2)), atol=0.15)


def test_fit_ratio_same_distribution_is_at_chance():
    p = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    fit = fit_ratio(lambda n, seed: p.sample(n, seed=seed + 1), lambda n, seed: p.sample(n, seed=seed + 2),
                    n_samples=8000, seed=0, config=RATIO_TRAIN.replace(train_steps=150, width=16, depth=2))
    assert abs(fit.heldout_loss - fit.chance_loss) < 0.02
    assert fit.chance_loss == pytest.approx(2 * math.log(2))


def test_ratio_bad_arguments():
    p = pfd.GaussianMixture([1.0], [[0.0]], [1.0])
    x = p.sample(100, seed=0)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        fit_ratio(x, x, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="holdout"):
        fit_ratio(x, x, holdout=1.5)
    with pytest.raises(TypeError, match="sampler"):
        fit_ratio("samples", x)
    with pytest.raises(ValueError, match="different sample shapes"):
        fit_ratio(x, torch.zeros(100, 2, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        fit_ratio(x, torch.full((100, 1), float("nan")))
    with pytest.raises(ValueError, match="lr_schedule"):
        fit_ratio(x, x, lr_schedule="step")
    with pytest.raises(ValueError, match="num_threads"):
        fit_ratio(x, x, num_threads=0, config=RATIO_TRAIN.replace(train_steps=1))
    with pytest.raises(TypeError, match="net"):
        fit_ratio(x, x, net=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="ratio_sigma_min"):
        RatioCorrectedMap(p, lambda x, s: x.sum(1))
    with pytest.raises(TypeError, match="log_ratio"):
        RatioCorrectedMap(p, 3.0, 0.1, 1.0)
    with pytest.raises(TypeError, match="reference"):
        RatioCorrectedMap(None, lambda x, s: x.sum(1), 0.1, 1.0)
    with pytest.raises(ValueError, match="reference_type"):
        RatioCorrectedMap(p, lambda x, s: x.sum(1), 0.1, 1.0, reference_type="velocity")
    bad = RatioCorrectedMap(p, lambda x, s: x, 0.1, 1.0)  # returns (B, d), not (B,)
    with pytest.raises(ValueError, match="log_ratio must return"):
        bad(torch.zeros(4, 1, dtype=F64))


def test_ratio_correction_on_image_shaped_samples():
    """(B, C, H, W) samples: the correction broadcasts per sample; exact for a shifted Gaussian."""
    shift = 0.3

    def den_p(x, s):  # N(0, I) in every pixel
        return x / (1 + s.reshape(-1, 1, 1, 1) ** 2)

    def r(x, s):  # log N(shift, (1+s^2) I) - log N(0, (1+s^2) I)
        c = 1 + s**2
        return (x.flatten(1).sum(1) * shift - 0.5 * shift**2 * x[0].numel()) / c

    def den_q(x, s):
        sb = s.reshape(-1, 1, 1, 1)
        return shift + (x - shift) / (1 + sb**2)

    z = pfd.canonical_noise(4, (1, 3, 3), seed=0)
    got = RatioCorrectedMap(den_p, r, 0.002, 80.0, shape=(1, 3, 3))(z)
    ref = pfd.DiffusionMap(den_q, shape=(1, 3, 3))(z)
    assert float((got - ref).abs().max()) < 1e-8
