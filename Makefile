PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test test-slow lint docs demo clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"

test:
	$(PYTHON) -m pytest -q

test-slow:
	$(PYTHON) -m pytest -q -m slow

lint:
	$(PYTHON) -m ruff check pfd tests benchmarks examples

docs:
	$(PYTHON) -m mkdocs build --strict

demo:
	pfd demo

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
