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

# glibc malloc returns freed memory to the OS after every big autograd buffer; keeping it
# (no mmap, huge trim threshold) made a Z*/alpha training step ~2.2x faster on this CPU.
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736

.PHONY: venv test train demo clean

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

train: venv
	$(PY) train.py experiment=quickstart $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache outputs multirun
