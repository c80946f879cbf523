"""Bytes autograd keeps for backward, counted by storage with saved-tensor hooks (deterministic)."""

import os
import sys

import pytest
import torch
from torch import nn

import qlayers
from qlayers.memory import SavedTensorBytes

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import measure  # noqa: E402

FEATURES, BATCH, DEPTH = 256, 32, 4
MATRIX_BYTES = FEATURES * FEATURES * 4  # one float32 Hamilton matrix (4n x 4m)


def saved_bytes(model, x):
    with SavedTensorBytes(exclude=model.parameters()) as saved:
        out = model(x)
    out.sum().backward()  # the graph was real and complete
    return saved.total


def stack(layer, **kwargs):
    return nn.Sequential(*(layer(FEATURES, FEATURES, **kwargs) for _ in range(DEPTH)))


def test_counter_counts_storages_once_and_skips_excluded():
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorBytes(exclude=[w]) as saved:
        y = x.view(2, 16).view(4, 8) @ w  # saves x (through views) and w
        z = x * x  # saves x twice more
    assert saved.total == x.numel() * 4
    (y.sum() + z.sum()).backward()


@pytest.mark.parametrize("input_shape", [(BATCH, FEATURES), (4, BATCH // 4, FEATURES)])
def test_qlinear_stack_keeps_no_more_than_dense_stack(input_shape):
    x = torch.randn(*input_shape, requires_grad=True)
    quaternion = saved_bytes(stack(qlayers.QLinear), x)
    dense = saved_bytes(stack(nn.Linear), x)
    # Each layer keeps exactly its input, as nn.Linear does: DEPTH inputs of the same size.
    assert quaternion <= dense
    assert quaternion == DEPTH * x.numel() * 4


def test_recurrence_keeps_one_matrix_per_step_only_on_the_plain_path():
    steps, hidden = 10, 64
    cell = qlayers.QLinear(hidden, hidden)
    plain_cell = qlayers.QLinear(hidden, hidden, memory_efficient=False)
    plain_cell.load_state_dict(cell.state_dict())
    xs = torch.randn(steps, 2, hidden)

    def unroll(layer):
        with SavedTensorBytes(exclude=layer.parameters()) as saved:
            h = torch.zeros(2, hidden, requires_grad=True)  # a learned initial state
            for x in xs:
                h = torch.tanh(layer(h) + x)
        h.sum().backward()
        return saved.total

    efficient, plain = unroll(cell), unroll(plain_cell)
    assert plain - efficient >= steps * hidden * hidden * 4


# --- compiled steps save what eager steps save (issue 12, item 1) -------------------------------


def compiled_and_eager_bytes(model, x, backend):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    compiled(x).sum().backward()  # compile first, outside the count
    return saved_bytes(model, x), saved_bytes(compiled, x)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("algorithm", ["hamilton", "components", "auto"])
@pytest.mark.parametrize("batch", [7, 96])  # both sides of auto's crossover (0.75 * 64 rows)
@pytest.mark.parametrize("input_grad", [False, True])  # True: backward needs W for the input gradient
def test_compiled_linear_saves_what_eager_saves(backend, algorithm, batch, input_grad):
    torch.manual_seed(0)
    model = nn.Sequential(
        qlayers.QLinear(FEATURES, FEATURES, algorithm=algorithm),
        nn.Tanh(),
        qlayers.QLinear(FEATURES, FEATURES, algorithm=algorithm),
    )
    x = torch.randn(batch, FEATURES, requires_grad=input_grad)
    eager, compiled = compiled_and_eager_bytes(model, x, backend)
    # The input and the hidden activation, as two nn.Linear would keep; no 256 x 256 W.
    assert eager == 2 * x.numel() * 4
    assert compiled == eager


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("conv", [qlayers.QConv2d, qlayers.QConvTranspose2d])
@pytest.mark.parametrize("input_grad", [False, True])
def test_compiled_conv_saves_what_eager_saves(backend, conv, input_grad):
    torch.manual_seed(0)
    model = nn.Sequential(conv(32, 32, 3, padding=1), nn.Tanh(), conv(32, 32, 3, padding=1))
    x = torch.randn(2, 32, 6, 6, requires_grad=input_grad)
    eager, compiled = compiled_and_eager_bytes(model, x, backend)
    assert eager == 2 * x.numel() * 4  # the input and the hidden activation, no real kernel
    assert compiled == eager


# --- frozen components keep no input (issue 12, item 2) -----------------------------------------


def freeze(model):
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith("bias"))
    return model


@pytest.mark.parametrize("input_grad", [True, False])
def test_frozen_qlinear_stack_keeps_what_frozen_dense_keeps(input_grad):
    x = torch.randn(BATCH, FEATURES, requires_grad=input_grad)
    quaternion = saved_bytes(freeze(stack(qlayers.QLinear)), x)
    dense = saved_bytes(freeze(stack(nn.Linear)), x)
    # With the weights frozen nn.Linear keeps nothing: the input only serves the weight gradient.
    assert quaternion == dense == 0


def test_partly_frozen_qlinear_still_keeps_its_input():
    layer = qlayers.QLinear(FEATURES, FEATURES)
    layer.r_weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x = torch.randn(BATCH, FEATURES)
    assert saved_bytes(layer, x) == x.numel() * 4


@pytest.mark.parametrize("conv", [qlayers.QConv2d, qlayers.QConvTranspose2d])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_frozen_conv_keeps_no_input_and_gives_the_same_gradients(conv, memory_format):
    torch.manual_seed(0)
    layer = conv(16, 16, 3, stride=2, padding=1)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 16, 7, 7).to(memory_format=memory_format).requires_grad_()
    expected = torch.autograd.grad(layer(x).pow(2).sum(), (x, layer.bias))
    freeze(layer)
    assert saved_bytes(layer, x) == 0
    got = torch.autograd.grad(layer(x).pow(2).sum(), (x, layer.bias))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_conv_builds_no_kernel_when_the_input_needs_no_gradient():
    layer = qlayers.QConv2d(16, 16, 3)
    x = torch.randn(2, 16, 6, 6)  # needs no gradient: backward needs no real kernel
    out = layer(x)
    with torch.profiler.profile() as profile:
        out.sum().backward()
    # On the CPU the kernel and its adjoint are built by direct calls, named for the profiler as
    # "..._conjugate"; elsewhere through the dispatcher.
    names = {event.name.removesuffix("_conjugate") for event in profile.events()}
    assert "qlayers::hamilton_reduce" in names  # the component gradients were computed
    assert "qlayers::hamilton_expand" not in names


class _ElementwiseGradient(nn.Module):
    """The layer with a loss whose gradient differs per element (out.sum() gives an expanded one)."""

    def __init__(self, layer, output_shape):
        super().__init__()
        self.layer = layer
        self.register_buffer("weights", torch.randn(output_shape))

    def forward(self, x):
        return self.layer(x) * self.weights


def peaks_of_both_paths(make_layer, x, output_shape, gradient):
    """Peak bytes of a training step, memory-efficient and plain, from the allocator's events."""
    peaks = {}
    for memory_efficient in (True, False):
        torch.manual_seed(0)
        layer = make_layer(memory_efficient)
        model = layer if gradient == "expanded" else _ElementwiseGradient(layer, output_shape)
        peaks[memory_efficient] = measure.peak_bytes(model, x, torch.device("cpu"))
    return peaks


# (rows, features, what "auto" takes there with oneDNN's GEMM, and with mm's): every formulation,
# hamilton through oneDNN with its weight gradient in one block per component (64 rows), hamilton on
# mm where oneDNN's output and scratch would not fit beside W (128 rows and up at 256 features,
# onednn_linear.h) with its weight gradient through oneDNN in two blocks (176 rows: 59 and 5) or on
# mm (1000 rows); at 512 x 512 eight. Measured 2026-12-03 on an
# AVX2 AMD EPYC before that bound: oneDNN's hamilton peaked at 513.6 KiB against plain's 512 at
# 128 x 256, 2.76 MiB against 2.45 at 1000 x 256 and 2.25 against 2.00 at 512 x 512 (on an AVX-512
# Xeon only the last was over).
PEAK_CASES = [
    (8, 64, "direct", "direct"),
    (8, 512, "components", "components"),
    (64, 256, "hamilton", "hamilton"),
    (128, 256, "hamilton", "hamilton"),
    (176, 256, "hamilton", "hamilton"),
    (1000, 256, "hamilton", "hamilton"),
    (192, 1024, "eight", "eight"),
    (512, 512, "eight", "eight"),
]


@pytest.mark.parametrize("rows,features,with_onednn,with_mm", PEAK_CASES)
@pytest.mark.parametrize("gradient", ["expanded", "per row"])
@pytest.mark.parametrize("input_grad", [False, True], ids=["input frozen", "input trained"])
def test_auto_never_peaks_above_plain_autograd(rows, features, with_onednn, with_mm, gradient, input_grad, cpu_gemm):
    # The allocator's events, counted by the profiler: deterministic on the CPU (benchmarks/measure.py).
    n = features // 4
    formulation = with_onednn if cpu_gemm == "onednn" else with_mm
    assert torch.ops.qlayers._linear_formulation(rows, n, n, torch.float32, "auto", "forward", "cpu") == formulation
    x = torch.randn(rows, features, requires_grad=input_grad)
    peaks = peaks_of_both_paths(
        lambda memory_efficient: qlayers.QLinear(features, features, memory_efficient=memory_efficient),
        x,
        (rows, features),
        gradient,
    )
    assert peaks[True] <= peaks[False], f"auto peaks at {peaks[True]} bytes, plain autograd at {peaks[False]}"


# (channels, input shape, the formulation "auto" takes there: csrc/layers/conv.cpp's rule).
CONV_PEAK_CASES = [
    (16, (2, 16, 8, 8), "kernel"),
    # Measured 2026-12-03 on an AVX2 AMD EPYC: 6.60 / 10.35 MiB (input frozen / trained) against plain
    # autograd's 10.13 / 13.13; before each product was computed on its own (csrc/layers/conv_eight.cpp)
    # the eight products' sums and gradients of 4 images at once peaked at 12.3-20.1 MiB. 33 images
    # are two chunks (32 and 1): 33.10 / 53.60 MiB against 50.63 / 67.13.
    (128, (6, 128, 32, 32), "eight"),
    (128, (33, 128, 32, 32), "eight"),
]


@pytest.mark.parametrize("channels,input_shape,formulation", CONV_PEAK_CASES)
@pytest.mark.parametrize("gradient", ["expanded", "per element"])
@pytest.mark.parametrize("input_grad", [False, True], ids=["input frozen", "input trained"])
def test_auto_conv_never_peaks_above_plain_autograd(channels, input_shape, formulation, gradient, input_grad):
    x = torch.randn(input_shape, requires_grad=input_grad)
    layer = qlayers.QConv2d(channels, channels, 3, padding=1)
    options = ((1, 1), (1, 1), (1, 1), False, (0, 0), 1)
    components = (layer.r_weight, layer.i_weight, layer.j_weight, layer.k_weight)
    assert qlayers.functional.conv.conv_formulation(x, components, options, None) == formulation
    peaks = peaks_of_both_paths(
        lambda memory_efficient: qlayers.QConv2d(channels, channels, 3, padding=1, memory_efficient=memory_efficient),
        x,
        input_shape,
        gradient,
    )
    assert peaks[True] <= peaks[False], f"auto peaks at {peaks[True]} bytes, plain autograd at {peaks[False]}"
