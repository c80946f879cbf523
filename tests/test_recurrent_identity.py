"""QRNN(nonlinearity="identity"): no activation on the state, as core_qnn's QRNN, on the engine and
the step loop, against a plain-torch loop over the layers' real Hamilton matrices."""

import pytest
import torch

import qlayers
from qlayers.reference import hamilton_matrix


def weight(linear):
    return hamilton_matrix(linear.r_weight, linear.i_weight, linear.j_weight, linear.k_weight)


def plain_identity_rnn(layer, x, h0):
    """h_t = W x_t + b + U h_{t-1}, layer by layer, one direction; (output, h_n)."""
    inputs, finals = x, []
    for index, cell in enumerate(layer.cells):
        h, outputs = h0[index], []
        for t in range(inputs.shape[0]):
            h = cell.input(inputs[t]) + h @ weight(cell.recurrent)
            outputs.append(h)
        inputs = torch.stack(outputs)
        finals.append(h)
    return inputs, torch.stack(finals)


@pytest.mark.parametrize("memory_efficient", [True, False], ids=["engine", "plain"])
def test_identity_rnn_matches_a_plain_loop(memory_efficient):
    torch.manual_seed(0)
    layer = qlayers.QRNN(8, 12, num_layers=2, nonlinearity="identity", memory_efficient=memory_efficient)
    layer = layer.double()
    for p in layer.parameters():  # small weights: no activation bounds the state
        p.data.mul_(0.5)
    x = torch.randn(6, 3, 8, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    out, h_n = layer(x, h0)
    grads = torch.autograd.grad(out.sum() + h_n.pow(2).sum(), [x, h0, *layer.parameters()])
    want_out, want_h_n = plain_identity_rnn(layer, x, h0)
    want_grads = torch.autograd.grad(want_out.sum() + want_h_n.pow(2).sum(), [x, h0, *layer.parameters()])
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_n, want_h_n, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_identity_is_a_choice_of_qrnn_only():
    assert qlayers.QRNN(8, 12, nonlinearity="identity").nonlinearity == "identity"
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        qlayers.QLiGRU(8, 12, nonlinearity="identity")
