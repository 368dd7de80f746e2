"""benchmarks/memorization_digits.py on tiny settings: records, resume, summary, figure."""

import math

import pytest
from _scripts import load_script

pytestmark = pytest.mark.usefixtures("one_thread")


def _load():
    return load_script("benchmarks/memorization_digits.py")


def test_memorization_study_tiny_resumes_and_summarises(tmp_path):
    mod = _load()
    kw = {"out_dir": tmp_path, "targets": ("sample", "posterior"), "n_eval": 32,
          "train": {"check_every": 10, "n_check": 32, "warmup": 5}, "progress": False}
    logs: list[str] = []
    res = mod.run_study(["mlp:8:1"], [8], [0, 1], [10, 20], log=logs.append, **kw)
    assert res["complete"] and res["n_rows"] == 2 * 2 * 2 == len(logs)
    for r in res["rows"]:
        assert r["steps"] == r["stage"] and r["target"] in ("sample", "posterior")
        assert r["e_mem_rel"] ** 2 == pytest.approx(r["e_mem_same_rel"] ** 2 + r["e_mem_switched_rel"] ** 2, rel=1e-9)
    row = next(s for s in res["summary"] if s["arm"] == "mlp:8:1 sample" and s["n_train"] == 8 and s["stage"] == 20)
    vals = [r["basin_agreement"] for r in res["rows"] if r["arm"] == "mlp:8:1 sample" and r["n_train"] == 8
            and r["stage"] == 20]
    assert row["seeds"] == 2 and row["basin_agreement"] == pytest.approx(sum(vals) / 2)
    lo, hi = row["basin_agreement_ci95"]
    assert lo <= row["basin_agreement"] <= hi and math.isfinite(lo)
    # a rerun trains and scores nothing; one more stage continues from the checkpoint
    logs.clear()
    again = mod.run_study(["mlp:8:1"], [8], [0, 1], [10, 20], log=logs.append, **kw)
    assert logs == [] and again["n_rows"] == res["n_rows"]
    distill = {**mod.DISTILL, "n_trains": [8], "segments": [1], "train_steps": 5, "n_pairs": 32, "substeps": 2}
    more = mod.run_study(["mlp:8:1"], [8], [0, 1], [10, 20, 30], log=logs.append, routing_ns=(8,), distill=distill,
                         **{**kw, "targets": ("sample",)})
    # distilled students: one per seed, beside their DSM teachers in the summary
    assert [(d["seed"], d["segments"]) for d in more["distilled"]] == [(0, 1), (1, 1)]
    assert {(r["segments"], r["seeds"]) for r in more["distill_summary"]} == {(0, 2), (1, 2)}
    d0 = more["distilled"][0]
    assert d0["e_mem"] ** 2 == pytest.approx(d0["e_mem_same_basin"] ** 2 + d0["e_mem_switched"] ** 2, rel=1e-9)
    assert d0["pfd_to_teacher"] > 0
    assert any("resumed at step 20" in m for m in logs) and more["complete"]
    # routing split: all-memorizer (split below every grid point used) agrees exactly; all-student is the student
    assert [r["n_train"] for r in more["routing"]] == [8, 8]
    splits = more["routing"][0]["splits"]
    assert all(0.0 <= m["basin_agreement"] <= 1.0 for m in splits)
    # a "student" that is the exact empirical denoiser routes like the memorizer at every split
    import pfd
    from pfd.analysis._runs import train_set

    data = train_set(pfd.analytic.digits_teacher(), 8, 0)
    emp = pfd.GaussianMixture.empirical(data)
    exact = mod.routing_split(lambda x, s: emp.denoiser(x.double(), s[0].item()), data, n=32, seed=0,
                              solver={"solver": "heun", "steps": 18}, sigma_cs=(5.3, 1.08))
    assert [m["basin_agreement"] for m in exact] == [1.0] * 4 and max(m["e_mem"] for m in exact) < 1e-4
    mod.plot(res, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 10_000


def test_copy_capacity_crossing_and_bootstrap_on_known_curves():
    mod = load_script("benchmarks/memorization_recipes.py")
    assert mod.crossing([8, 16, 32], [0.9, 0.6, 0.2]) == pytest.approx(2 ** (4 + 0.25))
    assert mod.crossing([8, 16], [0.4, 0.1]) is None and mod.crossing([8, 16], [0.9, 0.7]) is None
    # copy fraction 1 / (1 + (N / N_copy)^2) with N_copy = sqrt(|theta|) / 4: slope 1/2 exactly
    rows = []
    for p in (4**6, 4**7, 4**8):
        for s in range(3):
            for n in (8, 11, 16, 23, 32, 45, 64, 91, 128):
                n_copy = math.sqrt(p) / 4 * (1 + 0.05 * (s - 1))
                rows.append({"stage": 10, "size": f"m{p}", "n_params": p, "seed": s, "n_train": n,
                             "copy_fraction": 1 / (1 + (n / n_copy) ** 2)})
    fit = mod.capacity_fit(rows, 10, n_boot=200)
    assert fit["slope_log2_ncopy_vs_log2_params"] == pytest.approx(0.5, abs=0.03)
    lo, hi = fit["slope_ci95"]
    assert lo <= 0.5 + 0.03 and hi >= 0.5 - 0.03 and hi - lo < 0.2
    for s in fit["sizes"]:  # the seed-mean curve crosses 1/2 near the middle seed's N_copy
        assert s["n_copy"] == pytest.approx(math.sqrt(s["params"]) / 4, rel=0.1)
        assert s["n_copy_ci95"][0] <= s["n_copy"] <= s["n_copy_ci95"][1]


def test_recipes_study_tiny_runs_and_writes(tmp_path):
    mod = load_script("benchmarks/memorization_recipes.py")
    res = mod.run([("mlp:8:1", "mlp:8:1", {}), ("mlp:8:1, lr x3", "mlp:8:1", {"lr": 6e-3})], [8], [10], ["mlp:8:1"],
                  [8, 11], [10], out_dir=tmp_path, seeds=[0, 1], n_eval=32,
                  base_train={"check_every": 10, "n_check": 32, "warmup": 5}, n_boot=20, log=lambda m: None)
    assert res["complete"] and {r["recipe"] for r in res["recipes"]} == {"mlp:8:1", "mlp:8:1, lr x3"}
    # the two recipes are different settings: different students, scored separately
    a, b = (next(r for r in res["recipe_rows"] if r["recipe"] == k and r["seed"] == 0) for k in ("mlp:8:1", "mlp:8:1, lr x3"))
    assert a["settings_key"] != b["settings_key"] and a["e_gen"] != b["e_gen"]
    assert len(res["capacity_rows"]) == 2 * 2 and res["capacity_fit"]["stage"] == 10
    # the sigma profile of the final N = 8 students: one record per seed and recipe, one row per sigma
    assert len(res["sigma_profile_rows"]) == 2 * 2
    rows = [r for r in res["sigma_profile"] if r["recipe"] == "mlp:8:1"]
    assert [r["sigma"] for r in rows] == list(mod.PROFILE_SIGMAS) and all(r["rms_error"] > 0 for r in rows)
    # a rerun reuses the records (the trainer state is not needed again)
    again = mod.run([("mlp:8:1", "mlp:8:1", {})], [8], [10], [], [], [], out_dir=tmp_path, seeds=[0, 1], n_eval=32,
                    base_train={"check_every": 10, "n_check": 32, "warmup": 5}, n_boot=20, log=lambda m: None)
    assert again["sigma_profile"] == rows
    mod.plot(res, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_sigma_profile_matches_a_direct_computation(one_thread):
    import torch

    import pfd
    from pfd.analysis.students import EnsembleDSMTrainer

    mod = load_script("benchmarks/memorization_recipes.py")
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(5, 3, generator=g), torch.randn(9, 3, generator=g)]
    tr = EnsembleDSMTrainer(data, [0, 1], width=8, depth=1, max_steps=30, check_every=10, warmup=5)
    tr.train()
    prof = mod.sigma_profile(tr, [0, 1], sigmas=(0.1, 1.0), batch=64, clamp=2.0, seed=3)
    # the same draws, scored member by member: its own network vs the closed-form empirical denoiser
    g = torch.Generator().manual_seed(3)
    for sig_k, sig in enumerate((0.1, 1.0)):
        pick = (torch.rand(2, 64, generator=g) * torch.tensor([[5], [9]])).long()
        eps = torch.randn(2, 64, 3, generator=g)
        for i in (0, 1):
            y = tr.data[i][pick[i]]
            x = y + sig * eps[i]
            with torch.no_grad():
                d = tr.ema_model.member(i, clamp=2.0)(x, torch.full((64,), sig))
            emp = pfd.GaussianMixture.empirical(data[i].double()).denoiser(x.double(), sig)
            want = float((d.double() - emp).pow(2).sum(1).mean().sqrt())
            assert prof[i][sig_k] == pytest.approx(want, rel=1e-4)
