# Two commands for a fresh machine (Python 3.11, no torch):
#   make demo   installs everything and runs the demo
#   make test   installs everything and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install serve-venv lint bench clean

demo: install
	$(BIN)/stew demo

# The layer contracts first (seconds): an import that breaks them fails the tests.
test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider

install: $(VENV)/.installed

# torch==2.13.0 is pinned exactly, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# A torch-free deployment environment in .venv-serve: stew predict on ONNX models, stew serve.
serve-venv: pyproject.toml requirements.lock requirements-serve.txt
	$(PYTHON) -m venv .venv-serve
	.venv-serve/bin/pip install --quiet --disable-pip-version-check -r requirements-serve.txt
	.venv-serve/bin/pip install --quiet --disable-pip-version-check --no-deps -e .

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python benchmarks/bench_dcca.py

clean:
	rm -rf $(VENV) .venv-serve demo-out .pytest_cache
