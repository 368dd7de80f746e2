"""Every ```python block of the README and docs/*.md runs (blocks of one page share a namespace)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
@pytest.mark.usefixtures("one_thread")  # tiny models (the quickstart's UNet) run ~15x slower with OpenMP threads on a busy CPU
def test_examples_run(page, tmp_path, monkeypatch):
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    ns: dict = {"__name__": f"doc_{page.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), ns)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"{page.name}: python block {i} failed: {exc!r}\n{code}") from exc


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert "make install && pfd demo" in first_block and "make test" in first_block


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_solver_table_is_the_registry():
    """docs/performance.md shows the built-in solvers exactly as pfd.solvers.SOLVERS declares them."""
    from pfd.solvers import SOLVERS, solver_table

    assert solver_table() in (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert [s.nfe(18) for s in SOLVERS.values() if s.backend == "builtin"] == [18, 35, 35, 69, 18, 18, 18, 18, 18]
