"""The other ways to write a quaternion linear layer, for the benchmark to measure qlayers against.

- AnchorQLinear: the custom backward that the two best-known quaternion libraries publish, rebuilt
  here from its math. It keeps only the input and the components for backward, like qlayers, but
  backward builds the Hamilton matrix with torch.cat, replicates the input and grad_output 4x into
  Hamilton-structured matrices, and multiplies those into a (4n x 4m) product of which only the
  first n rows are used: 128 B n m FLOPs where 32 B n m suffice. Like theirs, it decides from the
  r component alone whether the components need gradients.
- CheckpointedQLinear / CheckpointedQConv2d: plain autograd under torch.utils.checkpoint, which
  recomputes the layer (the Hamilton matrix or kernel included) in backward instead of keeping it.
- OneDNNLinear: a dense layer whose three GEMMs run through oneDNN, as qlayers' do on the CPU
  (torch.nn.Linear's run through MKL): the peer for "faster by the algorithm, not by the library".
  nn.Conv2d needs no such peer: torch already runs its float32 CPU convolutions through oneDNN
  (aten::mkldnn_convolution).
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import qlayers
from qlayers import _torch_internals, reference


def _blocks(t, parts=4):
    """(rows, 4n) -> four (rows, n) feature blocks r, i, j, k."""
    return t.chunk(parts, dim=-1)


class AnchorQuaternionLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, r, i, j, k, bias):
        ctx.save_for_backward(input, r, i, j, k, bias)
        output = input.mm(reference.hamilton_matrix(r, i, j, k))
        return output if bias is None else output + bias

    @staticmethod
    def backward(ctx, grad_output):
        input, r, i, j, k, bias = ctx.saved_tensors
        grad_input = grad_components = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output.mm(reference.hamilton_matrix(r, i, j, k).t())
        if ctx.needs_input_grad[1]:  # r's flag gates all four components, as in the anchors
            # 4x-replicated, Hamilton-structured copies of the input (4B x 4n) and grad (4B x 4m);
            # block column 0 of the first holds x_r, -x_i, -x_j, -x_k, which pairs with the second
            # to give every component gradient in the first n rows of the product.
            input_blocks = reference.hamilton_matrix(*_blocks(input))
            grad_blocks = reference.hamilton_matrix(*_blocks(grad_output))
            product = input_blocks.t().mm(grad_blocks)  # (4n, 4m), three quarters thrown away
            n, m = r.shape
            grad_components = product[:n].split(m, dim=1)
        if bias is not None and ctx.needs_input_grad[5]:
            grad_bias = grad_output.sum(0)
        if grad_components is None:
            grad_components = (None,) * 4
        return (grad_input, *grad_components, grad_bias)


class _QuaternionParameters(nn.Module):
    """QLinear's parameters and initialisation, with another forward."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        template = qlayers.QLinear(in_features, out_features, bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        for name, parameter in template.named_parameters():
            self.register_parameter(name, parameter)
        if not bias:
            self.register_parameter("bias", None)

    def components(self):
        return self.r_weight, self.i_weight, self.j_weight, self.k_weight


class AnchorQLinear(_QuaternionParameters):
    """The anchors' memory-saving layer (2-D input only, as theirs)."""

    def forward(self, input):
        return AnchorQuaternionLinearFunction.apply(input, *self.components(), self.bias)


class CheckpointedQLinear(_QuaternionParameters):
    """Plain autograd, recomputed in backward by torch.utils.checkpoint."""

    def forward(self, input):
        return checkpoint(reference.quaternion_linear, input, *self.components(), self.bias, use_reentrant=False)


class CheckpointedQConv2d(qlayers.QConv2d):
    """The plain-autograd quaternion convolution, recomputed in backward by torch.utils.checkpoint."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, memory_efficient=False)

    def forward(self, input):
        return checkpoint(super().forward, input, use_reentrant=False)


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x @ W^T + b and its gradients, every GEMM by oneDNN: the weight reordered into oneDNN's
    layout once per call (it changes every step), the gradients from the plain weight."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        packed = _torch_internals.onednn_reorder_linear_weight(weight, x.shape[0])
        return _torch_internals.onednn_linear(x, packed, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _torch_internals.onednn_linear(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_weight = _torch_internals.onednn_linear(grad.t(), x.t()) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight, grad.sum(0)


class OneDNNLinear(nn.Linear):
    """torch.nn.Linear (its parameters and init) with its GEMMs through oneDNN; 2-d inputs."""

    def forward(self, input):
        return _OneDNNLinearFunction.apply(input, self.weight, self.bias)
