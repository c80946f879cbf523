"""The two formulations of the layer ("hamilton" builds W, "components" never does), their raw
ops hamilton_combine / hamilton_spread, and the automatic choice between them."""

import os
import re
import subprocess
import sys
from functools import partial

import pytest
import torch
from conftest import DEVICES, TOLERANCES, components
from torch.autograd import gradcheck, gradgradcheck

import qlayers
import qlayers._torch_internals
from qlayers import reference
from qlayers.functional import choose_algorithm, quaternion_linear

combine = torch.ops.qlayers.hamilton_combine
spread = torch.ops.qlayers.hamilton_spread
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def products(rows, parts, transpose):
    """(4, R, 4, k) products of quaternion rows (R*4, n or m) with each part (or its transpose)."""
    return torch.stack([rows @ (p.t() if transpose else p) for p in parts])


# --- the raw ops, against the reference matrix --------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,m", [(1, 1, 1), (3, 2, 5), (4, 8, 8), (5, 3, 16), (2, 7, 33)])
def test_combine_gives_the_layer_and_its_input_gradient(rows, n, m, dtype, device):
    # combine(x's parts times each component) == x @ W, and transposed == g @ W^T.
    x = torch.randn(rows, 4 * n, dtype=torch.float64)
    g = torch.randn(rows, 4 * m, dtype=torch.float64)
    parts64 = components(n, m)
    matrix = reference.hamilton_matrix(*parts64)
    parts = [p.to(device, dtype) for p in parts64]
    forward = products(x.to(device, dtype).reshape(rows * 4, n), parts, False).view(4, rows, 4, m)
    backward = products(g.to(device, dtype).reshape(rows * 4, m), parts, True).view(4, rows, 4, n)
    # The GEMMs above round in low precision before combine does: compare with that tolerance.
    tolerance = TOLERANCES[dtype] if dtype in (torch.float64, torch.float32) else dict(rtol=0.05, atol=0.15)
    torch.testing.assert_close(combine(forward, False).cpu().double(), x @ matrix, **tolerance)
    torch.testing.assert_close(combine(backward, True).cpu().double(), g @ matrix.t(), **tolerance)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,m", [(1, 1, 1), (3, 2, 5), (5, 3, 16), (2, 7, 33)])
def test_spread_gives_the_component_gradients(rows, n, m, dtype, device):
    x = torch.randn(rows, 4 * n, dtype=torch.float64)
    g = torch.randn(rows, 4 * m, dtype=torch.float64)
    parts = components(n, m, requires_grad=True)
    expected = torch.autograd.grad(x @ reference.hamilton_matrix(*parts), parts, g)
    spread_g = spread(g.to(device, dtype), False)
    assert spread_g.shape == (4, rows, 4, m)
    quaternion_rows_t = x.reshape(rows * 4, n).t()
    # spread only copies and flips signs of g rounded to dtype: the GEMM runs in float64.
    tolerance = TOLERANCES[dtype] if dtype in (torch.float64, torch.float32) else dict(rtol=0.02, atol=0.05)
    for c, want in enumerate(expected):
        got = quaternion_rows_t @ spread_g[c].reshape(rows * 4, m).cpu().double()
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transpose", [False, True])
def test_combine_and_spread_are_adjoint(transpose, device):
    p = torch.randn(4, 3, 2, 4, 5, dtype=torch.float64, device=device)  # rows may span dims
    g = torch.randn(3, 2, 20, dtype=torch.float64, device=device)
    assert combine(p, transpose).shape == g.shape and spread(g, transpose).shape == p.shape
    torch.testing.assert_close(
        (combine(p, transpose) * g).sum(), (p * spread(g, transpose)).sum(), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("device", DEVICES)
def test_combine_spread_autograd_and_vmap(device):
    p = torch.randn(4, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(2, 12, dtype=torch.float64, device=device, requires_grad=True)
    for transpose in (False, True):
        assert gradcheck(partial(combine, transpose=transpose), (p,))
        assert gradgradcheck(partial(combine, transpose=transpose), (p,))
        assert gradcheck(partial(spread, transpose=transpose), (g,))
        batch = torch.randn(5, 4, 2, 4, 3, dtype=torch.float64, device=device)
        assert torch.equal(
            torch.vmap(partial(combine, transpose=transpose))(batch),
            torch.stack([combine(b, transpose) for b in batch]),
        )
        grads = torch.randn(2, 5, 12, dtype=torch.float64, device=device)
        assert torch.equal(
            torch.vmap(partial(spread, transpose=transpose), in_dims=1)(grads),
            torch.stack([spread(grads[:, b], transpose) for b in range(5)]),
        )


def test_combine_spread_bad_shapes():
    with pytest.raises(
        ValueError, match=r"hamilton_combine: expected products of shape \(4, \*rows, 4, k\), got \[3, 2, 4, 5\]"
    ):
        combine(torch.zeros(3, 2, 4, 5), False)
    with pytest.raises(ValueError, match=r"hamilton_spread: expected a tensor of shape \(\*rows, 4k\), got \[2, 6\]"):
        spread(torch.zeros(2, 6), False)


# --- the layer, by algorithm ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["hamilton", "components", "eight", "direct", "auto"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("input_shape", [(), (0,), (1,), (5,), (3, 4), (2, 0, 3)])
@pytest.mark.parametrize("n,m,bias", [(3, 5, True), (3, 5, False), (1, 1, True), (8, 2, False)])
def test_layer_matches_reference(algorithm, dtype, input_shape, n, m, bias):
    x = torch.randn(*input_shape, 4 * n, dtype=dtype)
    weights = [w.to(dtype) for w in components(n, m)]
    b = [torch.randn(4 * m, dtype=dtype)] if bias else []
    grad = torch.randn(*input_shape, 4 * m, dtype=dtype)
    results = []
    for fn in (lambda *a: quaternion_linear(*a, algorithm=algorithm), reference.quaternion_linear):
        leaves = [t.clone().requires_grad_() for t in (x, *weights, *b)]
        out = fn(*leaves)
        out.backward(grad)
        results.append([out] + [t.grad for t in leaves])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOLERANCES[dtype])


@pytest.mark.parametrize("algorithm", ["components", "direct"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_components_in_low_precision(device, dtype, algorithm):
    layer = qlayers.QLinear(32, 16, algorithm=algorithm, dtype=dtype, device=device)
    reference_layer = qlayers.QLinear(32, 16, memory_efficient=False, dtype=torch.float64)
    reference_layer.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    x = torch.randn(3, 32, dtype=dtype, device=device)
    torch.testing.assert_close(layer(x).cpu().double(), reference_layer(x.cpu().double()), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("algorithm", ["components", "direct"])
@pytest.mark.parametrize("frozen", ["r_weight", "j_weight"])
def test_components_honours_each_flag(frozen, algorithm):
    layer = qlayers.QLinear(16, 8, algorithm=algorithm, dtype=torch.float64)
    plain = qlayers.QLinear(16, 8, memory_efficient=False, dtype=torch.float64)
    plain.load_state_dict(layer.state_dict())
    for module in (layer, plain):
        getattr(module, frozen).requires_grad_(False)
        module(torch.ones(2, 16, dtype=torch.float64).cumsum(1)).pow(2).sum().backward()
    for (name, a), b in zip(layer.named_parameters(), plain.parameters()):
        if name == frozen:
            assert a.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, **TOLERANCES[torch.float64])


# --- the automatic choice -----------------------------------------------------------------------


def test_choose_algorithm_rule(cpu_gemm):
    # The measured rule (csrc/layers/linear_choice.cpp): components while memory-bound, eight for
    # large float32/float64 products, never eight in 16-bit, hamilton otherwise; on the CPU in
    # float32 where oneDNN is the faster GEMM, hamilton once rows >= n (its W no larger than
    # components' temporaries) while its output and oneDNN's scratch fit beside W (rows <= 4n - 128
    # or so: onednn_linear.h).
    assert choose_algorithm("auto", rows=8, n=512) == "components"
    assert choose_algorithm("auto", rows=4096, n=256) == "eight"
    assert choose_algorithm("auto", rows=512, n=256) == ("hamilton" if cpu_gemm == "onednn" else "eight")
    assert choose_algorithm("auto", rows=900, n=256) == "eight"  # 4n - 128 < rows: no room for the scratch
    assert choose_algorithm("auto", rows=200, n=256) == "eight"  # n/2 <= rows < n: eight either way
    assert choose_algorithm("auto", rows=4096, n=256, dtype=torch.float64) == "eight"
    for dtype in (torch.float16, torch.bfloat16):
        assert choose_algorithm("auto", rows=4096, n=256, dtype=dtype) == "hamilton"
    assert choose_algorithm("auto", rows=4096, n=16) == "hamilton"
    for phase in ("forward", "grad_input", "grad_components"):
        assert choose_algorithm("auto", rows=8, n=512, phase=phase) == "components"
    assert choose_algorithm("hamilton", rows=1, n=512) == "hamilton"
    assert choose_algorithm("components", rows=10**6, n=1) == "components"
    assert choose_algorithm("eight", rows=1, n=1, dtype=torch.bfloat16) == "eight"
    # direct: a few rows on the CPU (rows x n up to 128); named on another device, components.
    assert choose_algorithm("auto", rows=1, n=128) == "direct"
    assert choose_algorithm("auto", rows=8, n=16) == "direct"
    assert choose_algorithm("auto", rows=2, n=128) == "components"
    assert choose_algorithm("direct", rows=1, n=128, device="cuda") == "components"
    assert choose_algorithm("direct", rows=4096, n=128) == "direct"
    with pytest.raises(ValueError, match="phase must be one of"):
        choose_algorithm("auto", rows=1, n=1, phase="backward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("phase", ["forward", "grad_input", "grad_components"])
@pytest.mark.parametrize(
    "rows,n,m", [(1, 128, 128), (8, 512, 512), (3200, 256, 1024), (4096, 256, 256), (200, 256, 256)]
)
def test_choose_algorithm_on_a_gpu_is_hamilton(rows, n, m, phase, dtype):
    # Off the CPU, "auto" builds W once and runs one GEMM for every product, until a GPU run of
    # benchmarks/choose_linear.py measures otherwise: the CPU's chunked eight and its 16-product
    # components are many launches there (at the lecture's 3200 x 256 x 1024 the CPU rule says eight).
    assert choose_algorithm("auto", rows=rows, n=n, m=m, phase=phase, dtype=dtype, device="cuda") == "hamilton"
    assert choose_algorithm("auto", rows=rows, n=n, m=m, phase=phase, dtype=dtype, device="meta") == "hamilton"


def ops_called(layer, x):
    with torch.profiler.profile() as prof:
        out = layer(x)
        # A gradient of its own per row: an expanded one (out.sum()) takes one row's products.
        out.backward(torch.randn_like(out))
    # The formulations' ops, below the layer's own two (forward and backward).
    layer_ops = {"qlayers::quaternion_linear", "qlayers::_quaternion_linear_backward"}
    return {e.name for e in prof.events() if e.name.startswith("qlayers::") and e.name not in layer_ops}


def test_auto_picks_by_batch_size(cpu_gemm):
    layer = qlayers.QLinear(512, 512)  # n = 128
    small = ops_called(layer, torch.randn(4, 512, requires_grad=True))
    medium = ops_called(qlayers.QLinear(256, 256), torch.randn(1024, 256, requires_grad=True))
    between = ops_called(qlayers.QLinear(1024, 1024), torch.randn(192, 1024, requires_grad=True))  # n = 256
    large = ops_called(layer, torch.randn(1024, 512, requires_grad=True))
    # W built for the products and folded back by hamilton_reduce: with either library at these
    # sizes, as oneDNN's output and scratch would not fit beside W (onednn_linear.h; test_memory.py).
    hamilton = {"qlayers::hamilton_expand", "qlayers::hamilton_reduce"}
    # The operand sums and combinations, into given views (one per component gradient), and the
    # weight sums, mixed from the four components in place (csrc/cpu/block_mix_cpu.h).
    eight = {"qlayers::_block_mix_into", "qlayers::block_mix_parts_into"}
    assert small == {"qlayers::hamilton_combine", "qlayers::hamilton_spread"}
    assert medium == hamilton
    assert between == eight
    assert large == eight
    # oneDNN's hamilton, where it is the faster library and fits (64 x 256): W folded back block by
    # block in C++.
    hamilton_onednn = ops_called(qlayers.QLinear(256, 256), torch.randn(64, 256, requires_grad=True))
    assert hamilton_onednn == ({"qlayers::hamilton_expand"} if cpu_gemm == "onednn" else hamilton)


def test_bad_algorithm_name():
    with pytest.raises(
        ValueError,
        match=r"algorithm must be one of \('auto', 'hamilton', 'components', 'eight', 'direct'\), got 'fast'",
    ):
        qlayers.QLinear(8, 8, algorithm="fast")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        quaternion_linear(torch.randn(2, 8), *components(2, 2, dtype=torch.float32), algorithm="dense")


def test_component_gradients_are_separate_tensors():
    # Views of one (4, n, m) result would keep all four gradients' memory alive until the last was
    # accumulated: three components' worth more at a step's peak (QLSTM: 72.63 -> 73.38 MiB).
    layer = qlayers.QLinear(512, 2048, algorithm="components")  # n x m above the stacking limit
    layer(torch.randn(16, 512)).sum().backward()
    storages = {p.grad.untyped_storage().data_ptr() for p in layer.components()}
    assert len(storages) == 4


def test_eight_needs_half_a_row_per_feature():
    # Its eight component sums (8 n m) must not outweigh the components formulation's block
    # products (16 rows m): below rows = n / 2, auto keeps the components formulation.
    assert choose_algorithm("auto", rows=64, n=256) == "components"
    assert choose_algorithm("auto", rows=128, n=256) == "eight"


def gemm_ops(cpu_gemm, rows):
    """The dense GEMM ops of a hamilton layer's training step, with `cpu_gemm` as the library."""
    layer = qlayers.QLinear(256, 256, algorithm="hamilton")
    x = torch.randn(rows, 256, requires_grad=True)
    with torch.profiler.profile() as prof:
        out = layer(x)
        out.backward(torch.randn_like(out))
    gemms = {"aten::mm", "aten::addmm", "mkldnn::_linear_pointwise"}
    return {e.name for e in prof.events() if e.name in gemms}


def test_hamilton_runs_its_gemms_on_the_chosen_library(cpu_gemm):
    # The forward, input gradient and weight gradient (one block per component at 96 x 256) all take one
    # library: oneDNN where it is this CPU's faster GEMM, torch's mm otherwise, and mm where oneDNN's
    # output and scratch would not fit beside W (512 x 256; onednn_linear.h).
    if cpu_gemm == "onednn":
        assert gemm_ops(cpu_gemm, 96) == {"mkldnn::_linear_pointwise"}
    else:
        assert gemm_ops(cpu_gemm, 96) == {"aten::mm", "aten::addmm"}
    assert gemm_ops(cpu_gemm, 512) == {"aten::mm", "aten::addmm"}
    # oneDNN refuses empty operands: no rows take mm with either library.
    assert "mkldnn::_linear_pointwise" not in gemm_ops(cpu_gemm, 0)


def test_cpu_gemm_measured_once_and_reported(tmp_path):
    # A fresh process measures (or reads QLAYERS_CPU_GEMM) and says what it decided and why; the
    # measured verdict agrees with its own times (oneDNN only when 1.25x faster than mm).
    def run(env_value):
        env = {k: v for k, v in os.environ.items() if k != "QLAYERS_CPU_GEMM"}
        if env_value is not None:
            env["QLAYERS_CPU_GEMM"] = env_value
        code = "import torch, qlayers; print(torch.ops.qlayers._cpu_gemm())"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout.strip(), done.stderr

    if not qlayers._torch_internals.onednn_linear_available():
        assert run(None)[1] == "mm (this torch has no oneDNN linear)"
        return
    assert run("mm")[1] == "mm (QLAYERS_CPU_GEMM)"
    assert run("onednn")[1] == "onednn (QLAYERS_CPU_GEMM)"
    code, _, error = run("fastest")
    assert code != 0 and "QLAYERS_CPU_GEMM must be 'onednn' or 'mm', got 'fastest'" in error
    measured = run(None)[1]
    found = re.fullmatch(
        r"(onednn|mm) \(measured: 512 x 1024 @ 1024 x 1024, mm ([\d.]+) ms, oneDNN ([\d.]+) ms\)", measured
    )
    assert found, measured
    library, mm, onednn = found.group(1), float(found.group(2)), float(found.group(3))
    if abs(mm / onednn - 1.25) > 0.01:  # the report rounds to microseconds
        assert library == ("onednn" if mm >= 1.25 * onednn else "mm"), measured


def test_set_cpu_gemm_checks_its_argument():
    with pytest.raises(ValueError, match=r"must be 'onednn', 'mm' or '' \(measured\), got 'mkl'"):
        torch.ops.qlayers._set_cpu_gemm("mkl")
