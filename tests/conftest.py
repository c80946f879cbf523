import os
import sys

import pytest
import torch

import qlayers  # registers torch.ops.qlayers
import qlayers._torch_internals

# The peer of qlayers.compat.speechbrain (tests/test_speechbrain.py, the drop-in example). `make test`
# installs it into .venv and sets QLAYERS_REQUIRE_SPEECHBRAIN=1 there, so a failed install fails the
# run; in the oldest-torch venv it is not installed, and its tests skip with this reason.
try:
    import speechbrain.nnet.quaternion_networks.q_RNN  # noqa: F401  (and the modules it imports)
    from speechbrain.utils.importutils import LazyModule

    SPEECHBRAIN_MISSING = None
except ImportError as error:  # the package, or the torchaudio its import needs
    if os.environ.get("QLAYERS_REQUIRE_SPEECHBRAIN") == "1":
        raise
    SPEECHBRAIN_MISSING = f"speechbrain 1.1.2 cannot be imported in this venv ({error}); `make` installs it in .venv"
else:
    # SpeechBrain puts lazy placeholders in sys.modules (speechbrain.integrations.k2_fsa, ...) that
    # import their target on any attribute read and raise ImportError when it is absent (k2).
    # Hypothesis reads `__file__` of every module in sys.modules, so such a placeholder aborts the
    # session; the ones not loaded leave sys.modules (an import of them still works as before).
    for name, module in list(sys.modules.items()):
        if isinstance(module, LazyModule) and module.lazy_module is None:
            del sys.modules[name]
needs_speechbrain = pytest.mark.skipif(SPEECHBRAIN_MISSING is not None, reason=str(SPEECHBRAIN_MISSING))

# Float tolerances for comparing against a float64 oracle: tight enough to catch a wrong sign.
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


HAS_CUDA = torch.cuda.is_available()

# Float32 on a GPU in full float32, as the CPU computes it: cuDNN's default runs float32 convolutions
# in TF32 (about 1e-3 relative on an H200), which the float32 tolerances above would take for a bug.
# These are torch's own flags, set for the test session only; a user gets torch's defaults
# (docs/integrations.md, "On a GPU"). The legacy flags, which torch 2.9 and later keep in step with
# their fp32_precision ones.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

# Every kernel test runs on each backend; the CUDA cases need a visible GPU.
DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible to torch")),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The CPU's float32 GEMM library, oneDNN's or torch's mm (csrc/layers/cpu_gemm.h), is measured once
# per process and differs by machine: a test whose expectation depends on it takes each in turn.
CPU_GEMMS = [
    pytest.param(
        "onednn",
        marks=pytest.mark.skipif(
            not qlayers._torch_internals.onednn_linear_available(), reason="this torch has no oneDNN linear op"
        ),
    ),
    pytest.param("mm"),
]
# The library the process measured (or QLAYERS_CPU_GEMM named): for a test that parametrizes
# `cpu_gemm` indirectly and pins a library in some cases only.
MEASURED = ""


@pytest.fixture(params=CPU_GEMMS)
def cpu_gemm(request):
    """The CPU GEMM library this test runs with ("onednn", "mm", or MEASURED); the measured one after it."""
    torch.ops.qlayers._set_cpu_gemm(request.param)
    yield request.param
    torch.ops.qlayers._set_cpu_gemm("")


def hamilton_product(p, q):
    """The Hamilton product of quaternions stored in the last dim as (a, b, c, d), from its definition."""
    a1, b1, c1, d1 = p.unbind(-1)
    a2, b2, c2, d2 = q.unbind(-1)
    return torch.stack(
        [
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ],
        dim=-1,
    )


def randomise(layer, std=1.0):
    """`layer` with every parameter drawn from N(0, std^2)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=std)
    return layer


def components(n, m, *rest, dtype=torch.float64, requires_grad=False, device="cpu"):
    return [torch.randn(n, m, *rest, dtype=dtype, device=device, requires_grad=requires_grad) for _ in range(4)]


# (kernel, dtype, pack width) -> the most grid-stride iterations one emulated thread ran, filled by
# tests/test_kernels_emulated.py and printed at the end of the run.
KERNEL_COVERAGE: dict = {}


def runs_on_cuda(nodeid: str, skip_reasons) -> bool:
    """Whether a test exercises the CUDA build: a CUDA case of a device-parametrised test, a test named
    for CUDA or the GPU, or one skipped without a GPU. The GPU check runs these alone (`-m cuda`)."""
    named = nodeid.lower()
    return "cuda" in named or "gpu" in named or any("cuda" in r.lower() or "gpu" in r.lower() for r in skip_reasons)


def pytest_collection_modifyitems(config, items):
    for item in items:
        reasons = [str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")]
        if runs_on_cuda(item.nodeid, reasons):
            item.add_marker(pytest.mark.cuda)


def pytest_terminal_summary(terminalreporter):
    if not KERNEL_COVERAGE:
        return
    terminalreporter.section("emulated CUDA kernels: instantiations run, most grid-stride iterations")
    for (kernel, dtype, width), iterations in sorted(KERNEL_COVERAGE.items()):
        terminalreporter.write_line(f"{kernel}_kernel<{dtype}, {width}>: up to {iterations} iterations per thread")
