# The two set-up commands of the README: `make train` and `make test`. Both create .venv on
# first use: torch is installed pinned *first* (an unpinned torch pulls a multi-GB CUDA build),
# then the project with its test extras, then matbench 0.6 without its pins (they do not install
# on Python 3.11; it imports fine beside current matminer/scikit-learn/monty from the extras).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
TORCH_VERSION ?= 2.13.0
export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# glibc malloc settings are applied at run time by every entry point (mf_lightning/runtime.py),
# so make, SLURM and notebooks all get them; no MALLOC_* variables here.

.PHONY: venv test fuzz lint train bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps matbench==0.6
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# Opt-in: property-based tests with fresh random examples (1,000 per test; MF_FUZZ_EXAMPLES=N
# for more). `make test` runs the same tests derandomised, so CI is deterministic.
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -m fuzz $(PYTEST_ARGS)

train: venv
	$(PY) train.py experiment=quickstart $(ARGS)

# ruff (configured in pyproject.toml); tests/test_lint.py runs the same check in `make test`
lint: venv
	$(PY) -m ruff check .

# Speed and memory benchmarks (about an hour on 2 cores; idle machine): appends to bench/RESULTS.md
bench: venv
	PYTHON=$(abspath $(PY)) bench/run_all.sh

clean:
	rm -rf $(VENV) .pytest_cache outputs multirun
