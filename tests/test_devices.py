"""Backends: the CUDA kernels are built and registered, agree with the CPU, and index past 2^31."""

import os

import pytest
import torch
from conftest import DEVICES, HAS_CUDA, components

from qlayers import reference

needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible to torch")


@pytest.mark.skipif(torch.version.cuda is None, reason="CPU-only torch build: no CUDA kernels are built")
@pytest.mark.skipif(os.environ.get("QLAYERS_CUDA") == "0", reason="built with QLAYERS_CUDA=0")
def test_cuda_kernels_are_registered():
    # Runs on any CUDA build of torch, GPU or not: the build compiled and registered the kernels.
    # Every op with a CPU kernel (csrc/cpu) has a CUDA one (csrc/cuda); the other ops are composite
    # and run on either. The list pins the set, so an op that loses both kernels shows too.
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("qlayers::")]
    kernels = {
        f"qlayers::{op}"
        for op in (
            "hamilton_expand",
            "hamilton_reduce",
            "hamilton_combine",
            "hamilton_spread",
            "_block_mix",
            "_block_mix_into",
            "_recurrent_gates_forward",
            "_recurrent_gates_backward",
        )
    }
    for key in ("CPU", "CUDA"):
        assert {n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, key)} == kernels, key


def test_cuda_tests_compute_float32_without_tf32():
    # The float32 comparisons with the CPU assume full float32 products (tests/conftest.py); cuDNN's
    # default TF32 convolutions differ from them by about 1e-3 relative.
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


@needs_gpu
@pytest.mark.parametrize("other", ["cpu", "meta"])
@pytest.mark.parametrize("at", range(4))
def test_expand_refuses_cuda_mixed_with_another_device(at, other):
    # The argument check must run before the CUDA device guard, which would otherwise fail first on
    # a CPU r with its own message; a meta argument reaches the fake kernel, which checks the same.
    parts = components(3, 2, device="cuda")
    parts[at] = parts[at].to(other)
    with pytest.raises(ValueError, match=r"hamilton_expand: expected r, i, j, k on one device, got \S+ and \S+"):
        torch.ops.qlayers.hamilton_expand(*parts)


@needs_gpu
def test_gpu_kernels_follow_the_current_stream():
    parts = components(64, 64, dtype=torch.float32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        matrix = torch.ops.qlayers.hamilton_expand(*parts)
        reduced = torch.ops.qlayers.hamilton_reduce(matrix)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(matrix, reference.hamilton_matrix(*parts))
    for got, part in zip(reduced, parts):
        torch.testing.assert_close(got, 4 * part)


@pytest.mark.parametrize("device", DEVICES)
def test_indices_past_2_pow_31(device):
    # W has 46400 x 46400 > 2^31 elements (4.3 GB in float16); its last rows start past 2^31, where
    # 32-bit index math would wrap. Small integers keep float16 exact, so every check is equality.
    n = m = 11600
    assert (4 * n) * (4 * m) > 2**31
    rows = torch.arange(n, device=device).view(n, 1)
    cols = torch.arange(m, device=device).view(1, m)
    parts = [((rows * 7 + cols * 3 + 50 * c) % 251 - 125).half() for c in range(4)]
    matrix = torch.ops.qlayers.hamilton_expand(*parts)
    for p in (0, n // 2, n - 1):
        # Rows a*n + p of W come from row p of the components alone.
        expected = reference.hamilton_matrix(*(part[p : p + 1] for part in parts))
        assert torch.equal(matrix[p::n], expected)
    # reduce(expand(c)) == 4c: each component sits in four blocks with signs that square to one.
    for got, part in zip(torch.ops.qlayers.hamilton_reduce(matrix), parts):
        assert torch.equal(got, 4 * part)
