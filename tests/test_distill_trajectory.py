"""K-segment trajectory students: structure, exact training pairs, training, use with pfd.distance,
and the reduced stability-grid benchmark."""

import math
from pathlib import Path

import pytest
import torch
from _scripts import load_script

import pfd
from pfd.analytic import exact_map
from pfd.distill import TRAJECTORY_TRAIN as TRAIN
from pfd.distill import ExactFlowMap, TrajectoryStudent, exact_pairs, train_trajectory_student
from pfd.schedules import get_process

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gmm():
    return pfd.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1])


def test_untrained_student_is_identity_and_composes(gmm):
    grid = pfd.stability.make_time_grid("logsnr", 3, 0.05, 2.0, gmm)
    st = TrajectoryStudent(grid, 1, width=16, seed=0)
    x = torch.randn(5, 1)
    torch.testing.assert_close(st(x), x)
    with torch.no_grad():
        for p in st.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        seq = x
        for j in range(3):
            seq = st.segment(j, seq)
        torch.testing.assert_close(st(x), seq)
        batched = st.segments_forward(torch.stack([x, x + 1, x - 1]))
        torch.testing.assert_close(batched[1], st.segment(1, x + 1))
    assert st.K == 3 and st.n_params == 3 * (1 * 16 + 16 + 16 * 16 + 16 + 16 * 1 + 1)


def test_exact_pairs(gmm):
    grid = pfd.stability.make_time_grid("uniform", 2, 0.05, 2.0, gmm)
    X, Y = exact_pairs(gmm, grid, 4000, seed=3)
    assert X.shape == Y.shape == (2, 4000, 1)
    torch.testing.assert_close(Y[1], exact_map(gmm, X[1], float(grid[1]), float(grid[2])))
    ou = get_process("ou")
    for j in range(2):  # X[j] ~ p_{t_j}: variance alpha^2 Var(X0) + sigma^2
        t = float(grid[j])
        var = ou.alpha(t) ** 2 * float(gmm.covariance()[0, 0]) + ou.sigma(t) ** 2
        assert abs(float(X[j].var()) / var - 1) < 0.06
        assert abs(float(X[j].mean())) < 4 * math.sqrt(var / 4000)


def test_training_beats_identity_and_scores_with_pfd_distance(gmm):
    T, delta = 2.0, 0.05
    grid = pfd.stability.make_time_grid("balanced-sum", 2, delta, T, gmm)
    student, hist = train_trajectory_student(gmm, grid, n_train=2048, seed=0, config=TRAIN.replace(train_steps=300, width=32))
    assert hist["params"] == student.n_params and len(hist["final_loss_per_segment"]) == 2
    ref = ExactFlowMap(gmm, delta, T)
    z = pfd.canonical_noise(512, (1,), seed=0)
    y = ref(z)
    y_student = student.as_map()(z)
    rel = float(((y_student - y) ** 2).sum() / (y**2).sum())
    rel_identity = float(((get_process("ou").sigma(T) * z - y) ** 2).sum() / (y**2).sum())
    assert rel < 0.05 < rel_identity
    res = pfd.distance(student.as_map(), ref, n=512, progress=False)
    assert abs(res.value - math.sqrt(float(((y_student - y) ** 2).sum(1).mean()))) < 1e-10
    desc = student.as_map().describe()
    assert desc["student_kind"] == "trajectory" and desc["K"] == 2 and desc["nfe"] == 2
    assert res.provenance is not None


def test_time_conditioned_shared_student(gmm):
    grid = pfd.stability.make_time_grid("edm", 4, 0.05, 2.0, gmm)
    student, _ = train_trajectory_student(gmm, grid, n_train=1024, time_conditioned=True, seed=1,
                                          config=TRAIN.replace(train_steps=200, width=32))
    assert student.time_conditioned and student.weights[0].shape[0] == 1
    X, Y = exact_pairs(gmm, grid, 512, seed=7)
    with torch.no_grad():
        err = float(((student.segments_forward(X).double() - Y) ** 2).mean())
    assert err < 0.75 * float(((X - Y) ** 2).mean())  # (the identity map's error)


def test_reduced_stability_benchmark():
    """One mixture, K = 8, two grids, tiny budget: the benchmark pipeline end to end, in seconds."""
    mod = load_script("benchmarks/stability_grid.py")
    config = {"t_max": 3.0, "t_min": 0.01, "process": "ou", "mixtures": ["1d-2mode-narrow"], "Ks": [8],
              "grids": ["uniform", "balanced-sum"], "seeds": [0, 1], "steps": 80, "batch_size": 128, "n_train": 256,
              "hidden": 32, "depth": 2, "lr": 2e-3, "n_test": 512, "n_local": 256, "local_Ks": [8]}
    rep = mod.run(config)
    rows = {r["grid"]: r for r in rep["rows"]}
    assert set(rows) == {"uniform", "balanced-sum"}
    for r in rows.values():
        assert len(r["rel_mse"]) == 2 and all(0 < v < 1 for v in r["rel_mse"])
    red = rows["balanced-sum"]["reduction_vs_uniform_pct"]
    assert abs(red - 100 * (1 - rows["balanced-sum"]["mean"] / rows["uniform"]["mean"])) < 1e-9
    assert rows["uniform"]["reduction_vs_uniform_pct"] == 0.0
    # the balanced grid equalises the per-segment amplification; uniform-t does not
    assert rows["balanced-sum"]["max_amplification"] < rows["uniform"]["max_amplification"]
    for e in rep["local_errors"]:  # the Groenwall bound dominates the measured error
        assert e["end_to_end_rms"] <= e["bound_sum"]


def test_bad_input(gmm):
    with pytest.raises(ValueError, match="strictly decreasing"):
        TrajectoryStudent([0.1, 0.5, 1.0], 1)
    with pytest.raises(ValueError, match="K \\+ 1 >= 2"):
        TrajectoryStudent([1.0], 1)
    with pytest.raises(TypeError, match="grid must be"):
        TrajectoryStudent("grid", 1)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        TrajectoryStudent([1.0, 0.1], 0)
    with pytest.raises(TypeError, match="time_conditioned must be a bool"):
        TrajectoryStudent([1.0, 0.1], 1, time_conditioned=1)
    st = TrajectoryStudent([1.0, 0.1], 1)
    with pytest.raises(ValueError, match="segment index"):
        st.segment(1, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="noise z must be"):
        st.as_map()(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="pairs must be"):
        train_trajectory_student(gmm, [1.0, 0.5, 0.1], pairs=(torch.zeros(1, 4, 1), torch.zeros(1, 4, 1)),
                                 config=TRAIN.replace(train_steps=1))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_trajectory_student(gmm, [1.0, 0.1], config=TRAIN.replace(train_steps=0))
    with pytest.raises(ValueError, match="t_min must be < t_max"):
        ExactFlowMap(gmm, 1.0, 0.1)


def test_plateau_stopping_restores_best_weights(one_thread):
    """plateau=True: a single Gaussian's exact segment maps are linear, so every segment learns them fast
    and plateaus well before the cap; the returned weights are the best validated ones."""
    g1 = pfd.GaussianMixture([1.0], [[0.5]], [0.3])
    grid = [2.0, 1.0, 0.3]
    cfg = TRAIN.replace(train_steps=3000, width=16, batch_size=64, progress=False)
    st, hist = train_trajectory_student(g1, grid, n_train=512, seed=0, plateau=True, eval_every=20, patience=3,
                                        rel_tol=0.05, n_val=256, config=cfg)
    assert hist["steps_used"] < 3000 and all(hist["plateaued"]) and max(hist["stop_step"]) == hist["steps_used"]
    val = exact_pairs(g1, grid, 256, seed=pfd.noise.derive_seed(0, 0x7A1D))
    with torch.no_grad():
        mse = ((st.segments_forward(val[0].float()).double() - val[1]) ** 2).sum(2).mean(1)
    torch.testing.assert_close(mse, torch.tensor(hist["val_loss_per_segment"], dtype=F64), rtol=1e-6, atol=1e-9)
    identity = ((val[0] - val[1]) ** 2).sum(2).mean(1)
    assert bool((mse < 0.05 * identity).all())
    # time-conditioned: one shared net, one stopping decision for all segments
    _, h_tc = train_trajectory_student(g1, grid, n_train=512, seed=0, time_conditioned=True, plateau=True,
                                       eval_every=20, patience=3, rel_tol=0.05, n_val=256, config=cfg)
    assert len(h_tc["stop_step"]) == 1 and h_tc["steps_used"] < 3000
    # without plateau the cap is the budget and no stopping keys appear
    _, h0 = train_trajectory_student(g1, grid, n_train=256, seed=0,
                                     config=TRAIN.replace(train_steps=30, width=8, progress=False))
    assert "steps_used" not in h0
    with pytest.raises(TypeError, match="plateau must be a bool"):
        train_trajectory_student(g1, grid, plateau=1, config=TRAIN.replace(train_steps=5))
    with pytest.raises(ValueError, match="eval_every must be >= 1"):
        train_trajectory_student(g1, grid, plateau=True, eval_every=0, config=TRAIN.replace(train_steps=5))
