"""Build qlayers' compiled library, qlayers._C.

The C++ CPU kernels are always built. CUDA kernels are built when QLAYERS_CUDA selects them:

    QLAYERS_CUDA=auto  (default) when torch is a CUDA build, nvcc is found and nvcc can build
                       against torch's CUDA headers; otherwise CPU kernels only, saying why
    QLAYERS_CUDA=1     always; fail with the reason when that is impossible
    QLAYERS_CUDA=0     never

Build against the torch already installed: ``pip install --no-build-isolation -e .``
(an isolated build would compile against a different torch, and the library would not load).
"""

import glob
import os
import platform
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
    """Headers of the CUDA libraries (cuBLAS, cuSPARSE, ...) that torch's pip wheels ship.

    torch's CUDA headers include cublas_v2.h and cusparse.h, which a bare toolkit may lack. The
    same folders also hold a CUDA runtime of torch's CUDA version, which may be newer than nvcc's:
    they must be searched after the toolkit's own headers (see _wheel_include_flags).
    """
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in getattr(nvidia, "__path__", []):
        found += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return list(dict.fromkeys(path for path in found if os.path.isdir(path)))


def _wheel_include_flags(compiler):
    """Flags that put the wheels' header folders after the toolkit's (which torch passes with -I).

    Ahead of it, nvcc would read the wheels' CUDA runtime headers, and a torch built for a newer CUDA
    than this nvcc stops the build: "CUDA compiler and CUDA toolkit headers are incompatible".
    nvcc has no -idirafter; its -isystem folders come after every -I folder.
    """
    option = "-isystem" if compiler == "nvcc" else "-idirafter"
    return [flag for path in _wheel_cuda_includes() for flag in (option, path)]


def _run(command):
    """A command's exit status and its output (stdout and stderr), or an OSError's message."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return done.returncode, (done.stderr + done.stdout).strip()


def _nvcc_problem(toolkit):
    """Why nvcc cannot build against torch's CUDA headers, or None when it can.

    Two cheap checks that fail the way the build would, without pages of compiler output:
    - torch's build helpers refuse an nvcc of another CUDA major version than torch's (the default
      torch 2.9 and 2.10 wheels are CUDA 12 builds, torch 2.11 and later CUDA 13);
    - preprocessing the CUDA sources with the build's include folders (about a second) stops at the
      same #error as the build (a torch built for a newer CUDA than nvcc, a host compiler nvcc does
      not support, a missing header). No -std: torch picks it inside its build helpers (C++17 for
      torch 2.11, C++20 for 2.14), and the headers the kernels include preprocess under nvcc's default.
    """
    fix = "a CUDA toolkit that matches torch's CUDA version, found through CUDA_HOME or PATH, fixes it"
    nvcc = os.path.join(toolkit, "bin", "nvcc")
    _, output = _run([nvcc, "--version"])
    release = re.search(r"release (\d+)\.(\d+)", output)
    if release is None:
        return f"`{nvcc} --version` did not give a CUDA release: {output[-200:]}"
    if release.group(1) != torch.version.cuda.split(".")[0]:
        return (
            f"nvcc {release.group(1)}.{release.group(2)} in {toolkit} and the CUDA {torch.version.cuda} "
            f"of torch {torch.__version__} differ in major version, which torch's build refuses ({fix})"
        )

    cpp_extension.CUDA_HOME = toolkit  # include_paths() reads it
    includes = [os.path.join(ROOT, CSRC)] + cpp_extension.include_paths(device_type="cuda")
    flags = [f"-I{path}" for path in includes] + _wheel_include_flags("nvcc") + cpp_extension.COMMON_NVCC_FLAGS
    for source in sorted(glob.glob(os.path.join(ROOT, CSRC, "cuda", "*.cu"))):
        status, output = _run([nvcc, "-E", "-x", "cu", source, "-o", os.devnull] + flags)
        if status != 0:
            lines = output.splitlines() or ["no output"]
            error = next((line for line in lines if "error" in line), lines[0]).strip()
            return (
                f"nvcc {release.group(1)}.{release.group(2)} in {toolkit} cannot build against the CUDA "
                f"{torch.version.cuda} headers of torch {torch.__version__}: {error} ({fix})"
            )
    return None


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
    if not problems:
        problem = _nvcc_problem(toolkit)
        if problem:
            problems.append(problem)
    if problems:
        if mode == "1":
            raise SystemExit(
                "QLAYERS_CUDA=1 but CUDA kernels cannot be built: "
                + "; ".join(problems)
                + ". QLAYERS_CUDA=0 builds the CPU kernels only."
            )
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
    sources = [os.path.join(CSRC, "qlayers.cpp")] + sorted(
        glob.glob(os.path.join(CSRC, "cpu", "*.cpp")) + glob.glob(os.path.join(CSRC, "layers", "*.cpp"))
    )
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
        include_dirs=[os.path.join(ROOT, CSRC)],
        define_macros=[("QLAYERS_WITH_CUDA", None)],
        extra_compile_args={
            "cxx": cxx_flags + _wheel_include_flags("g++"),
            "nvcc": ["-O3", "-lineinfo"] + _wheel_include_flags("nvcc"),
        },
        extra_link_args=link_flags,
    )


# Sources named *_avx2.cpp hold kernels compiled for AVX2 and FMA, as ATen compiles its own: at::vec
# then uses 8-float vectors and Sleef's exp and tanh. The code picks them at run time only on a CPU
# that has both; elsewhere (another architecture, a compiler without the flags) the file builds its
# portable fallback. distutils compiles one source at a time through _compile, which is where a
# source gets flags of its own.
AVX2_FLAGS = ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]


class BuildExtension(cpp_extension.BuildExtension):
    def build_extension(self, ext):
        compile_one = self.compiler._compile
        x86 = platform.machine().lower() in ("x86_64", "amd64")

        def compile_with_isa(obj, src, ext_name, cc_args, extra_postargs, pp_opts):
            if x86 and src.endswith("_avx2.cpp"):
                if isinstance(extra_postargs, dict):
                    extra_postargs = {**extra_postargs, "cxx": extra_postargs.get("cxx", []) + AVX2_FLAGS}
                else:
                    extra_postargs = list(extra_postargs or []) + AVX2_FLAGS
            return compile_one(obj, src, ext_name, cc_args, extra_postargs, pp_opts)

        self.compiler._compile = compile_with_isa
        super().build_extension(ext)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False, use_ninja=False)},
)
