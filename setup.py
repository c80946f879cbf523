"""Build qlayers' compiled library, qlayers._C, against the torch installed in this environment.

    pip install ninja                        (optional: compile in parallel, MAX_JOBS at a time)
    pip install --no-build-isolation .       (or -e . for development)

A C++ extension loads only with the torch it was compiled against, so qlayers builds against the
torch it will run with. pip's build isolation (its default) hides that torch: the build then stops at
once and says what to type instead. The wheel pins the torch it was built with (torch==X.Y.Z), and a
build record beside the library (qlayers/_build_info.json, also compiled into it) lets
`import qlayers` name both versions when torch has changed since.

The C++ CPU kernels are always built. CUDA kernels are built when QLAYERS_CUDA selects them:

    QLAYERS_CUDA=auto  (default) when torch is a CUDA build, nvcc is found and nvcc can build
                       against torch's CUDA headers; otherwise CPU kernels only, saying why
    QLAYERS_CUDA=1     always; fail with the reason when that is impossible
    QLAYERS_CUDA=0     never
    QLAYERS_DEBUG=1    keep debug information (by default the library has none, as a release wheel)

Objects go to build/torch<version>-<kernels>-<python>/: a build against one torch never reuses
objects compiled against another, and ninja, which tracks header dependencies, recompiles only what
changed. Making an sdist needs neither torch nor nvcc: the library's sources and flags are chosen
when it is built.
"""

import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.dist_info import dist_info
from setuptools.command.sdist import sdist

# The oldest torch the whole test suite passes on (CI tests it: `make test-oldest`); on 2.8 FSDP2
# over gloo gives gradients twice too large, and older releases fail more. An sdist declares it; a
# built wheel pins the torch it was built against instead.
MINIMUM_TORCH = "2.9"
# 77 reads pyproject.toml's SPDX license expression; 70.1 and later build wheels without `wheel`.
MINIMUM_SETUPTOOLS = 77
ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
BUILD_INFO = "_build_info.json"  # the build record, beside the library
BUILD_INFO_HEADER = "qlayers_build_info.h"  # the same record, generated into the build folder
# Architectures to compile for when no GPU is visible to ask (torch's detection needs one).
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _refuse(message):
    raise SystemExit(f"qlayers: {message}")


if int(setuptools.__version__.split(".")[0]) < MINIMUM_SETUPTOOLS:
    _refuse(
        f"building needs setuptools {MINIMUM_SETUPTOOLS} or newer; this environment has setuptools "
        f"{setuptools.__version__}. Run `pip install -U setuptools`, then the same command again."
    )

# A venv's pip-installed ninja lies beside its interpreter: find it when the venv is not activated
# (torch's build looks for ninja on PATH, and falls back to one file at a time without it).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

try:
    import torch
    from torch.utils import cpp_extension
except (ImportError, OSError) as exc:  # an isolated build, or no torch: only building needs it
    torch = cpp_extension = None
    TORCH_IMPORT_ERROR = exc


def _cuda_switch():
    mode = os.environ.get("QLAYERS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        _refuse(f"QLAYERS_CUDA must be one of auto, 0, 1; got {mode!r}")
    return mode


_cuda_switch()  # a wrong value fails at once, whatever the command


def _run(command):
    """A command's exit status and its output (stdout and stderr), or an OSError's message."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return done.returncode, (done.stderr + done.stdout).strip()


def _public_version(version):
    """A version without its local label (2.14.1+cu130 -> 2.14.1): what pip's == compares."""
    return version.split("+")[0]


def _torch_requirement():
    if torch is None:
        return f"torch>={MINIMUM_TORCH}"
    return f"torch=={_public_version(torch.__version__)}"


def _torch_hidden_from_this_build():
    """The version of a torch installed in this interpreter's environment, or None when there is none.

    pip's isolated build runs this interpreter with a PYTHONPATH and a sitecustomize that hide the
    environment's packages; -I ignores both, so the child sees the environment as the user does.
    """
    status, output = _run([sys.executable, "-I", "-c", "import importlib.metadata as m; print(m.version('torch'))"])
    return output.splitlines()[-1] if status == 0 and output else None


def _refuse_without_torch():
    hidden = _torch_hidden_from_this_build()
    if hidden:
        _refuse(
            f"torch {hidden} is installed, but this build cannot import it ({TORCH_IMPORT_ERROR}): pip's "
            "build isolation, the default of `pip install .` and `pip wheel .`, hides it. qlayers compiles "
            "against the torch it will run with, so build it with that torch in view:\n"
            "    pip install --no-build-isolation .      (or -e . for development; a path or an sdist "
            "in place of .)\n"
            "`pip install ninja` first makes the build parallel."
        )
    _refuse(
        f"torch is not installed ({TORCH_IMPORT_ERROR}). qlayers compiles against the torch it will run "
        "with: install torch first (https://pytorch.org/get-started/locally/), then\n"
        "    pip install --no-build-isolation ."
    )


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
    status, output = _run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull])
    if status == -1:
        return None
    here = re.search(r"^#\$ _HERE_=(.+)$", output, re.MULTILINE)
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


def _nvcc_release(toolkit):
    """nvcc's CUDA release ("13.0"), or a message saying why it could not be read."""
    nvcc = os.path.join(toolkit, "bin", "nvcc")
    _, output = _run([nvcc, "--version"])
    release = re.search(r"release (\d+\.\d+)", output)
    if release is None:
        return None, f"`{nvcc} --version` did not give a CUDA release: {output[-200:]}"
    return release.group(1), None


def _nvcc_problem(toolkit, release):
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
    if release.split(".")[0] != torch.version.cuda.split(".")[0]:
        return (
            f"nvcc {release} in {toolkit} and the CUDA {torch.version.cuda} of torch {torch.__version__} "
            f"differ in major version, which torch's build refuses ({fix})"
        )

    cpp_extension.CUDA_HOME = toolkit  # include_paths() reads it
    includes = [os.path.join(ROOT, CSRC)] + cpp_extension.include_paths(device_type="cuda")
    flags = [f"-I{path}" for path in includes] + _wheel_include_flags("nvcc") + cpp_extension.COMMON_NVCC_FLAGS
    nvcc = os.path.join(toolkit, "bin", "nvcc")
    for source in sorted(glob.glob(os.path.join(ROOT, CSRC, "cuda", "*.cu"))):
        status, output = _run([nvcc, "-E", "-x", "cu", source, "-o", os.devnull] + flags)
        if status != 0:
            lines = output.splitlines() or ["no output"]
            error = next((line for line in lines if "error" in line), lines[0]).strip()
            return (
                f"nvcc {release} in {toolkit} cannot build against the CUDA {torch.version.cuda} headers "
                f"of torch {torch.__version__}: {error} ({fix})"
            )
    return None


def _cuda_toolkit():
    """(toolkit folder, nvcc release) when the CUDA kernels are to be built, else (None, None)."""
    mode = _cuda_switch()
    if mode == "0":
        return None, None
    toolkit, release = _nvcc_toolkit(), None
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    if toolkit is None:
        problems.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if not problems:
        release, problem = _nvcc_release(toolkit)
        problem = problem or _nvcc_problem(toolkit, release)
        if problem:
            problems.append(problem)
    if problems:
        if mode == "1":
            _refuse(
                "QLAYERS_CUDA=1 but CUDA kernels cannot be built: "
                + "; ".join(problems)
                + ". QLAYERS_CUDA=0 builds the CPU kernels only."
            )
        print("qlayers: building CPU kernels only (" + "; ".join(problems) + ")")
        return None, None
    return toolkit, release


def _openmp_flags():
    """at::parallel_for is inlined into our code: without OpenMP it would run on one thread.

    Torch's own libgomp is loaded first and shares its soname, so the kernels use its pool.
    """
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        return ["-fopenmp"]
    return []


def build_record(nvcc_release):
    """What the library is compiled against: import qlayers compares it with the running torch."""
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels": nvcc_release is not None,
        "nvcc": nvcc_release,
        "python": f"cp{sys.version_info.major}{sys.version_info.minor}",
    }


def build_folder(record):
    """Objects compiled against one torch, kernel set and Python, never shared with another build."""
    kernels = f"cuda{record['nvcc']}" if record["cuda_kernels"] else "cpu"
    return os.path.join(ROOT, "build", f"torch{record['torch']}-{kernels}-{record['python']}")


def _extension():
    """The compiled library as torch's build helpers describe it, and its build record."""
    sources = [os.path.join(CSRC, "qlayers.cpp"), os.path.join(CSRC, "eager_calls.cpp")] + sorted(
        glob.glob(os.path.join(CSRC, "cpu", "*.cpp")) + glob.glob(os.path.join(CSRC, "layers", "*.cpp"))
    )
    # torch's build helpers pick the C++ standard its headers need. -g0 overrides the -g of
    # Python's own flags: debug information is most of the library's size (26.7 MB against 0.9).
    debug = os.environ.get("QLAYERS_DEBUG", "0") == "1"
    cxx_flags = ["-O3"] + ([] if debug else ["-g0"]) + _openmp_flags()
    link_flags = _openmp_flags()
    include_dirs = [os.path.join(ROOT, CSRC)]
    toolkit, release = _cuda_toolkit()
    record = build_record(release)
    if toolkit is None:
        extension = cpp_extension.CppExtension(
            "qlayers._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
        return extension, record

    # torch.utils.cpp_extension reads CUDA_HOME when imported and at build time.
    os.environ["CUDA_HOME"] = toolkit
    cpp_extension.CUDA_HOME = toolkit
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    print(
        f"qlayers: building CPU and CUDA kernels (toolkit {toolkit}, nvcc {release}, "
        f"{len(cuda_sources)} CUDA sources, archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto')})"
    )
    extension = cpp_extension.CUDAExtension(
        "qlayers._C",
        sources + cuda_sources,
        include_dirs=include_dirs,
        define_macros=[("QLAYERS_WITH_CUDA", None)],
        extra_compile_args={
            "cxx": cxx_flags + _wheel_include_flags("g++"),
            "nvcc": ["-O3", "-lineinfo"] + _wheel_include_flags("nvcc"),
        },
        extra_link_args=link_flags,
    )
    return extension, record


def _write_if_changed(path, text):
    """Rewrite a generated file only when its text changes, so that ninja recompiles nothing else."""
    if os.path.exists(path) and open(path).read() == text:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        file.write(text)


# Sources named *_avx2.cpp hold kernels compiled for AVX2 and FMA, as ATen compiles its own: at::vec
# then uses 8-float vectors and Sleef's exp and tanh. The code picks them at run time only on a CPU
# that has both; elsewhere (another architecture, a compiler without the flags) the file builds its
# portable fallback. torch's build gives every source of an extension the same flags, so these are
# compiled first, on their own, and linked in as objects (one file: about 10 s).
AVX2_FLAGS = ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]


class _NeedsTorch:
    """Refuse, with the command to use instead, where the build needs a torch it cannot import."""

    def run(self):
        if torch is None:
            _refuse_without_torch()
        super().run()


class DistInfo(_NeedsTorch, dist_info):
    """A wheel's metadata pins the torch it is built against: without one, stop before pip resolves
    torch>=2.9 and downloads gigabytes, as it would in an isolated build."""


class SourceDistribution(sdist):
    """An sdist declares the supported range: whoever builds it pins their own torch."""

    def run(self):
        self.distribution.install_requires = self.distribution.metadata.install_requires = [f"torch>={MINIMUM_TORCH}"]
        super().run()


if cpp_extension is not None:

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's build, with the library described at build time, objects kept per torch and kernel
        set (build_folder), the AVX2 sources given their flags, and the build record written beside
        the library and compiled into it."""

        def finalize_options(self):
            super().finalize_options()
            # Always link anew from this torch's objects: setuptools would otherwise keep a library
            # in build/lib* that is newer than the sources, whatever torch it was compiled against.
            # ninja then recompiles what changed; without ninja every source compiles anyway.
            self.force = True

        def run(self):
            extension, self.record = _extension()
            self.build_temp = build_folder(self.record)
            extension.include_dirs.append(self.build_temp)  # the generated record header
            # Fill in the placeholder setup() named, keeping what setuptools recorded on it.
            (placeholder,) = self.extensions
            vars(placeholder).update(vars(extension))
            super().run()
            if self.inplace:  # editable installs: the library was copied into the package folder
                build_py = self.get_finalized_command("build_py")
                self._write_record(os.path.join(build_py.get_package_dir("qlayers"), BUILD_INFO))

        def _write_record(self, path):
            _write_if_changed(path, json.dumps(self.record, indent=1, sort_keys=True) + "\n")

        def build_extension(self, ext):
            record = json.dumps(self.record, sort_keys=True)
            _write_if_changed(
                os.path.join(self.build_temp, BUILD_INFO_HEADER),
                "// Generated by setup.py: what this library is compiled against.\n"
                f"#define QLAYERS_BUILD_INFO {json.dumps(record)}\n",
            )
            x86 = platform.machine().lower() in ("x86_64", "amd64")
            avx2_sources = [source for source in ext.sources if source.endswith("_avx2.cpp")] if x86 else []
            if avx2_sources:
                flags = dict(ext.extra_compile_args)
                flags["cxx"] = flags["cxx"] + AVX2_FLAGS
                ext.extra_objects = list(ext.extra_objects) + self.compiler.compile(
                    avx2_sources,
                    output_dir=os.path.join(self.build_temp, "avx2"),
                    macros=ext.define_macros + [(name,) for name in ext.undef_macros],
                    include_dirs=ext.include_dirs,
                    debug=self.debug,
                    extra_postargs=flags,
                )
                ext.sources = [source for source in ext.sources if source not in avx2_sources]
            if not self.use_ninja:
                print("qlayers: no ninja, so sources compile one at a time; `pip install ninja` compiles in parallel")
            super().build_extension(ext)
            self._write_record(os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), BUILD_INFO))

else:

    class BuildExtension(_NeedsTorch, build_ext):
        """Without torch there is nothing to build with: refuse, saying what to do."""


if __name__ == "__main__":
    setup(
        # The library's sources and flags are chosen when it is built (BuildExtension.run): this one
        # names it, so that pip knows the wheel holds compiled code.
        ext_modules=[Extension("qlayers._C", sources=[])],
        install_requires=[_torch_requirement()],
        cmdclass={"build_ext": BuildExtension, "dist_info": DistInfo, "sdist": SourceDistribution},
    )
