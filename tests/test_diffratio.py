"""DiffRatio: generator gradient identity, tiny training runs, the baseline, and the full run (slow)."""

import math

import pytest
import torch

import pfd
from pfd.adapters import RATIO_TRAIN
from pfd.distill.diffratio import (
    DIFFRATIO_TRAIN,
    diffratio_generator_loss,
    fit_score_net,
    generator_gradient,
    make_generator,
    ratio_score_difference,
    train_diffratio,
    two_score_difference,
)

F64 = torch.float64


class AffineGenerator(torch.nn.Module):
    """G(z) = a + b z: q = N(a, b^2 I)."""

    def __init__(self, a, b):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=F64))

    def forward(self, z):
        return self.a + self.b * z


def test_generator_gradient_with_exact_score_difference_is_grad_kl():
    """E_z[w (dG/dtheta)^T (s_q - s_p)(G(z) + sigma eps)] = w dKL(q_sigma || p_sigma)/dtheta, closed form
    for q = N(a, b^2 I), p = N(0, I): dKL/da = a / (1 + s^2), dKL/db = d b (1/(1 + s^2) - 1/(b^2 + s^2))."""
    d, a, b, sig = 2, [0.7, -0.4], 0.5, 0.8
    gen = AffineGenerator(a, b)

    def delta(x, s):  # exact s_q - s_p of the noised Gaussians
        at = torch.tensor(a, dtype=F64)
        return -(x - at) / (b * b + s[:, None] ** 2) + x / (1 + s[:, None] ** 2)

    n = 200000
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, d, generator=g, dtype=F64)
    s = torch.full((n,), sig, dtype=F64)
    grad = generator_gradient(gen, delta, z, s, eps)
    c = 1 + sig**2
    expect = sig * torch.tensor([a[0] / c, a[1] / c, d * b * (1 / c - 1 / (b * b + sig**2))], dtype=F64)
    assert torch.allclose(grad, expect, atol=6e-3)
    # the same gradient through grad r of the exact log ratio
    at = torch.tensor(a, dtype=F64)

    def log_ratio(x, s):
        cq, cp = b * b + s**2, 1 + s**2
        log_q = -0.5 * (x - at).pow(2).sum(1) / cq - d / 2 * torch.log(cq)
        return log_q - (-0.5 * x.pow(2).sum(1) / cp - d / 2 * torch.log(cp))

    grad_r = generator_gradient(gen, ratio_score_difference(log_ratio), z[:5000], s[:5000], eps[:5000])
    assert torch.allclose(grad_r, generator_gradient(gen, delta, z[:5000], s[:5000], eps[:5000]), atol=1e-10)
    # and the surrogate loss DiffRatio minimises has this gradient (reverse KL)
    gen.zero_grad()
    diffratio_generator_loss(gen, log_ratio, z[:5000], s[:5000], eps[:5000], "rkl").backward()
    auto = torch.cat([gen.a.grad, gen.b.grad.reshape(1)])
    assert torch.allclose(auto, grad_r, atol=1e-10)


def test_js_weighting_multiplies_by_sigmoid_minus_r():
    gen = AffineGenerator([0.3, 0.0], 1.0)
    z, eps = torch.randn(64, 2, dtype=F64), torch.randn(64, 2, dtype=F64)
    s = torch.full((64,), 0.5, dtype=F64)

    def r(x, s):
        return x[:, 0] * 2.0  # grad r = (2, 0)

    gen.zero_grad()
    diffratio_generator_loss(gen, r, z, s, eps, "js").backward()
    x = gen(z).detach() + 0.5 * eps
    expect_a0 = float((0.5 * torch.sigmoid(-2.0 * x[:, 0]) * 2.0).mean())
    assert gen.a.grad[0].item() == pytest.approx(expect_a0, rel=1e-10)
    with pytest.raises(ValueError, match="divergence"):
        diffratio_generator_loss(gen, r, z, s, eps, "fkl")


def test_tiny_diffratio_run_moves_student_towards_target():
    """A few seconds of training: the student's mean approaches a single-Gaussian target."""
    target = pfd.GaussianMixture([1.0], [[2.0, -1.0]], [0.04])
    data = target.sample(8192, seed=0)
    start = make_generator(2, 32, 2, seed=pfd.noise.derive_seed(0, 12))
    with torch.no_grad():
        m0 = start(torch.randn(4096, 2, generator=torch.Generator().manual_seed(1))).mean(0).double()
    res = train_diffratio(data, seed=0, log_every=50,
                          config=DIFFRATIO_TRAIN.replace(train_steps=150, width=32, depth=2, batch_size=256, lr=3e-3))
    m1 = res.sample(4096, seed=1).mean(0)
    err0, err1 = float((m0 - target.mean()).norm()), float((m1 - target.mean()).norm())
    assert err1 < 0.5 * err0
    assert [h["step"] for h in res.history] == [50, 100, 150]
    assert res.to_dict()["divergence"] == "rkl"


def test_score_net_recovers_gaussian_score():
    p = pfd.GaussianMixture([1.0], [[1.0, 0.0]], [0.25])
    net = fit_score_net(p.sample(20000, seed=0), sigma_min=0.1, sigma_max=3.0, seed=0,
                        config=RATIO_TRAIN.replace(train_steps=500, width=32, depth=2))
    x = p.sample(512, seed=1) + 0.5 * torch.randn(512, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    s = torch.full((512,), 0.5, dtype=F64)
    exact = p.score(x, s)
    with torch.no_grad():
        est = net(x.float(), s.float()).double()
    rel = float((est - exact).pow(2).sum(1).mean() / exact.pow(2).sum(1).mean())
    assert rel < 0.05
    both = two_score_difference(net, net)(x, s)
    assert float(both.abs().max()) == 0.0


def test_diffratio_bad_arguments():
    data = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="divergence"):
        train_diffratio(data, divergence="kl")
    with pytest.raises(ValueError, match="sigma_min"):
        train_diffratio(data, sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(TypeError, match="steps"):
        train_diffratio(data, config=DIFFRATIO_TRAIN.replace(train_steps=1.5))
    with pytest.raises(TypeError, match="reference"):
        train_diffratio("data")


@pytest.mark.slow
def test_full_diffratio_run_on_eight_gaussians():
    """The 2-D recipe (~1-2 min on 2 cores): >= 80% of samples inside a mode, all 8 modes covered."""
    k = 8
    ang = torch.arange(k, dtype=F64) * 2 * math.pi / k
    means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
    teacher = pfd.GaussianMixture(torch.ones(k), means, torch.full((k,), 0.01))
    res = train_diffratio(teacher.sample(65536, seed=1), seed=0)
    x = res.sample(20000, seed=2)
    dist = torch.cdist(x, means)
    nearest = dist.argmin(1)
    inside = dist.min(1).values < 0.3
    assert float(inside.double().mean()) > 0.8
    counts = torch.bincount(nearest[inside], minlength=k)
    assert int((counts > 0.03 * x.shape[0]).sum()) == k
    # raw map (the coupling) vs the distributional PFD: exact (empirical mixture of 20k student
    # samples) and ratio-corrected (refit ratio); benchmark seed: raw 2.86, exact 0.33, ratio 0.38 (+16%);
    # this seed measured exact 0.239, ratio 0.367 (+54%): the ratio route over-estimates, tolerance 70%
    from pfd.adapters import GeneratorStudent, RatioCorrectedMap

    z = pfd.canonical_noise(2048, (2,), seed=0)
    tmap = pfd.maps.CachedMap(teacher.ode_map())
    exact = pfd.distance(tmap, pfd.GaussianMixture.empirical(x).ode_map(), noise=z, progress=False).value
    raw = pfd.distance(tmap, GeneratorStudent(res.generator, kind="distribution", warn=False, shape=(2,)), noise=z,
                       progress=False).value
    fit = res.refit_ratio(teacher.sample(65536, seed=3), seed=4)
    ratio = pfd.distance(tmap, RatioCorrectedMap(teacher, fit), noise=z, progress=False).value
    assert raw > 4 * exact
    assert abs(ratio - exact) < 0.7 * exact
    assert fit.heldout_loss < fit.chance_loss
