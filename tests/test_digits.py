"""GaussianMixture.fit against scikit-learn, event shapes, and the digits teacher."""

import numpy as np
import pytest
import torch
from oracles import gmm_denoiser

import pfd
from pfd.analytic import digits_images, digits_split, digits_teacher

F64 = torch.float64


def _sklearn_with(gmm: pfd.GaussianMixture, kind: str):
    """A scikit-learn GaussianMixture carrying OUR parameters (not refitted)."""
    from sklearn.mixture import GaussianMixture as Sk
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    sk = Sk(gmm.n_components, covariance_type=kind)
    covs = gmm.covs.numpy()
    if kind == "tied":
        covs = covs[0]
    sk.weights_, sk.means_, sk.covariances_ = gmm.weights.numpy(), gmm.means.numpy(), covs
    sk.precisions_cholesky_ = _compute_precision_cholesky(covs, kind)
    return sk


@pytest.mark.parametrize("kind", ["full", "diag", "spherical", "tied"])
def test_fit_log_likelihood_matches_sklearn(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(150, 3, generator=g, dtype=F64) * 0.5 - 2, torch.randn(100, 3, generator=g, dtype=F64) + 2])
    gmm = pfd.GaussianMixture.fit(x, 2, covariance=kind, reg=1e-4, seed=3)
    sk = _sklearn_with(gmm, kind)
    probe = torch.randn(40, 3, generator=g, dtype=F64) * 2
    np.testing.assert_allclose(gmm.log_prob(probe).numpy(), sk.score_samples(probe.numpy()), rtol=1e-10, atol=1e-10)
    # and the fit is scikit-learn's own EM result: same mean log-likelihood as its fitted model
    from sklearn.mixture import GaussianMixture as Sk

    ref = Sk(2, covariance_type=kind, reg_covar=1e-4, random_state=3).fit(x.numpy())
    assert gmm.log_prob(x).mean().item() == pytest.approx(ref.score(x.numpy()), rel=1e-10)


def test_fit_keeps_event_shape_and_denoiser_matches_flat():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 2, 2, 3, generator=g, dtype=F64)
    gmm = pfd.GaussianMixture.fit(x, 3, seed=0)
    assert gmm.event_shape == (2, 2, 3) and gmm.dim == 12
    assert tuple(gmm.sample(5, seed=1).shape) == (5, 2, 2, 3)
    xt = torch.randn(7, 2, 2, 3, generator=g, dtype=F64)
    d = gmm.denoiser(xt, 0.7)
    assert d.shape == xt.shape
    want = gmm_denoiser(xt.reshape(7, 12).numpy(), gmm.weights.numpy(), gmm.means.numpy(),
                        gmm.component_covs().numpy(), 0.7)
    np.testing.assert_allclose(d.reshape(7, 12).numpy(), want, rtol=1e-9, atol=1e-10)
    # flat input still accepted; round trip through to_dict keeps the shape
    np.testing.assert_allclose(gmm.denoiser(xt.reshape(7, 12), 0.7).numpy(), want, rtol=1e-9, atol=1e-10)
    assert pfd.GaussianMixture.from_dict(gmm.to_dict()).event_shape == (2, 2, 3)
    emp = pfd.GaussianMixture.empirical(x[:4])
    assert emp.event_shape == (2, 2, 3) and emp.denoiser(xt, 1e-3).shape == xt.shape


def test_fit_rejects_bad_input():
    x = torch.randn(10, 2, dtype=F64)
    with pytest.raises(ValueError, match="covariance"):
        pfd.GaussianMixture.fit(x, 2, covariance="banana")
    with pytest.raises(ValueError, match="n_components"):
        pfd.GaussianMixture.fit(x, 11)
    with pytest.raises(ValueError, match="event_shape"):
        pfd.GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [1.0], event_shape=(2, 2))
    with pytest.raises(ValueError, match="shape"):
        pfd.GaussianMixture.fit(x, 2).denoiser(torch.zeros(3, 3, dtype=F64), 1.0)


def test_digits_teacher_shape_range_and_heldout_likelihood(one_thread):
    x = digits_images()
    assert tuple(x.shape) == (1797, 1, 8, 8) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    teacher = digits_teacher()
    assert teacher.event_shape == (1, 8, 8) and teacher.dim == 64 and teacher.n_components == 10
    assert digits_teacher() is teacher  # cached in-process
    samples = teacher.sample(512, seed=0)
    assert tuple(samples.shape) == (512, 1, 8, 8)
    # samples live on the data's scale: mean and overall spread close to the digits'
    assert abs(float(samples.mean() - x.mean())) < 0.05 and abs(float(samples.std() / x.std()) - 1) < 0.1
    # held out: the 10-component fit explains unseen digits far better than one Gaussian
    train, test = digits_split(0.2, seed=0)
    held = digits_teacher(10, seed=0, holdout=0.2)
    one = pfd.GaussianMixture.fit(train, 1, reg=1e-3, seed=0)
    ll_k, ll_1 = held.log_prob(test).mean().item(), one.log_prob(test).mean().item()
    assert ll_k > ll_1 + 10.0, (ll_k, ll_1)
