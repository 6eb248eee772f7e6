# One command to run recemb, one to test it. Each sets up .venv on first use
# with the pinned stack of DESIGN.md §9 (see requirements/).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= configs/quickstart.yaml
PYTEST_ARGS ?=
STAMP   = $(VENV)/.installed

.PHONY: setup run test test-fast lint clean help gpu-check

help:
	@echo "make run   [CONFIG=configs/quickstart.yaml]  set up .venv and run the pipeline"
	@echo "make test  [PYTEST_ARGS=...]                 set up .venv and run every test that needs no GPU"
	@echo "make test-fast                                the quick subset (no slow multi-worker/cluster tests)"
	@echo "make lint                                     ruff (check + format --check) and mypy"
	@echo "make gpu-check                                the CUDA paths: gpu tests + a throughput table (skips without CUDA)"

setup: $(STAMP)

# torchrec goes in last with --no-deps: its metadata names the CUDA fbgemm-gpu,
# which would replace fbgemm-gpu-cpu and break `import torchrec`. A venv whose
# creation was cut short (a python, no pip) is made afresh.
$(STAMP): requirements/runtime.txt requirements/pretrained.txt requirements/dev.txt requirements/torchrec.txt pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/runtime.txt -r requirements/pretrained.txt -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements/torchrec.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -c "import torch, torchrec, ray, polars, annoy, hnswlib, recemb"
	touch $@

run: $(STAMP)
	$(BIN)/recemb pipeline $(CONFIG)

# The real-cluster tests run in a pytest process of their own: their Ray head
# must not share the process with the session-wide in-process Ray of the rest.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" --ignore=tests/test_cluster.py $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m "not gpu" tests/test_cluster.py $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache

# Lint: ruff (E, F, I, B, UP; pyproject.toml), the formatter's check and mypy over the package.
# The CUDA paths on a GPU machine: tests marked gpu and a throughput table; says why and exits 0 without CUDA.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff check recemb serving jobs tests benchmarks
	$(BIN)/ruff format --check recemb serving jobs tests benchmarks
	$(BIN)/mypy
