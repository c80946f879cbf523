"""Loading the compiled library, qlayers._C, with the torch it was built against.

A C++ extension loads only with the torch it was compiled against: libtorch keeps no binary
interface across releases, and another torch fails with an undefined (mangled) symbol. The build
writes what it compiled against (torch and CUDA versions) beside the library, in _build_info.json,
and into the library itself (_C.build_info). That record is read before the library is loaded, so
that a torch changed since the build gives an ImportError naming both versions and the command that
fixes it.
"""

import hashlib
import importlib
import json
import os
from types import ModuleType
from typing import Any

import torch

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(PACKAGE_DIR, "_build_info.json")
# A qlayers run from its source folder (an editable install, or the folder on sys.path).
SOURCE_DIR = os.path.dirname(PACKAGE_DIR)
FROM_SOURCE = os.path.isfile(os.path.join(SOURCE_DIR, "setup.py"))


def _public(version: str) -> str:
    """A version without its local label (2.14.1+cu130 -> 2.14.1): the release the ABI belongs to."""
    return version.split("+")[0]


def _describe(version: str, cuda: str | None) -> str:
    return f"torch {version} ({f'CUDA {cuda}' if cuda else 'CPU-only'})"


def _rebuild_command() -> str:
    if FROM_SOURCE:
        return f"`pip install --no-build-isolation -e {SOURCE_DIR}`"
    return "`pip install --no-build-isolation <the qlayers source folder or sdist>`, or a qlayers wheel built for it"


def mismatch(record: dict[str, Any]) -> str | None:
    """Why a library with this build record cannot load with the running torch, or None."""
    built = _describe(record["torch"], record["torch_cuda"])
    running = _describe(torch.__version__, torch.version.cuda)
    cuda = torch.version.cuda
    problem = None
    if _public(record["torch"]) != _public(torch.__version__):
        problem = f"qlayers was built against {built}, but {running} is installed"
    elif record["cuda_kernels"] and cuda is None:
        problem = f"qlayers was built with CUDA kernels against {built}, but {running} is installed"
    elif record["cuda_kernels"] and record["torch_cuda"].split(".")[0] != str(cuda).split(".")[0]:
        # The kernels link torch's CUDA runtime by its major version (libcudart.so.13).
        problem = f"qlayers' CUDA kernels were built against {built}, but {running} is installed"
    if problem is None:
        return None
    return (
        f"{problem}, and a compiled extension loads only with the torch it was built against. Either "
        f"install that torch again: `pip install torch=={_public(record['torch'])}`; or rebuild qlayers "
        f"against this one: {_rebuild_command()}."
    )


def build_record() -> dict[str, Any] | None:
    """The build record beside the library, or None where there is none (no library built yet)."""
    try:
        with open(BUILD_INFO) as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def load() -> ModuleType:
    """Import qlayers._C (which registers torch.ops.qlayers.*), or raise an ImportError that says why not."""
    record = build_record()
    problem = mismatch(record) if record else None
    if problem:
        raise ImportError(problem)
    try:
        library = importlib.import_module("qlayers._C")
    except ImportError as exc:
        built = f"It was built against torch {record['torch']}" if record else "It has no build record"
        if FROM_SOURCE:
            fix = f"Build it against the torch installed now (torch {torch.__version__}): {_rebuild_command()}"
        else:
            fix = f"Reinstall qlayers for the torch installed now (torch {torch.__version__})"
        raise ImportError(
            f"qlayers' compiled library (qlayers._C) is missing or failed to load: {exc}. {built}. {fix}."
        ) from exc
    # The library's own record, for a library whose record file went missing or stale.
    problem = mismatch(json.loads(library.build_info))
    if problem:
        raise ImportError(problem)
    return library


# The Python that runs inside a compiled graph without being traced into it: the operators' fake
# kernels and registered autograd. Dynamo sees the wrappers' code itself.
_REGISTRATION_DIR = os.path.join(PACKAGE_DIR, "ops")


def library_fingerprint(library_path: str) -> str:
    """A short digest of the installed operators' code: the compiled library and the registrations.

    By size and modification time, so that it costs a few stat calls at import: any rebuild or
    reinstall changes it (a reinstall of the same code costs one recompilation, never a stale graph).
    """
    digest = hashlib.sha256()
    files = [library_path] + sorted(
        os.path.join(_REGISTRATION_DIR, name) for name in os.listdir(_REGISTRATION_DIR) if name.endswith(".py")
    )
    for path in files:
        status = os.stat(path)
        digest.update(f"{os.path.basename(path)}:{status.st_size}:{status.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def tag_compile_caches(library: ModuleType) -> None:
    """Make torch.compile's on-disk caches tell this build of the operators from any other.

    torch.compile keys its caches (inductor's FX graph cache, AOTAutograd's cache) on the traced graph,
    which names a custom operator but holds none of its code: after an upgrade that changes what an
    operator's autograd calls, a warm cache would reload graphs of the old build (seen: a backward
    graph calling an operator since renamed, an AttributeError). torch's cache_key_tag goes into every
    such key; qlayers appends its fingerprint to whatever tag the user set, once.
    """
    config = torch.compiler.config
    if not hasattr(config, "cache_key_tag"):  # torch without the tag has no such caches to break
        return
    tag = f"qlayers-{library_fingerprint(str(library.__file__))}"
    current = config.cache_key_tag
    if tag not in current.split("+"):
        config.cache_key_tag = f"{current}+{tag}" if current else tag
