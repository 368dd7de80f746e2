"""Models kept as torch.save files: whole pickled modules (only with --allow-pickle, and the refusal says
why and how to opt in) and state_dict files (torch weights-only and safetensors) on top of a factory."""

from __future__ import annotations

import json

import pytest
import torch

import pfd
from pfd.spec import load_map

MODULE = (
    "import torch\n"
    "class Student(torch.nn.Module):\n"
    "    event_shape = (2,)\n"
    "    def __init__(self, seed=0):\n"
    "        super().__init__()\n"
    "        g = torch.Generator().manual_seed(seed)\n"
    "        self.lin = torch.nn.Linear(2, 2).double()\n"
    "        with torch.no_grad():\n"
    "            self.lin.weight.copy_(torch.randn(2, 2, generator=g, dtype=torch.float64))\n"
    "            self.lin.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))\n"
    "    def forward(self, z):\n"
    "        return torch.tanh(self.lin(z))\n"
    "def make(seed=0):\n"
    "    return Student(seed)\n"
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def files(tmp_path, monkeypatch):
    (tmp_path / "filemodels.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import filemodels

    importlib.reload(filemodels)
    trained = filemodels.make(seed=7)
    torch.save(trained, tmp_path / "student.pt")
    torch.save(trained.state_dict(), tmp_path / "student_weights.pt")
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "checkpoint.ckpt")
    torch.save(torch.nn.Linear(3, 2).double().state_dict(), tmp_path / "wrong_weights.pt")
    (tmp_path / "teacher.json").write_text(json.dumps(
        pfd.GaussianMixture([1.0, 1.0], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1]).to_dict()))
    return tmp_path, trained


def _outputs(m, seed=0):
    return m(pfd.canonical_noise(32, (2,), seed=seed))


def test_pickled_module_needs_allow_pickle_and_says_why(files):
    folder, trained = files
    with pytest.raises(ValueError) as info:
        load_map(str(folder / "student.pt"), adapter="one-step", label="--student")
    text = str(info.value)
    assert text.startswith("--student") and "runs code" in text and "--allow-pickle" in text
    assert "corrupt" not in text.lower() and "weights_only" not in text
    m = load_map(str(folder / "student.pt"), adapter="one-step", allow_pickle=True)
    with torch.no_grad():
        expect = trained(pfd.canonical_noise(32, (2,), seed=0).double())
    assert torch.equal(_outputs(m), expect)


def test_state_dict_files_load_on_top_of_a_factory(files, monkeypatch):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    folder, trained = files
    save_file(trained.state_dict(), str(folder / "student.safetensors"))
    fresh = load_map("filemodels:make", adapter="one-step")
    ref = load_map(str(folder / "student.pt"), adapter="one-step", allow_pickle=True)
    assert not torch.equal(_outputs(fresh), _outputs(ref))  # seed 0 differs from the trained seed 7
    for name in ("student_weights.pt", "checkpoint.ckpt", "student.safetensors"):
        m = load_map("filemodels:make", adapter="one-step", weights=str(folder / name))
        assert torch.equal(_outputs(m), _outputs(ref)), name


@pytest.mark.parametrize("spec, kw, match", [
    ("student_weights.pt", {}, "holds a state_dict .*--student-weights"),
    ("filemodels:make", {"weights": "wrong_weights.pt"}, "do not fit the model: missing keys"),
    ("filemodels:make", {"weights": "student.pt"}, "not a weights-only file"),
    ("filemodels:make", {"weights": "missing.pt"}, "no such weights file"),
    ("gmm:teacher.json", {"weights": "student_weights.pt"}, "weights apply to a factory SPEC"),
    ("garbage.pt", {}, "not a loadable TorchScript file .* nor a torch.save file"),
])
def test_bad_model_files_are_clear(files, spec, kw, match):
    folder, _ = files
    (folder / "garbage.pt").write_bytes(b"not a model at all")
    if not spec.startswith(("filemodels", "gmm:")):
        spec = str(folder / spec)
    spec = spec.replace("gmm:", f"gmm:{folder}/")
    kw = {k: str(folder / v) for k, v in kw.items()}
    with pytest.raises(ValueError, match=match):
        load_map(spec, adapter="denoiser" if spec.startswith("gmm:") else "one-step", label="--student", **kw)


def test_score_cli_pickle_flag_and_weights(files, capsys):
    from pfd.cli import main

    folder, _ = files
    base = ["score", "--reference", f"gmm:{folder / 'teacher.json'}", "--student-type", "one-step", "--n", "32",
            "--steps", "6", "--no-progress", "--json"]
    rc = main([*base, "--student", str(folder / "student.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "--allow-pickle" in err and "runs code" in err
    assert main([b for b in base if b != "--no-progress"] + ["--student", str(folder / "student.pt"), "--allow-pickle"]) == 0
    captured = capsys.readouterr()
    pickled = json.loads(captured.out)
    assert "PFD reference vs student" in captured.err  # the progress bar says what it runs
    assert main([*base, "--student", "filemodels:make", "--student-weights", str(folder / "student_weights.pt")]) == 0
    weighted = json.loads(capsys.readouterr().out)
    assert pickled["value"] == weighted["value"] > 0
    assert weighted["student"]["weights"].endswith("student_weights.pt") and pickled["settings"]["allow_pickle"]
