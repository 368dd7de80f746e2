"""Pieces of the issue-18 benchmarks: t-intervals, the resumable run store, paired reductions, and
the DiffRatio-in-training aggregation on a tiny run."""

import json
import math
from pathlib import Path

import pytest
import torch
from _scripts import load_script
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    return load_script(f"benchmarks/{name}.py")


def test_mean_ci95_is_the_student_t_interval():
    fair = _load("_fair")
    v = [0.3, 0.1, 0.45, 0.2, 0.33]
    out = fair.mean_ci95(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=sum(v) / 5, scale=stats.sem(v))
    assert out["n"] == 5 and out["ci95"] == pytest.approx([lo, hi], rel=1e-12)
    assert fair.mean_ci95([1.0])["ci95"] is None and fair.mean_ci95([])["mean"] is None
    assert fair.mean_ci95([1.0, float("nan"), 3.0])["mean"] == 2.0


def test_run_store_resumes(tmp_path):
    fair = _load("_fair")
    path = tmp_path / "r.json"
    store = fair.RunStore(path)
    key = fair.run_key({"seed": 1, "arm": "a", "cfg": [1, 2]})
    assert key == fair.run_key({"cfg": [1, 2], "arm": "a", "seed": 1})  # order-free
    store.put(key, {"value": 3.5}, {"config": {"x": 1}, "complete": False})
    again = fair.RunStore(path)
    assert again.get(key) == {"value": 3.5} and again.get(fair.run_key({"seed": 2})) is None
    data = json.loads(path.read_text())
    assert data["complete"] is False and data["config"] == {"x": 1}


def test_paired_reduction():
    sweep = _load("stability_grid_sweep")
    a = [{"seed": s, "rel_mse": v} for s, v in enumerate([0.5, 0.4, 0.6])]
    b = [{"seed": s, "rel_mse": v} for s, v in enumerate([1.0, 1.0, 1.0, 7.0])]  # seed 3 has no pair
    p = sweep._paired(a, b)
    logs = [math.log(0.5), math.log(0.4), math.log(0.6)]
    m = sum(logs) / 3
    assert p["n"] == 3 and p["seeds"] == [0, 1, 2]
    assert p["reduction_pct"] == pytest.approx(100 * (1 - math.exp(m)))
    lo, hi = stats.t.interval(0.95, 2, loc=m, scale=stats.sem(logs))
    assert p["paired_ci95"] == pytest.approx([100 * (1 - math.exp(hi)), 100 * (1 - math.exp(lo))])
    assert p["paired_ci95"][0] < p["reduction_pct"] < p["paired_ci95"][1]


def test_sweep_settings_cover_the_stiffness_ranges():
    sweep = _load("stability_grid_sweep")
    st = sweep.settings()
    s2 = sorted({s["s2"] for s in st if s["mixture"] == "1d-2mode"})
    deltas = sorted({s["t_min"] for s in st if s["mixture"] == "1d-2mode"})
    assert len(s2) >= 4 and s2[0] == 0.001 and s2[-1] == 0.25
    assert deltas[0] == 0.001 and deltas[-1] == 0.1
    lam = [sweep.cumulative(sweep.build_mixture(s), s["t_min"], 3.0) for s in st if s["sweep"] == "s2"]
    assert lam == sorted(lam)  # ordered from mild to stiff


def test_diffratio_training_aggregate(one_thread):
    """Two seeds of the tiny configuration: every arm has a PFD and a bias with intervals, and the
    paired differences are the per-seed differences."""
    mod = _load("diffratio_training_bias")
    cfg = {"target": {"k": 4, "radius": 1.0, "std": 0.2}, "init": {"shrink": 0.5, "rotate": 0.2, "jitter": 0.1,
           "scale": 0.4}, "seeds": [0, 1], "steps": 10, "aux_steps": 1, "batch_size": 64, "sigma_range": [0.05, 2.0],
           "lr": 5e-3, "aux_lr": 1e-3, "teacher_steps": 10, "score_size": [8, 1], "ratio_sizes": [[4, 1]],
           "n_reference": 512, "eval_every": 5, "n_eval": 64, "n_pfd": 64}
    runs = {}
    cache = {}
    for seed in cfg["seeds"]:
        for arm in mod.arm_names(cfg):
            runs[f"{arm}/{seed}"] = mod.run_one(arm, seed, cfg, cache)
    agg = mod.aggregate(cfg, runs)
    assert set(agg["arms"]) == {"oracle", "diffratio-h4x1", "dmd", "dmd-exact-teacher"}
    for v in agg["arms"].values():
        assert len(v["pfd_dist_ci95"]) == 2 and v["pfd_dist_ci95"][0] <= v["pfd_dist_mean"] <= v["pfd_dist_ci95"][1]
        assert v["grad_bias_ci95"] is not None
    assert agg["arms"]["oracle"]["grad_bias_mean"] == 0.0
    d = next(p for p in agg["paired"] if p["a"] == "diffratio-h4x1" and p["b"] == "dmd" and p["quantity"] == "pfd_dist")
    diffs = [runs[f"diffratio-h4x1/{s}"]["pfd_dist"] - runs[f"dmd/{s}"]["pfd_dist"] for s in (0, 1)]
    assert d["mean_diff"] == pytest.approx(sum(diffs) / 2)
    assert all(torch.isfinite(torch.tensor(r["pfd_dist"])) for r in runs.values())
