"""Packaging behaviour: the compiled library and its build record, setup.py's refusals and metadata.

What needs a second torch or a fresh venv (isolated `pip install .`, two torches in one source tree,
a header edit, the sdist and the wheel installed) is in scripts/check-install.sh, which CI runs.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

import qlayers
from qlayers import _library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_TORCH = torch.__version__.split("+")[0]


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
    assert f"pip install --no-build-isolation -e {ROOT}" in result.stderr
    assert f"torch {torch.__version__}" in result.stderr


def test_build_record_is_the_running_torch_and_the_library_holds_it():
    record = _library.build_record()
    assert record == json.loads(qlayers._C.build_info)
    assert record["torch"] == torch.__version__
    assert record["torch_cuda"] == torch.version.cuda
    assert record["python"] == f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert record["cuda_kernels"] == torch._C._dispatch_has_kernel_for_dispatch_key("qlayers::hamilton_expand", "CUDA")
    assert (record["nvcc"] is not None) == record["cuda_kernels"]


def import_copy(tmp_path, record, from_source):
    """Import a copy of the installed package whose build record says `record`, as a wheel install
    (site-packages) or a source tree (a setup.py beside it) would hold it."""
    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(qlayers.__file__), site / "qlayers", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "qlayers" / "_build_info.json").write_text(json.dumps(record))
    if from_source:
        (site / "setup.py").write_text("")
    env = dict(os.environ, PYTHONPATH=str(site))
    code = "import qlayers; print(qlayers.__file__)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env), site


def record_for(torch_version, torch_cuda, cuda_kernels):
    return {
        "torch": torch_version,
        "torch_cuda": torch_cuda,
        "cuda_kernels": cuda_kernels,
        "nvcc": torch_cuda if cuda_kernels else None,
        "python": "cp311",
    }


@pytest.mark.parametrize("from_source", [False, True], ids=["wheel", "source"])
def test_import_with_another_torch_names_both_versions_and_the_fix(tmp_path, from_source):
    # A torch older than any supported one, so never the running one.
    result, site = import_copy(tmp_path, record_for("1.13.1+cu117", "11.7", False), from_source)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: qlayers was built against torch 1.13.1+cu117 (CUDA 11.7), but torch "), last
    assert f"torch {torch.__version__} (" in last
    assert "`pip install torch==1.13.1`" in last
    if from_source:
        assert f"`pip install --no-build-isolation -e {site}`" in last
    else:  # a wheel user has no source folder to rebuild in
        assert "-e " not in last
        assert "sdist" in last
    assert "undefined symbol" not in result.stderr


def test_import_with_the_build_torch_uses_the_copy(tmp_path):
    # The same record as the real one loads: the copy above fails because of its record alone.
    result, site = import_copy(tmp_path, _library.build_record(), from_source=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(site / "qlayers" / "__init__.py")


@pytest.mark.parametrize(
    "record, running, problem",
    [
        (record_for("2.14.1+cu130", "13.0", False), ("2.14.1+cpu", None), None),  # same release, CPU kernels
        (record_for("2.14.1", None, False), ("2.14.1+cu130", "13.0"), None),
        (record_for("2.14.1+cu130", "13.0", True), ("2.14.1+cu132", "13.2"), None),  # same CUDA major
        (record_for("2.13.0", None, False), ("2.14.1", None), "built against torch 2.13.0 (CPU-only), but torch 2.14"),
        (record_for("2.14.1+cu130", "13.0", True), ("2.14.1+cpu", None), "built with CUDA kernels against"),
        (record_for("2.14.1+cu130", "13.0", True), ("2.14.1+cu128", "12.8"), "CUDA kernels were built against"),
    ],
)
def test_mismatch_rules(monkeypatch, record, running, problem):
    monkeypatch.setattr(torch, "__version__", running[0])
    monkeypatch.setattr(torch.version, "cuda", running[1])
    found = _library.mismatch(record)
    if problem is None:
        assert found is None
    else:
        assert problem in found
        assert f"`pip install torch=={record['torch'].split('+')[0]}`" in found


def run_setup(*args, env=None, prelude=""):
    """setup.py as pip's build backend runs it (as __main__), after `prelude`."""
    code = (
        "import sys\n"
        f"{prelude}\n"
        f"sys.argv = ['setup.py'] + {list(args)!r}\n"
        "exec(compile(open('setup.py').read(), 'setup.py', 'exec'), {'__name__': '__main__', '__file__': 'setup.py'})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, **(env or {}))
    )


HIDE_TORCH = "sys.modules['torch'] = None  # as pip's build isolation hides it"


def test_isolated_build_is_refused_at_once_naming_the_command(tmp_path):
    # pip's first wheel-specific hook is prepare_metadata_for_build_wheel, which runs dist_info.
    result = run_setup("dist_info", "--output-dir", str(tmp_path), prelude=HIDE_TORCH)
    assert result.returncode != 0
    assert f"torch {PUBLIC_TORCH} is installed, but this build cannot import it" in result.stderr
    assert "build isolation" in result.stderr
    assert "pip install --no-build-isolation ." in result.stderr
    assert not list(tmp_path.iterdir())


def test_building_without_torch_is_refused(tmp_path):
    result = run_setup("build_ext", "--build-lib", str(tmp_path), prelude=HIDE_TORCH)
    assert result.returncode != 0
    assert "pip install --no-build-isolation ." in result.stderr


def test_no_torch_anywhere_says_install_torch_first():
    # The environment itself has no torch (the child that looks past build isolation finds none).
    code = (
        "import runpy; setup = runpy.run_path('setup.py')['_refuse_without_torch'].__globals__\n"
        "setup['_torch_hidden_from_this_build'] = lambda: None\n"
        "setup['TORCH_IMPORT_ERROR'] = ImportError(\"No module named 'torch'\")\n"
        "setup['_refuse_without_torch']()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    assert "qlayers: torch is not installed (No module named 'torch'). qlayers compiles against" in result.stderr
    assert "install torch first" in result.stderr


def test_old_setuptools_is_refused_with_the_fix():
    result = run_setup("--name", prelude="import setuptools; setuptools.__version__ = '65.5.0'")
    assert result.returncode != 0
    assert "qlayers: building needs setuptools 77 or newer; this environment has setuptools 65.5.0" in result.stderr
    assert "pip install -U setuptools" in result.stderr


def test_wheel_metadata_pins_the_torch_it_builds_against(tmp_path):
    result = run_setup("dist_info", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (metadata,) = tmp_path.glob("qlayers-*.dist-info/METADATA")
    text = metadata.read_text()
    assert re.findall(r"^Requires-Dist: torch.*$", text, re.M) == [f"Requires-Dist: torch=={PUBLIC_TORCH}"]
    assert "License-Expression: BSD-3-Clause" in text


def tracked_files():
    try:
        listed = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs the git checkout, to list the tracked files")
    return {path for path in listed.stdout.splitlines() if not path.startswith(".ci/") and path != ".gitignore"}


def test_sdist_needs_no_torch_and_holds_every_tracked_file(tmp_path):
    # The old sdist lacked every header and .cu file, so it could not build anywhere.
    result = run_setup("sdist", "--dist-dir", str(tmp_path), prelude=HIDE_TORCH)
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("qlayers-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        pkg_info = tar.extractfile(tar.getmember(f"{archive.name[: -len('.tar.gz')]}/PKG-INFO")).read().decode()
    assert tracked_files() <= names
    assert not [name for name in names if name.endswith((".so", ".o")) or name.endswith("_build_info.json")]
    assert "Requires-Dist: torch>=2.9" in pkg_info  # whoever builds it pins their own torch
    assert "Dynamic: requires-dist" in pkg_info
    assert "LICENSE" in names


def test_unknown_cuda_switch_is_refused():
    result = run_setup("--name", env={"QLAYERS_CUDA": "maybe"})
    assert result.returncode != 0
    assert "QLAYERS_CUDA must be one of auto, 0, 1; got 'maybe'" in result.stderr


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only torch build to fail")
def test_forced_cuda_fails_loudly_on_cpu_torch(tmp_path):
    result = run_setup("build_ext", "--build-lib", str(tmp_path), env={"QLAYERS_CUDA": "1"})
    assert result.returncode != 0
    assert "QLAYERS_CUDA=1 but CUDA kernels cannot be built" in result.stderr
    assert "CPU-only build" in result.stderr


def test_build_folders_are_per_torch_and_kernel_set():
    # Objects compiled against one torch are never linked against another (the old build/ was shared).
    code = (
        "import json, runpy; s = runpy.run_path('setup.py')\n"
        "record = s['build_record'](None)\n"
        "cuda = dict(record, cuda_kernels=True, nvcc='13.0')\n"
        "other = dict(record, torch='2.9.0')\n"
        "print(json.dumps([s['_cuda_toolkit'](), s['build_folder'](record), s['build_folder'](cuda), "
        "s['build_folder'](other)]))"
    )
    env = dict(os.environ, QLAYERS_CUDA="0")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    toolkit, cpu, cuda, other = json.loads(result.stdout.splitlines()[-1])
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert toolkit == [None, None]  # QLAYERS_CUDA=0: CPU kernels only
    assert cpu == os.path.join(ROOT, "build", f"torch{torch.__version__}-cpu-{python}")
    assert cuda == os.path.join(ROOT, "build", f"torch{torch.__version__}-cuda13.0-{python}")
    assert other == os.path.join(ROOT, "build", f"torch2.9.0-cpu-{python}")


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None, reason="x86-64 with objdump")
def test_avx2_gate_kernels_are_compiled_for_avx2():
    # torch's build gives every source the same flags: setup.py compiles the *_avx2.cpp sources on
    # their own with -mavx2 -mfma; without those flags the file builds a stub that never runs.
    listing = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", qlayers._C.__file__], capture_output=True, text=True
    ).stdout
    # Each function's disassembly, by name (objdump: "ADDRESS <NAME>:" then its instructions).
    functions = re.findall(r"^[0-9a-f]+ <([^\n]*)>:\n(.*?)(?=\n\n|\Z)", listing, re.M | re.S)
    vector_run = re.compile(r"long qlayers::cpu::avx2_kernels::\w+_run<.*VectorIo<float>")
    vector_kernels = [body for name, body in functions if vector_run.match(name)]
    assert len(vector_kernels) == 2, "the AVX2 forward and backward gate kernels are missing"
    assert all("%ymm" in body for body in vector_kernels)


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
