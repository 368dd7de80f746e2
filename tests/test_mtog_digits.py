"""Ensemble students, the keyed MtoG sweep on the digits teacher, and its bootstrap fits."""

import math

import numpy as np
import pytest
import torch

import pfd
from pfd.analysis.mtog import half_octaves, mtog_sweep, parse_size, transition_fits
from pfd.analysis.students import EnsembleDenoiser, EnsembleDSMTrainer


def _synthetic(alpha, *, seeds=5, noise=0.05, seed=0):
    """Curves with a known collapse exponent: E = 2 + 3 / (1 + exp((log2 N - alpha log2|θ| - c_s) / 0.7))."""
    rng = np.random.default_rng(seed)
    runs, true = [], {}
    shifts = rng.normal(0, 0.2, size=seeds)  # a seed's training sets shift every size alike
    for p in (3e3, 3e4, 3e5, 3e6):
        x0 = 6.0 + alpha * (math.log2(p) - math.log2(3e4))
        true[int(p)] = 2.0**x0
        for s in range(seeds):
            shift = shifts[s] + rng.normal(0, 0.05)
            for n in half_octaves(8, 2048):
                e = 2 + 3 / (1 + math.exp((math.log2(n) - x0 - shift) / 0.7)) + rng.normal(0, noise)
                runs.append({"size": f"s{p:g}", "n_params": int(p), "seed": s, "n_train": n, "e_gen": e})
    return runs, true


@pytest.mark.parametrize("alpha", [0.5, 0.0])
def test_bootstrap_recovers_known_collapse_exponent(alpha):
    runs, true = _synthetic(alpha)
    res = transition_fits(runs, n_boot=30)
    lo, hi = res["collapse"]["alpha_ci95"]
    assert lo <= alpha <= hi and hi - lo < 0.5
    other = 0.5 - alpha  # the other hypothesis (0 or 1/2) is excluded
    assert not lo <= other <= hi
    assert res["collapse"]["alpha"] == pytest.approx(alpha, abs=0.05)
    for t in res["transitions"]:
        a, b = t["n_star_ci95"]
        assert a <= t["n_star"] <= b
        assert t["n_star"] == pytest.approx(true[t["params"]], rel=0.25)


def test_bootstrap_ci_widens_with_noise():
    narrow = transition_fits(_synthetic(0.5, noise=0.02)[0], n_boot=30)["collapse"]["alpha_ci95"]
    wide = transition_fits(_synthetic(0.5, noise=0.3)[0], n_boot=30)["collapse"]["alpha_ci95"]
    assert wide[1] - wide[0] > narrow[1] - narrow[0]


def test_ensemble_members_are_independent_networks(one_thread):
    ens = EnsembleDenoiser((1, 4, 4), arch="mlp", width=8, depth=2, seeds=[3, 4])
    solo = EnsembleDenoiser((1, 4, 4), arch="mlp", width=8, depth=2, seeds=[4])
    # member 1 of the pair is the network seeded 4 alone: same weights, same outputs
    x, s = torch.randn(5, 1, 4, 4), torch.rand(5) + 0.1
    torch.testing.assert_close(ens.member(1)(x, s), solo.member(0)(x, s))
    # |theta| by hand: (16 + 16) x 8 + 8, 8 x 8 + 8, 8 x 16 + 16
    assert ens.n_params_per_member == 32 * 8 + 8 + 8 * 8 + 8 + 8 * 16 + 16
    # the loss of member 0 has no gradient in member 1's weights
    out = ens(torch.randn(2, 3, 1, 4, 4), torch.ones(2, 3))
    out[0].sum().backward()
    assert all(float(p.grad[1].abs().max()) == 0.0 for p in ens.parameters())
    assert all(float(p.grad[0].abs().max()) > 0.0 for p in ens.parameters())
    conv = EnsembleDenoiser((1, 4, 4), arch="conv", width=4, depth=1, seeds=[0, 1])
    assert conv(torch.zeros(2, 3, 1, 4, 4), torch.ones(2, 3)).shape == (2, 3, 1, 4, 4)
    with pytest.raises(ValueError, match="arch"):
        EnsembleDenoiser((4,), arch="conv")
    with pytest.raises(ValueError, match="size"):
        parse_size("mlp:64")


def test_resmlp_member_matches_a_hand_written_forward(one_thread):
    import math

    ens = EnsembleDenoiser((1, 4, 4), arch="resmlp", width=8, depth=2, seeds=[3, 4], sigma_data=[0.5, 0.7])
    assert parse_size("resmlp:8:2") == {"arch": "resmlp", "width": 8, "depth": 2, "label": "resmlp:8:2"}
    # |theta| by hand: in (16 + 16) x 8 + 8; per block 8 x 8 + 8 + 2 x 16 x 8; out 16 x 8 + 8 x 16 + 16
    assert ens.n_params_per_member == 32 * 8 + 8 + 2 * (64 + 8 + 256) + 16 * 8 + 8 * 16 + 16
    with torch.no_grad():  # the scales start at 0; give them values so the test sees them
        for es in ens.emb_s:
            es.normal_(0, 0.3)
    x, sig = torch.randn(5, 1, 4, 4), torch.rand(5) * 3 + 0.05
    r, sd = 1, 0.7
    silu = torch.nn.functional.silu
    ang = torch.log(sig)[:, None] / 4 * torch.arange(1, 9) * math.pi / 2
    emb = torch.cat([ang.sin(), ang.cos()], 1)
    c_in = 1 / torch.sqrt(sig**2 + sd**2)
    h = torch.cat([c_in[:, None] * x.reshape(5, 16), emb], 1) @ ens.w_in[r] + ens.b_in[r]
    for w, b, e, sc in zip(ens.weights, ens.biases, ens.emb_w, ens.emb_s, strict=False):
        h = h + (silu(h) * (1 + emb @ sc[r])) @ w[r] + b[r] + emb @ e[r]
    f = (silu(h) * (1 + emb @ ens.emb_s[-1][r])) @ ens.w_out[r] + ens.b_out[r]
    d = (sd**2 / (sig**2 + sd**2))[:, None] * x.reshape(5, 16) + (sig * sd / torch.sqrt(sig**2 + sd**2))[:, None] * f
    torch.testing.assert_close(ens.member(r)(x, sig).reshape(5, 16), d)
    out = ens(torch.randn(2, 3, 1, 4, 4), torch.ones(2, 3))
    out[0].sum().backward()
    assert all(float(p.grad[1].abs().max()) == 0.0 for p in ens.parameters())
    assert all(float(p.grad[0].abs().max()) > 0.0 for p in ens.parameters())


def test_plateau_rule_stops_and_records_steps(one_thread):
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)]
    # tol = 1 can never be met: every check is "no improvement", so the rule must fire at min_steps
    tr = EnsembleDSMTrainer(data, [0, 1], width=8, depth=1, check_every=10, patience=1, tol=1.0, max_decays=1,
                            min_steps=30, max_steps=1000)
    stats = tr.train()
    assert [s["stopped_by"] for s in stats] == ["plateau", "plateau"]
    assert [s["steps"] for s in stats] == [40, 40] and [s["lr_decays"] for s in stats] == [1, 1]
    tr2 = EnsembleDSMTrainer(data, [0, 1], width=8, depth=1, check_every=10, max_steps=25)
    assert {s["stopped_by"] for s in tr2.train()} == {"cap"}


def test_digits_sweep_smoke_keyed_resume(tmp_path, one_thread):
    out = tmp_path / "runs.jsonl"
    units = []
    kw = {"train": {"max_steps": 60, "min_steps": 20, "check_every": 20, "n_check": 64}, "n_eval": 64,
          "progress": False, "n_boot": 5, "on_unit": units.append}
    res = mtog_sweep("digits", [8, 16], ["mlp:8:1", "mlp:16:1"], [0, 1], out=out, **kw)
    assert res["complete"] and len(res["runs"]) == 8 and len(units) == 2
    teacher = pfd.analytic.digits_teacher()
    for r in res["runs"]:
        assert math.isfinite(r["e_gen"]) and math.isfinite(r["e_mem"]) and r["steps"] == 60
        assert r["e_gen_rel"] == pytest.approx(r["e_gen"] / r["e_gen_empirical"])
        # E_mem split into same-basin and switched-basin parts, exactly
        assert r["e_mem"] ** 2 == pytest.approx(r["e_mem_same_basin"] ** 2 + r["e_mem_switched"] ** 2, rel=1e-9)
        assert 0.0 <= r["basin_agreement"] <= 1.0 and 0.0 <= r["copy_fraction"] <= 1.0
    # the memorizer's E_gen equals an independent computation on the same noise
    from pfd.analysis._runs import train_set

    r0 = next(r for r in res["runs"] if r["n_train"] == 8 and r["seed"] == 1)
    emp = pfd.GaussianMixture.empirical(train_set(teacher, 8, 1))
    ref = pfd.distance(emp.ode_map(), teacher.ode_map(), n=64, seed=0, progress=False).value
    assert r0["e_gen_empirical"] == pytest.approx(ref, rel=1e-6)
    # same settings: nothing retrained; other settings: nothing reused
    mtog_sweep("digits", [8, 16], ["mlp:8:1", "mlp:16:1"], [0, 1], out=out, **kw)
    assert len(units) == 2
    # target="sample" is the default: the same runs; "posterior" is another setting
    mtog_sweep("digits", [8, 16], ["mlp:8:1"], [0, 1], out=out, **{**kw, "train": {**kw["train"], "target": "sample"}})
    assert len(units) == 2
    with pytest.raises(ValueError, match="unknown setting"):
        mtog_sweep("digits", [8, 16], ["mlp:8:1"], [0, 1], out=out, **{**kw, "train": {"targt": "posterior"}})
    kw["train"] = {**kw["train"], "lr": 1e-3}
    res2 = mtog_sweep("digits", [8, 16], ["mlp:8:1"], [0, 1], out=out, **kw)
    assert len(units) == 3 and {r["key"] for r in res2["runs"]}.isdisjoint({r["key"] for r in res["runs"]})


def test_wall_budget_checkpoints_and_rerun_continues_bit_for_bit(tmp_path, one_thread, monkeypatch):
    import itertools
    import time

    kw = {"train": {"max_steps": 120, "min_steps": 120, "check_every": 20, "n_check": 64}, "n_eval": 64,
          "progress": False, "n_boot": 5}
    ref = mtog_sweep("digits", [8, 16], ["mlp:8:1"], [0], out=tmp_path / "ref.jsonl", **kw)
    out = tmp_path / "w.jsonl"
    # a clock that advances one second per reading: the trainer reads it once per step, so a wall
    # budget of 50 s stops the unit part-way (after checkpoints every 15 s) at a reproducible step
    clock = itertools.count()
    with monkeypatch.context() as m:
        m.setattr(time, "monotonic", lambda: float(next(clock)))
        part = mtog_sweep("digits", [8, 16], ["mlp:8:1"], [0], out=out, wall_budget=50.0, checkpoint_every=15.0, **kw)
    assert part["runs"] == [] and not part["complete"] and part["pending"] == ["mlp:8:1"]
    (ckpt,) = (tmp_path / "w_ckpt").glob("unit-mlp-8-1-*.pt")
    step = torch.load(ckpt, weights_only=False)["trainer"]["step"]
    assert 0 < step < 120
    full = mtog_sweep("digits", [8, 16], ["mlp:8:1"], [0], out=out, **kw)
    assert full["complete"] and full["pending"] == [] and not ckpt.exists()
    for a, b in zip(ref["runs"], full["runs"], strict=True):
        assert (a["n_train"], a["steps"], a["e_gen"], a["e_mem"]) == (b["n_train"], b["steps"], b["e_gen"], b["e_mem"])
        # every run ends at the cap: each was probed half-way (after the resume, in the interrupted sweep)
        assert a["probe"] == b["probe"] and a["probe"]["step"] == 60 and a["stopped_by"] == "cap"
        assert a["e_gen_drift"] == pytest.approx(abs(a["e_gen"] - a["probe"]["e_gen"]) / a["e_gen"])
    conv = ref["convergence"]["mlp:8:1"]
    assert conv["capped"] == conv["capped_probed"] == 2
    assert conv["unconverged"] == sum(r["e_gen_drift"] > 0.02 for r in ref["runs"])
    # stopping at the probe does not change training
    plain = mtog_sweep("digits", [8, 16], ["mlp:8:1"], [0], out=tmp_path / "plain.jsonl", probe_fraction=None, **kw)
    assert [r["e_gen"] for r in plain["runs"]] == [r["e_gen"] for r in ref["runs"]]
    assert all("probe" not in r for r in plain["runs"])


def test_ensemble_checkpoint_from_other_settings_is_refused(tmp_path, one_thread):
    from pfd._train import atomic_torch_save
    from pfd.analysis._runs import train_ensemble

    teacher = pfd.analytic.digits_teacher()
    path = tmp_path / "unit.pt"
    atomic_torch_save({"settings": {"lr": 1e-3}, "trainer": {}}, path)
    with pytest.raises(ValueError, match=r"ensemble checkpoint .* other settings \(lr"):
        train_ensemble(teacher, [8], [0], width=8, depth=1, train={"max_steps": 10}, n_eval=8, checkpoint=path,
                       checkpoint_settings={"lr": 2e-3})
    with pytest.raises(ValueError, match="checkpoint_settings"):
        train_ensemble(teacher, [8], [0], width=8, depth=1, train={"max_steps": 10}, n_eval=8,
                       checkpoint=tmp_path / "new.pt")


def test_cli_mtog_digits_runs_the_fair_sweep(tmp_path, one_thread, capsys):
    import json

    from pfd.cli import main

    rc = main(["mtog", "--teacher", "digits", "--sizes", "mlp:8:1", "--n-trains", "8,16", "--seeds", "0,1",
               "--max-steps", "20", "--n-eval", "64", "--n-boot", "5", "--no-plot", "--no-progress",
               "--out-dir", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "mtog.json").read_text())
    assert res["observable"] == "e_gen" and res["complete"] and len(res["runs"]) == 4
    # |θ| by hand: (64 + 16 noise features) x w + w, then w x 64 + 64
    assert res["config"]["params"] == {"mlp:8:1": 81 * 8 + 8 * 64 + 64}
    assert {r["steps"] for r in res["runs"]} == {20}
    assert "collapse exponent alpha" in capsys.readouterr().out


def test_ensemble_trainer_checkpoint_resumes_bit_for_bit(one_thread):
    """Training 60 steps at once == 30 steps, state_dict -> new trainer -> resume to 60."""
    import torch

    from pfd.analysis.students import EnsembleDSMTrainer

    g = torch.Generator().manual_seed(0)
    data = [torch.randn(8, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)]
    kw = {"width": 16, "depth": 2, "max_steps": 30, "min_steps": 10**9, "check_every": 10, "n_check": 32, "warmup": 5}
    whole = EnsembleDSMTrainer(data, [1, 2], **kw)
    whole.resume(60)
    whole.train()
    first = EnsembleDSMTrainer(data, [1, 2], **kw)
    first.train()
    assert first.stopped_by == ["cap", "cap"] and first.step == 30
    again = EnsembleDSMTrainer(data, [1, 2], **kw)
    again.load_state_dict(first.state_dict())
    again.resume(60)
    again.train()
    assert again.step == whole.step == 60 and again.steps_used == [60, 60]
    for p, q in zip(whole.ema_model.parameters(), again.ema_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert again.history == whole.history
    with pytest.raises(ValueError, match="members"):
        EnsembleDSMTrainer(data[:1], [1], **kw).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="max_steps"):
        again.resume(0)


def test_posterior_target_is_the_exact_empirical_denoiser(one_thread):
    """EnsembleDSMTrainer.posterior_mean equals GaussianMixture.empirical(set).denoiser for sets
    of different sizes (padding masked), and target='posterior' trains."""
    import torch

    from pfd.analysis.students import EnsembleDSMTrainer

    g = torch.Generator().manual_seed(1)
    data = [torch.randn(7, 1, 2, 2, generator=g, dtype=torch.float64), torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)]
    tr = EnsembleDSMTrainer(data, [0, 1], width=8, depth=1, max_steps=5, min_steps=10**9, n_check=16,
                            target="posterior")
    x = torch.randn(2, 6, 1, 2, 2, generator=g) * 2
    sigma = torch.tensor([[0.3, 1.0, 3.0, 0.5, 8.0, 0.05]] * 2)
    got = tr.posterior_mean(x, sigma)
    for r in range(2):
        emp = pfd.GaussianMixture.empirical(data[r])
        want = torch.stack([emp.denoiser(x[r, j:j + 1].double(), float(sigma[r, j]))[0] for j in range(6)])
        assert torch.allclose(got[r].double(), want, atol=1e-5)
    tr.train()
    assert tr.step == 5 and all(map(math.isfinite, tr.check_loss()))
    with pytest.raises(ValueError, match="target"):
        EnsembleDSMTrainer(data, [0, 1], target="mean")


def _verdict_result(alpha_ci, mem, capped=0):
    params = {"a": 10**4, "b": 10**5, "c": 10**6, "d": 10**7}
    conv = {z: {"stopped_by": {"plateau": 85 - capped, "cap": capped}, "e_mem_rel_at_smallest_n": 0.3}
            for z in params}
    collapse = {"alpha": sum(alpha_ci) / 2, "alpha_ci95": alpha_ci, "slope_log2_nstar_vs_log2_params": 0.5,
                "slope_ci95": [0.4, 0.6]}
    tr = [{"size": z, "params": p, "n_star": p**0.5} for z, p in params.items()]
    return {"collapse": collapse, "convergence": conv, "config": {"params": params}, "transitions": tr,
            "memorizing": {"rule": {"copy_fraction_min": 0.9}, "sizes": mem, "fit": None}}


def test_mtog_verdict_tests_the_claim_only_on_memorizing_sizes():
    from _scripts import load_script

    verdict = load_script("benchmarks/mtog_digits.py").verdict
    all4 = ["a", "b", "c", "d"]
    assert verdict(_verdict_result([0.35, 0.65], all4)).startswith("SUPPORTS")
    assert verdict(_verdict_result([0.7, 0.9], all4)).startswith("REFUTES")
    assert verdict(_verdict_result([-0.1, 0.8], all4)).startswith("INCONCLUSIVE")
    v = verdict(_verdict_result([0.35, 0.65], ["c", "d"]))
    assert v.startswith("NOT A TEST") and "fewer than 4 sizes memorize" in v
    assert "N* / sqrt|theta| = 1.00 .. 1.00" in v and "no student memorized as a map" in v
    v = verdict(_verdict_result([0.35, 0.65], all4, capped=20))
    assert v.startswith("NOT A TEST") and "80 of 340 runs are not shown to have converged" in v
    # capped runs whose E_gen stopped moving count as converged
    res = _verdict_result([0.35, 0.65], all4, capped=20)
    for c in res["convergence"].values():
        c["unconverged"] = 2
    v = verdict(res)
    assert v.startswith("SUPPORTS") and "80 of 340 runs stopped at the step cap, 72 of them with E_gen within 2%" in v
    assert verdict(_verdict_result([0.35, 0.65], None)).startswith(
        "NOT A TEST of the claim: memorization at small N was not measured")


def test_checkpoint_and_probe_settings_are_checked(tmp_path, one_thread):
    from pfd.analysis._runs import train_ensemble

    teacher = pfd.analytic.digits_teacher()
    kw = {"width": 4, "depth": 1, "train": {"max_steps": 10}, "n_eval": 8}
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="probe_fraction must be in"):
            train_ensemble(teacher, [8], [0], probe_fraction=bad, **kw)
    with pytest.raises(ValueError, match="checkpoint_every must be > 0"):
        train_ensemble(teacher, [8], [0], checkpoint=tmp_path / "u.pt", checkpoint_settings={}, checkpoint_every=0, **kw)
    with pytest.raises(ValueError, match="checkpoint_every must be > 0 seconds or None"):
        mtog_sweep("digits", [8], ["mlp:4:1"], [0], out=tmp_path / "r.jsonl", checkpoint_every=-1.0, progress=False)
