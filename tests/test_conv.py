"""Quaternion convolutions against torch.nn convolutions on the torch.cat kernel, and the product."""

import copy

import pytest
import torch
from conftest import TOLERANCES, hamilton_product, randomise
from torch import nn

import qlayers
from qlayers import reference

F64 = TOLERANCES[torch.float64]
CONV = {1: (qlayers.QConv1d, nn.Conv1d), 2: (qlayers.QConv2d, nn.Conv2d), 3: (qlayers.QConv3d, nn.Conv3d)}
TRANSPOSE = {
    1: (qlayers.QConvTranspose1d, nn.ConvTranspose1d),
    2: (qlayers.QConvTranspose2d, nn.ConvTranspose2d),
    3: (qlayers.QConvTranspose3d, nn.ConvTranspose3d),
}
SPATIAL = {1: (11,), 2: (9, 8), 3: (6, 5, 7)}


def torch_twin(layer, torch_class, **kwargs):
    """The torch.nn layer with the reference (torch.cat) kernel of `layer`: the oracle."""
    twin = torch_class(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        groups=layer.groups,
        bias=layer.bias is not None,
        dtype=torch.float64,
        **kwargs,
    )
    with torch.no_grad():
        twin.weight.copy_(reference.quaternion_conv_kernel(*layer.components(), groups=layer.groups))
        if layer.bias is not None:
            twin.bias.copy_(layer.bias)
    return twin


def compare_with_twin(layer, twin, x):
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = layer(x_ours), twin(x_theirs)
    torch.testing.assert_close(out, expected, **F64)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **F64)
    # The kernel's gradient, folded onto the components by the reference's own autograd.
    leaves = [c.detach().clone().requires_grad_() for c in layer.components()]
    kernel = reference.quaternion_conv_kernel(*leaves, groups=layer.groups)
    expected_grads = torch.autograd.grad(kernel, leaves, twin.weight.grad)
    for param, want in zip(layer.components(), expected_grads):
        # Each is a sum over every image and pixel (6 x 32 x 32 x 9 terms at most here), summed in
        # another order by each CPU's convolution: its absolute rounding scales with the largest entry.
        torch.testing.assert_close(
            param.grad, want, rtol=F64["rtol"], atol=F64["atol"] * max(1.0, want.abs().max().item())
        )
    if layer.bias is not None:
        torch.testing.assert_close(layer.bias.grad, twin.bias.grad, **F64)


CASES = [
    dict(),
    dict(stride=2),
    dict(padding=1),
    dict(padding="same"),
    dict(padding="same", dilation=2),
    dict(padding="valid", bias=False),
    dict(dilation=2, padding=2),
    dict(groups=2),
    dict(groups=2, stride=2, padding=1),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=2, padding_mode="circular"),
    dict(padding="same", padding_mode="replicate"),
]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("memory_efficient", [True, False])
def test_conv_matches_torch_conv_on_the_reference_kernel(dims, case, memory_efficient):
    ours_class, torch_class = CONV[dims]
    layer = randomise(ours_class(8, 16, 3, memory_efficient=memory_efficient, dtype=torch.float64, **case))
    twin = torch_twin(layer, torch_class, **{k: v for k, v in case.items() if k not in ("groups", "bias")})
    compare_with_twin(layer, twin, torch.randn(2, 8, *SPATIAL[dims], dtype=torch.float64))


TRANSPOSE_CASES = [
    dict(),
    dict(stride=2),
    dict(stride=2, padding=1, output_padding=1),
    dict(groups=2, dilation=2),
    dict(bias=False),
]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_transposed_conv_matches_torch(dims, case):
    ours_class, torch_class = TRANSPOSE[dims]
    layer = randomise(ours_class(8, 16, 3, dtype=torch.float64, **case))
    twin = torch_twin(layer, torch_class, **{k: v for k, v in case.items() if k not in ("groups", "bias")})
    compare_with_twin(layer, twin, torch.randn(2, 8, *SPATIAL[dims], dtype=torch.float64))


def test_conv_is_the_quaternion_product():
    # A 1x1 convolution: output quaternion q = sum_p w[q, p] (x) x[p] at every position.
    n_in, n_out = 3, 2
    layer = randomise(qlayers.QConv2d(4 * n_in, 4 * n_out, 1, dtype=torch.float64))
    x = torch.randn(2, 4 * n_in, 5, 4, dtype=torch.float64)
    w = torch.stack([c[:, :, 0, 0] for c in layer.components()], dim=-1)  # (out q, in p, 4)
    xq = x.view(2, 4, n_in, 5, 4).permute(0, 3, 4, 2, 1)  # (batch, h, w, p, 4)
    products = hamilton_product(w[None, None, None], xq.unsqueeze(3))  # (batch, h, w, q, p, 4)
    expected = products.sum(4).permute(0, 4, 3, 1, 2).reshape(2, 4 * n_out, 5, 4) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, **F64)


def test_channels_last_and_unbatched():
    layer = randomise(qlayers.QConv2d(8, 8, 3, padding=1, dtype=torch.float64))
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    expected = layer(x)
    out = layer(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, **F64)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(x[0]), expected[0], **F64)


def test_parameters_layout_and_repr():
    layer = qlayers.QConv2d(8, 16, (3, 5), groups=2)
    assert [n for n, _ in layer.named_parameters()] == ["r_weight", "i_weight", "j_weight", "k_weight", "bias"]
    assert layer.r_weight.shape == (4, 1, 3, 5)
    transposed = qlayers.QConvTranspose2d(8, 16, 3, groups=2)
    assert transposed.r_weight.shape == (2, 2, 3, 3)
    assert repr(qlayers.QConv1d(4, 8, 3, padding="same")) == (
        "QConv1d(4, 8, kernel_size=(3,), stride=(1,), padding='same', memory_efficient=True, "
        "init='quaternion', criterion='glorot')"
    )


class TestBadInput:
    @pytest.mark.parametrize("channels", [(6, 8), (8, 10), (8, 12, 2)])
    def test_channels_must_hold_whole_quaternions(self, channels):
        in_channels, out_channels, *groups = channels
        with pytest.raises(ValueError, match="must be a positive multiple of 4"):
            qlayers.QConv2d(in_channels, out_channels, 3, groups=groups[0] if groups else 1)

    def test_wrong_input_channels(self):
        with pytest.raises(ValueError, match=r"expected input with 8 channels, got 12"):
            qlayers.QConv2d(8, 8, 3)(torch.randn(1, 12, 5, 5))

    def test_wrong_input_rank(self):
        with pytest.raises(ValueError, match=r"expected a 4-d \(batched\) or 3-d \(unbatched\) input, got a 5-d input"):
            qlayers.QConv2d(8, 8, 3)(torch.randn(1, 8, 5, 5, 5))

    def test_bad_padding(self):
        with pytest.raises(ValueError, match="padding='same' needs stride 1"):
            qlayers.QConv2d(8, 8, 3, stride=2, padding="same")
        with pytest.raises(ValueError, match="padding_mode must be one of"):
            qlayers.QConv2d(8, 8, 3, padding_mode="mirror")
        with pytest.raises(ValueError, match="not supported for transposed"):
            qlayers.QConvTranspose2d(8, 8, 3, padding="same")


def _qlayers_ops_run(fn):
    """The qlayers operators a call of ``fn`` ran (CPU profiler events). The CPU's direct builds of
    the real kernel and its adjoint ("..._conjugate") count as the operators they stand for."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name.removesuffix("_conjugate") for event in prof.events() if event.name.startswith("qlayers::")}


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_conv_takes_the_eight_product_algorithm_where_eager_does(backend):
    # 32 x 32 quaternion channels, 3 x 3, 2 x 64 x 64 positions: 75M multiply-adds a product, so "auto"
    # takes eight; the choice is made inside the operator at run time, in eager and compiled calls alike.
    torch._dynamo.reset()
    layer = qlayers.QConv2d(128, 128, 3, padding=1)
    x = torch.randn(2, 128, 64, 64, requires_grad=True)
    options = (layer.stride, layer.padding, layer.dilation, False, (0, 0), 1)
    assert qlayers.functional.conv.conv_formulation(x, layer.components(), options, None) == "eight"
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    compiled(x).sum().backward()  # compile outside the profile
    grads = [p.grad.clone() for p in layer.parameters()]
    for fn in (layer, compiled):
        layer.zero_grad()
        ran = _qlayers_ops_run(lambda fn=fn: fn(x).sum().backward())
        assert {"qlayers::quaternion_conv", "qlayers::_quaternion_conv_backward", "qlayers::_block_mix"} <= ran
        assert "qlayers::hamilton_expand" not in ran  # no real kernel built, forward or backward
        for got, want in zip((p.grad for p in layer.parameters()), grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_functional_conv_rejects_an_input_of_the_wrong_rank():
    # The functional form checks the rank itself (the operator, and the Python check torch.func runs),
    # in the documented words, before aten sees the expanded real kernel.
    components = [torch.randn(2, 2, 3, 3) for _ in range(4)]
    message = r"expected a 4-d input \(batch, channels, 2 spatial dims\) for 2-d components, got a {}-d input"
    for x in (torch.randn(1, 8, 5, 5, 5), torch.randn(8, 5, 5)):
        with pytest.raises(ValueError, match=message.format(x.dim())):
            qlayers.functional.quaternion_conv(x, *components, padding=1)
        with pytest.raises(ValueError, match=message.format(x.dim())):
            torch.func.vmap(lambda t: qlayers.functional.quaternion_conv(t, *components, padding=1))(x[None])


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kernel", [2, 4])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_same_padding_with_an_odd_total_puts_the_extra_element_after(dims, kernel, dilation):
    # dilation * (kernel - 1) odd: torch.nn.ConvNd(padding="same") pads one more after than before.
    ours_class, torch_class = CONV[dims]
    layer = randomise(ours_class(8, 8, kernel, padding="same", dilation=dilation, dtype=torch.float64))
    twin = torch_twin(layer, torch_class, padding="same", dilation=dilation)
    spatial = {1: (13,), 2: (9, 10), 3: (7, 8, 7)}[dims]
    compare_with_twin(layer, twin, torch.randn(2, 8, *spatial, dtype=torch.float64))


def test_eight_product_conv_gradients_over_several_chunks_of_images():
    # 16 channels of 256 x 512: the eight-product convolution takes 2 images a chunk (2^20 elements
    # per quarter of the channels, csrc/layers/conv_eight.cpp), so a batch of 3 is two chunks, one of
    # them partial, whose outputs and input gradients must land in place and whose component
    # gradients must add up.
    layer = randomise(qlayers.QConv2d(16, 16, 3, padding=1, algorithm="eight", dtype=torch.float64))
    compare_with_twin(layer, torch_twin(layer, nn.Conv2d, padding=1), torch.randn(3, 16, 256, 512, dtype=torch.float64))


COMPONENT_NAMES = ("r_weight", "i_weight", "j_weight", "k_weight")
TRAINABLE_SUBSETS = [
    tuple(name for bit, name in enumerate(COMPONENT_NAMES) if mask >> bit & 1) for mask in range(1, 16)
]


@pytest.mark.parametrize("channels, algorithm", [(16, "kernel"), (16, "eight"), (128, "kernel"), (128, "eight")])
@pytest.mark.parametrize("trainable", TRAINABLE_SUBSETS, ids="+".join)
@pytest.mark.parametrize("input_grad", [True, False])
def test_partly_frozen_conv_gives_the_full_layers_gradients(channels, algorithm, trainable, input_grad):
    # Whatever components train, each gets the gradient the fully trainable layer gives it, and the
    # input its gradient (the input is kept for backward when any component trains).
    full = randomise(qlayers.QConv2d(channels, channels, 3, padding=1, algorithm=algorithm, dtype=torch.float64))
    frozen = copy.deepcopy(full)
    for name in COMPONENT_NAMES:
        getattr(frozen, name).requires_grad_(name in trainable)
    x = torch.randn(2, channels, 6, 5, dtype=torch.float64)
    grad = torch.randn(2, channels, 6, 5, dtype=torch.float64)
    x_full, x_frozen = x.clone().requires_grad_(), x.clone().requires_grad_(input_grad)
    full(x_full).backward(grad)
    frozen(x_frozen).backward(grad)
    if input_grad:
        torch.testing.assert_close(x_frozen.grad, x_full.grad, **F64)
    for name in COMPONENT_NAMES:
        got = getattr(frozen, name).grad
        if name in trainable:
            torch.testing.assert_close(got, getattr(full, name).grad, **F64)
        else:
            assert got is None
