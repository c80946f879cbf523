# `make test` and `make bench` set everything up on a fresh machine (Python 3.10+, a C++ compiler):
# a virtual environment in .venv, torch, then qlayers built against that torch.
#
#   TORCH_SPEC   the torch to install (default: the CUDA build a plain `pip install torch` gives on
#                Linux; TORCH_SPEC=torch==2.13.0 gives a quick CPU-only venv where that wheel exists)
#   QLAYERS_CUDA auto | 0 | 1: build the CUDA kernels (see setup.py)
#   PYTHON       the interpreter that creates the venv

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
QLAYERS_CUDA ?= auto
MAX_JOBS ?= 2
export QLAYERS_CUDA MAX_JOBS

BIN := $(VENV)/bin
PY := $(BIN)/python
DEV_PACKAGES := setuptools wheel numpy pytest pytest-benchmark hypothesis tqdm matplotlib ruff mypy
# One stamp per torch spec and package list: changing either reinstalls and rebuilds qlayers.
DEPS_STAMP := $(VENV)/.deps-$(shell printf '%s' '$(TORCH_SPEC) $(DEV_PACKAGES)' | cksum | cut -d' ' -f1)
BUILD_STAMP := $(VENV)/.built
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

LINTED := qlayers benchmarks tests examples setup.py

.PHONY: install lint test bench clean

$(DEPS_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH_SPEC)" $(DEV_PACKAGES)
	rm -f $(VENV)/.deps-*
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	# -v: the log shows which kernels were built, and each compiler (g++, nvcc) command.
	$(BIN)/pip install -v --no-build-isolation --no-deps -e .
	touch $@

install: $(BUILD_STAMP)

# Style and types: ruff (lint and format) and mypy on the package; part of `make test`.
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

test: lint
	$(PY) -m pytest tests

# The main job: the comparison table on stdout, and JSON, PNG and Markdown copies in bench-out/.
BENCH_OUT ?= bench-out
BENCH_ARGS ?=
bench: install
	$(PY) benchmarks/compare.py $(BENCH_ARGS) --json $(BENCH_OUT)/compare.json \
		--plot $(BENCH_OUT)/compare.png --markdown $(BENCH_OUT)/compare.md

clean:
	rm -rf $(VENV) build *.egg-info qlayers/_C*.so
