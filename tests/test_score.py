"""`pfd score` and pfd.spec: models saved to disk (factory module, TorchScript, gmm JSON) scored in a
subprocess and checked against pfd.distance computed in-process on the same models."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import pfd
from pfd.spec import load_map, parse_assignments

ROOT = Path(__file__).resolve().parents[1]
N, STEPS = 256, 6
TEACHER = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])


def save_models(folder: Path) -> Path:
    """A user's model folder: a factory module, a TorchScript student and a mixture JSON."""
    shutil.copy(Path(__file__).with_name("_score_models.py"), folder / "user_models.py")
    mod = import_models(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(mod.student(width=8, seed=3)).save(str(folder / "student.pt"))
    (folder / "teacher.json").write_text(json.dumps(TEACHER.to_dict()))
    return folder


def import_models(folder: Path):
    spec = importlib.util.spec_from_file_location(f"user_models_{abs(hash(str(folder)))}", folder / "user_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_score(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "pfd.cli", "score", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("user"))


def drop_timing(text: str) -> dict:
    report = json.loads(text)
    report.pop("timing")
    return report


def test_factory_teacher_torchscript_student_matches_library(models):
    args = ["--reference", "user_models:teacher", "--student", "student.pt", "--student-type", "one-step",
            "--shape", "2", "--n", str(N), "--steps", str(STEPS), "--batch-size", "100", "--json", "--out", "s.json"]
    out = run_score(models, *args)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert json.loads((models / "s.json").read_text()) == report
    # the same models, built in-process with the core API (not through pfd.spec)
    mod = import_models(models)
    ref = pfd.DiffusionMap(pfd.adapters.EDMDenoiser(mod.teacher()), steps=STEPS, shape=(2,))
    stu = pfd.OneStepMap(mod.student(width=8, seed=3), shape=(2,))
    res = pfd.distance(ref, stu, n=N, seed=0, progress=False)
    assert report["value"] == pytest.approx(res.value, rel=1e-12)
    assert report["stderr"] == pytest.approx(res.stderr, rel=1e-9)
    assert report["ci95"] == pytest.approx(list(res.ci95), rel=1e-9)
    assert report["n"] == N and report["nfe"] == {"reference": 2.0 * STEPS - 1, "student": 1.0}
    # provenance: both specs, adapter types, args, solver, pfd version; timings only under "timing"
    assert report["reference"]["spec"] == "user_models:teacher" and report["reference"]["type"] == "denoiser"
    assert report["student"]["spec"] == "student.pt" and report["student"]["type"] == "one-step"
    assert report["reference"]["map"]["solver"] == "heun" and report["reference"]["map"]["steps"] == STEPS
    assert report["settings"]["solver"] == "heun" and report["provenance"]["pfd_version"] == pfd.__version__
    assert report["provenance"]["noise"]["seed"] == 0 and set(report["timing"]) == {"seconds"}
    # determinism: the same command again gives byte-identical JSON once the timing is removed
    again = run_score(models, *args[:-2])
    assert again.returncode == 0, again.stderr
    strip = re.compile(r'"seconds": [0-9.e+-]+')
    assert strip.sub("", out.stdout) == strip.sub("", again.stdout)
    assert "seconds" not in json.dumps(drop_timing(out.stdout))  # no other timing anywhere


def test_gmm_reference_py_file_factory_table_and_coupling_warning(models):
    out = run_score(models, "--reference", f"gmm:{models / 'teacher.json'}", "--student",
                    f"{models / 'user_models.py'}:student", "--student-arg", "width=4", "--student-arg", "seed=1",
                    "--student-type", "one-step", "--kind", "distribution", "--n", str(N), "--steps", str(STEPS))
    assert out.returncode == 0, out.stderr
    mod = import_models(models)
    res = pfd.distance(TEACHER.ode_map(steps=STEPS), pfd.OneStepMap(mod.student(width=4, seed=1), shape=(2,)),
                       n=N, progress=False)
    first = out.stdout.splitlines()[0]
    assert first == str(res)  # "PFD = v ± se (95% CI [lo, hi], n=256)"
    assert "one-step" in out.stdout and "kind distribution" in out.stdout
    warn = [ln for ln in out.stderr.splitlines() if "CouplingWarning" in ln]
    assert len(warn) == 1 and "measures the coupling" in warn[0] and "RatioCorrectedMap" in warn[0]


def test_progress_goes_to_stderr_and_result_to_stdout(models):
    out = run_score(models, "--reference", "gmm:teacher.json", "--student", "gmm:teacher.json", "--n", "64",
                    "--steps", "4", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # stdout is pure JSON
    assert report["value"] == 0.0 and report["ci95"] == [0.0, 0.0]
    assert "PFD reference vs student" in out.stderr  # the tqdm bar, labelled by what it runs


def test_parse_assignments_json_values_and_strings():
    got = parse_assignments(["a=1", "b=0.5", "c=[1, 2]", "d=null", "e=hello", "f=a=b"], "--x")
    assert got == {"a": 1, "b": 0.5, "c": [1, 2], "d": None, "e": "hello", "f": "a=b"}


# ---------------------------------------------------------------- adapters reached through SPECs, in-process

def _exact_maps_agree(m, ref, n=64, tol=1e-9):
    z = pfd.canonical_noise(n, (2,), seed=5)
    return (m(z) - ref(z)).abs().max().item() < tol


def test_eps_adapter_on_ddpm_schedule_equals_the_analytic_map(tmp_path, monkeypatch):
    # an exact epsilon-prediction model of the mixture on the DDPM schedule (sigma of a continuous timestep
    # by log-linear interpolation, as k-diffusion does), written as a user module
    (tmp_path / "vp_user.py").write_text(
        "import torch, pfd\n"
        "G = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])\n"
        "def make(beta_end=0.02):\n"
        "    abar = torch.cumprod(1 - torch.linspace(1e-4, beta_end, 1000, dtype=torch.float64), 0)\n"
        "    ls = ((1 - abar) / abar).sqrt().log()\n"
        "    def eps(x_vp, t):\n"
        "        i = t.floor().long().clamp(0, 998); w = t - i\n"
        "        s = ((1 - w) * ls[i] + w * ls[i + 1]).exp()\n"
        "        x = x_vp * (1 + s * s).sqrt()[:, None]\n"
        "        return (x - G.denoiser(x, s)) / s[:, None]\n"
        "    return eps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_map("vp_user:make", adapter="eps", args={"beta_end": 0.02}, schedule={"start": "ve", "grid": "karras"},
                 steps=10, shape=(2,))
    sig = pfd.adapters.vp_sigmas(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))
    lo, hi = float(sig[0]), float(sig[-1])
    assert m.describe()["sigmas"][0] == pytest.approx(hi) and m.describe()["sigmas"][-1] == pytest.approx(lo)
    assert _exact_maps_agree(m, TEACHER.ode_map(sigma_min=lo, sigma_max=hi, steps=10), tol=1e-8)


def test_velocity_and_score_adapters_equal_the_analytic_map(tmp_path, monkeypatch):
    (tmp_path / "fm_user.py").write_text(
        "import pfd\n"
        "G = pfd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])\n"
        "def velocity():\n"
        "    def v(xt, t):\n"
        "        tb = t[:, None]; s = tb / (1 - tb); x = xt / (1 - tb)\n"
        "        d = G.denoiser(x, s.flatten())\n"
        "        return (x - d) / s - d\n"
        "    return v\n"
        "def ve_score():\n"
        "    return lambda x, t: G.score(x, t)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = TEACHER.ode_map(sigma_max=20.0, steps=8)
    v = load_map("fm_user:velocity", adapter="velocity", schedule={"sigma_max": 20.0}, steps=8, shape=(2,))
    s = load_map("fm_user:ve_score", adapter="score", schedule={"process": "ve", "sigma_max": 20.0}, steps=8,
                 shape=(2,))
    assert _exact_maps_agree(v, ref) and _exact_maps_agree(s, ref)


def test_flow_map_and_consistency_students_match_closed_forms(tmp_path, monkeypatch):
    # a single Gaussian N(mu, v I): its exact flow map from t to s is mu + (x - mu) sqrt((v + s^2)/(v + t^2))
    (tmp_path / "fmap_user.py").write_text(
        "import torch\n"
        "MU = torch.tensor([1.0, -0.5], dtype=torch.float64)\n"
        "def jump():\n"
        "    return lambda x, t, s: MU + (x - MU) * ((0.3 + s[:, None] ** 2) / (0.3 + t[:, None] ** 2)).sqrt()\n"
        "def cm():\n"
        "    return lambda x, t: MU + (x - MU) * (0.3 / (0.3 + t[:, None] ** 2)).sqrt()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    z = pfd.canonical_noise(32, (2,), seed=2)
    mu = torch.tensor([1.0, -0.5], dtype=torch.float64)
    exact = mu + (40.0 * z - mu) * math.sqrt(0.3 / (0.3 + 40.0**2))
    fm = load_map("fmap_user:jump", adapter="flow-map", schedule={"grid": [40, 2, 0.5, 0]}, shape=(2,))
    cm = load_map("fmap_user:cm", adapter="consistency", schedule={"sigma_max": 40}, shape=(2,))
    assert torch.allclose(fm(z), exact, atol=1e-12) and fm.nfe_per_sample == 3
    assert torch.allclose(cm(z), exact, atol=1e-12) and cm.nfe_per_sample == 1
    with pytest.warns(pfd.adapters.CouplingWarning, match="measures the coupling"):
        load_map("fmap_user:cm", adapter="consistency", kind="distribution", schedule={"sigma_max": 40}, shape=(2,))


def test_help_lists_spec_forms_and_adapter_types(capsys):
    from pfd.cli import main

    with pytest.raises(SystemExit) as info:
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    assert "gmm:<mixture.json>" in text and "TorchScript" in text and "95% confidence" in text
    for adapter in pfd.spec.ADAPTERS:
        assert adapter in text


def test_distribution_student_warning_is_in_the_json(models, monkeypatch, capsys):
    from pfd.cli import main

    monkeypatch.chdir(models)
    rc = main(["score", "--reference", "gmm:teacher.json", "--student", "user_models.py:student", "--student-type",
               "one-step", "--student-arg", "width=4", "--student-arg", "seed=2", "--kind", "distribution", "--n", "64",
               "--steps", "4", "--json", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads(out.out)
    assert report["kind"] == "distribution" and len(report["warnings"]) == 1
    assert report["warnings"][0].startswith("CouplingWarning: user_models.py:student is a distribution-matching")
    assert report["student"]["args"] == {"width": 4, "seed": 2} and report["student"]["schedule"] == {}
    assert list(report)[-1] == "timing"
