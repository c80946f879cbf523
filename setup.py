"""Build qlayers' compiled library, qlayers._C.

The C++ CPU kernels are always built. CUDA kernels are built when QLAYERS_CUDA selects them:

    QLAYERS_CUDA=auto  (default) when torch is a CUDA build and nvcc is found
    QLAYERS_CUDA=1     always; fail loudly when that is impossible
    QLAYERS_CUDA=0     never

Build against the torch already installed: ``pip install --no-build-isolation -e .``
(an isolated build would compile against a different torch, and the library would not load).
"""

import glob
import os
import re
import shutil
import subprocess

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError as exc:  # pragma: no cover - only hit by a wrong install command
    raise SystemExit(
        "qlayers builds against an installed torch. Install torch first, then run "
        "`pip install --no-build-isolation -e .`"
    ) from exc

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
# Architectures to compile for when no GPU is visible to ask (torch's detection needs one).
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _cuda_switch():
    mode = os.environ.get("QLAYERS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"QLAYERS_CUDA must be one of auto, 0, 1; got {mode!r}")
    return mode


def _nvcc_toolkit():
    """The CUDA toolkit folder, or None when nvcc cannot be found.

    nvcc on PATH may be a wrapper script in another folder, so ask nvcc where it lives
    (its dry run prints _HERE_, the folder of the real binary) instead of guessing from PATH.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dry_run = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    here = re.search(r"^#\$ _HERE_=(.+)$", dry_run.stdout + dry_run.stderr, re.MULTILINE)
    bin_dir = here.group(1).strip() if here else os.path.dirname(os.path.realpath(nvcc))
    return os.path.dirname(bin_dir)


def _wheel_cuda_includes():
    """Headers of the CUDA libraries (cuBLAS, cuSPARSE, ...) that torch's pip wheels ship."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in getattr(nvidia, "__path__", []):
        found += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return list(dict.fromkeys(path for path in found if os.path.isdir(path)))


def _use_cuda():
    mode = _cuda_switch()
    if mode == "0":
        return False, None
    toolkit = _nvcc_toolkit()
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    if toolkit is None:
        problems.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if problems:
        if mode == "1":
            raise SystemExit("QLAYERS_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(problems))
        print("qlayers: building CPU kernels only (" + "; ".join(problems) + ")")
        return False, None
    return True, toolkit


def _openmp_flags():
    """at::parallel_for is inlined into our code: without OpenMP it would run on one thread.

    Torch's own libgomp is loaded first and shares its soname, so the kernels use its pool.
    """
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        return ["-fopenmp"]
    return []


def _extension():
    sources = [os.path.join(CSRC, "qlayers.cpp")] + sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    # torch's build helpers pick the C++ standard its headers need.
    cxx_flags = ["-O3"] + _openmp_flags()
    link_flags = _openmp_flags()
    with_cuda, toolkit = _use_cuda()
    if not with_cuda:
        return cpp_extension.CppExtension(
            "qlayers._C",
            sources,
            include_dirs=[os.path.join(ROOT, CSRC)],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )

    # torch.utils.cpp_extension reads CUDA_HOME when imported and at build time.
    os.environ["CUDA_HOME"] = toolkit
    cpp_extension.CUDA_HOME = toolkit
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    print(
        f"qlayers: building CPU and CUDA kernels (toolkit {toolkit}, "
        f"{len(cuda_sources)} CUDA sources, archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto')})"
    )
    return cpp_extension.CUDAExtension(
        "qlayers._C",
        sources + cuda_sources,
        include_dirs=[os.path.join(ROOT, CSRC)] + _wheel_cuda_includes(),
        define_macros=[("QLAYERS_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=link_flags,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
)
