"""The digits generalization studies (benchmarks/generalization_digits.py) on tiny settings:
every study runs, writes JSON with a config block (and a figure), resumes without redoing work,
and its numbers agree with direct computations."""

import copy
import json
from pathlib import Path

import pytest
import torch
from _scripts import load_script

import pfd
from pfd.analysis import generalization_errors, reference_maps
from pfd.analysis._runs import train_set
from pfd.report import to_jsonable

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _bench():
    return load_script("benchmarks/generalization_digits.py")


TINY = {
    "n_eval": 128, "eval_seed": 0, "depth": 1, "steps": 6, "lr": 2e-3, "batch_size": 32,
    "train": {"max_steps": 6, "min_steps": 3, "check_every": 3, "warmup": 2, "n_check": 16, "batch_size": 32},
    "bias_variance": {"n_trains": [8], "widths": [8], "k": 3},
    "dynamics": {"n_trains": [8], "seeds": [0, 1], "width": 8, "steps": 6, "eval_steps": 3, "n_eval": 32},
    "distill": {"n_trains": [8], "width": 8, "seed": 0, "segments": [2], "hidden": 8, "student_depth": 1,
                "steps": 5, "n_pairs": 32, "substeps": 3, "t_min_sigma": 0.002, "t_max_sigma": 80.0},
    "metrics": {"n_trains": [8, 16, 24], "width": 8, "seed": 0, "n_test": 64, "kid_subsets": 2},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    g = _bench()
    out = tmp_path_factory.mktemp("digits_bench")
    teacher = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [0.1, 0.1])
    with pfd.adapters.ratio.torch_threads(1):
        st = g.Study(g.flat_teacher(teacher), copy.deepcopy(TINY), out, "tiny", progress=False, plot=False)
        res = {part: g.RUNNERS[part](st) for part in g.PARTS}
        g.plot_distill(res["distill"], out / "distill_digits.png")  # one figure (the others are slower to draw)
        lines = {p.name: p.read_text() for p in (out / "digits_runs").glob("*.jsonl")}
        again = {part: g.RUNNERS[part](g.Study(g.flat_teacher(teacher), copy.deepcopy(TINY), out, "tiny",
                                               progress=False, plot=False)) for part in g.PARTS}
    return {"g": g, "out": out, "teacher": teacher, "res": res, "again": again, "lines": lines}


def test_every_study_writes_json_with_config_and_png_and_resumes(results):
    out = results["out"]
    for name in ("bias_variance", "dynamics", "distill", "metrics"):
        data = json.loads((out / f"{name}_digits.json").read_text())
        assert data["complete"] is True and "config" in data
    assert (out / "distill_digits.png").stat().st_size > 0
    # a second run found every unit done: nothing appended, same rows
    assert {p.name: p.read_text() for p in (out / "digits_runs").glob("*.jsonl")} == results["lines"]
    first = json.loads(json.dumps(to_jsonable(results["res"]["metrics"]["rows"])))
    assert results["again"]["metrics"]["rows"] == first


def test_bias_variance_rows_are_the_unbiased_decomposition(results):
    rows = results["res"]["bias-variance"]["rows"]
    assert {(r["model"], r["width"]) for r in rows} == {("students", 8), ("empirical", None)}
    for r in rows:
        assert r["var"] == pytest.approx(1.5 * r["var_plugin"], rel=1e-12)  # K = 3
        assert r["bias2"] + r["var"] == pytest.approx(r["mean_gen2"], rel=1e-12)
        assert r["identity_residual"] < 1e-13 and "ci95_students" in r
    assert results["res"]["bias-variance"]["config"]["params"] == {"8": rows[0]["n_params"]}


def test_distill_and_metrics_agree_with_direct_computations(results):
    g, g_teacher = results["g"], results["teacher"]
    flat = g.flat_teacher(g_teacher)
    dsm_row = next(r for r in results["res"]["distill"]["rows"] if r["segments"] == 0)
    st = g.Study(flat, copy.deepcopy(TINY), results["out"], "tiny", progress=False)
    smap, _, info = st.student(8, 0, 8)  # loaded from the cache, not retrained
    assert info["steps"] == 6
    direct = generalization_errors(smap, None, None, n=128, seed=0,
                                   references=reference_maps(flat, train_set(flat, 8, 0)))
    assert dsm_row["e_gen"] == pytest.approx(direct.e_gen.value, rel=1e-12)
    assert dsm_row["e_mem"] == pytest.approx(direct.e_mem.value, rel=1e-12)
    two_step = next(r for r in results["res"]["distill"]["rows"] if r["segments"] == 2)
    assert two_step["pfd_to_dsm_teacher"] > 0 and len(two_step["grid_sigma_ve"]) == 3
    assert two_step["grid_sigma_ve"][0] == pytest.approx(80.0) and two_step["grid_sigma_ve"][-1] == pytest.approx(0.002)
    rows = results["res"]["metrics"]["rows"]
    teacher_row = next(r for r in rows if r["model"] == "teacher")
    assert teacher_row["e_gen"] == 0.0
    for r in rows:
        if r["model"] == "empirical":
            assert r["e_mem"] == 0.0 and r["memorization_ratio"] == 1.0
    assert {t["metric"] for t in results["res"]["metrics"]["tracking"]} >= {"e_gen", "e_mem", "kid", "frechet"}
    assert torch.get_num_threads() >= 1


def test_dynamics_summary_states_tolerance_against_seed_spread(results):
    (s,) = results["res"]["dynamics"]["summary"]
    assert s["n_train"] == 8 and len(s["per_seed"]) == 2
    assert s["seed_spread_e_gen"] >= 0
    for p in s["per_seed"]:
        assert p["tol_own"] > 0 and isinstance(p["early_minimum_at_seed_spread"], bool)
