"""QRNN, QLSTM, QLiGRU: the efficient path equals plain autograd, keeps no per-step matrix, and
follows torch.nn.LSTM's conventions (empty batches included). QBatchNorm: tests/test_norm.py; the
quaternion helpers: tests/test_quaternion_helpers.py."""

import re

import pytest
import torch
from conftest import TOLERANCES
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import qlayers
from qlayers.memory import SavedTensorBytes

F64 = TOLERANCES[torch.float64]
LAYERS = [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU]


def pair(cls, **kwargs):
    efficient = cls(8, 12, dtype=torch.float64, **kwargs)
    plain = cls(8, 12, dtype=torch.float64, memory_efficient=False, **kwargs)
    plain.load_state_dict(efficient.state_dict())
    for module in (efficient, plain):  # non-zero biases, so their gradients are checked too
        torch.manual_seed(1)
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                nn.init.normal_(p, std=0.1)
    return efficient, plain


def initial_state(cls, layers, directions, batch):
    shape = (layers * directions, batch, 12)
    h = torch.randn(shape, dtype=torch.float64)
    return (h, torch.randn(shape, dtype=torch.float64)) if cls is qlayers.QLSTM else h


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(num_layers=2),
        dict(bidirectional=True),
        dict(num_layers=2, bidirectional=True, batch_first=True),
        dict(num_layers=3, dropout=0.3),
        dict(bias=False),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default",
)
@pytest.mark.parametrize("with_state", [False, True])
def test_efficient_equals_plain(cls, options, with_state):
    efficient, plain = pair(cls, **options)
    directions = 2 if options.get("bidirectional") else 1
    layers = options.get("num_layers", 1)
    x = torch.randn(5, 3, 8, dtype=torch.float64)  # (T, B, F), or (B, T, F) with batch_first
    hx = initial_state(cls, layers, directions, 5 if options.get("batch_first") else 3) if with_state else None
    results = []
    for module in (efficient, plain):
        torch.manual_seed(7)  # the same dropout masks on both paths
        inputs = x.clone().requires_grad_()
        out, final = module(inputs, hx)
        finals = final if isinstance(final, tuple) else (final,)
        (out.pow(2).sum() + sum(f.sum() for f in finals)).backward()
        results.append([out, *finals, inputs.grad, *(p.grad for p in module.parameters())])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("cls,torch_cls", [(qlayers.QRNN, nn.RNN), (qlayers.QLSTM, nn.LSTM), (qlayers.QLiGRU, nn.GRU)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_shapes_match_torch(cls, torch_cls, batch_first):
    ours = cls(8, 12, num_layers=2, bidirectional=True, batch_first=batch_first)
    theirs = torch_cls(8, 12, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(3, 5, 8)
    out, final = ours(x)
    expected_out, expected_final = theirs(x)
    assert out.shape == expected_out.shape
    if cls is qlayers.QLSTM:
        assert [f.shape for f in final] == [f.shape for f in expected_final]
    else:
        assert final.shape == expected_final.shape
    unbatched_out, _ = ours(x[0] if not batch_first else x[:, 0])
    assert unbatched_out.shape == (expected_out[0] if not batch_first else expected_out[:, 0]).shape


def test_final_states_are_the_last_outputs():
    layer = qlayers.QLSTM(8, 12, bidirectional=True)
    out, (h, c) = layer(torch.randn(6, 2, 8))
    forward, backward = out.view(6, 2, 4, 2, 3).unbind(3)  # directions joined per component block
    torch.testing.assert_close(h[0], forward[-1].reshape(2, 12))
    torch.testing.assert_close(h[1], backward[0].reshape(2, 12))


def test_plain_path_keeps_one_matrix_per_step():
    steps, hidden, batch = 100, 512, 4
    efficient = qlayers.QRNN(hidden, hidden)
    plain = qlayers.QRNN(hidden, hidden, memory_efficient=False)
    x = torch.randn(steps, batch, hidden)
    kept = []
    for module in (efficient, plain):
        with SavedTensorBytes(exclude=module.parameters()) as saved:
            out, _ = module(x)
        out.sum().backward()
        kept.append(saved.total)
    assert kept[1] >= 10 * kept[0]
    assert kept[1] >= steps * hidden * hidden * 4  # one (512 x 512) matrix per step


def test_bad_sizes_and_states():
    with pytest.raises(ValueError, match="hidden_size must be a positive multiple of 4"):
        qlayers.QLSTM(8, 10)
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 8\)"):
        qlayers.QRNN(8, 12)(torch.randn(3, 2, 12))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(1, 2, 12\) \(3-d, for batched 3-d input\), got"):
        qlayers.QRNN(8, 12)(torch.randn(3, 2, 8), torch.zeros(2, 2, 12))


TORCH_LAYERS = [(qlayers.QRNN, nn.RNN), (qlayers.QLSTM, nn.LSTM), (qlayers.QLiGRU, nn.GRU)]

# (input, h_0's shape, c_0's shape, the state named, what the message says is expected)
WRONG_STATES = {
    "unbatched-3d": ((5, 8), (1, 1, 12), (1, 1, 12), "h_0", r"\(1, 12\) \(2-d, for unbatched 2-d input\)"),
    "unbatched-3d-c0": ((5, 8), (1, 12), (1, 1, 12), "c_0", r"\(1, 12\) \(2-d, for unbatched 2-d input\)"),
    "unbatched-layers": ((5, 8), (2, 12), (2, 12), "h_0", r"\(1, 12\) \(2-d, for unbatched 2-d input\)"),
    "batched-2d": ((5, 3, 8), (1, 12), (1, 12), "h_0", r"\(1, 3, 12\) \(3-d, for batched 3-d input\)"),
    "batched-batch": ((5, 3, 8), (1, 3, 12), (1, 2, 12), "c_0", r"\(1, 3, 12\) \(3-d, for batched 3-d input\)"),
    "packed-batch": ("packed", (1, 3, 12), (1, 3, 12), "h_0", r"\(1, 4, 12\) \(3-d, for a PackedSequence of batch 4\)"),
}


@pytest.mark.parametrize("cls,torch_cls", TORCH_LAYERS)
@pytest.mark.parametrize("case", list(WRONG_STATES))
@pytest.mark.parametrize("memory_efficient", [True, False], ids=["engine", "plain"])
def test_initial_states_of_a_wrong_shape_name_the_shapes_the_caller_sees(cls, torch_cls, case, memory_efficient):
    # Unbatched input with a 3-d hx said "expected (1, 1, 12), got (1, 1, 1, 12)": the caller's shape
    # as the expected one, an internal unsqueeze as the given one. torch says a 2-d hx is expected.
    input_shape, h_shape, c_shape, named, expected = WRONG_STATES[case]
    if input_shape == "packed":
        x = pack_padded_sequence(torch.randn(5, 4, 8), torch.tensor([5, 2, 4, 1]), enforce_sorted=False)
    else:
        x = torch.randn(input_shape)
    if cls is not qlayers.QLSTM and named == "c_0":
        h_shape, named = c_shape, "h_0"  # the one state is the wrong one
    hx = (torch.zeros(h_shape), torch.zeros(c_shape)) if cls is qlayers.QLSTM else torch.zeros(h_shape)
    with pytest.raises(RuntimeError):  # torch refuses each of these too
        torch_cls(8, 12)(x, hx)
    got = c_shape if named == "c_0" else h_shape
    message = rf"{cls.__name__}: expected {named} of shape {expected}, got {re.escape(str(got))}$"
    with pytest.raises(ValueError, match=message):
        cls(8, 12, memory_efficient=memory_efficient)(x, hx)


@pytest.mark.parametrize("cls,torch_cls", TORCH_LAYERS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
def test_empty_batch_gives_empty_results_like_torch(cls, torch_cls, batch_first, memory_efficient, with_state):
    # QLSTM raised on (T, 0, F) (an ambiguous view of its empty cell state); docs/API.md promises an
    # empty result, as torch.nn.LSTM gives.
    ours = cls(8, 12, num_layers=2, bidirectional=True, batch_first=batch_first, memory_efficient=memory_efficient)
    theirs = torch_cls(8, 12, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn((0, 5, 8) if batch_first else (5, 0, 8), requires_grad=True)
    hx = None
    if with_state:
        h = torch.randn(4, 0, 12, requires_grad=True)
        hx = (h, torch.randn(4, 0, 12, requires_grad=True)) if cls is qlayers.QLSTM else h
    out, final = ours(x, hx)
    expected_out, expected_final = theirs(x, hx)
    assert out.shape == expected_out.shape and out.dtype == expected_out.dtype
    finals = final if isinstance(final, tuple) else (final,)
    expected_finals = expected_final if isinstance(expected_final, tuple) else (expected_final,)
    assert [f.shape for f in finals] == [f.shape for f in expected_finals]
    (out.sum() + sum(f.sum() for f in finals)).backward()
    assert x.grad.shape == x.shape
    for p in ours.parameters():  # no sample, no gradient: zeros, as torch's layers give
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("cls,torch_cls", TORCH_LAYERS)
def test_empty_sequence_raises_like_torch(cls, torch_cls):
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        torch_cls(8, 12)(torch.randn(0, 2, 8))
    with pytest.raises(ValueError, match=r"expected a sequence length larger than 0, got input of shape \(2, 0, 8\)"):
        cls(8, 12, batch_first=True)(torch.randn(2, 0, 8))
