"""Ops that write into given tensors refuse aliased ones, as torch's out= ops do.

block_mix_into and the fused gate ops write into tensors their caller passes. Written in no set
order (on a GPU, in parallel), an output that shares memory with an input, or that holds an
element twice (a stride of 0), would give wrong values silently; the ops raise a ValueError instead.
"""

import pytest
import torch
from conftest import DEVICES

ops = torch.ops.qlayers


def test_block_mix_into_computes_what_block_mix_does_without_aliasing():
    # The reference the refusals below protect.
    blocks = torch.randn(2, 3, 4, dtype=torch.float64)
    out = torch.empty(2, 3, 4, dtype=torch.float64)
    ops._block_mix_into(blocks, [1.0, 2.0, -1.0, 0.5], out)
    assert torch.equal(out, ops._block_mix(blocks, [1.0, 2.0, -1.0, 0.5], False))


@pytest.mark.parametrize("device", DEVICES)
def test_block_mix_into_refuses_an_output_overlapping_its_blocks(device):
    # out is blocks shifted by one block: accepted before, it read blocks the op had already written
    # (off by up to 2.3 here).
    buffer = torch.randn(3, 3, 4, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="block_mix_into: expected out, which the op writes, to share no memory"):
        ops._block_mix_into(buffer[:2], [1.0, 2.0, -1.0, 0.5], buffer[1:])
    with pytest.raises(ValueError, match="share no memory with blocks"):
        ops._block_mix_into(buffer[:2], [0.0, 1.0, 1.0, 0.0], buffer[:2])  # in place, even a swap


@pytest.mark.parametrize("device", DEVICES)
def test_block_mix_into_refuses_an_output_with_repeated_elements(device):
    blocks = torch.randn(2, 3, 4, device=device)
    out = torch.empty(1, 3, 4, device=device).expand(2, 3, 4)  # both output blocks are one memory
    with pytest.raises(ValueError, match="expected out to hold each element once, got strides"):
        ops._block_mix_into(blocks, [1.0, 2.0, -1.0, 0.5], out)


def test_block_mix_into_takes_disjoint_views_of_one_buffer():
    # Views of one storage that do not meet are fine (the eight-product code writes into slices).
    buffer = torch.randn(4, 3, 4, dtype=torch.float64)
    expected = ops._block_mix(buffer[:2].clone(), [1.0, 2.0, -1.0, 0.5], False)
    ops._block_mix_into(buffer[:2], [1.0, 2.0, -1.0, 0.5], buffer[2:])
    assert torch.equal(buffer[2:], expected)


def lstm_forward_arguments(rows=3, hidden=8, device="cpu"):
    new = lambda *shape: torch.randn(*shape, dtype=torch.float64, device=device)  # noqa: E731
    return {
        "projected": new(rows, 4 * hidden),
        "recurrent": new(rows, 4 * hidden),
        "hidden": new(rows, hidden),
        "cell_state": new(rows, hidden),
        "output": new(rows, hidden),
        "cells_out": new(rows, hidden),
    }


def run_forward(arguments, cell="lstm", slots=(0, 1, 2, 3)):
    a = arguments
    ops._recurrent_gates_forward(
        a["projected"], a["recurrent"], a["hidden"], a["cell_state"], a["output"], a["cells_out"], cell, list(slots)
    )


def first_rows_of(tensor, rows, columns):
    """A contiguous (rows, columns) view of the start of `tensor`'s memory."""
    return tensor.view(-1)[: rows * columns].view(rows, columns)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "written, alias_of",
    [("output", "projected"), ("output", "recurrent"), ("cells_out", "hidden"), ("hidden", "cell_state")],
)
def test_gates_forward_refuses_a_written_tensor_aliasing_another(device, written, alias_of):
    arguments = lstm_forward_arguments(device=device)
    arguments[written] = first_rows_of(arguments[alias_of], 3, 8)
    pair = f"({written}|{alias_of})"  # when both are written, the first in argument order is named
    with pytest.raises(ValueError, match=f"expected {pair}, which the op writes, to share no memory with {pair}"):
        run_forward(arguments)


def test_gates_forward_with_separate_tensors_matches_the_lstm_cell():
    arguments = lstm_forward_arguments()
    pre = (arguments["projected"] + arguments["recurrent"]).view(3, 4, 4, 2)  # (rows, component, gate, quarter)
    gate = [pre[:, :, g].reshape(3, 8) for g in range(4)]
    c = torch.sigmoid(gate[1]) * arguments["cell_state"] + torch.sigmoid(gate[0]) * torch.tanh(gate[2])
    h = torch.sigmoid(gate[3]) * torch.tanh(c)
    run_forward(arguments)
    torch.testing.assert_close(arguments["output"], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(arguments["cells_out"], c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_gates_backward_refuses_a_carried_gradient_aliasing_an_input(device):
    new = lambda *shape: torch.randn(*shape, dtype=torch.float64, device=device)  # noqa: E731
    pre, grad_output, hidden_prev = new(3, 8), new(3, 8), new(3, 8)
    with pytest.raises(ValueError, match="expected grad_hidden, which the op writes, to share no memory with grad_out"):
        ops._recurrent_gates_backward(pre, grad_output, grad_output, None, hidden_prev, None, None, "rnn_tanh", [0])
    with pytest.raises(ValueError, match="expected pre, which the op writes, to share no memory with hidden_prev"):
        ops._recurrent_gates_backward(pre, grad_output, new(3, 8), None, pre, None, None, "rnn_tanh", [0])
