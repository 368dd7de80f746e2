"""DSM students, the resumable MtoG sweep and training dynamics (tiny CPU runs)."""

import json
import math

import numpy as np
import pytest
import torch

import pfd
from pfd.analysis import (
    DenoiserMLP,
    DSMTrainer,
    TrainConfig,
    collapse_scan,
    detect_features,
    dsm_loss,
    fit_logistic,
    mtog_scaling,
    training_dynamics,
)
from pfd.analysis._runs import epochs_for_steps
from pfd.analytic.teachers import get_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def teacher():
    return pfd.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.05, 0.05])


# ---------------------------------------------------------------- students
def test_denoiser_preconditioning_and_param_count():
    net = DenoiserMLP(3, width=8, depth=2, sigma_data=0.5)
    assert net.n_params == (3 + 16) * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3
    with torch.no_grad():
        net.net[-1].weight.zero_()
        net.net[-1].bias.zero_()
    x = torch.randn(5, 3)
    sigma = torch.tensor([0.01, 0.1, 0.5, 2.0, 80.0])
    # F = 0  =>  D = c_skip x = s_d^2 / (sigma^2 + s_d^2) x
    expected = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(net(x, sigma), expected[:, None] * x)


def test_dsm_training_is_seeded_and_lowers_the_loss(teacher):
    data = teacher.sample(64, seed=1)
    a = DSMTrainer(data, width=32, depth=2, seed=3)
    b = DSMTrainer(data, width=32, depth=2, seed=3)
    emp = pfd.GaussianMixture.empirical(data)

    class Optimal:  # the empirical denoiser minimises the DSM loss on the training set
        sigma_data = a.model.sigma_data

        def __call__(self, x, sigma):
            return emp.denoiser(x.double(), sigma.double()).float()

    g = torch.Generator().manual_seed(0)
    y = data.float().repeat(16, 1)
    sig = (-1.2 + 1.2 * torch.randn(y.shape[0], generator=g)).exp()
    eps = torch.randn(y.shape, generator=g)
    with torch.no_grad():
        floor = float(dsm_loss(Optimal(), y, sig, eps))
        before = float(dsm_loss(a.model, y, sig, eps))
    la, lb = a.train(300), b.train(300)
    assert la == lb
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    with torch.no_grad():
        after = float(dsm_loss(a.model, y, sig, eps))
    assert floor < after < before
    assert after - floor < 0.6 * (before - floor)  # a large part of the excess loss is gone
    assert a.step == 300  # N = 64 < batch 256: one full-batch step per epoch


def test_checkpoint_resume_is_bit_identical(teacher, tmp_path):
    data = teacher.sample(300, seed=2)  # 300 > batch 256: one step per epoch, 44 points dropped per epoch
    full = DSMTrainer(data, width=16, depth=2, seed=5)
    full.train(6)
    part = DSMTrainer(data, width=16, depth=2, seed=5)
    part.train(3)
    part.save(tmp_path / "ck.pt")
    resumed = DSMTrainer(data, width=16, depth=2, seed=5)
    resumed.load(tmp_path / "ck.pt")
    resumed.train(3)
    assert resumed.epoch == 6 and resumed.step == full.step
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="does not match the model"):
        DSMTrainer(data, width=8, depth=2, seed=5).load(tmp_path / "ck.pt")


def test_trained_student_moves_towards_the_data(teacher):
    data = teacher.sample(512, seed=4)
    tr = DSMTrainer(data, width=64, depth=3, seed=0, lr=3e-3)
    z = pfd.canonical_noise(256, (2,), seed=9)
    untrained = pfd.distance(tr.ode_map(), teacher.ode_map(), noise=z, progress=False).value
    tr.train(epochs_for_steps(512, 256, 400))
    trained = pfd.distance(tr.ode_map(), teacher.ode_map(), noise=z, progress=False).value
    assert trained < 0.7 * untrained


def test_student_bad_input():
    with pytest.raises(ValueError, match="data must be a \\(N, dim\\) tensor"):
        DSMTrainer(torch.zeros(5))
    with pytest.raises(ValueError, match="data must be finite"):
        DSMTrainer(torch.tensor([[float("nan")]]))
    with pytest.raises(TypeError, match="width must be an int"):
        DenoiserMLP(2, width=2.5)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        DSMTrainer(torch.zeros(4, 2), lr=0.0)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        DSMTrainer(torch.zeros(4, 2)).train(0)
    with pytest.raises(ValueError, match="teacher must be one of"):
        get_teacher("nope")


# ---------------------------------------------------------------- fits
def test_fit_logistic_recovers_a_step():
    x = np.linspace(1, 11, 11)
    y = 0.3 + 1.2 / (1 + np.exp((x - 5.5) / 0.9))
    f = fit_logistic(x, y)
    assert f["x0"] == pytest.approx(5.5, abs=1e-5) and f["w"] == pytest.approx(0.9, abs=1e-5)
    assert f["r2"] == pytest.approx(1.0, abs=1e-9)
    rising = fit_logistic(x, 1.5 - y)
    assert rising["x0"] == pytest.approx(5.5, abs=1e-5)
    assert fit_logistic([1, 2, 3], [1, 2, 3]) is None
    pinned = fit_logistic(x, 1.0 - 0.7 / (1 + np.exp((x - 4.0) / 0.8)), fix_b=1.0)
    assert pinned["b"] == 1.0 and pinned["a"] == pytest.approx(-0.7, abs=1e-6)
    assert pinned["x0"] == pytest.approx(4.0, abs=1e-5)


def test_collapse_scan_finds_the_planted_exponent():
    runs = []
    for p in (1_000, 10_000, 100_000):
        for k in range(2, 14):
            u = k - 0.7 * math.log2(p)
            for field in ("e_gen",):
                runs.append({"width": p, "n_params": p, "n_train": 2**k, "seed": 0,
                             field: 0.4 + 1.0 / (1 + math.exp((u + 3.0) / 0.8))})
    c = collapse_scan(runs, "e_gen")
    assert c["best_alpha"] == pytest.approx(0.7, abs=1e-9)
    assert c["best_residual"] < 1e-8 < c["residual_log2N"]
    assert c["residual_log2N_over_sqrt_params"] > c["best_residual"]


# ---------------------------------------------------------------- resumable sweep
def _sweep(teacher, path, on_run=None):
    return mtog_scaling(teacher, [2, 4, 8, 16], [4, 8], [0], out=path,
                        config=TrainConfig(depth=1, train_steps=3, n_eval=64, progress=False), on_run=on_run)


def test_mtog_sweep_resumes_after_interruption(teacher, tmp_path):
    reference = _sweep(teacher, tmp_path / "ref.jsonl")
    assert len(reference["runs"]) == 8
    path = tmp_path / "runs.jsonl"
    done = []

    def crash_after_three(rec):
        done.append(rec)
        if len(done) == 3:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        _sweep(teacher, path, crash_after_three)
    assert len(path.read_text().splitlines()) == 3
    with path.open("a") as fh:  # a crash mid-write leaves a truncated last line
        fh.write('{"n_train": 16, "width"')
    again = []
    res = _sweep(teacher, path, again.append)
    assert len(again) == 5  # only the missing runs were trained
    keys = [(r["n_train"], r["width"], r["seed"]) for r in map(json.loads, path.read_text().splitlines()[:3])]
    keys += [(r["n_train"], r["width"], r["seed"]) for r in again]
    assert len(set(keys)) == 8  # nothing lost, nothing duplicated
    # the resumed sweep equals the uninterrupted one run for run (everything is seeded)
    for a, b in zip(res["runs"], reference["runs"], strict=True):
        assert (a["n_train"], a["width"], a["e_gen"], a["e_mem"]) == (b["n_train"], b["width"], b["e_gen"], b["e_mem"])
    assert {t["width"] for t in res["transitions"]["e_gen"]} == {4, 8}
    assert res["collapse"]["e_gen"]["best_alpha"] is not None


def test_mtog_bad_input(teacher, tmp_path):
    with pytest.raises(TypeError, match=r"teacher must be a pfd\.GaussianMixture"):
        mtog_scaling(lambda z: z, [2], [4], out=tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="n_trains entry must be >= 2"):
        mtog_scaling(teacher, [1], [4], out=tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="must be non-empty"):
        mtog_scaling(teacher, [2], [4], [], out=tmp_path / "x.jsonl")


# ---------------------------------------------------------------- dynamics
def test_detect_features_on_planted_curves():
    ep = list(range(12))
    early = [3.0, 2.0, 1.2, 1.0, 1.1, 1.3, 1.5, 1.6, 1.7, 1.75, 1.8, 1.82]
    f = detect_features(ep, early, tol=0.05)
    assert f["minimum"]["epoch"] == 3 and f["minimum"]["early"]
    assert f["minimum"]["rise_after"] == pytest.approx(0.82)
    assert f["double_descent"] == []
    dd = [3.0, 2.0, 1.5, 1.6, 1.9, 2.0, 1.8, 1.4, 1.2, 1.1, 1.05, 1.0]
    g = detect_features(ep, dd, tol=0.05)
    assert not g["minimum"]["early"]
    (ep_dd,) = g["double_descent"]
    assert (ep_dd["first_min_epoch"], ep_dd["peak_epoch"], ep_dd["second_min_epoch"]) == (2, 5, 11)
    assert ep_dd["rise"] == pytest.approx(0.5) and ep_dd["second_descent"] == pytest.approx(1.0)
    # wiggles below the tolerance are not features
    noisy = [1.0 - 0.01 * i + (0.004 if i % 2 else 0.0) for i in range(12)]
    h = detect_features(ep, noisy, tol=0.02)
    assert h["double_descent"] == [] and not h["minimum"]["early"]
    with pytest.raises(ValueError, match="equal, non-zero length"):
        detect_features([1, 2], [1.0])
    with pytest.raises(ValueError, match="tol must be >= 0"):
        detect_features([1], [1.0], tol=-1)


def test_training_dynamics_rows_shared_noise_and_resume(teacher, tmp_path):
    kw = {"eval_every": 2, "n_heldout": 32, "config": TrainConfig(width=16, depth=2, n_eval=64, progress=False)}
    full = training_dynamics(teacher, 8, epochs=6, **kw)
    assert [r["epoch"] for r in full["rows"]] == [0, 2, 4, 6]
    assert all(r["e_gen"] > 0 and r["e_mem"] > 0 and r["train_loss"] > 0 for r in full["rows"])
    assert full["features"]["tol"] == pytest.approx(2 * max(r["e_gen_stderr"] for r in full["rows"]))
    ck = tmp_path / "dyn.pt"
    training_dynamics(teacher, 8, epochs=4, checkpoint=ck, **kw)
    resumed = training_dynamics(teacher, 8, epochs=6, checkpoint=ck, **kw)
    assert [r["e_gen"] for r in resumed["rows"]] == [r["e_gen"] for r in full["rows"]]
    assert [r["heldout_loss"] for r in resumed["rows"]] == [r["heldout_loss"] for r in full["rows"]]
    with pytest.raises(ValueError, match="eval_every must be >= 1"):
        training_dynamics(teacher, 8, epochs=2, eval_every=0)


def test_ema_is_evaluated_checkpointed_and_validated(teacher, tmp_path):
    data = teacher.sample(32, seed=1)
    tr = DSMTrainer(data, width=8, depth=1, seed=0, ema=0.9)
    tr.train(5)
    assert tr.ode_map().denoiser is tr.ema_model
    assert not all(torch.equal(p, q) for p, q in zip(tr.model.parameters(), tr.ema_model.parameters(), strict=True))
    raw = DSMTrainer(data, width=8, depth=1, seed=0, ema=None)
    raw.train(5)
    assert raw.ode_map().denoiser is raw.model
    # the raw weights do not depend on the EMA
    assert all(torch.equal(p, q) for p, q in zip(tr.model.parameters(), raw.model.parameters(), strict=True))
    tr.save(tmp_path / "e.pt")
    with pytest.raises(ValueError, match="ema"):
        raw.load(tmp_path / "e.pt")
    with pytest.raises(ValueError, match=r"ema must be a decay in \[0, 1\)"):
        DSMTrainer(data, ema=1.5)
