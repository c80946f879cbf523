"""The raw ops torch.ops.qlayers.hamilton_* against independent references."""

import pytest
import torch
from conftest import DEVICES, TOLERANCES, components
from torch.autograd import gradcheck, gradgradcheck

from qlayers import reference

expand = torch.ops.qlayers.hamilton_expand
reduce = torch.ops.qlayers.hamilton_reduce
combine = torch.ops.qlayers.hamilton_combine
spread = torch.ops.qlayers.hamilton_spread

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (3, 5), (7, 2), (4, 6, 3), (2, 3, 3, 2), (5, 1, 1, 1, 2)]

# The Hamilton table of ../shared/design/HAMILTON.md: block (a, b) of W holds component |t| - 1
# (r, i, j, k = 1, 2, 3, 4) with the sign of t.
TABLE = [
    [+1, +2, +3, +4],
    [-2, +1, +4, -3],
    [-3, -4, +1, +2],
    [-4, +3, -2, +1],
]


def reduce_oracle(grad):
    """The adjoint of the reference matrix, by autograd through torch.cat on the CPU in float64."""
    n, m, *rest = grad.shape
    parts = [torch.zeros(n // 4, m // 4, *rest, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    return torch.autograd.grad(reference.hamilton_matrix(*parts), parts, grad.cpu().double())


@pytest.mark.parametrize("device", DEVICES)
def test_convention_table(device):
    # Components 1, 2, 3, 4 (r, i, j, k) make W read the table in the Hamilton convention directly.
    r, i, j, k = (torch.full((1, 1), float(v), device=device) for v in (1, 2, 3, 4))
    table = torch.tensor(TABLE, dtype=torch.float32, device=device)
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
    parts = [torch.empty(3, 5, 2, device="meta", dtype=torch.bfloat16) for _ in range(4)]
    outs = [expand(*parts), *reduce(torch.empty(12, 20, 2, device="meta", dtype=torch.bfloat16))]
    for transpose in (False, True):
        outs.append(combine(torch.empty(4, 2, 3, 4, 5, device="meta", dtype=torch.bfloat16), transpose))
        outs.append(spread(torch.empty(2, 3, 20, device="meta", dtype=torch.bfloat16), transpose))
    want = [(12, 20, 2)] + [(3, 5, 2)] * 4 + [(2, 3, 20), (4, 2, 3, 4, 5)] * 2
    assert [tuple(o.shape) for o in outs] == want
    assert all(o.device.type == "meta" and o.dtype == torch.bfloat16 for o in outs)


@pytest.mark.parametrize("meta_at", range(4))
def test_expand_refuses_cpu_and_meta_arguments(meta_at):
    # One meta argument sends the call to the fake kernel: it must refuse the mix as the CPU kernel
    # refuses mixed devices, not hand back an uninitialised CPU tensor.
    parts = components(3, 2)
    parts[meta_at] = parts[meta_at].to("meta")
    with pytest.raises(ValueError, match=r"hamilton_expand: expected r, i, j, k on one device, got (cpu|meta) and"):
        expand(*parts)


def _zeros(*shape, dtype=torch.float32):
    return lambda device: torch.zeros(shape, dtype=dtype, device=device)


# (call on a device, error, message): each must fail alike in the real kernels and the fake ones.
FLOATING = r"expected a floating-point tensor \(float64, float32, float16 or bfloat16\), got"
BAD_CALLS = {
    "expand-1d": (lambda d: expand(*[_zeros(3)(d)] * 4), ValueError, r"expand: .* \(n, m, \*rest\), got 1-d r"),
    "expand-integer": (lambda d: expand(*[_zeros(2, 2, dtype=torch.long)(d)] * 4), TypeError, "expand: " + FLOATING),
    "expand-float8": (
        lambda d: expand(*[_zeros(2, 2, dtype=torch.float8_e4m3fn)(d)] * 4),
        TypeError,
        "expand: " + FLOATING,
    ),
    "expand-shapes": (
        lambda d: expand(*[_zeros(3, 2)(d)] * 3, _zeros(3, 3)(d)),
        ValueError,
        r"expand: expected r, i, j, k of one shape, got \[3, 2\] and \[3, 3\]",
    ),
    "expand-dtypes": (
        lambda d: expand(*[_zeros(3, 2)(d)] * 3, _zeros(3, 2, dtype=torch.float64)(d)),
        TypeError,
        "expand: expected r, i, j, k of one dtype, got",
    ),
    "reduce-integer": (lambda d: reduce(_zeros(0, 0, dtype=torch.int32)(d)), TypeError, "reduce: " + FLOATING),
    "reduce-complex": (lambda d: reduce(_zeros(4, 4, dtype=torch.complex64)(d)), TypeError, "reduce: " + FLOATING),
    "reduce-shape": (lambda d: reduce(_zeros(6, 8)(d)), ValueError, r"reduce: .* \(4n, 4m, \*rest\), got \[6, 8\]"),
    "reduce-1d": (lambda d: reduce(_zeros(8)(d)), ValueError, r"reduce: .* \(4n, 4m, \*rest\), got \[8\]"),
    "combine-integer": (
        lambda d: combine(_zeros(4, 2, 4, 5, dtype=torch.long)(d), False),
        TypeError,
        "combine: " + FLOATING,
    ),
    "combine-shape": (
        lambda d: combine(_zeros(3, 2, 4, 5)(d), True),
        ValueError,
        r"combine: .* \(4, \*rows, 4, k\), got \[3, 2, 4, 5\]",
    ),
    "spread-integer": (lambda d: spread(_zeros(2, 8, dtype=torch.uint8)(d), False), TypeError, "spread: " + FLOATING),
    "spread-shape": (lambda d: spread(_zeros(2, 6)(d), True), ValueError, r"spread: .* \(\*rows, 4k\), got \[2, 6\]"),
    "spread-0d": (lambda d: spread(_zeros()(d), False), ValueError, r"spread: .* \(\*rows, 4k\), got \[\]"),
}


@pytest.mark.parametrize("device", ["meta", *DEVICES])
@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_arguments_raise_clear_errors_in_kernels_and_fake_kernels(case, device):
    # On "meta" the fake kernel answers: a call that the real kernels refuse must not pass there.
    call, error, message = BAD_CALLS[case]
    with pytest.raises(error, match="hamilton_" + message):
        call(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [8, 9])
def test_sums_of_negative_zeros_are_negative_zero(m, dtype, device):
    # reduce(expand(c)) is 4c and combine(spread(g)) is 4g, each output a sum of four terms that all
    # equal c (or g). With c = -0 every term is -0, and an IEEE 754 sum of -0 terms is -0; a sum
    # started from +0 gives +0. m = 8 and 9 reach the packed and one-element paths.
    zero = torch.full((3, m), -0.0, dtype=dtype, device=device)
    for got in reduce(expand(zero, zero, zero, zero)):
        assert torch.equal(got, zero) and got.signbit().all()
    grad = torch.full((2, 4 * m), -0.0, dtype=dtype, device=device)
    for transpose in (False, True):
        got = combine(spread(grad, transpose), transpose)
        assert torch.equal(got, grad) and got.signbit().all()


_MANTISSA_BITS = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
_BITS_DTYPE = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def special_bits(dtype, shape, shift, device):
    """Integers of the width of `dtype` cycling through its special values, from the `shift`-th on.

    Quiet NaN, quiet NaN with a payload, signalling NaN, infinity, zero, the smallest subnormal and
    one, each with either sign.
    """
    width, mantissa = torch.finfo(dtype).bits, _MANTISSA_BITS[dtype]
    inf = ((1 << (width - 1 - mantissa)) - 1) << mantissa
    one = ((1 << (width - 2 - mantissa)) - 1) << mantissa
    patterns = [inf | 1 << (mantissa - 1), inf | 1 << (mantissa - 1) | 5, inf | 1, inf, 0, 1, one]
    patterns += [p | 1 << (width - 1) for p in patterns]
    signed = [p - (1 << width) if p >> (width - 1) else p for p in patterns]  # as two's complement
    count = torch.Size(shape).numel()
    values = [signed[(shift + t) % len(signed)] for t in range(count)]
    return torch.tensor(values, dtype=_BITS_DTYPE[width // 8], device=device).view(shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("m", [8, 9])
def test_negation_flips_the_sign_bit_only(m, layout, dtype, device):
    # IEEE 754 negation flips the sign bit and keeps the rest, NaN included; expand and spread only
    # copy and negate, so their outputs are the inputs' bits, sign bit flipped where the table says.
    # Transposed components and m = 9 reach the one-element paths, m = 8 the packed ones.
    n = 3
    if layout == "contiguous":
        bits = [special_bits(dtype, (n, m), 3 * c, device) for c in range(4)]
    else:
        bits = [special_bits(dtype, (m, n), 3 * c, device).t() for c in range(4)]
    sign_bit = torch.iinfo(bits[0].dtype).min
    want = torch.cat([torch.cat([bits[abs(t) - 1] ^ (sign_bit if t < 0 else 0) for t in row], 1) for row in TABLE])
    assert torch.equal(expand(*(b.view(dtype) for b in bits)).view(want.dtype), want)

    grad_bits = special_bits(dtype, (2, 4, m), 5, device)
    for transpose in (False, True):
        got = spread(grad_bits.view(2, 4 * m).view(dtype), transpose).view(grad_bits.dtype)  # (4, rows, 4, m)
        for c in range(4):
            for v in range(4):
                # Output block v of component c reads input block u, where the table holds c in
                # row u, column v (transpose) or row v, column u.
                u = c ^ v
                t = TABLE[u][v] if transpose else TABLE[v][u]
                assert abs(t) - 1 == c
                assert torch.equal(got[c, :, v], grad_bits[:, u] ^ (sign_bit if t < 0 else 0))
