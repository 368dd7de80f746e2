"""Distribution-matching arms with an exactly known generator law (pfd.distill.matching)."""

import math

import pytest
import torch

import pfd
from pfd.adapters import RATIO_TRAIN
from pfd.distill.diffratio import fit_score_net, generator_gradient
from pfd.distill.matching import MATCHING_TRAIN, MixtureGenerator, gradient_bias, n_params, train_matching

F64 = torch.float64


@pytest.fixture
def target():
    return pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [0.05, 0.05])


def test_generator_law_is_exact():
    """G(z) = mu_c + A_c z with c = i mod K: the sample moments of G(z) match the law's exactly up to
    Monte Carlo error, and the law's covariances are A_c A_c^T."""
    a = torch.tensor([[[0.5, 0.0], [0.3, 0.2]], [[0.1, -0.4], [0.0, 0.3]]], dtype=F64)
    gen = MixtureGenerator([[1.0, -1.0], [-2.0, 0.5]], a)
    law = gen.law()
    torch.testing.assert_close(law.component_covs(), a @ a.transpose(1, 2))
    z = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        x = gen(z)
    torch.testing.assert_close(x.mean(0), law.mean(), atol=2e-2, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), law.covariance(), atol=3e-2, rtol=0)
    # rows are assigned cyclically: row 1 of a zero batch is the second mean
    assert gen(torch.zeros(2, 2))[1].tolist() == [-2.0, 0.5]


def test_exact_gradient_is_grad_kl_closed_form():
    """One component G = mu + a z (q = N(mu, a^2 I)), target N(m, v I): the generator gradient with the
    exact s_q - s_p at a fixed sigma is sigma * grad KL(q_sigma || p_sigma), KL in closed form."""
    mu0, a0, m, v, sig = torch.tensor([0.3, -0.2], dtype=F64), 0.6, torch.tensor([1.0, 0.5], dtype=F64), 0.2, 0.4
    gen = MixtureGenerator(mu0[None], (a0 * torch.eye(2, dtype=F64))[None])
    p = pfd.GaussianMixture([1.0], m[None], [v])
    law = gen.law()
    n = 100_000
    g = torch.Generator().manual_seed(3)
    z, eps = torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)
    s = torch.full((n,), sig, dtype=F64)
    grad = generator_gradient(gen, lambda x, s_: law.score(x, s_) - p.score(x, s_), z, s, eps)
    mu = mu0.clone().requires_grad_(True)
    A = (a0 * torch.eye(2, dtype=F64)).requires_grad_(True)
    cq = A @ A.T + sig**2 * torch.eye(2, dtype=F64)
    cp = (v + sig**2) * torch.eye(2, dtype=F64)
    kl = 0.5 * (torch.trace(torch.linalg.solve(cp, cq)) + (m - mu) @ torch.linalg.solve(cp, m - mu) - 2
                + torch.logdet(cp) - torch.logdet(cq))
    kl.backward()
    expect = sig * torch.cat([mu.grad, A.grad.reshape(-1)])
    torch.testing.assert_close(grad, expect, atol=1.5e-2, rtol=0)
    assert float((grad - expect).norm() / expect.norm()) < 0.03


def test_gradient_bias_against_known_errors(target):
    gen = MixtureGenerator.initial(target, seed=1)
    law = gen.law()

    def exact(x, s):
        return law.score(x, s) - target.score(x, s)

    zero = gradient_bias(gen, exact, exact, n=512)
    assert zero["rel"] == 0.0 and zero["field_rel_mse"] == 0.0 and zero["cosine"] == pytest.approx(1.0)
    half = gradient_bias(gen, lambda x, s: 0.5 * exact(x, s), exact, n=512)  # the gradient is linear in delta
    assert half["rel"] == pytest.approx(0.5) and half["field_rel_mse"] == pytest.approx(0.25)
    assert all(b == pytest.approx(0.5) for b in half["rel_by_band"])
    flip = gradient_bias(gen, lambda x, s: -exact(x, s), exact, n=512)
    assert flip["cosine"] == pytest.approx(-1.0) and flip["rel"] == pytest.approx(2.0)
    assert len(half["band_edges"]) == 5 and half["band_edges"][0] == pytest.approx(0.02)


def test_oracle_arm_matches_the_target(target, one_thread):
    """With the exact score difference the generator converges: PFD(q, p) drops several-fold."""
    gen = MixtureGenerator.initial(target, seed=0)
    res = train_matching(target, gen, "oracle", eval_every=50,
                         config=MATCHING_TRAIN.replace(train_steps=150, lr=1e-2, n_eval=256, batch_size=128, progress=False))
    z = pfd.canonical_noise(512, (2,), seed=0)
    before = pfd.distance(target.ode_map(), gen.law().ode_map(), noise=z, progress=False).value
    after = pfd.distance(target.ode_map(), res.generator.law().ode_map(), noise=z, progress=False).value
    assert after < 0.3 * before
    assert [h["step"] for h in res.history] == [0, 50, 100, 150]
    assert res.summary()["grad_bias"] == 0.0 and res.aux_params == 0
    # the input generator is not modified
    torch.testing.assert_close(gen.means, MixtureGenerator.initial(target, seed=0).means)


def test_estimated_arms_run_and_measure(target, one_thread):
    data = target.sample(4096, seed=1)
    teacher = fit_score_net(data, config=RATIO_TRAIN.replace(train_steps=50, width=16, depth=2, batch_size=128,
                                                             progress=False))
    gen = MixtureGenerator.initial(target, seed=0)
    out = {}
    cfg = MATCHING_TRAIN.replace(train_steps=20, n_eval=128, batch_size=64, progress=False)
    for arm, kw in [("diffratio", {"config": cfg.replace(width=8, depth=2)}), ("dmd", {"teacher": teacher, "config": cfg}),
                    ("dmd-exact-teacher", {"teacher": teacher, "config": cfg})]:
        res = train_matching(target, gen, arm, reference=data, eval_every=10, **kw)
        out[arm] = res
        s = res.summary()
        assert math.isfinite(s["grad_bias"]) and -1 <= s["cosine"] <= 1 and len(res.history) == 3
    assert out["diffratio"].aux_params == n_params(pfd.adapters.ratio.RatioNet(2, 8, 2))
    assert out["dmd"].aux_params == n_params(teacher)
    # at step 0 the fake score IS the teacher network: the DMD estimate is exactly zero (relative bias 1)
    assert out["dmd"].history[0]["rel"] == pytest.approx(1.0) and out["dmd"].history[0]["cosine"] == 0.0


def test_bad_input(target):
    gen = MixtureGenerator.initial(target)
    with pytest.raises(ValueError, match="arm must be one of"):
        train_matching(target, gen, "vsd")
    with pytest.raises(ValueError, match="needs the pre-trained teacher"):
        train_matching(target, gen, "dmd", config=MATCHING_TRAIN.replace(train_steps=1))
    with pytest.raises(TypeError, match="generator must be a MixtureGenerator"):
        train_matching(target, torch.nn.Linear(2, 2), "oracle")
    with pytest.raises(ValueError, match="scales must have shape"):
        MixtureGenerator([[0.0, 0.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="z must be a tensor"):
        gen(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="train_steps must be >= 1"):
        train_matching(target, gen, "oracle", config=MATCHING_TRAIN.replace(train_steps=0))
