"""Property-based tests (hypothesis): random shapes (size 0 and 1 included), dtypes, leading dims,
strides and requires_grad combinations; the efficient path equals the reference; bad input raises."""

import pytest
import torch
from conftest import TOLERANCES
from hypothesis import given, settings
from hypothesis import strategies as st

import qlayers
from qlayers import reference
from qlayers.functional import quaternion_linear

EXAMPLES = settings(max_examples=200, deadline=None)
DTYPES = st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16])
small = st.integers(min_value=0, max_value=4)


def maybe_non_contiguous(shape, dtype, layout):
    """A tensor of `shape` that is contiguous, transposed in its first two dims, or a strided slice."""
    if layout == "transposed" and len(shape) >= 2:
        return torch.randn(shape[1], shape[0], *shape[2:], dtype=torch.float64).to(dtype).transpose(0, 1)
    if layout == "sliced" and len(shape) >= 1:
        return torch.randn(shape[0] * 2, *shape[1:], dtype=torch.float64).to(dtype)[::2]
    return torch.randn(shape, dtype=torch.float64).to(dtype)


LAYOUTS = st.sampled_from(["contiguous", "transposed", "sliced"])


@EXAMPLES
@given(n=small, m=small, rest=st.lists(small, max_size=2), dtype=DTYPES, layout=LAYOUTS)
def test_expand_and_reduce(n, m, rest, dtype, layout):
    parts = [maybe_non_contiguous((n, m, *rest), dtype, layout) for _ in range(4)]
    assert torch.equal(torch.ops.qlayers.hamilton_expand(*parts), reference.hamilton_matrix(*parts))
    grad = maybe_non_contiguous((4 * n, 4 * m, *rest), dtype, layout)
    leaves = [torch.zeros(n, m, *rest, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    expected = torch.autograd.grad(reference.hamilton_matrix(*leaves), leaves, grad.double(), allow_unused=True)
    for got, want in zip(torch.ops.qlayers.hamilton_reduce(grad), expected):
        assert got.shape == (n, m, *rest) and got.dtype == dtype
        torch.testing.assert_close(got.double(), want, **TOLERANCES[dtype])


@EXAMPLES
@given(rows=st.lists(small, max_size=2), k=small, transpose=st.booleans(), dtype=DTYPES)
def test_combine_and_spread_are_adjoint(rows, k, transpose, dtype):
    products = torch.randn(4, *rows, 4, k, dtype=torch.float64)
    grad = torch.randn(*rows, 4 * k, dtype=torch.float64)
    combined = torch.ops.qlayers.hamilton_combine(products.to(dtype), transpose)
    spread = torch.ops.qlayers.hamilton_spread(grad.to(dtype), transpose)
    assert combined.shape == grad.shape and spread.shape == products.shape
    # In float64 the pair is adjoint; in every dtype, spread is exact and combine rounds once.
    lhs = (torch.ops.qlayers.hamilton_combine(products, transpose) * grad).sum()
    rhs = (products * torch.ops.qlayers.hamilton_spread(grad, transpose)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(spread.double(), torch.ops.qlayers.hamilton_spread(grad.to(dtype).double(), transpose))
    expected = torch.ops.qlayers.hamilton_combine(products.to(dtype).double(), transpose)
    torch.testing.assert_close(combined.double(), expected, **TOLERANCES[dtype])


@EXAMPLES
@given(
    leading=st.lists(st.integers(0, 3), max_size=3),
    n=st.integers(1, 4),
    m=st.integers(1, 4),
    algorithm=st.sampled_from(["auto", "hamilton", "components"]),
    with_bias=st.booleans(),
    grads=st.lists(st.booleans(), min_size=6, max_size=6),
    transposed_input=st.booleans(),
)
def test_quaternion_linear_matches_reference(leading, n, m, algorithm, with_bias, grads, transposed_input):
    if transposed_input and leading:
        x = torch.randn(4 * n, *leading, dtype=torch.float64).movedim(0, -1)  # non-contiguous input
    else:
        x = torch.randn(*leading, 4 * n, dtype=torch.float64)
    tensors = [x] + [torch.randn(n, m, dtype=torch.float64) for _ in range(4)]
    tensors.append(torch.randn(4 * m, dtype=torch.float64) if with_bias else None)
    results = []
    for fn in (lambda *a: quaternion_linear(*a, algorithm=algorithm), reference.quaternion_linear):
        leaves = [None if t is None else t.clone().requires_grad_(g) for t, g in zip(tensors, grads)]
        out = fn(*leaves)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        results.append([out, *(torch.autograd.grad(out.sum(), wanted) if wanted else [])])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])


def _bad_linear_call(data):
    """A quaternion_linear call with exactly one thing wrong, and the error class it must raise."""
    n, m = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    x = torch.randn(2, 4 * n)
    parts = [torch.randn(n, m) for _ in range(4)]
    bias = torch.randn(4 * m)
    fault = data.draw(
        st.sampled_from(["width", "zero_dim", "shape", "rank", "dtype", "input_dtype", "bias", "int", "list"])
    )
    if fault == "width":
        x = torch.randn(2, 4 * n + data.draw(st.integers(1, 3)))
    elif fault == "zero_dim":
        x = torch.tensor(1.0)
    elif fault == "shape":
        parts[data.draw(st.integers(1, 3))] = torch.randn(n, m + 1)
    elif fault == "rank":
        parts = [p.unsqueeze(-1) for p in parts]
    elif fault == "dtype":
        parts[data.draw(st.integers(1, 3))] = parts[0].double()
    elif fault == "input_dtype":
        x = x.double()
    elif fault == "bias":
        bias = torch.randn(4 * m + 1)
    elif fault == "int":
        parts = [p.long() for p in parts]
    else:
        x = x.tolist()
    expected = TypeError if fault in ("dtype", "input_dtype", "int", "list") else ValueError
    return (x, *parts, bias), expected


@EXAMPLES
@given(data=st.data())
def test_bad_input_raises_and_never_returns(data):
    args, expected = _bad_linear_call(data)
    with pytest.raises(expected):
        quaternion_linear(*args)
    layer = qlayers.QLinear(8, 8)
    with pytest.raises((ValueError, TypeError)):
        layer(torch.randn(2, data.draw(st.sampled_from([0, 4, 7, 12, 16]))))


@EXAMPLES
@given(dims=st.lists(st.integers(0, 5), min_size=0, max_size=3), dtype=st.sampled_from([torch.int64, torch.bool]))
def test_raw_ops_reject_bad_tensors(dims, dtype):
    # Wrong ranks, sizes that are not multiples of 4, integer dtypes: a Python error, never a crash.
    tensor = torch.zeros(dims, dtype=dtype)
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        torch.ops.qlayers.hamilton_reduce(tensor)
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        torch.ops.qlayers.hamilton_expand(tensor, tensor, tensor, tensor)
