"""The mtog / dynamics / bias-variance subcommands (tiny runs)."""

import json

import pytest

from pfd.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = ["--depth", "1", "--n-eval", "32", "--no-progress", "--teacher", "hexagon2d"]


def test_mtog_cli_writes_json_plot_and_resumes(tmp_path, capsys):
    args = ["mtog", "--n-trains", "2,4,8,16", "--widths", "4,8", "--train-steps", "2", "--out-dir", str(tmp_path), *TINY]
    assert main(args) == 0
    res = json.loads((tmp_path / "mtog.json").read_text())
    assert len(res["runs"]) == 8 and (tmp_path / "mtog.png").stat().st_size > 0
    assert "best-collapsing exponent" in capsys.readouterr().out
    lines = (tmp_path / "mtog_runs.jsonl").read_text().splitlines()
    assert main(args) == 0  # everything already done: nothing re-run, nothing appended
    assert (tmp_path / "mtog_runs.jsonl").read_text().splitlines() == lines
    assert json.loads((tmp_path / "mtog.json").read_text())["runs"] == res["runs"]


def test_dynamics_and_bias_variance_cli(tmp_path):
    assert main(["dynamics", "--n-train", "4", "--width", "8", "--epochs", "4", "--eval-every", "2",
                 "--out-dir", str(tmp_path), *TINY]) == 0
    dyn = json.loads((tmp_path / "dynamics.json").read_text())
    assert [r["epoch"] for r in dyn["rows"]] == [0, 2, 4]
    assert (tmp_path / "dynamics.png").exists()
    assert main(["bias-variance", "--n-train", "4", "--k", "2", "--width", "8", "--train-steps", "2", "--no-plot",
                 "--out-dir", str(tmp_path), *TINY]) == 0
    (study,) = json.loads((tmp_path / "bias_variance.json").read_text())["studies"]
    assert study["students"]["identity_residual"] < 1e-14
    st = study["students"]
    assert st["var"] == pytest.approx(2 * st["var_plugin"], rel=1e-12)  # K = 2: var = K/(K-1) var_plugin
    assert st["bias2"] == pytest.approx(st["bias2_plugin"] - st["var"] / 2, rel=1e-9, abs=1e-15)
    assert not (tmp_path / "bias_variance.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dynamics", "--epochs", "0"], "--epochs must be >= 1"),
        (["mtog", "--n-trains", "1,4"], "--n-trains must be >= 2"),
        (["bias-variance", "--k", "1"], "--k >= 2"),
        (["mtog", "--teacher", "nope"], "teacher must be one of"),
        (["dynamics", "--out-dir", "/nonexistent/folder"], "is not an existing folder"),
        (["dynamics", "--n-eval", "1"], "--n-eval must be >= 2"),
    ],
)
def test_cli_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_int_list_rejects_garbage(capsys):
    with pytest.raises(SystemExit):
        main(["mtog", "--widths", "a,b"])
    assert "comma-separated integers" in capsys.readouterr().err
