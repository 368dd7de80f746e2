"""Baselines against independent computations (scipy / sklearn / brute force numpy)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist, pdist
from scipy.stats import mannwhitneyu
from sklearn.cluster import KMeans
from sklearn.metrics.pairwise import polynomial_kernel, rbf_kernel
from sklearn.neighbors import NearestNeighbors

import pfd
from pfd.analysis import data_copying_ct, frechet_distance, kid, knn_distances, memorization_ratio, mmd_rbf, prdc
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


def _kid_brute(x, y, degree=3, gamma=None, coef=1.0):
    # the full unbiased MMD^2 with sklearn's polynomial kernel (gamma None -> 1 / d), diagonals dropped
    kxx = polynomial_kernel(x, x, degree=degree, gamma=gamma, coef0=coef)
    kyy = polynomial_kernel(y, y, degree=degree, gamma=gamma, coef0=coef)
    kxy = polynomial_kernel(x, y, degree=degree, gamma=gamma, coef0=coef)
    n, m = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kid_one_subset_holding_every_point_is_the_full_unbiased_estimator():
    x, y = _rng(30).normal(size=(60, 5)), _rng(31).normal(size=(60, 5)) * 1.2 + 0.3
    r = kid(x, y, subset_size=60, subsets=1)
    assert r["kid"] == pytest.approx(_kid_brute(x, y), rel=1e-12)
    assert r["kid_std"] == 0.0 and r["gamma"] == 0.2
    # other kernels, and chunking does not change the value
    r2 = kid(x, y, subset_size=60, subsets=1, degree=2, gamma=0.7, coef=0.5, chunk=7)
    assert r2["kid"] == pytest.approx(_kid_brute(x, y, degree=2, gamma=0.7, coef=0.5), rel=1e-12)
    assert kid(x, y, subset_size=60, subsets=3)["kid"] == pytest.approx(r["kid"], rel=1e-12)  # permutations only


def test_kid_subset_average_is_unbiased_for_the_full_estimator_and_seeded():
    # a subset's U-statistic has the full sample's U-statistic as its mean over random subsets
    x, y = _rng(32).normal(size=(30, 3)), _rng(33).normal(size=(45, 3)) + 0.4
    r = kid(x, y, subset_size=10, subsets=3000, seed=5)
    full = _kid_brute(x, y)
    assert abs(r["kid"] - full) < 4 * r["kid_std"] / np.sqrt(3000)
    assert r["kid_std"] > 0
    # subsets are drawn in sequence, so 2 subsets start with the 1-subset draw; std divides by `subsets`
    v1 = kid(x, y, subset_size=10, subsets=1, seed=5)["kid"]
    two = kid(x, y, subset_size=10, subsets=2, seed=5)
    v2 = 2 * two["kid"] - v1
    assert two["kid_std"] == pytest.approx(abs(v1 - v2) / 2, rel=1e-9)
    assert kid(x, y, subset_size=10, subsets=20, seed=5) == kid(x, y, subset_size=10, subsets=20, seed=5)
    assert kid(x, y, subset_size=10, subsets=20, seed=6)["kid"] != kid(x, y, subset_size=10, subsets=20, seed=5)["kid"]


def test_kid_separates_distributions_and_is_near_zero_for_the_same_one():
    same = kid(_rng(34).normal(size=(400, 8)), _rng(35).normal(size=(400, 8)), subset_size=200, subsets=50)
    diff = kid(_rng(34).normal(size=(400, 8)), _rng(35).normal(size=(400, 8)) + 0.5, subset_size=200, subsets=50)
    assert abs(same["kid"]) < 3 * same["kid_std"]
    assert diff["kid"] > 10 * diff["kid_std"]


def test_kid_bad_input():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="subset_size=6 exceeds the smaller sample"):
        kid(x, np.zeros((8, 2)), subset_size=6)
    with pytest.raises(ValueError, match="subset_size must be >= 2"):
        kid(x, x, subset_size=1)
    with pytest.raises(ValueError, match="gamma"):
        kid(x, x, subset_size=5, gamma=-1.0)
    with pytest.raises(TypeError, match="coef must be a finite number"):
        kid(x, x, subset_size=5, coef=float("nan"))
    with pytest.raises(ValueError, match="same dimension"):
        kid(x, np.zeros((5, 3)), subset_size=5)


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
    # the authors' released-code convention: nearest training point within the cell, mean nm/2 - 1/2,
    # cells with more than min_count generated samples
    lab = km.labels_
    zs, ws = [], []
    for c in range(5):
        tc = train[lab == c]
        a, b = cdist(fresh[cq == c], tc).min(1), cdist(test[cp == c], tc).min(1)
        if len(a) <= 20 or len(b) < 1:
            continue
        m, n = len(a), len(b)
        zs.append((mannwhitneyu(a, b).statistic - (m * n / 2 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12))
        ws.append(n / len(test))
    authors = data_copying_ct(fresh, train, test, n_cells=5, min_count=20, seed=0, convention="meehan2020")
    assert authors["ct"] == pytest.approx(np.dot(ws, zs) / np.sum(ws), rel=1e-9)
    assert authors["ct"] != pytest.approx(res["ct"], rel=1e-3)
    with pytest.raises(ValueError, match="convention must be 'pfd' or 'meehan2020'"):
        data_copying_ct(fresh, train, test, convention="authors")


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
