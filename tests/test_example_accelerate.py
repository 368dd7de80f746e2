"""examples/train_with_accelerate.py with a real accelerate.Accelerator (CPU, a few dozen steps): the PFD curve
it logs is the PFD of the trained student recomputed independently, training lowers it, and a resumed run
continues the same curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _scripts import load_script

import pfd

pytest.importorskip("accelerate")
pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_with_accelerate.py"


def _example():
    return load_script("examples/train_with_accelerate.py")


def test_accelerate_loop_logs_the_students_pfd_and_resumes(tmp_path):
    ex = _example()
    args = ["--cpu", "--noise", "256", "--pairs", "1024", "--batch-size", "128", "--every", "20", "--out", str(tmp_path)]
    res = ex.main([*args, "--steps", "40", "--grad-accum", "2"])
    curve = res["curve"]
    assert [r["step"] for r in curve] == [0, 20, 40] and res["steps"] == 40
    assert curve[-1]["pfd"] < 0.5 * curve[0]["pfd"]
    # the logged value is the PFD of the trained student, recomputed from scratch on the same noise
    again = pfd.distance(res["teacher"], pfd.OneStepMap(res["model"], shape=(2,)), n=256, seed=0, progress=False)
    assert curve[-1]["pfd"] == pytest.approx(again.value, rel=1e-6)
    logged = [json.loads(line) for line in (tmp_path / "pfd_curve.jsonl").read_text().splitlines()]
    assert [r["pfd"] for r in logged] == [r["pfd"] for r in curve]
    resumed = ex.main([*args, "--steps", "60", "--grad-accum", "2", "--resume"])
    assert [r["step"] for r in resumed["curve"]] == [0, 20, 40, 60]
    assert resumed["curve"][:3] == curve
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["processes"] == 1 and summary["final_pfd"] == resumed["curve"][-1]["pfd"]


@pytest.mark.slow
def test_accelerate_two_processes_give_the_single_process_value(tmp_path):
    """The example under torchrun with 2 CPU processes (gloo): the monitor splits the bank across them and logs
    the single-process value (step 0: the same untrained student in both runs)."""
    import os
    import subprocess
    import sys

    root = EXAMPLE.parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    args = ["--cpu", "--noise", "256", "--pairs", "1024", "--batch-size", "128", "--every", "20", "--steps", "20"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EXAMPLE), *args,
           "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    one = _example().main([*args, "--out", str(tmp_path / "one")])
    assert two["processes"] == 2 and [r["step"] for r in two["curve"]] == [0, 20]
    assert two["curve"][0]["pfd"] == pytest.approx(one["curve"][0]["pfd"], rel=1e-12)
