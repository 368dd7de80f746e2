import json
import subprocess
import sys

import pytest

import pfd
from pfd.analytic.teachers import hexagon_teacher
from pfd.cli import main
from pfd.demo import REFERENCE


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pfd.cli", *args], capture_output=True, text=True, timeout=300)


def test_version():
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pfd {pfd.__version__}"


def test_demo_json_matches_library(tmp_path):
    path = tmp_path / "demo.json"
    out = _run("demo", "--n", "128", "--train-steps", "30", "--json", "--no-progress", "--out", str(path),
               "--solver-error", "off")  # the estimate is checked in test_demo_table (in-process, faster)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert json.loads(path.read_text()) == report
    rows = {r["student"]: r for r in report["rows"]}
    assert len(rows) == 9
    # recompute one row independently through the library
    gmm = hexagon_teacher()
    res = pfd.distance(gmm.ode_map(**REFERENCE), gmm.ode_map(solver="heun", steps=8), n=128, progress=False)
    assert rows["teacher, heun/8"]["pfd"] == pytest.approx(res.value, rel=1e-9)
    assert rows["teacher, heun/8"]["nfe"] == 15
    # the finer sampler is closer to the teacher than the coarse one, and more data memorizes closer
    assert rows["teacher, heun/18"]["pfd"] < rows["teacher, heun/8"]["pfd"]
    # same 35 model calls, higher-order multistep integrator: closer to the reference
    assert rows["teacher, unipc3/35"]["nfe"] == 35
    assert rows["teacher, unipc3/35"]["pfd"] < rows["teacher, heun/18"]["pfd"]
    assert rows["memorizing, N=4096"]["pfd"] < rows["memorizing, N=16"]["pfd"]
    for r in report["rows"]:
        lo, hi = r["ci95"]
        assert lo <= r["pfd"] <= hi


def test_demo_table(capsys):
    assert main(["demo", "--n", "32", "--train-steps", "5", "--no-progress", "--solver-error", "cheap"]) == 0
    text = capsys.readouterr().out
    assert "memorizing, N=256" in text and "95% CI" in text and "NFE" in text
    # with the estimate: the one-step student's row is exact only on its side, the teacher is
    # re-solved; every row has a number (no opaque maps in the demo)
    assert "± solver" in text and "unknown" not in text


def test_bad_cli_input(capsys):
    assert main(["demo", "--n", "1", "--no-progress"]) == 2
    assert "--n must be >= 2" in capsys.readouterr().err
    assert main(["demo", "--seed", "-3", "--no-progress"]) == 2
    assert main([]) == 2
