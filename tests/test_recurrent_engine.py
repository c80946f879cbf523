"""The recurrent engine (qlayers.functional.recurrent, csrc/layers/recurrent.cpp) against torch's own
layers: a QLSTM (QRNN) with split activations is an nn.LSTM (nn.RNN) whose weights are the Hamilton
matrices with their gate columns reordered, so torch's layers are an independent reference for the
outputs, final states and every gradient, PackedSequence included. QLiGRU has no torch peer: it is
checked against the step loop and by gradcheck. Also: double backward, packed sequences compiled,
hx checks, the gate layout parameter, and what the engine keeps for backward (torch.func,
forward-mode AD, compile and autocast of every layer: tests/test_layers.py)."""

import contextlib
import itertools

import pytest
import torch
from conftest import CPU_GEMMS, MEASURED, TOLERANCES, randomise
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import qlayers
from qlayers import reference
from qlayers.functional import recurrent as engine
from qlayers.memory import SavedTensorBytes

F64 = TOLERANCES[torch.float64]
F32 = dict(rtol=2e-5, atol=2e-5)
PEERS = [(qlayers.QLSTM, nn.LSTM), (qlayers.QRNN, nn.RNN)]


def components(linear):
    return linear.r_weight, linear.i_weight, linear.j_weight, linear.k_weight


def gate_permutation(layer):
    """Our pre-activation column for torch's row g * H + c * H/4 + q (gate g, component c, quaternion q),
    by the layout's definition (module docstring of qlayers.functional.recurrent)."""
    quarter, gates, slots = layer.hidden_size // 4, layer.gates, layer.gate_slots

    def column(g, c, q):
        block = slots[g] * 4 + c if layer.gate_major else c * gates + slots[g]
        return block * quarter + q

    return [column(g, c, q) for g in range(gates) for c in range(4) for q in range(quarter)]


class SpeechBrainOrderQLSTM(qlayers.QLSTM):
    """Whole gates as the outer blocks, in the order (input, forget, output, cell)."""

    gate_major = True
    gate_slots = (0, 1, 3, 2)


class GateMajorQRNN(qlayers.QRNN):
    gate_major = True


class ReluQRNN(qlayers.QRNN):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, nonlinearity="relu", **kwargs)


LAYOUT_PEERS = PEERS + [(SpeechBrainOrderQLSTM, nn.LSTM), (GateMajorQRNN, nn.RNN), (ReluQRNN, nn.RNN)]
LAYOUT_IDS = ["QLSTM", "QRNN", "QLSTM-gate-major-permuted", "QRNN-gate-major", "QRNN-relu"]


def input_permutation(layer, index):
    """Our input feature for torch's input feature j of layer `index` (directions joined per component)."""
    if index < layer.directions or layer.directions == 1:
        return list(range(layer.cells[index].input.in_features))
    quarter = layer.hidden_size // 4
    return [c * 2 * quarter + d * quarter + q for d in range(2) for c in range(4) for q in range(quarter)]


def torch_twin(layer, torch_cls):
    """torch's layer computing exactly what `layer` computes, from its Hamilton matrices."""
    twin = torch_cls(
        layer.input_size,
        layer.hidden_size,
        layer.num_layers,
        batch_first=layer.batch_first,
        bidirectional=layer.bidirectional,
        dtype=layer.cells[0].input.r_weight.dtype,
        **({"nonlinearity": "relu"} if layer.nonlinearity == "relu" else {}),
    )
    columns = gate_permutation(layer)
    with torch.no_grad():
        for index, cell in enumerate(layer.cells):
            suffix = f"_l{index // layer.directions}" + ("_reverse" if index % layer.directions else "")
            w_in = reference.hamilton_matrix(*components(cell.input))[input_permutation(layer, index)]
            getattr(twin, "weight_ih" + suffix).copy_(w_in[:, columns].t())
            getattr(twin, "weight_hh" + suffix).copy_(
                reference.hamilton_matrix(*components(cell.recurrent))[:, columns].t()
            )
            bias = cell.input.bias
            getattr(twin, "bias_ih" + suffix).copy_(bias[columns] if bias is not None else 0)
            getattr(twin, "bias_hh" + suffix).zero_()
    return twin


def torch_order(layer, output):
    """Our output's features in torch's order: directions joined per component -> [forward | backward]."""
    if layer.directions == 1:
        return output
    quarter = layer.hidden_size // 4
    shape = output.shape[:-1]
    return output.reshape(*shape, 4, 2, quarter).transpose(-3, -2).reshape(*shape, 2 * layer.hidden_size)


def gradients_of(module, *inputs):
    return [t.grad for t in inputs] + [p.grad for p in module.parameters()]


def twin_grads(layer, twin):
    """torch's parameter gradients mapped back onto ours, by the chain rule through the Hamilton matrices."""
    grads = []
    columns = gate_permutation(layer)
    for index, cell in enumerate(layer.cells):
        suffix = f"_l{index // layer.directions}" + ("_reverse" if index % layer.directions else "")
        for linear, name, rows in (
            (cell.input, "weight_ih", input_permutation(layer, index)),
            (cell.recurrent, "weight_hh", None),
        ):
            parts = [p.detach().clone().requires_grad_() for p in components(linear)]
            matrix = reference.hamilton_matrix(*parts)
            if rows is not None:
                matrix = matrix[rows]
            torch.autograd.backward(matrix[:, columns].t(), getattr(twin, name + suffix).grad)
            grads.append([p.grad for p in parts])
            if linear is cell.input and linear.bias is not None:
                grads.append(
                    [
                        torch.zeros_like(linear.bias).index_copy(
                            0, torch.tensor(columns), getattr(twin, "bias_ih" + suffix).grad
                        )
                    ]
                )
    return grads


def our_grads(layer):
    grads = []
    for cell in layer.cells:
        grads.append([p.grad for p in components(cell.input)])
        if cell.input.bias is not None:
            grads.append([cell.input.bias.grad])
        grads.append([p.grad for p in components(cell.recurrent)])
    return grads


def ordered(grads):
    # our_grads: input, bias, recurrent per cell; twin_grads: input, bias, recurrent likewise
    return [g for group in grads for g in group]


def assert_equals_twin(layer, twin, results, tolerance=F64):
    """`results` of `layer` and of its torch twin (outputs, states, input gradients), then every
    parameter gradient of `layer` and the twin's mapped back onto it, agree."""
    for got, want in [*zip(*results), *zip(ordered(our_grads(layer)), ordered(twin_grads(layer, twin)))]:
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("cls,torch_cls", LAYOUT_PEERS, ids=LAYOUT_IDS)
@pytest.mark.parametrize(
    "options,hidden,dtype,cpu_gemm",
    [
        pytest.param(dict(), 12, torch.float64, MEASURED, id="small"),  # W itself, one mm per step
        pytest.param(dict(num_layers=2, bidirectional=True), 8, torch.float64, MEASURED, id="stacked-bidirectional"),
        pytest.param(dict(num_layers=2), 256, torch.float64, MEASURED, id="eight-float64"),  # the eight-product step
        # The step product each CPU GEMM library gives: oneDNN's linear, or the eight-product form.
        *(
            pytest.param(
                dict(bidirectional=True),
                256,
                torch.float32,
                *gemm.values,
                marks=gemm.marks,
                id=f"large-float32-{gemm.values[0]}",
            )
            for gemm in CPU_GEMMS
        ),
        pytest.param(dict(batch_first=True), 64, torch.float32, MEASURED, id="batch-first"),
    ],
    indirect=["cpu_gemm"],
)
def test_engine_equals_torch_layer(cls, torch_cls, options, hidden, dtype, cpu_gemm):
    torch.manual_seed(0)
    layer = cls(8, hidden, dtype=dtype, **options)
    randomise(layer, 0.5 / hidden**0.5)  # non-zero biases; weights large enough to leave the linear regime
    twin = torch_twin(layer, torch_cls)
    steps, batch = 6, 3
    shape = (batch, steps, 8) if layer.batch_first else (steps, batch, 8)
    x = torch.randn(shape, dtype=dtype)
    states = layer.num_layers * layer.directions, batch, hidden
    h0 = torch.randn(states, dtype=dtype)
    hx = (h0, torch.randn(states, dtype=dtype)) if issubclass(cls, qlayers.QLSTM) else h0
    tolerance = F64 if dtype == torch.float64 else F32
    outs = []
    for module in (layer, twin):
        inputs = x.clone().requires_grad_()
        state = tuple(s.clone().requires_grad_() for s in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()
        out, final = module(inputs, state)
        if module is layer:
            out = torch_order(layer, out)
        finals = final if isinstance(final, tuple) else (final,)
        weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)
        ((out * weights).sum() + sum((f * f).sum() for f in finals)).backward()
        states_in = state if isinstance(state, tuple) else (state,)
        outs.append([out, *finals, inputs.grad, *(s.grad for s in states_in)])
    assert_equals_twin(layer, twin, outs, tolerance)


@pytest.mark.parametrize("cls,torch_cls", LAYOUT_PEERS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("memory_efficient", [True, False], ids=["engine", "plain"])
def test_packed_sequence_equals_torch_layer(cls, torch_cls, memory_efficient):
    # Unsorted lengths (enforce_sorted=False), two layers, both directions: the reverse direction must
    # start at each sequence's own last element, and h_n come back in the caller's order.
    torch.manual_seed(1)
    layer = cls(8, 12, num_layers=2, bidirectional=True, dtype=torch.float64, memory_efficient=memory_efficient)
    randomise(layer, 0.3)
    twin = torch_twin(layer, torch_cls)
    lengths = torch.tensor([3, 6, 1, 4])
    padded = torch.randn(6, 4, 8, dtype=torch.float64)
    h0 = torch.randn(4, 4, 12, dtype=torch.float64)
    hx = (h0, torch.randn_like(h0)) if issubclass(cls, qlayers.QLSTM) else h0
    results = []
    for module in (layer, twin):
        x = padded.clone().requires_grad_()
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, final = module(packed, hx)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        unpacked, out_lengths = pad_packed_sequence(out)
        assert torch.equal(out_lengths, lengths)
        if module is layer:
            unpacked = torch_order(layer, unpacked)
        finals = final if isinstance(final, tuple) else (final,)
        (unpacked.pow(2).sum() + sum(f.sum() for f in finals)).backward()
        results.append([unpacked, *finals, x.grad])
    assert_equals_twin(layer, twin, results)


# (shape of the leaf, the strided c_0 taken from it): a learned initial cell state broadcast over the
# batch, and slices.
STRIDED_C0 = {
    "expanded": ((1, 1, 12), lambda c: c.expand(1, 3, 12)),
    "sliced": ((1, 3, 24), lambda c: c[..., ::2]),
    "unbatched-sliced": ((1, 24), lambda c: c[:, ::2]),
    "unbatched-expanded": ((1, 1), lambda c: c.expand(1, 12)),
}


@pytest.mark.parametrize("memory_efficient", [True, False], ids=["engine", "plain"])
@pytest.mark.parametrize("form", list(STRIDED_C0))
@pytest.mark.parametrize("c0_needs_grad", [True, False], ids=["c0-grad", "c0-no-grad"])
def test_non_contiguous_c0_equals_torch_lstm(memory_efficient, form, c0_needs_grad):
    # The engine's backward refused a strided c_0 ("recurrent_gates_backward: expected contiguous
    # tensors"), with or without its gradient; nn.LSTM takes it.
    torch.manual_seed(8)
    layer = qlayers.QLSTM(8, 12, dtype=torch.float64, memory_efficient=memory_efficient)
    randomise(layer, 0.3)
    twin = torch_twin(layer, nn.LSTM)
    leaf_shape, strided = STRIDED_C0[form]
    unbatched = form.startswith("unbatched")
    x = torch.randn((6, 8) if unbatched else (6, 3, 8), dtype=torch.float64)
    h0 = torch.randn((1, 12) if unbatched else (1, 3, 12), dtype=torch.float64)
    c_leaf = torch.randn(leaf_shape, dtype=torch.float64)
    results = []
    for module in (layer, twin):
        inputs, h, c = x.clone().requires_grad_(), h0.clone().requires_grad_(), c_leaf.clone()
        c.requires_grad_(c0_needs_grad)
        c0 = strided(c)
        assert not c0.is_contiguous()
        out, (h_n, c_n) = module(inputs, (h, c0))
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
        ((out * weights).sum() + (h_n * h_n).sum() + (c_n * c_n).sum()).backward()
        # the learned c_init's gradient sums the batch's
        results.append([out, h_n, c_n, inputs.grad, h.grad, *([c.grad] if c0_needs_grad else [])])
    assert_equals_twin(layer, twin, results)


@pytest.mark.parametrize("cell", ["lstm", "ligru_relu", "rnn_tanh"])
def test_engine_takes_strided_states_and_weights(cell):
    # recurrent_scan (what qlayers.compat.speechbrain calls) on views of every kind: the results and
    # gradients of the step loop on the same views.
    torch.manual_seed(9)
    gates = engine.CELLS[cell][0]
    projected = torch.randn(4, 3, gates * 8, dtype=torch.float64, requires_grad=True)
    weight = [(0.4 * torch.randn(gates * 2, 2, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    h_init = torch.randn(1, 8, dtype=torch.float64, requires_grad=True)
    c_wide = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    leaves = [projected, *weight, h_init, c_wide]

    weight_views = [w.t() for w in weight]
    h0 = h_init.expand(3, 8)
    c0 = c_wide[:, ::2] if cell == "lstm" else None
    slots = tuple(range(gates))

    def results_and_gradients(outputs):
        outputs = [o for o in outputs if o is not None]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outputs)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return [*outputs, *(g for g in grads if g is not None)]

    got = results_and_gradients(engine.recurrent_scan(projected, weight_views, h0, c0, cell, slots))
    matrix = reference.hamilton_matrix(*weight_views)
    want = results_and_gradients(engine.step_loop(projected, lambda h: h @ matrix, h0, c0, cell, slots))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("cls", [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU])
def test_gradcheck_and_gradgradcheck_packed(cls):
    # First order through the C++ backward; second order through its differentiable fallback. The
    # padded input: tests/test_layers.py::TestQ*::test_gradcheck_and_gradgradcheck.
    torch.manual_seed(2)
    layer = randomise(cls(4, 8, bidirectional=True, dtype=torch.float64), 0.4)
    names = [n for n, _ in layer.named_parameters()]

    def run(x, *params):
        packed = pack_padded_sequence(x, torch.tensor([3, 1, 2]), enforce_sorted=False)
        out, final = torch.func.functional_call(layer, dict(zip(names, params)), (packed,))
        return (pad_packed_sequence(out)[0], *(final if isinstance(final, tuple) else (final,)))

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(run, (x, *params))
    assert gradgradcheck(run, (x, *params))


@pytest.mark.parametrize("cell", ["lstm", "ligru_leaky_relu", "rnn_tanh"])
def test_gradcheck_and_gradgradcheck_with_a_mask(cell):
    # The mask is data (no gradient); first order through the C++ backward, second through the fallback.
    torch.manual_seed(4)
    gates = engine.CELLS[cell][0]
    mask = torch.rand(2, 8, dtype=torch.float64) * 2
    c0 = torch.randn(2, 8, dtype=torch.float64, requires_grad=True) if cell == "lstm" else None

    def run(projected, r, i, j, k, h0, *c):
        c0 = c[0] if c else None
        out, h_n, c_n = engine.recurrent_scan(projected, (r, i, j, k), h0, c0, cell, tuple(range(gates)), mask=mask)
        return out, h_n, *([c_n] if c_n is not None else [])

    inputs = [torch.randn(3, 2, gates * 8, dtype=torch.float64, requires_grad=True)]
    inputs += [(0.4 * torch.randn(2, gates * 2, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    inputs += [torch.randn(2, 8, dtype=torch.float64, requires_grad=True)] + ([c0] if c0 is not None else [])
    assert gradcheck(run, inputs)
    assert gradgradcheck(run, inputs)


CELL_CHOICES = [(cls, name) for cls in (qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU) for name in cls.cell_names]


@pytest.mark.parametrize("cls,nonlinearity", CELL_CHOICES, ids=[f"{c.__name__}-{n}" for c, n in CELL_CHOICES])
def test_engine_equals_step_loop(cls, nonlinearity):
    # The two implementations of one scan, on every cell and activation, packed and in reverse, with
    # and without a dropout mask.
    torch.manual_seed(3)
    hidden, gates = 8, cls.gates
    projected = torch.randn(5, 3, gates * hidden, dtype=torch.float64)
    weight = [torch.randn(hidden // 4, gates * hidden // 4, dtype=torch.float64) * 0.4 for _ in range(4)]
    h0 = torch.randn(3, hidden, dtype=torch.float64)
    c0 = torch.randn(3, hidden, dtype=torch.float64) if cls is qlayers.QLSTM else None
    slots = tuple(reversed(cls.gate_slots))
    leaves = [t for t in (projected, *weight, h0, c0) if t is not None]
    for t in leaves:
        t.requires_grad_()

    def results_and_gradients(outputs):
        outputs = [o for o in outputs if o is not None]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outputs)
        return [o.detach() for o in outputs] + list(torch.autograd.grad(loss, leaves))

    masks = (None, torch.rand(3, hidden, dtype=torch.float64) * 2)  # a dropout mask, the same at every step
    packings = (None, [3, 3, 2, 2, 1])
    for batch_sizes, reverse, gate_major, mask in itertools.product(packings, (False, True), (False, True), masks):
        layout = (cls.cell_names[nonlinearity], slots, batch_sizes, reverse, gate_major, mask)
        got = results_and_gradients(engine.recurrent_scan(projected, weight, h0, c0, *layout))
        want = results_and_gradients(
            engine.step_loop(projected, lambda h: h @ reference.hamilton_matrix(*weight), h0, c0, *layout)
        )
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **F64)


def test_gate_slots_are_a_free_permutation():
    # A QLSTM whose projections hold the gates in another order (as SpeechBrain's: i, f, o, c) gives
    # the same results once its weight columns are permuted to match.
    class Reordered(qlayers.QLSTM):
        gate_slots = (0, 1, 3, 2)

    torch.manual_seed(4)
    ours, theirs = qlayers.QLSTM(8, 12, dtype=torch.float64), Reordered(8, 12, dtype=torch.float64)
    quarter, gates = 3, 4
    order = [0, 1, 3, 2]  # block b of Reordered holds our gate order[b]
    columns = [(c * gates + order[b]) * quarter + q for c in range(4) for b in range(gates) for q in range(quarter)]
    component_columns = [order[b] * quarter + q for b in range(gates) for q in range(quarter)]
    with torch.no_grad():
        for src, dst in zip(ours.cells, theirs.cells):
            for a, b in zip(
                components(src.input) + components(src.recurrent), components(dst.input) + components(dst.recurrent)
            ):
                b.copy_(a[:, component_columns])
            dst.input.bias.copy_(src.input.bias[columns])
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    for memory_efficient in (True, False):
        ours.memory_efficient = theirs.memory_efficient = memory_efficient
        a, b = ours(x), theirs(x)
        torch.testing.assert_close(a[0], b[0], **F64)
        torch.testing.assert_close(a[1], b[1], **F64)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_with_a_strided_projection_matches_eager(backend):
    # A batch-first projection handed over transposed (as qlayers.compat.speechbrain does): the fake
    # kernels must give the gradients' real (contiguous) strides, or inductor's stride asserts fail.
    torch.manual_seed(6)
    projected = torch.randn(3, 5, 2 * 8, requires_grad=True)  # (B, T, G * H)
    weight = [(0.3 * torch.randn(2, 4)).requires_grad_() for _ in range(4)]
    h0 = torch.randn(3, 8, requires_grad=True)

    def run(projected, *weight_and_h0):
        *weight, h0 = weight_and_h0
        out, h_n, _ = engine.recurrent_scan(projected.transpose(0, 1), weight, h0, None, "ligru_relu", (1, 0))
        return out.pow(2).sum() + h_n.sum()

    leaves = [projected, *weight, h0]
    want = torch.autograd.grad(run(*leaves), leaves)
    # No compile caches: their keys do not cover the op's fake kernel, so a cache filled before a
    # change to it would hide the change.
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        got = torch.autograd.grad(torch.compile(run, fullgraph=True, backend=backend)(*leaves), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCES[torch.float32])


def no_compile_caches():
    # Their keys do not cover the ops' fake kernels (see above).
    return torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(
        enable_autograd_cache=False
    )


def packed_results(module, layer, padded, lengths, hx, enforce_sorted):
    """Output, final states and every gradient of `module` (`layer` or a compiled `layer`) on a PackedSequence."""
    layer.zero_grad(set_to_none=True)
    x = padded.clone().requires_grad_()
    states = [s.clone().requires_grad_() for s in (hx if isinstance(hx, tuple) else (hx,))]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, final = module(packed, tuple(states) if isinstance(hx, tuple) else states[0])
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    unpacked, out_lengths = pad_packed_sequence(out)
    assert torch.equal(out_lengths, lengths)
    finals = final if isinstance(final, tuple) else (final,)
    weights = torch.linspace(-1, 1, unpacked.numel(), dtype=unpacked.dtype).view(unpacked.shape)
    ((unpacked * weights).sum() + sum((f * f).sum() for f in finals)).backward()
    return [unpacked, *finals, x.grad, *(s.grad for s in states), *(p.grad for p in layer.parameters())]


def packed_case(cls, memory_efficient, enforce_sorted):
    # Both directions: the reverse one starts at each sequence's own last element.
    torch.manual_seed(10)
    layer = cls(8, 12, bidirectional=True, dtype=torch.float64, memory_efficient=memory_efficient)
    lengths = torch.tensor([6, 4, 3, 1] if enforce_sorted else [3, 6, 1, 4])
    padded = torch.randn(6, 4, 8, dtype=torch.float64)
    h0 = torch.randn(2, 4, 12, dtype=torch.float64)
    hx = (h0, torch.randn_like(h0)) if cls is qlayers.QLSTM else h0
    return layer, padded, lengths, hx


# Every layer, path and packing on the eager and aot_eager backends; inductor on the engine only (on
# the plain path's unrolled steps it takes minutes here).
PACKED_COMPILES = [
    pytest.param(cls, memory_efficient, enforce_sorted, backend, id=f"{cls.__name__}-{path}-{order}-{backend}")
    for cls in (qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU)
    for memory_efficient, path in ((True, "engine"), (False, "plain"))
    for enforce_sorted, order in ((False, "unsorted"), (True, "sorted"))
    for backend in ("eager", "aot_eager")
] + [pytest.param(qlayers.QLSTM, True, False, "inductor", id="QLSTM-engine-unsorted-inductor")]


@pytest.mark.parametrize("cls,memory_efficient,enforce_sorted,backend", PACKED_COMPILES)
def test_compile_packed_sequence_matches_eager(cls, memory_efficient, enforce_sorted, backend):
    # torch._VF._pad_packed_sequence and batch_sizes.tolist() failed on fake tensors, on every backend.
    torch._dynamo.reset()
    layer, padded, lengths, hx = packed_case(cls, memory_efficient, enforce_sorted)
    want = packed_results(layer, layer, padded, lengths, hx, enforce_sorted)
    cache_off, autograd_cache_off = no_compile_caches()
    with cache_off, autograd_cache_off:
        got = packed_results(torch.compile(layer, backend=backend), layer, padded, lengths, hx, enforce_sorted)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("cls", [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU])
@pytest.mark.parametrize("capture_scalar_outputs", [False, True], ids=["default", "capture-scalars"])
def test_compile_packed_sequence_computes_in_one_graph_per_batch_sizes(cls, capture_scalar_outputs):
    # The batch sizes are read outside the graph (a graph break: the loop needs them as Python ints,
    # which capture_scalar_outputs would otherwise make symbolic); the layers and the packing are one
    # graph after it, specialised to them: a new set compiles a new graph, a set seen before reuses one.
    torch._dynamo.reset()
    scan = torch.ops.qlayers.recurrent_scan.default
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append([node.target for node in graph_module.graph.nodes])
        return graph_module

    layer, padded, _, hx = packed_case(cls, True, False)
    compiled = torch.compile(layer, backend=counting_backend)
    with torch._dynamo.config.patch(capture_scalar_outputs=capture_scalar_outputs):
        for count, lengths in enumerate(([3, 6, 1, 4], [6, 6, 2, 5], [3, 6, 1, 4]), start=1):
            lengths = torch.tensor(lengths)
            want = packed_results(layer, layer, padded, lengths, hx, False)
            got = packed_results(compiled, layer, padded, lengths, hx, False)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, **F64)
            computing = [targets for targets in graphs if scan in targets]
            assert len(computing) == min(count, 2)
            # every layer and direction's scan in each
            assert all(targets.count(scan) == layer.num_layers * layer.directions for targets in computing)


def test_hx_of_the_wrong_kind_raises_type_errors():
    x = torch.randn(3, 2, 8)
    h = torch.zeros(1, 2, 12)
    for cls in (qlayers.QRNN, qlayers.QLiGRU):
        with pytest.raises(
            TypeError, match=r"expected hx to be a Tensor h_0 \(only QLSTM takes a tuple\), got a tuple of 2"
        ):
            cls(8, 12)(x, (h, h))
    with pytest.raises(TypeError, match=r"expected hx to be a tuple \(h_0, c_0\) of two Tensors, got Tensor"):
        qlayers.QLSTM(8, 12)(x, h)
    with pytest.raises(TypeError, match=r"states and weights in the input's dtype torch.float32, got torch.float64"):
        qlayers.QRNN(8, 12)(x, h.double())


def test_engine_ops_refuse_bad_arguments():
    projected, weight = torch.randn(3, 2, 16), [torch.randn(1, 4) for _ in range(4)]
    h0 = torch.zeros(2, 4)
    scan = torch.ops.qlayers.recurrent_scan
    with pytest.raises(ValueError, match="expected gate slots a permutation of 0..3"):
        scan(projected, *weight, h0, h0, "lstm", [0, 1, 1, 3], None, False, False)
    with pytest.raises(ValueError, match="expected c0 of shape"):
        scan(projected, *weight, h0, None, "lstm", [0, 1, 2, 3], None, False, False)
    with pytest.raises(ValueError, match="expected a sequence length larger than 0"):
        scan(projected[:0], *weight, h0, h0, "lstm", [0, 1, 2, 3], None, False, False)
    with pytest.raises(ValueError, match=r"expected batch sizes non-increasing from the batch \(2\)"):
        scan(projected, *weight, h0, h0, "lstm", [0, 1, 2, 3], [2, 3, 1], False, False)
    with pytest.raises(ValueError, match="expected weight components of shape"):
        scan(projected, *[w[:, :2] for w in weight], h0, h0, "lstm", [0, 1, 2, 3], None, False, False)


ACCEPTED_CELLS = "'rnn_tanh', 'rnn_relu', 'rnn_identity', 'lstm', 'ligru_relu', 'ligru_leaky_relu', 'ligru_tanh'"


def test_a_wrong_cell_name_raises_naming_the_accepted_ones():
    # One table in C++ (csrc/recurrent_gates.h) parses the name for every recurrent op; the Python
    # step loop and the fake kernels say the same.
    assert ", ".join(repr(name) for name in engine.CELLS) == ACCEPTED_CELLS
    message = rf"cell must be one of \({ACCEPTED_CELLS}\), got 'gru'"
    ops = torch.ops.qlayers
    projected, weight, h0 = torch.randn(3, 2, 4), [torch.randn(1, 1) for _ in range(4)], torch.zeros(2, 4)
    rows, state = torch.randn(2, 4), torch.zeros(2, 4)
    # (the op the error names, a call): the scan's backward reports as the scan.
    calls = [
        ("recurrent_scan", lambda: ops.recurrent_scan(projected, *weight, h0, None, "gru", [0], None, False, False)),
        (
            "recurrent_scan",
            lambda: ops._recurrent_scan_backward(
                None,
                h0,
                None,
                projected,
                *weight,
                h0,
                None,
                projected[..., :4],
                torch.empty(0),
                "gru",
                [0],
                None,
                False,
                [True] * 4,
            ),
        ),
        (
            "recurrent_gates_forward",
            lambda: ops._recurrent_gates_forward(rows, rows, state.clone(), None, torch.empty(2, 4), None, "gru", [0]),
        ),
        (
            "recurrent_gates_backward",
            lambda: ops._recurrent_gates_backward(
                rows.clone(), None, state.clone(), None, None, None, None, "gru", [0]
            ),
        ),
        ("step_loop", lambda: engine.step_loop(projected, lambda h: h, h0, None, "gru", [0])),
    ]
    for op, call in calls:
        with pytest.raises(ValueError, match=f"{op}: {message}"):
            call()
    meta = [t.to("meta") for t in (projected, *weight, h0)]
    with pytest.raises(ValueError, match=f"recurrent_scan: {message}"):  # the fake kernel
        ops.recurrent_scan(*meta, None, "gru", [0], None, False, False)
    with pytest.raises(ValueError, match=message):
        engine.recurrent_scan(projected, weight, h0, None, "gru", [0])


def test_engine_keeps_less_than_the_step_loop_and_torch():
    # The benchmark's QLSTM (2 layers, hidden 512, 100 steps, batch 16): the engine keeps `projected`,
    # the outputs and the cell states, 40.75 MiB; the step loop of the efficient layers kept 50.00 MiB
    # (docs/performance.md), and nn.LSTM keeps its gate workspace besides.
    steps, batch, hidden = 100, 16, 512
    x = torch.randn(steps, batch, hidden)
    kept = {}
    for name, module in (
        ("engine", qlayers.QLSTM(hidden, hidden, 2)),
        ("torch", nn.LSTM(hidden, hidden, 2)),
    ):
        with SavedTensorBytes(exclude=module.parameters()) as saved:
            out, _ = module(x)
        kept[name] = saved.total
    quantum = steps * batch * hidden * 4  # one (T, B, H) float32 tensor
    # x, then per layer: projected (4 quanta), the outputs (layer 0's is layer 1's input), the cells.
    assert kept["engine"] <= 50 * 2**20
    assert kept["engine"] <= 13 * quantum + 4 * batch * hidden * 4 * 2
    assert kept["engine"] < kept["torch"]


def kernels_per_step(layer, x, device_type, names=None, backward=False):
    """Kernels (CUDA) or compute ops (CPU, those in `names`) a step runs, forward or (backward=True)
    backward alone: the difference between sequences of 2T and T steps, over T, so that what runs
    once per sequence drops out."""
    counts = []
    for steps in (x.shape[0] // 2, x.shape[0]):
        activities = [
            torch.profiler.ProfilerActivity.CUDA if device_type == "cuda" else torch.profiler.ProfilerActivity.CPU
        ]
        for profiled in (False, True):  # warm up, then count
            if backward:
                out = layer(x[:steps])[0]
            with torch.profiler.profile(activities=activities) if profiled else contextlib.nullcontext() as prof:
                if backward:
                    out.backward(torch.ones_like(out))
                else:
                    with torch.no_grad():
                        layer(x[:steps])
                if device_type == "cuda":
                    torch.cuda.synchronize()
        if device_type == "cuda":
            counts.append(sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA))
        else:
            counts.append(sum(1 for e in prof.events() if e.name in names))
    return (counts[1] - counts[0]) / (x.shape[0] - x.shape[0] // 2)


COMPUTE_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise", "qlayers::_block_mix_into"}
GATE_OPS = {"qlayers::_recurrent_gates_forward"}
# Backward adds what could add a product to a state gradient.
BACKWARD_COMPUTE_OPS = COMPUTE_OPS | {"aten::addmm_", "aten::add", "aten::add_"}


@pytest.mark.parametrize("cls", [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU])
@pytest.mark.parametrize(
    "hidden,dtype,products",
    [(12, torch.float64, 1), (256, torch.float32, None), (256, torch.float64, 3)],
    ids=["matrix", "onednn-or-eight", "eight"],
)
def test_cpu_step_is_one_product_and_one_gate_kernel(cls, hidden, dtype, products, cpu_gemm):
    # The step product (mm with W, oneDNN's linear, or the eight-product form: two block mixes and
    # one bmm) and one fused gate kernel; nothing else computes per step. A large float32 step takes
    # oneDNN's linear only where oneDNN is the CPU's fast GEMM, else the eight-product form.
    layer = cls(hidden, hidden, dtype=dtype)
    x = torch.randn(20, 2, hidden, dtype=dtype)
    if products is None:
        products = 1 if cpu_gemm == "onednn" else 3
    assert kernels_per_step(layer, x, "cpu", GATE_OPS) == 1
    assert kernels_per_step(layer, x, "cpu", COMPUTE_OPS) == products


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU])
def test_cuda_forward_launches_at_most_three_kernels_per_step(cls):
    layer = cls(64, 64, num_layers=2).cuda()
    x = torch.randn(40, 4, 64, device="cuda")
    assert kernels_per_step(layer, x, "cuda") <= 3 * 2  # two layers


@pytest.mark.parametrize("cls,nonlinearity", CELL_CHOICES, ids=[f"{c.__name__}-{n}" for c, n in CELL_CHOICES])
def test_cpu_backward_step_is_one_product_and_one_gate_kernel(cls, nonlinearity):
    # Every cell kind (all seven) in the matrix form (hidden 12): one gate kernel and one product a
    # step, the light GRU's direct part of dL/dh_{t-1} accumulated by that product (addmm), not
    # added after it.
    layer = cls(12, 12, nonlinearity=nonlinearity, dtype=torch.float64)
    x = torch.randn(20, 2, 12, dtype=torch.float64)
    assert kernels_per_step(layer, x, "cpu", {"qlayers::_recurrent_gates_backward"}, backward=True) == 1
    assert kernels_per_step(layer, x, "cpu", BACKWARD_COMPUTE_OPS, backward=True) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU])
def test_cuda_backward_launches_at_most_three_kernels_per_step(cls):
    # The gate kernel and one GEMM, which cuBLAS may split into two kernels.
    layer = cls(64, 64, num_layers=2).cuda()
    x = torch.randn(40, 4, 64, device="cuda")
    assert kernels_per_step(layer, x, "cuda", backward=True) <= 3 * 2  # two layers


@pytest.mark.parametrize("cell", sorted(engine.CELLS))
def test_scan_writes_the_cell_states_only_when_asked(cell):
    # The per-step states kept for backward (the LSTM's cells, (T, B, H)) are written only with
    # keep=True; with keep=False the op returns an empty tensor in their place.
    gates = engine.CELLS[cell][0]
    projected = torch.randn(5, 3, gates * 8)
    weight = [0.4 * torch.randn(2, gates * 2) for _ in range(4)]
    h0 = torch.randn(3, 8)
    c0 = torch.randn(3, 8) if cell == "lstm" else None
    layout = (cell, list(range(gates)), None, False)
    *_, dropped = torch.ops.qlayers.recurrent_scan(projected, *weight, h0, c0, *layout, False, False, None)
    assert dropped.numel() == 0
    if cell == "lstm":
        *_, kept = torch.ops.qlayers.recurrent_scan(projected, *weight, h0, c0, *layout, True, False, None)
        assert kept.shape == (5, 3, 8)


@pytest.mark.parametrize("cls", [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU])
def test_inference_keeps_no_state_for_backward(cls, monkeypatch):
    # Under torch.no_grad (and in eval mode, whatever the input needs) the layers ask the engine for
    # no per-step state; in training they do where the cell needs it (the LSTM).
    kept = []
    scan = engine._SCAN

    def spy(*args, **kwargs):
        results = scan(*args, **kwargs)
        kept.append(results[3].numel())
        return results

    monkeypatch.setattr(engine, "_SCAN", spy)
    layer = cls(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 8, requires_grad=True)
    with torch.no_grad():
        layer(x)
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert kept and all(count == 0 for count in kept)
    kept.clear()
    layer.train()
    layer(x)[0].sum().backward()
    assert len(kept) == 4  # two layers, two directions
    assert all((count == 6 * 3 * 16) if cls is qlayers.QLSTM else count == 0 for count in kept)
