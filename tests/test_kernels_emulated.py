"""The CUDA kernels' per-thread code, run on the CPU by tests/kernels/emulate.cpp.

The emulation builds csrc/kernels/*.h (the bodies the CUDA kernels run) for the host and runs them
serially over a CUDA grid, with the launcher's own plan (pack width, packs, grid) or a forced one.
The Hamilton kernels' outputs are compared bit for bit with the CPU op and with a plain-torch
reference written from the Hamilton table; the recurrent gate kernels' (exp and tanh, which differ
by ulps between libraries) with a float64 plain-torch reference, within the dtype's rounding.
Outputs start as NaN inside NaN guard zones, so an element left unwritten or written out of bounds
fails. QLAYERS_EMULATE_SANITIZE=1 (``make test-kernels-asan``)
builds the emulation with AddressSanitizer and UBSan.
"""

import os
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import KERNEL_COVERAGE
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
SANITIZE = os.environ.get("QLAYERS_EMULATE_SANITIZE") == "1"

# The Hamilton table of ../shared/design/HAMILTON.md: block (a, b) of W holds component |t| - 1 with
# the sign of t. Written out here, not taken from the C++ table, so that the two check each other.
TABLE = [
    [+1, +2, +3, +4],
    [-2, +1, +4, -3],
    [-3, -4, +1, +2],
    [-4, +3, -2, +1],
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["float64", "float32", "float16", "bfloat16"]
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
OPMATH = {torch.float64: torch.float64, torch.float32: torch.float32, torch.float16: torch.float32}
OPMATH[torch.bfloat16] = torch.float32
# (blocks, threads): the plan's own grid (-1), one thread, and small odd grids that loop many times.
GRIDS = [(-1, -1), (1, 1), (3, 7), (2, 33)]


@pytest.fixture(scope="session")
def emu():
    """The emulation, compiled once per flag set and torch into build/ (ninja rebuilds it when a header changes)."""
    flags = ["-O1", "-g0"]
    name = "qlayers_emulate"
    if SANITIZE:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
        name += "_asan"
    # One folder per torch: a build for another torch would not load, and torch's build lock differs
    # between versions (an older torch waits forever on the lock file a newer one leaves behind).
    build = ROOT / "build" / f"{name}-torch{torch.__version__.replace('+', '-')}"
    build.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=name,
        sources=[str(ROOT / "tests" / "kernels" / "emulate.cpp")],
        extra_include_paths=[str(ROOT / "csrc")],
        extra_cflags=flags,
        extra_ldflags=flags[2:] if SANITIZE else [],
        build_directory=str(build),
    )


def width_of(dtype):
    return 16 // torch.empty(0, dtype=dtype).element_size()


def bits_equal(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def record(kernel, dtype, width, iterations):
    if width == 0:  # an empty output: nothing launched
        return
    key = (kernel, str(dtype).removeprefix("torch."), width)
    KERNEL_COVERAGE[key] = max(KERNEL_COVERAGE.get(key, 0), iterations)


def random(shape, dtype):
    """Random values with exact zeros of both signs among them (a sum must keep -0 as the CPU does)."""
    t = torch.randn(shape, dtype=torch.float64)
    flat = t.view(-1)
    flat[::7] = 0.0
    flat[3::7] = -0.0
    return t.to(dtype)


def laid_out(t, layout):
    """t's values in the given layout (same sizes): the layouts the kernels must read in place or copy."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "misaligned":  # one element past a 16-byte boundary
        buffer = torch.empty(t.numel() + 1, dtype=t.dtype)
        out = buffer[1:].view(t.shape)
        out.copy_(t)
        return out
    if layout == "transposed":  # dims 0 and 1 swapped in memory
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "strided":  # every other element of a larger tensor along the last dim
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "channels_last":  # conv-shaped tensors; the others get their last two dims swapped
        if t.dim() in (4, 5):
            return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
        return t.transpose(-2, -1).contiguous().transpose(-2, -1)
    raise ValueError(layout)


def broadcast(t):
    """A stride-0 tensor of t's shape: its first row repeated."""
    return t[:1].expand(t.shape)


LAYOUTS = ["contiguous", "misaligned", "transposed", "strided", "channels_last", "broadcast"]


def place(t, layout):
    return broadcast(t) if layout == "broadcast" else laid_out(t, layout)


def values(t, layout):
    """What the kernel sees: t itself, or its broadcast first row."""
    return broadcast(t).contiguous() if layout == "broadcast" else t


def component_shapes(dtype):
    """(n, m, *rest) around the pack width: m * inner = W - 1, W, W + 1, 2W, conv-shaped, and empty."""
    w = width_of(dtype)
    return [(2, w - 1), (3, w), (2, w + 1), (2, 1, 2 * w), (3, 2, 3, 3), (2, 3, 2, 2, w // 2 or 1), (0, 3), (2, 0, 3)]


# ---- Independent references: plain torch, read from TABLE. ----


def expand_reference(parts):
    rows = []
    for a in range(4):
        row = []
        for b in range(4):
            t = TABLE[a][b]
            part = parts[abs(t) - 1]
            row.append(part if t > 0 else -part)
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)


def reduce_reference(grad):
    """out[c] = sum over row blocks a of sign * block (a, b) holding c, summed in a's order in opmath."""
    n, m = grad.shape[0] // 4, grad.shape[1] // 4
    g = grad.to(OPMATH[grad.dtype])
    outs = []
    for c in range(4):
        total = None
        for a in range(4):
            b = next(b for b in range(4) if abs(TABLE[a][b]) - 1 == c)
            term = g[a * n : (a + 1) * n, b * m : (b + 1) * m] * float(1 if TABLE[a][b] > 0 else -1)
            total = term if total is None else total + term
        outs.append(total.to(grad.dtype))
    return outs


def sign(u, v, transpose):
    """The sign of the term of output block u from input block v (block (v, u) of W; (u, v) transposed)."""
    t = TABLE[u][v] if transpose else TABLE[v][u]
    return 1 if t > 0 else -1


def component(u, v):
    """The component in block (v, u) of W."""
    return abs(TABLE[v][u]) - 1


def combine_reference(products, transpose):
    """products (4, *rows, 4, k) -> (*rows, 4k): block u sums sign * products[component, ..., v, :]."""
    p = products.to(OPMATH[products.dtype])
    blocks = []
    for u in range(4):
        total = None
        for v in range(4):
            term = p[component(u, v), ..., v, :] * float(sign(u, v, transpose))
            total = term if total is None else total + term
        blocks.append(total.to(products.dtype))
    return torch.cat(blocks, dim=-1)


def spread_reference(grad, transpose):
    """grad (*rows, 4k) -> (4, *rows, 4, k): out[c, ..., v, :] = sign * grad block u, c = component(u, v)."""
    k = grad.shape[-1] // 4
    out = torch.empty(4, *grad.shape[:-1], 4, k, dtype=grad.dtype)
    for u in range(4):
        for v in range(4):
            block = grad[..., u * k : (u + 1) * k]
            out[component(u, v), ..., v, :] = block if sign(u, v, transpose) > 0 else -block
    return out


def widths_to_try(dtype, planned):
    """The plan's width, and the one-element kernel on inputs the plan would pack."""
    return [0, 1] if planned > 1 else [0]


def assert_every_launch_gives(kernel, dtype, expected, launch, context):
    """`launch` (an emulated kernel, given its launch options) gives `expected` bit for bit at every
    width to try and on every grid; `expected` and the result are a tensor or a tuple of them."""
    for width in widths_to_try(dtype, launch()[1]):
        for blocks, threads in GRIDS:
            out, used, iterations = launch(width=width, blocks=blocks, threads=threads)
            record(kernel, dtype, used, iterations)
            outs, wants = (out, expected) if isinstance(expected, (tuple, list)) else ((out,), (expected,))
            assert len(outs) == len(wants) and all(map(bits_equal, outs, wants)), (*context, width, blocks, threads)


# ---- The kernels. ----


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_expand(emu, dtype, layout):
    for shape in component_shapes(dtype):
        parts = [place(random(shape, dtype), layout) for _ in range(4)]
        expected = torch.ops.qlayers.hamilton_expand(*parts)
        assert bits_equal(expected, expand_reference([values(p, layout) for p in parts]))
        assert_every_launch_gives("expand", dtype, expected, partial(emu.expand, *parts), (shape,))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_reduce(emu, dtype, layout):
    for n, m, *rest in component_shapes(dtype):
        grad = place(random((4 * n, 4 * m, *rest), dtype), layout)
        expected = torch.ops.qlayers.hamilton_reduce(grad)
        reference = reduce_reference(values(grad, layout))
        assert all(bits_equal(e, r) for e, r in zip(expected, reference))
        assert_every_launch_gives("reduce", dtype, expected, partial(emu.reduce, grad), ((n, m, *rest),))


def rows_shapes(dtype):
    """(*rows) and k around the pack width, including no rows and k = 0."""
    w = width_of(dtype)
    return [((3,), w - 1 or 1), ((2,), w), ((2, 3), w + 1), ((5,), 2 * w), ((0,), w), ((2,), 0)]


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "misaligned", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_combine(emu, dtype, layout, transpose):
    for rows, k in rows_shapes(dtype):
        products = place(random((4, *rows, 4, k), dtype), layout)
        expected = torch.ops.qlayers.hamilton_combine(products, transpose)
        assert bits_equal(expected, combine_reference(products, transpose))
        assert_every_launch_gives("combine", dtype, expected, partial(emu.combine, products, transpose), (rows, k))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "misaligned", "transposed", "broadcast"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_spread(emu, dtype, layout, transpose):
    for rows, k in rows_shapes(dtype):
        grad = place(random((*rows, 4 * k), dtype), layout)
        expected = torch.ops.qlayers.hamilton_spread(grad, transpose)
        assert bits_equal(expected, spread_reference(values(grad, layout), transpose))
        assert_every_launch_gives("spread", dtype, expected, partial(emu.spread, grad, transpose), (rows, k))


def block_mix_reference(blocks, table):
    """out[t] = sum of table[t][a] * blocks[a] over nonzero entries, a ascending, in opmath, rounded once."""
    b = blocks.to(OPMATH[blocks.dtype])
    outs = []
    for row in table:
        terms = [c * b[a] for a, c in enumerate(row) if c != 0]
        total = torch.zeros_like(b[0]) if not terms else terms[0]
        for term in terms[1:]:
            total = total + term
        outs.append(total.to(blocks.dtype))
    return torch.stack(outs)


def mix_table(blocks_out, blocks_in):
    """Entries 0, +-1/2, +-1, as in the eight-product tables (csrc/eight_product.h); one row all zeros."""
    table = (torch.randint(-2, 3, (blocks_out, blocks_in)) / 2).tolist()
    table[-1] = [0.0] * blocks_in
    return table


def mix_blocks(shape, dtype, layout):
    """(B, rows, cols) blocks: contiguous, a layer's feature blocks in place, misaligned, or strided columns."""
    blocks, rows, cols = shape
    t = random(shape, dtype)
    if layout == "features":  # (rows, B * cols) read as its blocks, as the eight-product layer does
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return laid_out(t, layout)


@pytest.mark.parametrize("layout", ["contiguous", "features", "misaligned", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_block_mix(emu, dtype, layout):
    torch.manual_seed(0)
    w = width_of(dtype)
    for blocks_in, blocks_out in [(4, 8), (8, 4), (1, 1), (3, 5)]:
        table = mix_table(blocks_out, blocks_in)
        flat = [c for row in table for c in row]
        for rows, cols in [(3, w - 1 or 1), (2, w), (2, w + 1), (5, 2 * w), (0, w), (2, 0)]:
            blocks = mix_blocks((blocks_in, rows, cols), dtype, layout)
            for interleave in (False, True):
                expected = torch.ops.qlayers._block_mix(blocks, flat, interleave)
                as_blocks = expected.transpose(0, 1) if interleave else expected
                assert bits_equal(as_blocks.contiguous(), block_mix_reference(blocks, table))
                _, planned, _ = emu.block_mix(blocks, flat, interleave)
                for width in widths_to_try(dtype, planned):
                    for grid_blocks, threads in GRIDS:
                        out, used, iterations = emu.block_mix(
                            blocks, flat, interleave, width=width, blocks_override=grid_blocks, threads=threads
                        )
                        record("block_mix", dtype, used, iterations)
                        assert bits_equal(out, expected), (blocks_in, rows, cols, interleave, width)


def test_packed_path_taken(emu):
    # Aligned contiguous operands whose rows are whole packs get the 16-byte kernels; a misaligned
    # one falls back to one element per thread.
    for dtype in DTYPES:
        w = width_of(dtype)
        parts = [torch.randn(2, w, dtype=dtype) for _ in range(4)]
        assert emu.expand(*parts)[1] == w
        assert emu.expand(*[laid_out(p, "misaligned") for p in parts])[1] == 1
        assert emu.reduce(torch.randn(8, 4 * w, dtype=dtype))[1] == w
        assert emu.combine(torch.randn(4, 3, 4, w, dtype=dtype), False)[1] == w
        assert emu.spread(torch.randn(3, 4 * w, dtype=dtype), True)[1] == w
        assert emu.block_mix(torch.randn(4, 3, 2 * w, dtype=dtype), [1.0] * 32, True)[1] == w
        assert emu.block_mix(laid_out(torch.randn(4, 3, 2 * w, dtype=dtype), "misaligned"), [1.0] * 32, True)[1] == 1


def test_forced_packs_on_misaligned_data_fault(emu):
    # A 16-byte access at an address the GPU would fault on is refused, not silently done.
    parts = [laid_out(torch.randn(2, 4), "misaligned") for _ in range(4)]
    with pytest.raises(RuntimeError, match="misaligned pack access"):
        emu.expand(*parts, width=4)


@pytest.mark.parametrize(
    "blocks, threads, message",
    [(0, 256, "empty grid"), (1, 0, "empty grid"), (1, 1025, "blockDim.x 1025 over 1024"), (2**31, 1, "gridDim.x")],
)
def test_launch_limits(emu, blocks, threads, message):
    parts = [torch.randn(2, 3) for _ in range(4)]
    with pytest.raises(RuntimeError, match=message):
        emu.expand(*parts, blocks=blocks, threads=threads)


def test_largest_legal_block(emu):
    parts = [torch.randn(3, 5) for _ in range(4)]
    out, _, iterations = emu.expand(*parts, blocks=1, threads=1024)
    assert bits_equal(out, expand_reference(parts)) and iterations == 1


def test_threads_past_the_work_do_nothing(emu):
    # The last blocks of a grid of 2^22 + 2 blocks of 1024 threads: their global thread indices pass
    # 2^32, so an index computed in 32 bits would wrap onto the first packs and run them again.
    parts = [torch.randn(2, 3) for _ in range(4)]
    _, _, iterations = emu.expand(*parts, blocks=2**22 + 2, threads=1024, first_block=2**22)
    assert iterations == 0
    _, _, iterations = emu.reduce(torch.randn(8, 12), blocks=2**22 + 2, threads=1024, first_block=2**22)
    assert iterations == 0


def test_indices_past_2_pow_31(emu):
    # As test_devices.py::test_indices_past_2_pow_31: W has 46400 x 46400 > 2^31 elements (4.3 GB in
    # float16). Only the grid's last blocks run, so only W's tail is written: its element indices pass
    # 2^31, where 32-bit index math in a kernel body would wrap.
    n = m = 11600
    rows = torch.arange(n).view(n, 1)
    cols = torch.arange(m).view(1, m)
    parts = [((rows * 7 + cols * 3 + 50 * c) % 251 - 125).half() for c in range(4)]
    threads, tail_blocks = 256, 8
    packs = (4 * n) * (4 * m) // 8
    blocks = (packs + threads - 1) // threads  # one pack per thread
    out, width, iterations = emu.expand(*parts, blocks=blocks, threads=threads, first_block=blocks - tail_blocks)
    assert width == 8 and iterations == 1
    tail = tail_blocks * threads * width
    flat = out.view(-1)
    assert flat.numel() - tail > 2**31
    expected = expand_reference([part[n - 1 :] for part in parts])[3]  # W's last row: a = 3, p = n - 1
    assert bits_equal(flat[-tail:], expected[-tail:])
    assert flat[-tail - 1].isnan()  # the blocks before the tail did not run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_kernels_match_the_emulation(emu, dtype):
    # On a GPU machine (scripts/gpu-check.sh): the real kernels and their emulation, bit for bit.
    # Moving a tensor to the GPU may change its alignment, so the two may take different pack widths.
    ops = torch.ops.qlayers
    for layout in ["contiguous", "misaligned", "strided", "broadcast"]:
        for n, m, *rest in component_shapes(dtype):
            parts = [place(random((n, m, *rest), dtype), layout) for _ in range(4)]
            assert bits_equal(ops.hamilton_expand(*[p.cuda() for p in parts]).cpu(), emu.expand(*parts)[0])
            grad = place(random((4 * n, 4 * m, *rest), dtype), layout)
            real = ops.hamilton_reduce(grad.cuda())
            assert all(bits_equal(r.cpu(), e) for r, e in zip(real, emu.reduce(grad)[0]))
    for rows, k in rows_shapes(dtype):
        for transpose in (False, True):
            products = random((4, *rows, 4, k), dtype)
            real = ops.hamilton_combine(products.cuda(), transpose).cpu()
            assert bits_equal(real, emu.combine(products, transpose)[0])
            grad = random((*rows, 4 * k), dtype)
            assert bits_equal(ops.hamilton_spread(grad.cuda(), transpose).cpu(), emu.spread(grad, transpose)[0])
    for layout in ["contiguous", "features", "misaligned"]:
        table = mix_table(8, 4)
        flat = [c for row in table for c in row]
        blocks = mix_blocks((4, 5, 3 * width_of(dtype)), dtype, layout)
        for interleave in (False, True):
            real = ops._block_mix(blocks.cuda(), flat, interleave).cpu()
            assert bits_equal(real, emu.block_mix(blocks, flat, interleave)[0])


# ---- The recurrent engine's gate kernels (csrc/kernels/recurrent_kernels.h). ----

# The cells, by the names the ops take (csrc/recurrent_gates.h's kCellNames).
LIGHT_GRUS = ("ligru_relu", "ligru_leaky_relu", "ligru_tanh")
GATE_COUNT = {
    "rnn_tanh": 1,
    "rnn_relu": 1,
    "rnn_identity": 1,
    "lstm": 4,
    "ligru_relu": 2,
    "ligru_leaky_relu": 2,
    "ligru_tanh": 2,
}
# Each cell's activation (of the state, or of the light GRU's candidate), in plain torch.
ACTIVATION = {
    "rnn_tanh": torch.tanh,
    "rnn_relu": torch.relu,
    "ligru_relu": torch.relu,
    "ligru_leaky_relu": lambda x: torch.nn.functional.leaky_relu(x, 0.01),
    "ligru_tanh": torch.tanh,
    "rnn_identity": lambda x: x,
}


class GateMajor(list):
    """Gate slots of the gate-major layout (whole gates as the outer blocks: SpeechBrain's)."""


def gate_major(slots):
    return isinstance(slots, GateMajor)


# (cell, slots): every cell in its canonical gate order, LSTM and light GRU permuted, and both
# gate-major (GateMajor slots).
CELL_LAYOUTS = [
    ("rnn_tanh", [0]),
    ("lstm", [0, 1, 2, 3]),
    ("lstm", [0, 1, 3, 2]),
    ("ligru_relu", [0, 1]),
    ("ligru_relu", [1, 0]),
    ("lstm", GateMajor([0, 1, 3, 2])),
    ("ligru_relu", GateMajor([1, 0])),
    ("rnn_relu", [0]),
    ("ligru_leaky_relu", GateMajor([1, 0])),
    ("ligru_tanh", GateMajor([1, 0])),
    ("rnn_identity", [0]),
]
CELL_IDS = [
    "rnn",
    "lstm",
    "lstm-0132",
    "ligru",
    "ligru-10",
    "lstm-gate-major-0132",
    "ligru-gate-major-10",
    "rnn-relu",
    "ligru-leaky-gate-major-10",
    "ligru-tanh-gate-major-10",
    "rnn-identity",
]
# rtol and atol against float64: the dtype's rounding of the result (half an ulp of float16 is 4.9e-4,
# of bfloat16 3.9e-3) plus a few ulps of float32 or float64 math.
GATE_TOLERANCE = {torch.float64: 1e-13, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def gate_shapes(dtype):
    """(rows, quarter): one row and several, quarter a multiple of the pack width and not."""
    w = width_of(dtype)
    return [(1, w), (3, 2 * w), (1, w + 1), (3, 1), (2, 3)]


def gate_columns(pre, cell, slots):
    """The cell's gates in canonical order, each (rows, H), from pre (rows, gates * H): gate g of
    quaternion q in component block c sits at column (c * gates + slots[g]) * quarter + q, or
    gate-major at (slots[g] * 4 + c) * quarter + q."""
    gates = GATE_COUNT[cell]
    quarter = pre.shape[1] // (4 * gates)
    if gate_major(slots):
        blocks = pre.reshape(pre.shape[0], gates, 4, quarter)
        return [blocks[:, slots[g]].reshape(pre.shape[0], 4 * quarter) for g in range(gates)]
    blocks = pre.reshape(pre.shape[0], 4, gates, quarter)
    return [blocks[:, :, slots[g], :].reshape(pre.shape[0], 4 * quarter) for g in range(gates)]


def cell_reference(cell, gates, hidden, cell_state, cell_after=None, mask=None):
    """(h_t, c_t) from the gates' pre-activations, in plain torch; c_t None but for the LSTM.

    cell_after: the c_t the backward kernel is given; tanh(c_t) then reads it, while the gradient
    flows as through c_t. mask: the dropout mask on the candidate (LSTM, light GRU) or the new
    state (RNN), or None.
    """
    m = 1.0 if mask is None else mask.double()
    if cell == "lstm":
        i, f, g, o = torch.sigmoid(gates[0]), torch.sigmoid(gates[1]), torch.tanh(gates[2]), torch.sigmoid(gates[3])
        c = f * cell_state + i * g * m
        if cell_after is not None:
            c = c + (cell_after - c).detach()
        return o * torch.tanh(c), c
    if cell in LIGHT_GRUS:
        z = torch.sigmoid(gates[0])
        return z * hidden + (1 - z) * ACTIVATION[cell](gates[1]) * m, None
    return ACTIVATION[cell](gates[0]) * m, None


def assert_near(actual, expected, context):
    tolerance = GATE_TOLERANCE[actual.dtype]
    torch.testing.assert_close(
        actual.double(), expected, rtol=tolerance, atol=tolerance, msg=lambda m: f"{context}: {m}"
    )


def forward_inputs(cell, rows, quarter, dtype, keep):
    """(projected, recurrent, hidden, cell, output, cells_out) for recurrent_gates_forward."""
    h = 4 * quarter
    width = GATE_COUNT[cell] * h
    lstm = cell == "lstm"
    return (
        random((rows, width), dtype),
        random((rows, width), dtype),
        random((rows, h), dtype),
        random((rows, h), dtype) if lstm else None,
        torch.empty(rows, h, dtype=dtype),
        torch.empty(rows, h, dtype=dtype) if lstm and keep else None,
    )


def forward_reference(cell, slots, projected, recurrent, hidden, cell_state, mask=None):
    gates = gate_columns(projected.double() + recurrent.double(), cell, slots)
    return cell_reference(cell, gates, hidden.double(), None if cell_state is None else cell_state.double(), None, mask)


def some_mask(n, rows, quarter, dtype):
    """A dropout mask for every other shape (arbitrary values, so a misplaced factor shows), else None."""
    return random((rows, 4 * quarter), dtype) if n % 2 else None


def backward_inputs(cell, slots, rows, quarter, dtype, with_output, mask=None):
    """(pre, grad_output, grad_hidden, grad_cell, hidden_prev, cell_prev, cell) for the backward op;
    the LSTM's c_t is its forward from c_{t-1}, rounded."""
    h = 4 * quarter
    pre = random((rows, GATE_COUNT[cell] * h), dtype)
    lstm = cell == "lstm"
    cell_prev = random((rows, h), dtype) if lstm else None
    cell_after = None
    if lstm:
        gates = gate_columns(pre.double(), cell, slots)
        cell_after = cell_reference(cell, gates, None, cell_prev.double(), None, mask)[1]
        cell_after = cell_after.to(dtype)
    return (
        pre,
        random((rows, h), dtype) if with_output else None,
        random((rows, h), dtype),
        random((rows, h), dtype) if lstm else None,
        random((rows, h), dtype) if cell in LIGHT_GRUS else None,
        cell_prev,
        cell_after,
    )


def backward_reference(
    cell, slots, pre, grad_output, grad_hidden, grad_cell, hidden_prev, cell_prev, cell_after, mask=None
):
    """torch.autograd through cell_reference: (d pre, dL/dh_{t-1} not through the weight or None,
    dL/dc_{t-1} or None)."""
    a = pre.double().requires_grad_()
    h_prev = hidden_prev.double().requires_grad_() if hidden_prev is not None else None
    c_prev = cell_prev.double().requires_grad_() if cell_prev is not None else None
    after = cell_after.double() if cell_after is not None else None
    h, c = cell_reference(cell, gate_columns(a, cell, slots), h_prev, c_prev, after, mask)
    grad_h = grad_hidden.double() + (grad_output.double() if grad_output is not None else 0.0)
    loss = (h * grad_h).sum()
    if c is not None:
        loss = loss + (c * grad_cell.double()).sum()
    inputs = [t for t in (a, h_prev, c_prev) if t is not None]
    found = torch.autograd.grad(loss, inputs)
    return found[0], found[1] if h_prev is not None else None, found[-1] if c_prev is not None else None


@pytest.mark.parametrize("cell, slots", CELL_LAYOUTS, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gates_forward(emu, dtype, cell, slots):
    torch.manual_seed(0)
    for n, (rows, quarter) in enumerate(gate_shapes(dtype)):
        inputs = forward_inputs(cell, rows, quarter, dtype, keep=n % 2 == 0)
        projected, recurrent, hidden, cell_state, _, cells_out = inputs
        mask = some_mask(n, rows, quarter, dtype)
        expected_h, expected_c = forward_reference(cell, slots, projected, recurrent, hidden, cell_state, mask)
        planned = emu.gates_forward(*inputs, cell, slots, gate_major=gate_major(slots), mask=mask)[4]
        assert planned == (width_of(dtype) if quarter % width_of(dtype) == 0 else 1)
        for width in widths_to_try(dtype, planned):
            for blocks, threads in GRIDS:
                context = (rows, quarter, width, blocks, threads)
                h, c, out, kept, used, iterations = emu.gates_forward(
                    *inputs, cell, slots, gate_major(slots), mask, width=width, blocks=blocks, threads=threads
                )
                record("gates_forward", dtype, used, iterations)
                assert_near(out, expected_h, context)
                assert bits_equal(h, out), context
                if cell == "lstm":
                    assert_near(c, expected_c, context)
                    assert kept is None if cells_out is None else bits_equal(kept, c), context
                else:
                    assert c is None and kept is None


@pytest.mark.parametrize("cell, slots", CELL_LAYOUTS, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gates_backward(emu, dtype, cell, slots):
    torch.manual_seed(0)
    for n, (rows, quarter) in enumerate(gate_shapes(dtype)):
        mask = some_mask(n // 2, rows, quarter, dtype)  # with and without grad_output
        inputs = backward_inputs(cell, slots, rows, quarter, dtype, with_output=n % 2 == 0, mask=mask)
        expected_pre, expected_h, expected_c = backward_reference(cell, slots, *inputs, mask=mask)
        grad_hidden = inputs[2]
        planned = emu.gates_backward(*inputs, cell, slots, gate_major=gate_major(slots), mask=mask)[3]
        assert planned == (width_of(dtype) if quarter % width_of(dtype) == 0 else 1)
        for width in widths_to_try(dtype, planned):
            for blocks, threads in GRIDS:
                context = (rows, quarter, width, blocks, threads)
                pre, grad_h, grad_c, used, iterations = emu.gates_backward(
                    *inputs, cell, slots, gate_major(slots), mask, width=width, blocks=blocks, threads=threads
                )
                record("gates_backward", dtype, used, iterations)
                assert_near(pre, expected_pre, context)
                if cell in LIGHT_GRUS:
                    assert_near(grad_h, expected_h, context)
                else:  # only the recurrent GEMM adds to it, outside the kernel
                    assert bits_equal(grad_h, grad_hidden), context
                if cell == "lstm":
                    assert_near(grad_c, expected_c, context)
                else:
                    assert grad_c is None


def test_gates_packed_path_taken(emu):
    # Aligned rows of whole packs get the 16-byte kernels; a quarter that is no multiple of the pack
    # width, or a misaligned operand, one element per thread.
    for dtype in DTYPES:
        w = width_of(dtype)
        for cell in ("rnn_tanh", "lstm", "ligru_relu"):
            slots = list(range(GATE_COUNT[cell]))
            inputs = forward_inputs(cell, 2, w, dtype, keep=True)
            assert emu.gates_forward(*inputs, cell, slots, gate_major=gate_major(slots))[4] == w
            assert (
                emu.gates_forward(
                    *forward_inputs(cell, 2, w + 1, dtype, keep=True), cell, slots, gate_major=gate_major(slots)
                )[4]
                == 1
            )
            misaligned = (laid_out(inputs[0], "misaligned"), *inputs[1:])
            assert emu.gates_forward(*misaligned, cell, slots, gate_major=gate_major(slots))[4] == 1
            inputs = backward_inputs(cell, slots, 2, w, dtype, with_output=True)
            assert emu.gates_backward(*inputs, cell, slots, gate_major=gate_major(slots))[3] == w
            misaligned = (inputs[0], laid_out(inputs[1], "misaligned"), *inputs[2:])
            assert emu.gates_backward(*misaligned, cell, slots, gate_major=gate_major(slots))[3] == 1


def test_gates_forced_packs_on_misaligned_data_fault(emu):
    inputs = forward_inputs("lstm", 2, 4, torch.float32, keep=True)
    misaligned = (inputs[0], laid_out(inputs[1], "misaligned"), *inputs[2:])
    with pytest.raises(RuntimeError, match="misaligned pack access"):
        emu.gates_forward(*misaligned, "lstm", [0, 1, 2, 3], width=4)


@pytest.mark.parametrize("rows, quarter", [(0, 4), (3, 0)])
@pytest.mark.parametrize("cell, slots", CELL_LAYOUTS[:2] + CELL_LAYOUTS[3:4], ids=["rnn", "lstm", "ligru"])
def test_gates_empty_launch_nothing(emu, cell, slots, rows, quarter):
    inputs = forward_inputs(cell, rows, quarter, torch.float32, keep=True)
    h, c, out, kept, used, iterations = emu.gates_forward(*inputs, cell, slots, gate_major=gate_major(slots))
    assert (used, iterations) == (0, 0) and h.shape == out.shape == (rows, 4 * quarter)
    inputs = backward_inputs(cell, slots, rows, quarter, torch.float32, with_output=True)
    pre, grad_h, grad_c, used, iterations = emu.gates_backward(*inputs, cell, slots, gate_major=gate_major(slots))
    assert (used, iterations) == (0, 0) and pre.shape == inputs[0].shape


def test_gates_unwritten_elements_stay_nan(emu):
    # The guard machinery the tests above rely on: where the grid's first block does not run, its
    # packs of the output stay NaN (and the reference comparison would fail on them).
    inputs = forward_inputs("rnn_tanh", 2, 3, torch.float32, keep=False)
    _, _, out, _, used, _ = emu.gates_forward(*inputs, "rnn_tanh", [0], width=1, blocks=2, threads=4, first_block=1)
    skipped = (torch.arange(out.numel()) % 8 < 4).view(out.shape)  # block 0's threads: packs 8k .. 8k + 3
    assert used == 1 and torch.equal(out.isnan(), skipped)


FORWARD_ARGUMENTS = ("projected", "recurrent", "hidden", "cell_state", "output", "cells_out")


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"slots": [0, 1, 2]}, ValueError, "permutation of 0..3"),
        ({"slots": [0, 1, 1, 2]}, ValueError, "permutation of 0..3"),
        ({"slots": [0, 1, 2, 4]}, ValueError, "permutation of 0..3"),
        ({"cell": "gru"}, ValueError, r"cell must be one of \('rnn_tanh', 'rnn_relu', .*'ligru_tanh'\), got 'gru'"),
        ({"cell_state": None}, ValueError, "needs a cell state"),
        ({"projected": torch.zeros(3, 24)}, ValueError, r"expected shape \(3, 32\)"),
        ({"recurrent": torch.zeros(2, 32)}, ValueError, r"expected shape \(3, 32\)"),
        ({"output": torch.zeros(3, 9)}, ValueError, r"expected shape \(3, 8\)"),
        ({"projected": torch.zeros(32, 3).t()}, ValueError, "contiguous"),
        ({"recurrent": torch.zeros(3, 32, dtype=torch.float64)}, TypeError, "one dtype"),
        ({"hidden": torch.zeros(3, 6)}, ValueError, "H a multiple of 4"),
        ({"hidden": torch.zeros(3, 8, dtype=torch.int32)}, TypeError, "floating-point"),
        ({"mask": torch.ones(3, 4)}, ValueError, r"expected shape \(3, 8\)"),
        ({"mask": torch.ones(3, 8, dtype=torch.float64)}, TypeError, "one dtype"),
    ],
)
def test_gates_forward_rejects_bad_arguments(emu, change, error, message):
    arguments = dict(zip(FORWARD_ARGUMENTS, forward_inputs("lstm", 3, 2, torch.float32, keep=True)))
    arguments.update(cell="lstm", slots=[0, 1, 2, 3])
    arguments.update(change)
    with pytest.raises(error, match=message):
        emu.gates_forward(**arguments)


@pytest.mark.parametrize(
    "cell, missing, message",
    [
        ("lstm", 3, "needs grad_cell, cell_prev and cell"),
        ("lstm", 5, "needs grad_cell, cell_prev and cell"),
        ("lstm", 6, "needs grad_cell, cell_prev and cell"),
        ("ligru_relu", 4, "needs hidden_prev"),
    ],
)
def test_gates_backward_rejects_missing_state(emu, cell, missing, message):
    slots = list(range(GATE_COUNT[cell]))
    inputs = list(backward_inputs(cell, slots, 3, 2, torch.float32, with_output=True))
    inputs[missing] = None
    with pytest.raises(ValueError, match=message):
        emu.gates_backward(*inputs, cell, slots, gate_major=gate_major(slots))


def test_gates_backward_rejects_bad_layouts(emu):
    inputs = list(backward_inputs("ligru_relu", [0, 1], 3, 2, torch.float32, with_output=True))
    with pytest.raises(ValueError, match="permutation of 0..1"):
        emu.gates_backward(*inputs, "ligru_relu", [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"expected shape \(3, 16\)"):
        emu.gates_backward(torch.zeros(3, 32), *inputs[1:], "ligru_relu", [0, 1])  # pre laid out for the LSTM
    with pytest.raises(TypeError, match="one dtype"):
        emu.gates_backward(*inputs[:4], inputs[4].double(), *inputs[5:], "ligru_relu", [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
@pytest.mark.parametrize("cell, slots", CELL_LAYOUTS, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_gates_match_the_reference(dtype, cell, slots):
    # On a GPU machine (scripts/gpu-check.sh): the real gate kernels, which update in place, against
    # the reference (device exp and tanh round differently from the host's, so not bit for bit).
    ops = torch.ops.qlayers
    torch.manual_seed(0)
    cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    for n, (rows, quarter) in enumerate(gate_shapes(dtype)):
        inputs = forward_inputs(cell, rows, quarter, dtype, keep=True)
        mask = some_mask(n, rows, quarter, dtype)
        expected_h, expected_c = forward_reference(cell, slots, *inputs[:4], mask)
        projected, recurrent, hidden, cell_state, output, cells_out = map(cuda, inputs)
        ops._recurrent_gates_forward(
            projected, recurrent, hidden, cell_state, output, cells_out, cell, slots, gate_major(slots), cuda(mask)
        )
        assert_near(output.cpu(), expected_h, (rows, quarter))
        assert bits_equal(hidden.cpu(), output.cpu())
        if cell == "lstm":
            assert_near(cell_state.cpu(), expected_c, (rows, quarter))
            assert bits_equal(cells_out.cpu(), cell_state.cpu())
        inputs = backward_inputs(cell, slots, rows, quarter, dtype, with_output=True, mask=mask)
        expected_pre, expected_grad_h, expected_grad_c = backward_reference(cell, slots, *inputs, mask=mask)
        pre, grad_output, grad_h, grad_c, hidden_prev, cell_prev, cell_after = map(cuda, inputs)
        ops._recurrent_gates_backward(
            pre,
            grad_output,
            grad_h,
            grad_c,
            hidden_prev,
            cell_prev,
            cell_after,
            cell,
            slots,
            gate_major(slots),
            cuda(mask),
        )
        assert_near(pre.cpu(), expected_pre, (rows, quarter))
        if cell in LIGHT_GRUS:
            assert_near(grad_h.cpu(), expected_grad_h, (rows, quarter))
        if cell == "lstm":
            assert_near(grad_c.cpu(), expected_grad_c, (rows, quarter))
