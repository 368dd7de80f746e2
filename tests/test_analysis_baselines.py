"""Baselines against independent computations (scipy / sklearn / brute force numpy)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist, pdist
from scipy.stats import mannwhitneyu
from sklearn.cluster import KMeans
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.neighbors import NearestNeighbors

import pfd
from pfd.analysis import data_copying_ct, frechet_distance, knn_distances, memorization_ratio, mmd_rbf, prdc
from pfd.analysis.baselines import _mann_whitney_u, median_bandwidth
from pfd.noise import derive_seed

pytestmark = pytest.mark.usefixtures("one_thread")


def _rng(seed):
    return np.random.default_rng(seed)


def test_knn_matches_sklearn_across_chunks():
    x, r = _rng(0).normal(size=(37, 3)), _rng(1).normal(size=(53, 3))
    ref, _ = NearestNeighbors(n_neighbors=4).fit(r).kneighbors(x)
    got = knn_distances(x, r, 4, chunk=7).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    self_ref, _ = NearestNeighbors(n_neighbors=3).fit(r).kneighbors(r)
    np.testing.assert_allclose(knn_distances(r, r, 2, exclude_self=True, chunk=5).numpy(), self_ref[:, 1:], atol=1e-12)


def test_memorization_ratio_matches_brute_force_and_bootstrap_is_seeded():
    x, t = _rng(2).normal(size=(200, 2)), _rng(3).normal(size=(30, 2))
    t[:5] = x[:5] + 1e-3  # five near-copies
    d = np.sort(cdist(x, t), axis=1)
    expected = np.mean(d[:, 0] / d[:, 1] < 1 / 3)
    r = memorization_ratio(x, t, n_boot=300, seed=4, chunk=16)
    assert r["value"] == pytest.approx(expected, abs=0)
    assert r["ci95"][0] <= r["value"] <= r["ci95"][1]
    assert memorization_ratio(x, t, n_boot=300, seed=4)["ci95"] == r["ci95"]
    # binomial standard error check of the bootstrap width
    se = np.sqrt(expected * (1 - expected) / 200)
    assert (r["ci95"][1] - r["ci95"][0]) == pytest.approx(2 * 1.96 * se, rel=0.3)


def test_memorization_ratio_anchors_empirical_is_one_teacher_is_zero():
    d = 6
    teacher = pfd.GaussianMixture([0.5, 0.5], [[-2.0] + [0.0] * (d - 1), [2.0] + [0.0] * (d - 1)], [0.3, 0.3])
    train = teacher.sample(64, seed=1)
    z = pfd.canonical_noise(512, (d,), seed=0)
    memorized = pfd.GaussianMixture.empirical(train).ode_map()(z)
    fresh = teacher.ode_map()(z)
    assert memorization_ratio(memorized, train, n_boot=100)["value"] > 0.99
    # fresh data: P(d1/d2 < 1/3) = (1/3)^d for a locally uniform density (Poisson limit), 0.0014 here
    assert memorization_ratio(fresh, train, n_boot=100)["value"] < 0.01


def test_memorization_ratio_of_fresh_data_in_2d_is_one_ninth():
    # in 2-D the same Poisson-limit law gives (1/3)^2 = 1/9 even for samples of the data itself
    teacher = pfd.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    train, fresh = teacher.sample(4000, seed=1), teacher.sample(2000, seed=2)
    r = memorization_ratio(fresh, train, n_boot=100)["value"]
    assert r == pytest.approx(1 / 9, abs=4 * np.sqrt((1 / 9) * (8 / 9) / 2000))


def test_frechet_matches_scipy_sqrtm():
    x, y = _rng(5).normal(size=(300, 4)), _rng(6).normal(size=(200, 4)) @ np.diag([1.0, 2.0, 0.5, 1.0]) + 0.3
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-9)
    # singular covariance (fewer points than dimensions) still gives a finite value >= 0
    assert frechet_distance(x[:3], y[:3]) >= 0.0
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-10)


def test_mmd_matches_sklearn_rbf_kernel_and_median_rule():
    x, y = _rng(7).normal(size=(60, 3)), _rng(8).normal(size=(45, 3)) + 0.5
    h = float(np.median(pdist(np.vstack([x, y]))))
    assert median_bandwidth(torch.as_tensor(x), torch.as_tensor(y)) == pytest.approx(h, rel=1e-12)
    g = 1 / (2 * h * h)
    kxx, kyy, kxy = rbf_kernel(x, x, gamma=g), rbf_kernel(y, y, gamma=g), rbf_kernel(x, y, gamma=g)
    ref = (kxx.sum() - 60) / (60 * 59) + (kyy.sum() - 45) / (45 * 44) - 2 * kxy.mean()
    r = mmd_rbf(x, y, chunk=8)
    assert r["bandwidth"] == pytest.approx(h, rel=1e-12)
    assert r["mmd2"] == pytest.approx(ref, rel=1e-10, abs=1e-13)


def _prdc_bruteforce(real, fake, k):
    drr, dff, drf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r = np.sort(drr, axis=1)[:, k]
    s = np.sort(dff, axis=1)[:, k]
    inside = drf < r[:, None]  # (real, fake)
    return {
        "precision": inside.any(0).mean(),
        "recall": (drf < s[None, :]).any(1).mean(),
        "density": inside.sum() / (k * fake.shape[0]),
        "coverage": (drf.min(1) < r).mean(),
    }


def test_prdc_matches_brute_force():
    real, fake = _rng(9).normal(size=(80, 2)), _rng(10).normal(size=(70, 2)) * 1.3 + 0.2
    got = prdc(real, fake, k=5, chunk=9)
    ref = _prdc_bruteforce(real, fake, 5)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-12), key


def test_mann_whitney_u_matches_scipy():
    a, b = torch.as_tensor(_rng(11).normal(size=40)), torch.as_tensor(_rng(12).normal(size=33) + 0.3)
    a[:3] = b[:3]  # ties
    assert _mann_whitney_u(a, b) == pytest.approx(mannwhitneyu(a.numpy(), b.numpy()).statistic, abs=1e-9)


def test_ct_matches_independent_computation_and_detects_copying():
    teacher = pfd.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.5, 0.5])
    train, test = teacher.sample(400, seed=1).numpy(), teacher.sample(400, seed=2).numpy()
    fresh = teacher.sample(400, seed=3).numpy()
    copies = train[_rng(13).integers(0, 400, 400)] + 0.01 * _rng(14).normal(size=(400, 2))
    res = data_copying_ct(fresh, train, test, n_cells=5, min_count=20, seed=0)
    # independent: sklearn k-means with the same seed, scipy U statistics
    km = KMeans(n_clusters=5, n_init=5, random_state=int(derive_seed(0, 23) % (2**31))).fit(train)
    dq, dp = cdist(fresh, train).min(1), cdist(test, train).min(1)
    cq, cp = km.predict(fresh), km.predict(test)
    zs, ws = [], []
    for c in range(5):
        a, b = dq[cq == c], dp[cp == c]
        if len(a) < 20 or len(b) < 1:
            continue
        u = mannwhitneyu(a, b).statistic
        m, n = len(a), len(b)
        zs.append((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))
        ws.append(n / len(test))
    assert res["ct"] == pytest.approx(np.dot(ws, zs) / np.sum(ws), rel=1e-9)
    assert abs(res["ct"]) < 3.0
    assert data_copying_ct(copies, train, test, n_cells=5, seed=0)["ct"] < -10.0


@pytest.mark.parametrize(
    ("fn", "args", "exc", "match"),
    [
        (knn_distances, ([[0.0, 1.0]], [[0.0], [1.0]]), ValueError, "same dimension"),
        (knn_distances, ([[0.0]], [[0.0]], 2), ValueError, "only 1 points"),
        (memorization_ratio, ([[0.0]], [[1.0]]), ValueError, "at least 2 points"),
        (memorization_ratio, ([0.0, 1.0], [[1.0], [2.0]]), ValueError, "shape \\(n, d\\)"),
        (memorization_ratio, ("abc", [[1.0], [2.0]]), TypeError, "samples must be an array"),
        (frechet_distance, ([[0.0]], [[1.0], [2.0]]), ValueError, "at least 2 points"),
        (mmd_rbf, ([[np.nan], [1.0]], [[1.0], [2.0]]), ValueError, "x must be finite"),
        (prdc, ([[0.0], [1.0]], [[0.0], [1.0]]), ValueError, "more than k=5"),
        (data_copying_ct, ([[0.0]] * 30, [[0.0]] * 3, [[0.0]] * 5), ValueError, "fewer than n_cells"),
    ],
)
def test_bad_input(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


def test_mmd_bad_bandwidth():
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf([[0.0], [1.0]], [[0.0], [1.0]], bandwidth=-1.0)
