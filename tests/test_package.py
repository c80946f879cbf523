"""Packaging behaviour: the compiled library, its error when missing, and the build switch."""

import os
import re
import subprocess
import sys

import pytest
import torch

import qlayers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ops_are_compiled_kernels():
    # The CPU kernels come from the C++ library, not from a Python fallback.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("qlayers::hamilton_expand", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("qlayers::hamilton_reduce", "CPU")
    assert qlayers._C.__file__.endswith((".so", ".pyd"))


def test_import_qlayers_first_in_a_fresh_interpreter():
    # The compiled library links against libtorch: qlayers must load torch itself.
    code = "import qlayers; print(qlayers.QLinear(8, 4)(__import__('torch').randn(2, 8)).shape)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([2, 4])" in result.stdout


def test_missing_library_says_how_to_build():
    # sys.modules[name] = None makes that import fail as a missing library would.
    code = "import sys; sys.modules['qlayers._C'] = None; import qlayers"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr


def run_setup(switch):
    env = dict(os.environ, QLAYERS_CUDA=switch)
    return subprocess.run([sys.executable, "setup.py", "--name"], capture_output=True, text=True, cwd=ROOT, env=env)


def test_unknown_cuda_switch_is_refused():
    result = run_setup("maybe")
    assert result.returncode != 0
    assert "QLAYERS_CUDA must be one of auto, 0, 1; got 'maybe'" in result.stderr


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only torch build to fail")
def test_forced_cuda_fails_loudly_on_cpu_torch():
    result = run_setup("1")
    assert result.returncode != 0
    assert "QLAYERS_CUDA=1 but CUDA kernels cannot be built" in result.stderr
    assert "CPU-only build" in result.stderr


def test_cpu_only_switch_builds_cpu_kernels():
    result = run_setup("0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "qlayers"


def test_pyproject_lists_every_package():
    # A package missing from the list is missing from a built wheel (the editable install hides it).
    root = ROOT
    text = open(os.path.join(root, "pyproject.toml")).read()
    listed = set(re.search(r"^packages = \[(.*)\]$", text, re.M).group(1).replace('"', "").replace(" ", "").split(","))
    found = {
        os.path.relpath(folder, root).replace(os.sep, ".")
        for folder, _, files in os.walk(os.path.join(root, "qlayers"))
        if "__init__.py" in files
    }
    assert listed == found
