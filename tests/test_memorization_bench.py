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
