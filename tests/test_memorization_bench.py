"""benchmarks/memorization_digits.py on tiny settings: records, resume, summary, figure."""

import json
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
    assert mod.crossing([8, 16, 32, 64], [0.45, 0.55, 0.3, 0.2]) is None  # starts below: not a crossing at 16..32
    # copy fraction 1 / (1 + (N / N_copy)^2) with N_copy = sqrt(|theta|) / 4: slope 1/2 exactly
    rows = []
    for p in (4**6, 4**7, 4**8):
        for s in range(3):
            for n in (8, 11, 16, 23, 32, 45, 64, 91, 128):
                n_copy = math.sqrt(p) / 4 * (1 + 0.05 * (s - 1))
                rows.append({"stage": 10, "size": f"m{p}", "n_params": p, "seed": s, "n_train": n,
                             "copy_fraction": 1 / (1 + (n / n_copy) ** 2)})
    fit = mod.capacity_fit(rows, 10, n_boot=200)
    assert fit["slope"] == pytest.approx(0.5, abs=0.03) and fit["seeds"] == [0, 1, 2]
    lo, hi = fit["slope_ci95"]
    assert lo <= 0.5 + 0.03 and hi >= 0.5 - 0.03 and hi - lo < 0.2
    for s in fit["sizes"]:  # the seed-mean curve crosses 1/2 near the middle seed's N_copy
        assert s["n_cross"] == pytest.approx(math.sqrt(s["params"]) / 4, rel=0.1)
        assert s["n_cross_ci95"][0] <= s["n_cross"] <= s["n_cross_ci95"][1]
        assert s["n_cross_over_sqrt_params"] == pytest.approx(s["n_cross"] / math.sqrt(s["params"]))


def test_onset_fits_recover_a_known_collapse_exponent_at_every_level():
    # E_gen / E_gen(mem) = 1 - 0.3 * g(N / |theta|^alpha): curves that collapse with alpha = 0.4
    # give slope 0.4 at every level; per-size N grids and a size with fewer seeds are handled
    mod = load_script("benchmarks/memorization_recipes.py")
    alpha, rows = 0.4, []
    grids = {4**6: [8, 11, 16, 23, 32, 45, 64], 4**7: [8, 11, 16, 23, 32, 45, 64, 91, 128],
             4**8: [8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256]}
    for p, ns in grids.items():
        for s in range(5):
            for n in ns:
                x = n / p**alpha * (1 + 0.03 * (s - 2))
                rows.append({"stage": 10, "size": f"m{p}", "n_params": p, "seed": s, "n_train": n,
                             "e_gen_rel": 1 - 0.3 * x**2 / (1 + x**2)})
    rows = [r for r in rows if not (r["size"] == f"m{4**6}" and r["seed"] == 4)]  # one size lacks a seed
    fits = mod.onset_fits(rows, [10], levels=(0.95, 0.9, 0.85), n_boot=100)
    assert [f["level"] for f in fits] == [0.95, 0.9, 0.85]
    for f in fits:
        assert f["seeds"] == [0, 1, 2, 3] and f["observable"] == "e_gen_rel"
        assert f["slope"] == pytest.approx(alpha, abs=0.03)
        assert f["slope_ci95"][0] - 0.03 <= alpha <= f["slope_ci95"][1] + 0.03
        assert [s["n_range"] for s in f["sizes"]] == [[8, 64], [8, 128], [8, 256]]
    # a level the curves never reach inside the range: no crossing, no slope, said so
    (never,) = mod.onset_fits(rows, [10], levels=(0.5,), n_boot=20)
    assert never["slope"] is None and all(s["n_cross"] is None for s in never["sizes"])
    disjoint = [r for r in rows if (r["n_params"] == 4**6 and r["seed"] == 0) or (r["n_params"] == 4**7 and r["seed"] == 1)]
    with pytest.raises(ValueError, match="no seed has every N"):
        mod.crossing_fit(disjoint, 10, field="e_gen_rel", level=0.9)


def test_recipes_study_tiny_runs_and_writes(tmp_path):
    mod = load_script("benchmarks/memorization_recipes.py")
    res = mod.run([("mlp:8:1", "mlp:8:1", {}), ("mlp:8:1, lr x3", "mlp:8:1", {"lr": 6e-3})], [8], [10], ["mlp:8:1"],
                  [8, 11], [10], out_dir=tmp_path, seeds=[0, 1], n_eval=32,
                  base_train={"check_every": 10, "n_check": 32, "warmup": 5}, n_boot=20,
                  capacity_extra=[(["mlp:8:1"], [8, 11], [2]), (["mlp:8:1"], [16], [0, 1, 2])], log=lambda m: None)
    assert res["complete"] and {r["recipe"] for r in res["recipes"]} == {"mlp:8:1", "mlp:8:1, lr x3"}
    # the two recipes are different settings: different students, scored separately
    a, b = (next(r for r in res["recipe_rows"] if r["recipe"] == k and r["seed"] == 0) for k in ("mlp:8:1", "mlp:8:1, lr x3"))
    assert a["settings_key"] != b["settings_key"] and a["e_gen"] != b["e_gen"]
    # the extra capacity units are pooled: seed 2 and N = 16 join the first study's 2 seeds x 2 N
    assert len(res["capacity_rows"]) == 2 * 2 + 2 + 3 and res["capacity_fit"]["stage"] == 10
    assert [(r["n_train"], r["seeds"]) for r in res["capacity"]] == [(8, 3), (11, 3), (16, 3)]
    (first,) = [r for r in res["capacity_rows"] if r["n_train"] == 8 and r["seed"] == 0]
    n8 = next(r for r in res["capacity"] if r["n_train"] == 8)
    assert n8["e_gen_rel"] == pytest.approx(sum(r["e_gen_rel"] for r in res["capacity_rows"] if r["n_train"] == 8) / 3)
    assert first["settings"]["seeds"] == [0, 1]
    assert res["capacity_fit"]["seeds"] == [0, 1, 2] and res["capacity_fit"]["sizes"][0]["n_range"] == [8, 16]
    assert [f["level"] for f in res["onset_fits"]] == list(mod.ONSET_LEVELS)
    mod.plot_onset(res, tmp_path / "onset.png")
    assert (tmp_path / "onset.png").stat().st_size > 10_000
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


def test_recipes_quick_main_writes_both_figures(tmp_path):
    # the script's own entry point on its smoke settings, including the onset figure when no
    # slope can be fitted (tiny students: curves that do not cross)
    mod = load_script("benchmarks/memorization_recipes.py")
    assert mod.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "memorization_recipes.json").read_text())
    assert res["complete"] and res["config"]["onset_levels"] == list(mod.ONSET_LEVELS)
    assert {r["seeds"] for r in res["capacity"] if r["size"] == "mlp:16:1"} == {3}
    for name in ("memorization_recipes.png", "memorization_recipes_onset.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_sweep_onset_reads_a_committed_sweep_and_keeps_its_large_sizes(tmp_path):
    mod = load_script("benchmarks/memorization_recipes.py")
    assert mod.sweep_onset_fits(tmp_path / "absent.json") is None
    alpha, runs = 0.6, []
    for width, p in ((16, 4_000), (192, 4**8), (512, 4**9)):
        for s in range(4):
            for n in (8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048):
                x = n / p**alpha * 4
                runs.append({"arch": "mlp", "width": width, "depth": 3, "n_params": p, "seed": s, "n_train": n,
                             "e_gen_rel": 1 - 0.4 * x**2 / (1 + x**2),
                             "steps": 1000 * (1 + s), "stopped_by": "cap" if s == 3 else "plateau"})
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs}))
    out = mod.sweep_onset_fits(tmp_path / "sweep.json", levels=(0.9, 0.8), n_boot=50)
    assert out["sizes"] == ["mlp:192:3", "mlp:512:3"]  # the 4k-parameter size is below min_params
    assert out["capped"] == {"mlp:192:3": 17, "mlp:512:3": 17} and out["runs"] == {"mlp:192:3": 68, "mlp:512:3": 68}
    assert out["steps_min_median_max"]["mlp:192:3"] == [1000, 3000, 4000]
    assert [f["level"] for f in out["fits"]] == [0.9, 0.8]
    assert [f["slope"] for f in out["fits"]] == pytest.approx([alpha, alpha], abs=0.03)
