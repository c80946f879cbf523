"""The raw ops torch.ops.qlayers.hamilton_expand / hamilton_reduce against independent references."""

import pytest
import torch
from conftest import DEVICES, TOLERANCES, components
from torch.autograd import gradcheck, gradgradcheck

from qlayers import reference

expand = torch.ops.qlayers.hamilton_expand
reduce = torch.ops.qlayers.hamilton_reduce

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (3, 5), (7, 2), (4, 6, 3), (2, 3, 3, 2), (5, 1, 1, 1, 2)]


def reduce_oracle(grad):
    """The adjoint of the reference matrix, by autograd through torch.cat on the CPU in float64."""
    n, m, *rest = grad.shape
    parts = [torch.zeros(n // 4, m // 4, *rest, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    return torch.autograd.grad(reference.hamilton_matrix(*parts), parts, grad.cpu().double())


@pytest.mark.parametrize("device", DEVICES)
def test_convention_table(device):
    # Components 1, 2, 3, 4 (r, i, j, k) make W read the table in the Hamilton convention directly.
    r, i, j, k = (torch.full((1, 1), float(v), device=device) for v in (1, 2, 3, 4))
    table = torch.tensor(
        [
            [+1, +2, +3, +4],
            [-2, +1, +4, -3],
            [-3, -4, +1, +2],
            [-4, +3, -2, +1],
        ],
        dtype=torch.float32,
        device=device,
    )
    assert torch.equal(expand(r, i, j, k), table)
    assert torch.equal(reference.hamilton_matrix(r, i, j, k), table)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_expand_matches_reference(shape, dtype, device):
    parts = components(*shape, dtype=dtype, device=device)
    # Expansion only copies and negates, so it is exact in every dtype.
    assert torch.equal(expand(*parts), reference.hamilton_matrix(*parts))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reduce_matches_adjoint_of_reference(shape, dtype, device):
    n, m, *rest = shape
    grad = torch.randn(4 * n, 4 * m, *rest, dtype=dtype, device=device)
    for got, want in zip(reduce(grad), reduce_oracle(grad)):
        assert got.dtype == dtype and got.shape == shape and got.device == grad.device
        torch.testing.assert_close(got.cpu().double(), want, **TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_reduce_rounds_once(device, dtype):
    # 16-bit reduce accumulates in float32 and rounds once: exactly the float32 result, rounded.
    # Rows of 1 to 37 elements cover the 8-wide SIMD loop and its scalar tail; inf and NaN included.
    for m in (1, 7, 8, 9, 37):
        grad = (torch.randn(8, 4 * m, device=device) * 100).to(dtype)
        grad[0, 0], grad[1, 1 % (4 * m)], grad[2, 2 % (4 * m)] = float("inf"), float("nan"), -65504
        expected = [g.to(dtype) for g in reduce(grad.float())]
        for got, want in zip(reduce(grad), expected):
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_expand_and_reduce_are_adjoint(shape, device):
    # <expand(c), G> == <c, reduce(G)>
    parts = components(*shape, device=device)
    n, m, *rest = shape
    grad = torch.randn(4 * n, 4 * m, *rest, dtype=torch.float64, device=device)
    lhs = (expand(*parts) * grad).sum()
    rhs = sum((c * g).sum() for c, g in zip(parts, reduce(grad)))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_any_strides(device, dtype):
    # Transposed, sliced and permuted trailing dims: read in place or copied, never misread.
    base = [torch.randn(6, 9, 3, 2, dtype=dtype, device=device) for _ in range(4)]
    views = [
        [b[:, :, 0, 0].t() for b in base],  # transposed 2-d
        [b[::2, 1:8:3] for b in base],  # strided rows and columns
        [b.permute(1, 0, 3, 2) for b in base],  # trailing dims that do not merge
    ]
    for parts in views:
        assert not parts[0].is_contiguous()
        assert torch.equal(expand(*parts), reference.hamilton_matrix(*parts))
        n, m, *rest = parts[0].shape
        grad = torch.randn(4 * m, 4 * n, *reversed(rest), dtype=dtype, device=device).transpose(0, 1)
        if len(rest) == 2:
            grad = grad.transpose(2, 3)
        assert not grad.is_contiguous()
        for got, want in zip(reduce(grad), reduce_oracle(grad)):
            torch.testing.assert_close(got.cpu().double(), want, **TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_width_boundaries(device, dtype):
    # Sizes around the 16-byte pack (2 to 8 elements), an offset start that breaks alignment,
    # and odd sizes: every path of the kernels, aligned or not, gives the same answer.
    for n, m, offset in [(1, 7, 0), (3, 8, 0), (5, 16, 1), (2, 33, 0), (4, 64, 3)]:
        flat = [torch.randn(n * m + offset, dtype=dtype, device=device) for _ in range(4)]
        parts = [f[offset:].view(n, m) for f in flat]
        assert torch.equal(expand(*parts), reference.hamilton_matrix(*parts))
        grad_flat = torch.randn(16 * n * m + offset, dtype=dtype, device=device)
        grad = grad_flat[offset:].view(4 * n, 4 * m)
        for got, want in zip(reduce(grad), reduce_oracle(grad)):
            torch.testing.assert_close(got.cpu().double(), want, **TOLERANCES[dtype])


def test_large_shapes_use_every_thread_consistently():
    # Big enough to be split across threads; the result must not depend on the split.
    parts = components(96, 80, dtype=torch.float32)
    grad = torch.randn(4 * 96, 4 * 80)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = expand(*parts), reduce(grad)
        torch.set_num_threads(max(2, previous))
        multi = expand(*parts), reduce(grad)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(single[0], multi[0])
    assert torch.equal(single[0], reference.hamilton_matrix(*parts))
    for a, b, want in zip(single[1], multi[1], reduce_oracle(grad)):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.double(), want, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (2, 2, 0)])
def test_empty(shape, device):
    parts = components(*shape, device=device)
    n, m, *rest = shape
    assert expand(*parts).shape == (4 * n, 4 * m, *rest)
    empty_grad = torch.zeros(4 * n, 4 * m, *rest, dtype=torch.float64, device=device)
    assert all(g.shape == shape for g in reduce(empty_grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3), (2, 1, 3)])
def test_gradcheck(shape, device):
    parts = components(*shape, requires_grad=True, device=device)
    assert gradcheck(expand, parts)
    assert gradgradcheck(expand, parts)
    n, m, *rest = shape
    grad = torch.randn(4 * n, 4 * m, *rest, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(reduce, (grad,))
    assert gradgradcheck(reduce, (grad,))


def test_fake_kernels_give_shapes_without_data():
    parts = [torch.empty(3, 5, 2, device="meta") for _ in range(4)]
    assert expand(*parts).shape == (12, 20, 2)
    assert [g.shape for g in reduce(torch.empty(12, 20, 2, device="meta"))] == [(3, 5, 2)] * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op_input", ["expand", "reduce"])
def test_opcheck(op_input, device):
    # Schema, fake kernel and autograd registration; gradient values are gradcheck's job above.
    if op_input == "expand":
        torch.library.opcheck(expand, components(3, 2, requires_grad=True, device=device))
    else:
        grad = torch.randn(12, 8, 2, dtype=torch.float64, device=device, requires_grad=True)
        torch.library.opcheck(reduce, (grad,))


def test_bad_arguments_raise_clear_errors():
    r, i, j, k = components(3, 2)
    with pytest.raises(ValueError, match=r"one shape, got \[3, 2\] and \[3, 3\]"):
        expand(r, i, j, torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="one dtype"):
        expand(r, i, j, k.float())
    with pytest.raises(ValueError, match=r"shape \(n, m, \*rest\), got 1-d"):
        expand(*(torch.zeros(3) for _ in range(4)))
    with pytest.raises(ValueError, match=r"shape \(4n, 4m, \*rest\), got \[6, 8\]"):
        reduce(torch.zeros(6, 8))
    with pytest.raises(ValueError, match=r"shape \(4n, 4m, \*rest\), got \[8\]"):
        reduce(torch.zeros(8))
    with pytest.raises(TypeError, match="expected a floating-point tensor .* got Long"):
        expand(*(torch.zeros(2, 2, dtype=torch.long) for _ in range(4)))
    with pytest.raises(TypeError, match="hamilton_reduce: expected a floating-point tensor"):
        reduce(torch.zeros(0, 0, dtype=torch.long))
