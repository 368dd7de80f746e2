"""Sample-based memorization and distribution metrics, reported beside PFD.

All of them see two point clouds (generated samples and a reference set), never maps. Every
pairwise computation is done in chunks of at most ``chunk x chunk`` distances, so no N x N
matrix is ever held in memory. All randomness (bootstrap, bandwidth subsample, k-means) is seeded.

* :func:`memorization_ratio` - fraction of samples with d1/d2 < 1/3 to the training set (+ bootstrap CI)
* :func:`frechet_distance` - Fréchet (2-Wasserstein between Gaussian fits) distance in data space
* :func:`mmd_rbf` - unbiased MMD^2 with an RBF kernel, bandwidth by the median heuristic
* :func:`kid` - kernel inception distance: unbiased MMD^2, cubic polynomial kernel, over random subsets
* :func:`prdc` - precision / recall / density / coverage (Naeem et al. 2020)
* :func:`data_copying_ct` - Meehan et al. (2020) C_T data-copying statistic
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pfd._checks import check_positive_float, check_positive_int
from pfd.noise import derive_seed

__all__ = [
    "all_baselines",
    "data_copying_ct",
    "frechet_distance",
    "kid",
    "knn_distances",
    "memorization_ratio",
    "mmd_rbf",
    "prdc",
]

_CHUNK = 2048


def _points(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array of points (n, d): {exc}") from None
    if t.ndim == 1:
        raise ValueError(f"{name} must have shape (n, d) (one row per point), got {tuple(t.shape)}")
    t = t.reshape(t.shape[0], -1)
    if t.shape[0] < 1:
        raise ValueError(f"{name} must contain at least one point")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def _same_dim(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{na} and {nb} must have the same dimension, got {a.shape[1]} and {b.shape[1]}")


def knn_distances(query: Any, ref: Any, k: int = 1, *, exclude_self: bool = False, chunk: int = _CHUNK) -> torch.Tensor:
    """Sorted distances (n_query, k) from each query point to its k nearest points of ``ref``.

    Computed in (chunk x chunk) blocks. ``exclude_self`` drops the first neighbour (use when
    ``query`` is ``ref``: the point itself at distance 0).

    >>> knn_distances([[0.0], [3.0]], [[1.0], [0.5], [10.0]], k=2)
    tensor([[0.5000, 1.0000],
            [2.0000, 2.5000]], dtype=torch.float64)
    """
    q, r = _points(query, "query"), _points(ref, "ref")
    _same_dim(q, r, "query", "ref")
    k = check_positive_int(k, "k")
    kk = k + 1 if exclude_self else k
    if kk > r.shape[0]:
        raise ValueError(f"k={k} neighbours requested but ref has only {r.shape[0]} points")
    check_positive_int(chunk, "chunk")
    out = torch.empty(q.shape[0], kk, dtype=torch.float64)
    for i in range(0, q.shape[0], chunk):
        qi = q[i:i + chunk]
        best = torch.full((qi.shape[0], 0), math.inf, dtype=torch.float64)
        for j in range(0, r.shape[0], chunk):
            d = torch.cdist(qi, r[j:j + chunk])
            best = torch.cat([best, d], 1).topk(min(kk, best.shape[1] + d.shape[1]), dim=1, largest=False).values
        out[i:i + chunk] = best
    return out[:, 1:] if exclude_self else out


def _bootstrap_ci(indicator: torch.Tensor, n_boot: int, seed: int) -> tuple[float, float]:
    m = indicator.shape[0]
    g = torch.Generator().manual_seed(derive_seed(seed, 21) % (2**63))
    vals = torch.empty(n_boot, dtype=torch.float64)
    step = max(1, (1 << 22) // max(m, 1))
    x = indicator.to(torch.float64)
    for b in range(0, n_boot, step):
        nb = min(step, n_boot - b)
        idx = torch.randint(0, m, (nb, m), generator=g)
        vals[b:b + nb] = x[idx].mean(1)
    lo, hi = torch.quantile(vals, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


def memorization_ratio(samples: Any, train: Any, *, threshold: float = 1 / 3, n_boot: int = 1000,
                       seed: int = 0, chunk: int = _CHUNK) -> dict[str, Any]:
    """Fraction of samples whose nearest training point is much closer than the second nearest.

    A sample is memorized if d1/d2 < ``threshold`` (1/3 by convention), d1, d2 its distances to
    the nearest and second-nearest training points. Returns the fraction and a percentile
    bootstrap 95% CI (``n_boot`` seeded resamples of the samples).

    >>> r = memorization_ratio([[0.0, 0.0], [0.5, 0.5]], [[0.0, 0.01], [1.0, 1.0], [-1.0, 1.0]], n_boot=50)
    >>> r["value"]
    0.5
    """
    x, t = _points(samples, "samples"), _points(train, "train")
    _same_dim(x, t, "samples", "train")
    if t.shape[0] < 2:
        raise ValueError("train must contain at least 2 points (nearest and second nearest)")
    threshold = check_positive_float(threshold, "threshold")
    n_boot = check_positive_int(n_boot, "n_boot")
    d = knn_distances(x, t, 2, chunk=chunk)
    ratio = d[:, 0] / d[:, 1].clamp_min(torch.finfo(torch.float64).tiny)
    ind = (ratio < threshold).to(torch.float64)
    lo, hi = _bootstrap_ci(ind, n_boot, seed)
    return {"value": float(ind.mean()), "ci95": (lo, hi), "threshold": threshold, "n": int(x.shape[0]),
            "n_boot": n_boot, "seed": seed}


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / max(x.shape[0] - 1, 1)
    return mu, cov


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(x: Any, y: Any) -> float:
    """Fréchet distance ||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2) (squared
    units, as FID) between Gaussian fits of two samples; symmetric eigendecompositions only, so
    singular covariances (few samples) do not break it.

    >>> round(frechet_distance([[0.0], [2.0]], [[1.0], [3.0]]), 6)
    1.0
    """
    a, b = _points(x, "x"), _points(y, "y")
    _same_dim(a, b, "x", "y")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("x and y need at least 2 points each for a covariance")
    mu1, s1 = _mean_cov(a)
    mu2, s2 = _mean_cov(b)
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    val = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_cross
    return float(val.clamp_min(0))


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, *, max_points: int = 1000, seed: int = 0) -> float:
    """Median heuristic: median pairwise distance of the pooled sample (a seeded subsample of at
    most ``max_points`` points), distinct pairs only."""
    z = torch.cat([x, y])
    if z.shape[0] > max_points:
        g = torch.Generator().manual_seed(derive_seed(seed, 22) % (2**63))
        z = z[torch.randperm(z.shape[0], generator=g)[:max_points]]
    d = torch.pdist(z)
    h = float(d.quantile(0.5)) if d.numel() else 1.0  # interpolated median, as numpy
    return h if h > 0 else 1.0


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, gamma: float, chunk: int, same: bool) -> float:
    tot = math.fsum(
        float(torch.exp(-gamma * torch.cdist(a[i:i + chunk], b[j:j + chunk]).pow(2)).sum())
        for i in range(0, a.shape[0], chunk)
        for j in range(0, b.shape[0], chunk)
    )
    return tot - (a.shape[0] if same else 0.0)  # k(x, x) = 1 on the diagonal


def mmd_rbf(x: Any, y: Any, *, bandwidth: float | None = None, seed: int = 0, chunk: int = _CHUNK) -> dict[str, float]:
    """Unbiased MMD^2 with k(a, b) = exp(-||a - b||^2 / (2 h^2)).

    ``bandwidth`` h defaults to the median heuristic (median pairwise distance of the pooled
    samples, seeded subsample of <= 1000 points).

    >>> r = mmd_rbf([[0.0], [1.0]], [[10.0], [11.0]], bandwidth=1.0)  # 2 exp(-1/2) - 2 k_xy, k_xy ~ 0
    >>> round(r["mmd2"], 6)
    1.213061
    """
    a, b = _points(x, "x"), _points(y, "y")
    _same_dim(a, b, "x", "y")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("x and y need at least 2 points each for the unbiased MMD")
    h = median_bandwidth(a, b, seed=seed) if bandwidth is None else check_positive_float(bandwidth, "bandwidth")
    gamma = 1.0 / (2 * h * h)
    n, m = a.shape[0], b.shape[0]
    kxx = _kernel_sum(a, a, gamma, chunk, True) / (n * (n - 1))
    kyy = _kernel_sum(b, b, gamma, chunk, True) / (m * (m - 1))
    kxy = _kernel_sum(a, b, gamma, chunk, False) / (n * m)
    return {"mmd2": kxx + kyy - 2 * kxy, "bandwidth": h}


def _poly_sum(a: torch.Tensor, b: torch.Tensor, gamma: float, coef: float, degree: int, chunk: int) -> float:
    """sum_ij (gamma a_i . b_j + coef)^degree in (chunk x chunk) blocks, exactly summed across blocks."""
    return math.fsum(
        float((gamma * (a[i:i + chunk] @ b[j:j + chunk].T) + coef).pow(degree).sum())
        for i in range(0, a.shape[0], chunk)
        for j in range(0, b.shape[0], chunk)
    )


def kid(x: Any, y: Any, *, subset_size: int = 1000, subsets: int = 100, degree: int = 3, gamma: float | None = None,
        coef: float = 1, seed: int = 0, chunk: int = _CHUNK) -> dict[str, Any]:
    """Kernel inception distance (Bińkowski et al. 2018) between two samples, as torch-fidelity and
    torchmetrics define it: the unbiased MMD^2 with the polynomial kernel
    k(a, b) = (gamma a.b + coef)^degree (gamma = 1/d by default, so (a.b/d + 1)^3), computed on
    ``subsets`` random subsets of ``subset_size`` points drawn without replacement from each
    sample, averaged. ``kid_std`` is the standard deviation over subsets (divisor ``subsets``, as
    torch-fidelity; torchmetrics divides by ``subsets - 1``). One subset holding every point of
    two equal-size samples is the full unbiased estimator. Subsets are drawn from one generator
    seeded by ``seed``; kernel sums are chunked (no N x N matrix beyond ``chunk``).

    Here it sees whatever vectors it is given (flattened samples); for images scored as in the
    literature pass Inception features instead.

    With k = (ab + 1)^3 in 1-D: k_xx = k(1, 2) = 27, k_yy = k(0, 1) = 1 and the cross mean is
    (1 + 8 + 1 + 27) / 4 = 9.25, so KID = 27 + 1 - 2 * 9.25:

    >>> r = kid([[1.0], [2.0]], [[0.0], [1.0]], subset_size=2, subsets=1)
    >>> r["kid"], r["kid_std"]
    (9.5, 0.0)
    """
    a, b = _points(x, "x"), _points(y, "y")
    _same_dim(a, b, "x", "y")
    subset_size = check_positive_int(subset_size, "subset_size", minimum=2)
    subsets = check_positive_int(subsets, "subsets")
    degree = check_positive_int(degree, "degree")
    check_positive_int(chunk, "chunk")
    if subset_size > min(a.shape[0], b.shape[0]):
        raise ValueError(f"subset_size={subset_size} exceeds the smaller sample ({min(a.shape[0], b.shape[0])} points); "
                         "lower subset_size")
    d = a.shape[1]
    gamma = 1.0 / d if gamma is None else check_positive_float(gamma, "gamma")
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
        raise TypeError(f"coef must be a finite number, got {coef!r}")
    coef = float(coef)
    m = subset_size
    g = torch.Generator().manual_seed(derive_seed(seed, 24) % (2**63))
    vals = []
    for _ in range(subsets):
        xs = a[torch.randperm(a.shape[0], generator=g)[:m]]
        ys = b[torch.randperm(b.shape[0], generator=g)[:m]]
        kxx = _poly_sum(xs, xs, gamma, coef, degree, chunk) - math.fsum(
            (gamma * xs.pow(2).sum(1) + coef).pow(degree).tolist())
        kyy = _poly_sum(ys, ys, gamma, coef, degree, chunk) - math.fsum(
            (gamma * ys.pow(2).sum(1) + coef).pow(degree).tolist())
        kxy = _poly_sum(xs, ys, gamma, coef, degree, chunk)
        vals.append((kxx + kyy) / (m * (m - 1)) - 2 * kxy / (m * m))
    mean = math.fsum(vals) / subsets
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / subsets)
    return {"kid": mean, "kid_std": std, "subset_size": m, "subsets": subsets, "degree": degree, "gamma": gamma,
            "coef": coef, "seed": seed}


def prdc(real: Any, fake: Any, *, k: int = 5, chunk: int = _CHUNK) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` w.r.t. ``real`` (Naeem et al. 2020).

    With r_i the distance of real point i to its k-th nearest other real point and s_j likewise
    among fakes: precision = P_j[exists i: ||y_j - x_i|| < r_i], recall = P_i[exists j:
    ||x_i - y_j|| < s_j], density = (1/(k M)) sum_j #{i: ||y_j - x_i|| < r_i}, coverage =
    P_i[min_j ||x_i - y_j|| < r_i].

    >>> r = prdc([[0.0], [1.0], [2.0]], [[0.1], [5.0]], k=1)
    >>> r["precision"], r["coverage"]
    (0.5, 0.6666666666666666)
    """
    x, y = _points(real, "real"), _points(fake, "fake")
    _same_dim(x, y, "real", "fake")
    k = check_positive_int(k, "k")
    if x.shape[0] <= k or y.shape[0] <= k:
        raise ValueError(f"real and fake need more than k={k} points each")
    r = knn_distances(x, x, k, exclude_self=True, chunk=chunk)[:, -1]
    s = knn_distances(y, y, k, exclude_self=True, chunk=chunk)[:, -1]
    inside_cnt = torch.zeros(y.shape[0], dtype=torch.float64)
    for i in range(0, y.shape[0], chunk):
        yi = y[i:i + chunk]
        for j in range(0, x.shape[0], chunk):
            inside_cnt[i:i + chunk] += (torch.cdist(yi, x[j:j + chunk]) < r[None, j:j + chunk]).sum(1)
    recall_hit = torch.zeros(x.shape[0], dtype=torch.bool)
    for i in range(0, x.shape[0], chunk):
        xi = x[i:i + chunk]
        for j in range(0, y.shape[0], chunk):
            recall_hit[i:i + chunk] |= (torch.cdist(xi, y[j:j + chunk]) < s[None, j:j + chunk]).any(1)
    nn_fake = knn_distances(x, y, 1, chunk=chunk)[:, 0]
    return {
        "precision": float((inside_cnt > 0).to(torch.float64).mean()),
        "recall": float(recall_hit.to(torch.float64).mean()),
        "density": float(inside_cnt.sum() / (k * y.shape[0])),
        "coverage": float((nn_fake < r).to(torch.float64).mean()),
        "k": k,
    }


def _mann_whitney_u(a: torch.Tensor, b: torch.Tensor) -> float:
    """U = #{(i, j): a_i > b_j} + 1/2 #{ties}, via ranks of the pooled sample (O((n+m) log))."""
    from scipy.stats import rankdata

    pooled = np.concatenate([a.numpy(), b.numpy()])
    ranks = rankdata(pooled)
    n1 = a.shape[0]
    return float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)


def data_copying_ct(generated: Any, train: Any, test: Any, *, n_cells: int = 10, min_count: int = 20,
                    seed: int = 0, convention: str = "pfd", chunk: int = _CHUNK) -> dict[str, Any]:
    """Meehan, Chaudhuri & Dasgupta (2020) C_T data-copying statistic.

    The training set is partitioned into ``n_cells`` k-means cells (seeded); in each cell pi the
    distances to the nearest training point of the held-out ``test`` points (P_n) and of the
    ``generated`` samples (Q_m) are compared by a Mann-Whitney U test,
    Z_U(pi) = (U - n m / 2) / sqrt(n m (n + m + 1) / 12), U = #{(q, p): d(q) > d(p)} + ties / 2.
    C_T averages Z_U over cells holding at least ``min_count`` generated and one test sample,
    weighted by the test fraction P_n(pi). C_T << 0: samples sit closer to the training points
    than fresh data does (data copying); ~0: no copying; >> 0: underfitting.

    ``convention="pfd"`` (default) is the definition above: nearest training point over the
    whole training set, no continuity correction, cells with >= ``min_count`` generated samples.
    ``convention="meehan2020"`` follows the authors' released code instead: the nearest
    training point *within the cell*, a continuity correction (mean n m / 2 - 1/2), and cells
    with strictly more than ``min_count`` generated samples (their fraction rule Q_m(pi) > tau
    with tau = min_count / m). See docs/generalization.md for how far the two differ.

    >>> import torch
    >>> train = torch.linspace(-1, 1, 40).reshape(-1, 1)
    >>> copies = train.repeat(2, 1) + 1e-3
    >>> fresh = torch.linspace(-0.99, 0.99, 80).reshape(-1, 1)
    >>> data_copying_ct(copies, train, fresh, n_cells=2)["ct"] < -5
    True
    """
    from sklearn.cluster import KMeans

    q, t, p = _points(generated, "generated"), _points(train, "train"), _points(test, "test")
    _same_dim(q, t, "generated", "train")
    _same_dim(p, t, "test", "train")
    n_cells = check_positive_int(n_cells, "n_cells")
    min_count = check_positive_int(min_count, "min_count")
    if convention not in ("pfd", "meehan2020"):
        raise ValueError(f"convention must be 'pfd' or 'meehan2020', got {convention!r}")
    authors = convention == "meehan2020"
    if t.shape[0] < n_cells:
        raise ValueError(f"train has {t.shape[0]} points, fewer than n_cells={n_cells}")
    km = KMeans(n_clusters=n_cells, n_init=5, random_state=int(derive_seed(seed, 23) % (2**31))).fit(t.numpy())
    cq = torch.as_tensor(km.predict(q.numpy()))
    cp = torch.as_tensor(km.predict(p.numpy()))
    ct_cells = torch.as_tensor(km.labels_)
    if not authors:
        dq = knn_distances(q, t, 1, chunk=chunk)[:, 0]
        dp = knn_distances(p, t, 1, chunk=chunk)[:, 0]
    zs, ws, cells = [], [], []
    for c in range(n_cells):
        if authors:
            tc = t[ct_cells == c]
            a, b = q[cq == c], p[cp == c]
            a = knn_distances(a, tc, 1, chunk=chunk)[:, 0] if a.shape[0] else a[:, 0]
            b = knn_distances(b, tc, 1, chunk=chunk)[:, 0] if b.shape[0] else b[:, 0]
        else:
            a, b = dq[cq == c], dp[cp == c]
        m, n = a.shape[0], b.shape[0]
        if (m <= min_count if authors else m < min_count) or n < 1:
            continue
        u = _mann_whitney_u(a, b)
        z = (u - (m * n / 2 - (0.5 if authors else 0.0))) / math.sqrt(m * n * (m + n + 1) / 12)
        zs.append(z)
        ws.append(n / p.shape[0])
        cells.append({"cell": c, "n_generated": m, "n_test": n, "u": u, "z_u": z})
    if not zs:
        rule = "more than" if authors else ">="
        raise ValueError(f"no cell holds {rule} min_count={min_count} generated samples and a test sample")
    ct = float(np.dot(ws, zs) / np.sum(ws))
    return {"ct": ct, "n_cells": n_cells, "cells_used": len(zs), "min_count": min_count, "seed": seed,
            "convention": convention, "cells": cells}


def all_baselines(samples: Any, train: Any, test: Any, *, seed: int = 0, k: int = 5, n_cells: int = 10,
                  kid_subsets: int = 100, chunk: int = _CHUNK) -> dict[str, Any]:
    """Every baseline for one set of generated ``samples``: memorization ratio against ``train``;
    Fréchet distance, MMD^2, KID (``kid_subsets`` subsets of min(1000, n_samples, n_test) points)
    and PRDC against the held-out ``test`` samples of the data; C_T with min(n_cells, N // 2)
    k-means cells of the N training points."""
    mr = memorization_ratio(samples, train, seed=seed, chunk=chunk)
    mmd = mmd_rbf(samples, test, seed=seed, chunk=chunk)
    xs, ts = _points(samples, "samples"), _points(test, "test")
    kd = kid(xs, ts, subset_size=min(1000, xs.shape[0], ts.shape[0]), subsets=kid_subsets, seed=seed, chunk=chunk)
    out: dict[str, Any] = {
        "memorization_ratio": mr["value"],
        "memorization_ratio_ci95": mr["ci95"],
        "frechet": frechet_distance(samples, test),
        "mmd2": mmd["mmd2"],
        "mmd_bandwidth": mmd["bandwidth"],
        "kid": kd["kid"],
        "kid_std": kd["kid_std"],
    }
    out.update({kk: v for kk, v in prdc(test, samples, k=k, chunk=chunk).items() if kk != "k"})
    n_train = _points(train, "train").shape[0]
    cells = max(1, min(n_cells, n_train // 2))  # k-means needs at least as many points as cells
    out["ct"] = data_copying_ct(samples, train, test, n_cells=cells, seed=seed, chunk=chunk)["ct"]
    out["ct_cells"] = cells
    return out
