"""Class-conditional mixtures, classifier-free guidance and conditions through the PFD pipeline."""

from __future__ import annotations

import math

import pytest
import torch

import pfd
from pfd.analytic import ConditionalGaussianMixture


def _cgmm(cov_kind: str = "full") -> ConditionalGaussianMixture:
    g = torch.Generator().manual_seed(3)
    k, d = 5, 3
    means = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    if cov_kind == "iso":
        covs = 0.1 + torch.rand(k, generator=g, dtype=torch.float64)
    else:
        a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
        covs = a @ a.transpose(1, 2) / d + 0.05 * torch.eye(d, dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    return ConditionalGaussianMixture(weights, means, covs, labels=[0, 1, 0, 2, 1])


@pytest.mark.parametrize("kind", ["iso", "full"])
def test_conditional_denoiser_is_the_renormalised_class_submixture(kind):
    cg = _cgmm(kind)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for c, comps in {0: [0, 2], 1: [1, 4], 2: [3]}.items():
        w = cg.mixture.weights[comps]
        ref = pfd.GaussianMixture(w / w.sum(), cg.mixture.means[comps], cg.mixture.covs[comps])
        for sigma in (0.05, 1.0, 20.0):
            got = cg.denoiser(x, sigma, labels=torch.full((40,), c))
            torch.testing.assert_close(got, ref.denoiser(x, sigma), rtol=1e-12, atol=1e-12)
    assert cg.class_probs.tolist() == pytest.approx([0.4, 0.45, 0.15], abs=1e-15)


def test_unconditional_is_the_class_posterior_average_of_conditionals():
    """Bayes: D_u(x) = sum_c P(c | x_sigma) D_c(x), P(c | x) ∝ P(c) p_sigma(x | c)."""
    cg = _cgmm()
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for sigma in (0.1, 1.5):
        logp = torch.stack([math.log(float(p)) + cg.class_mixture(c).log_prob(x, sigma)
                            for c, p in zip(cg.classes, cg.class_probs, strict=True)], 1)
        post = torch.softmax(logp, 1)
        conds = torch.stack([cg.denoiser(x, sigma, labels=c) for c in cg.classes], 1)
        torch.testing.assert_close((post[:, :, None] * conds).sum(1), cg.denoiser(x, sigma), rtol=1e-10, atol=1e-10)


def test_guidance_convention():
    cg = _cgmm()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lab = torch.tensor([0, 1, 2, 1] * 4)
    d_u = cg.denoiser(x, 0.7)
    d_c = cg.denoiser(x, 0.7, labels=lab)
    torch.testing.assert_close(cg.denoiser(x, 0.7, labels=lab, guidance=0.0), d_c)
    torch.testing.assert_close(cg.denoiser(x, 0.7, labels=lab, guidance=-1.0), d_u, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(cg.denoiser(x, 0.7, labels=lab, guidance=3.0), d_u + 4.0 * (d_c - d_u))
    s = cg.score(x, 0.7, labels=lab, guidance=3.0)
    torch.testing.assert_close(s, (d_u + 4.0 * (d_c - d_u) - x) / 0.49)


def test_bad_inputs_are_named():
    cg = _cgmm()
    x = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="guidance needs labels"):
        cg.denoiser(x, 1.0, guidance=2.0)
    with pytest.raises(ValueError, match="class 7"):
        cg.denoiser(x, 1.0, labels=7)
    with pytest.raises(TypeError, match="labels must hold integer"):
        cg.denoiser(x, 1.0, labels=torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        cg.denoiser(x, 1.0, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="guidance"):
        cg.denoiser(x, 1.0, labels=0, guidance="3")
    with pytest.raises(ValueError, match="labels must be"):
        ConditionalGaussianMixture([1.0, 1.0], [[0.0], [1.0]], [0.1, 0.1], labels=[0])


def test_class_samples_have_the_class_moments():
    cg = _cgmm()
    x = cg.sample(20000, seed=0, labels=2)  # class 2 is one Gaussian component
    torch.testing.assert_close(x.mean(0), cg.mixture.means[3], atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cg.mixture.component_covs()[3], atol=0.05, rtol=0)


def test_from_classes_round_trip():
    a = pfd.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 0.0]], [0.2, 0.3])
    b = pfd.GaussianMixture([1.0], [[0.0, 4.0]], [0.5])
    cg = ConditionalGaussianMixture.from_classes([a, b], [0.75, 0.25], labels=[3, 8])
    assert cg.classes == [3, 8]
    assert cg.class_probs.tolist() == pytest.approx([0.75, 0.25])
    x = torch.randn(8, 2, dtype=torch.float64)
    torch.testing.assert_close(cg.denoiser(x, 0.4, labels=3), a.denoiser(x, 0.4))


def test_guided_flow_maps_match_submixture_and_unconditional_maps():
    cg = _cgmm()
    z = pfd.canonical_noise(64, (3,), seed=4)
    lab = pfd.noise.canonical_labels(64, cg.class_probs, seed=4)
    cond = cg.flow_map(guidance=0.0, solver="heun", steps=24)
    assert cond.conditional
    x = cond(z, lab)
    for c in cg.classes:
        idx = lab == c
        ref = cg.class_mixture(c).flow_map(solver="heun", steps=24)(z[idx])
        torch.testing.assert_close(x[idx], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cg.flow_map(labels=c, steps=24)(z[idx]), ref, rtol=1e-12, atol=1e-12)
    unc = cg.flow_map(guidance=-1.0, steps=24)(z, lab)
    torch.testing.assert_close(unc, cg.mixture.flow_map(steps=24)(z), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="is conditional"):
        cond(z)
    with pytest.raises(ValueError, match="not conditional"):
        cg.mixture.flow_map()(z, lab)


def test_canonical_labels_do_not_depend_on_chunking():
    src = pfd.noise.LabelSource(seed=5, probs=[0.1, 0.6, 0.3])
    full = src.get(0, 3000)
    parts = torch.cat([src.get(a, min(a + 700, 3000)) for a in range(0, 3000, 700)])
    assert torch.equal(full, parts)
    freq = torch.bincount(full, minlength=3).double() / 3000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="sum to 1"):
        pfd.noise.LabelSource(0, [0.5, 0.6])
