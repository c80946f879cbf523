"""core_qnn (Orkis-Research/Pytorch-Quaternion-Neural-Networks) on qlayers: its helper functions, its
recurrent models' checkpoints, its rotation layers and its initialisation, each against a reference
written here from core_qnn's formulas (core_qnn itself is not installable: it has no package on an
index and imports scipy and numpy's global RNG).

What core_qnn computes, as read from its source (core_qnn/quaternion_ops.py, quaternion_layers.py,
exp/icassp_2019/recurrent_models.py):

- the feature dim: the last of a 2-d or 3-d tensor, dim 1 of a 4-d or 5-d one, in [r | i | j | k]
  blocks; ``q_normalize`` divides each quaternion by sqrt(|q|^2 + 1e-4) and joins the blocks along
  ``channel`` (default 1); ``get_modulus`` is |q| (``vector_form=True``) or sqrt(sum over dim 0 of
  |q|^2); ``get_normalized`` divides by that batch modulus plus 1e-4;
- QRNN: h_t = wx(x_t) + uh(h_{t-1}), both QuaternionLinearAutograd with a bias, no activation;
  QLSTM: one QuaternionLinearAutograd per gate for the input (with bias) and for the state (none),
  f, i, o sigmoid, c_t = i tanh(wcx x + uch h) + f c_{t-1}, h_t = o tanh(c_t), zero initial states;
- rotation layers: each weight quaternion divided by sqrt(|w|^2 + 1e-4), then the entries
  1 - 2(j^2 + k^2), 2(ij - rk), ... of the rotation matrix R, each times ``scale_param``, act on the
  input's vector part: y_vec = R x_vec (linear and convolution), y_r = 0, plus the bias;
- initialisation: "quaternion": a chi(4) modulus times s (glorot 1/sqrt(2(fan_in + fan_out)), he
  1/sqrt(2 fan_in)), an axis drawn uniform in the cube [-1, 1]^3 over sqrt(|v|^2 + 1e-4), a phase
  uniform in [-pi, pi]; "unitary": uniform in [-1, 1]^4 over (|v| + 1e-4), whatever the criterion;
  "random": uniform in [-1, 1], whatever the criterion. QuaternionLinear and QuaternionTransposeConv
  default to "he", QuaternionLinearAutograd and QuaternionConv to "glorot".
"""

import math

import numpy as np
import pytest
import torch
from conftest import hamilton_product

import qlayers
import qlayers.compat.speechbrain as speechbrain
from qlayers import compat

SAME = dict(rtol=1e-10, atol=1e-12)
F64 = torch.float64


def quaternions(x, dim):
    """x's [r | i | j | k] blocks along dim, as a (4, ...) stack."""
    return torch.stack(x.chunk(4, dim=dim))


def product(p, q):
    """The Hamilton product of (4, ...) stacks: conftest's, on dim 0."""
    return hamilton_product(p.movedim(0, -1), q.movedim(0, -1)).movedim(-1, 0)


# ---- the helper functions --------------------------------------------------------------------------


@pytest.mark.parametrize("shape, dim", [((3, 8), 1), ((2, 3, 8), 2), ((2, 8, 3, 2), 1), ((2, 4, 2, 1, 3), 1)])
def test_q_normalize_divides_by_the_root_of_the_square_plus_1e_4(shape, dim):
    x = torch.randn(shape, dtype=F64) * 0.05  # moduli near 0.1, where the 1e-4 matters
    q = quaternions(x, dim)
    expected = torch.cat(list(q / torch.sqrt((q * q).sum(0) + 1e-4)), dim=dim)
    torch.testing.assert_close(compat.core_qnn.q_normalize(x, channel=dim), expected, **SAME)
    # qlayers.quaternion.normalize divides by max(|q|, eps), another function: the migration table's old row.
    assert not torch.allclose(qlayers.quaternion.normalize(x, dim), expected, rtol=1e-3, atol=0)


def test_q_normalize_of_a_3d_input_joins_along_channel_as_core_qnn_does():
    # core_qnn splits a 3-d tensor along its last dim and joins the blocks along channel=1.
    x = torch.randn(2, 3, 8, dtype=F64)
    q = quaternions(x, 2)
    with pytest.warns(UserWarning, match=r"joins them along dim 1"):
        got = compat.core_qnn.q_normalize(x)
    assert got.shape == (2, 12, 2)
    torch.testing.assert_close(got, torch.cat(list(q / torch.sqrt((q * q).sum(0) + 1e-4)), dim=1), **SAME)


@pytest.mark.parametrize("shape, dim", [((5, 8), 1), ((5, 3, 8), 2), ((5, 8, 2, 3), 1)])
def test_get_modulus_in_vector_form_and_over_the_batch(shape, dim):
    x = torch.randn(shape, dtype=F64)
    squared = (quaternions(x, dim) ** 2).sum(0)
    torch.testing.assert_close(compat.core_qnn.get_modulus(x, vector_form=True), squared.sqrt(), **SAME)
    torch.testing.assert_close(
        compat.core_qnn.get_modulus(x, vector_form=True), qlayers.quaternion.norm(x, dim), **SAME
    )
    over_batch = compat.core_qnn.get_modulus(x)  # the default: one modulus per feature over all of dim 0
    assert over_batch.shape == squared.shape[1:]
    torch.testing.assert_close(over_batch, squared.sum(0).sqrt(), **SAME)


@pytest.mark.parametrize("shape", [(5, 8), (5, 3, 8)])
def test_get_normalized_divides_by_the_batch_modulus_plus_eps(shape):
    x = torch.randn(shape, dtype=F64)
    modulus = (quaternions(x, -1) ** 2).sum(0).sum(0).sqrt()  # (n,) or (T, n)
    expected = x / (torch.cat([modulus] * 4, dim=-1) + 1e-4)
    torch.testing.assert_close(compat.core_qnn.get_normalized(x), expected, **SAME)
    torch.testing.assert_close(
        compat.core_qnn.get_normalized(x, eps=0.5), x / (torch.cat([modulus] * 4, -1) + 0.5), **SAME
    )
    with pytest.raises(ValueError, match=r"get_normalized: expected a 2-d or 3-d input .*, got a 4-d"):
        compat.core_qnn.get_normalized(torch.randn(2, 8, 3, 3))


@pytest.mark.parametrize("shape, dim", [((3, 8), 1), ((2, 8, 3, 2), 1), ((2, 4, 3, 1, 2), 1)])
def test_hamilton_product_along_core_qnns_feature_dim(shape, dim):
    p, q = torch.randn(shape, dtype=F64), torch.randn(shape, dtype=F64)
    expected = torch.cat(list(product(quaternions(p, dim), quaternions(q, dim))), dim=dim)
    torch.testing.assert_close(compat.core_qnn.hamilton_product(p, q), expected, **SAME)
    with pytest.raises(ValueError, match=r"hamilton_product: a 3-d input fails in core_qnn"):
        compat.core_qnn.hamilton_product(torch.randn(2, 3, 8), torch.randn(2, 3, 8))


def test_helpers_name_what_they_expected():
    with pytest.raises(
        ValueError, match=r"q_normalize: expected a 2-d to 5-d input .*, got a 1-d input of shape \(8,\)"
    ):
        compat.core_qnn.q_normalize(torch.randn(8))
    with pytest.raises(ValueError, match=r"get_modulus: expected a multiple of 4 features along dim 1 .*, got 6"):
        compat.core_qnn.get_modulus(torch.randn(2, 6, 3, 3))
    with pytest.raises(TypeError, match=r"q_normalize: expected a Tensor, got list"):
        compat.core_qnn.q_normalize([1.0, 2.0, 3.0, 4.0])


# ---- recurrent models ------------------------------------------------------------------------------


def linear_state(prefix, n_in, n_out, bias, generator):
    """A core_qnn QuaternionLinearAutograd's state: components (n_in/4, n_out/4), bias (n_out,)."""
    state = {
        f"{prefix}.{name}": 0.4 * torch.randn(n_in // 4, n_out // 4, generator=generator, dtype=F64)
        for name in ("r_weight", "i_weight", "j_weight", "k_weight")
    }
    if bias:
        state[f"{prefix}.bias"] = 0.3 * torch.randn(n_out, generator=generator, dtype=F64)
    return state


def quaternion_linear(x, state, prefix):
    """y_q = sum_p w[p, q] x_p + b, the weight on the left: core_qnn's quaternion_linear."""
    xs = quaternions(x, -1)  # (4, ..., n_in)
    w = torch.stack([state[f"{prefix}.{c}_weight"] for c in "rijk"])  # (4, n_in, n_out)
    w = w.reshape(4, *(1,) * (xs.dim() - 2), *w.shape[1:])
    y = torch.cat(list(product(w, xs[..., None]).sum(-2)), dim=-1)
    bias = state.get(f"{prefix}.bias")
    return y if bias is None else y + bias


def core_qnn_qrnn(x, state, activation=None):
    """core_qnn's QRNN loop: h_t = wx(x_t) + uh(h_{t-1}), from h_0 = 0 (with an optional activation)."""
    projected = quaternion_linear(x, state, "wx")
    h = x.new_zeros(x.shape[1], projected.shape[-1])
    outputs = []
    for t in range(x.shape[0]):
        h = projected[t] + quaternion_linear(h, state, "uh")
        h = h if activation is None else activation(h)
        outputs.append(h)
    return torch.stack(outputs), h


QLSTM_GATES = ("f", "i", "o", "c")


def core_qnn_qlstm(x, state):
    """core_qnn's QLSTM loop, one QuaternionLinearAutograd per gate, from h_0 = c_0 = 0."""
    projected = {g: quaternion_linear(x, state, f"w{g}x") for g in QLSTM_GATES}
    h = x.new_zeros(x.shape[1], projected["f"].shape[-1])
    c = h
    outputs = []
    for t in range(x.shape[0]):
        pre = {g: projected[g][t] + quaternion_linear(h, state, f"u{g}h") for g in QLSTM_GATES}
        c = torch.sigmoid(pre["i"]) * torch.tanh(pre["c"]) + torch.sigmoid(pre["f"]) * c
        h = torch.sigmoid(pre["o"]) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


def qlstm_state(n_in, hidden, generator, recurrent_bias=False):
    state = {}
    for g in QLSTM_GATES:
        state.update(linear_state(f"w{g}x", n_in, hidden, True, generator))
        state.update(linear_state(f"u{g}h", hidden, hidden, recurrent_bias, generator))
    return state


def qrnn_state(n_in, hidden, generator):
    return {**linear_state("wx", n_in, hidden, True, generator), **linear_state("uh", hidden, hidden, True, generator)}


def with_grad(state):
    return {key: value.clone().requires_grad_() for key, value in state.items()}


def assert_same_gradients(got_outputs, want_outputs, got_leaves, want_leaves):
    weights = [torch.linspace(-1, 1, o.numel(), dtype=F64).view(o.shape) for o in want_outputs]
    got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(got_outputs, weights)), got_leaves)
    want = torch.autograd.grad(sum((o * w).sum() for o, w in zip(want_outputs, weights)), want_leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **SAME)


@pytest.mark.parametrize("recurrent_bias", [False, True])
@pytest.mark.parametrize("memory_efficient", [True, False])
def test_core_qnn_qlstm_loads_into_qlstm(memory_efficient, recurrent_bias):
    generator = torch.Generator().manual_seed(0)
    state = qlstm_state(8, 12, generator, recurrent_bias)  # core_qnn's u*h have no bias; a variant's are folded in
    lstm = qlayers.QLSTM(8, 12, memory_efficient=memory_efficient, dtype=F64)
    compat.load_state_dict(lstm, state, "core_qnn")
    x = torch.randn(5, 3, 8, dtype=F64, generator=generator)
    output, (h_n, c_n) = lstm(x)
    want = core_qnn_qlstm(x, state)
    for g, w in zip((output, h_n[0], c_n[0]), want):
        torch.testing.assert_close(g, w, **SAME)

    # Gradients with respect to the input and to core_qnn's own tensors, through the key mapping.
    leaves, x = with_grad(state), x.clone().requires_grad_()
    output, (h_n, c_n) = torch.func.functional_call(lstm, compat.core_qnn.qlstm_state_dict(leaves), (x,))
    reference_leaves, reference_x = with_grad(state), x.detach().clone().requires_grad_()
    assert_same_gradients(
        (output, h_n[0], c_n[0]),
        core_qnn_qlstm(reference_x, reference_leaves),
        [x, *leaves.values()],
        [reference_x, *reference_leaves.values()],
    )


def test_core_qnn_qlstm_model_loads_with_its_head():
    # core_qnn's experiment model holds the gates and an output layer fco; the qlayers model names the
    # recurrent layer, so the gates' keys take its prefix.
    generator = torch.Generator().manual_seed(1)
    state = {f"lstm.{k}": v for k, v in qlstm_state(8, 8, generator).items()}
    state.update({"fco.weight": torch.randn(9, 8, dtype=F64), "fco.bias": torch.randn(9, dtype=F64)})
    model = torch.nn.Module()
    model.lstm, model.fco = qlayers.QLSTM(8, 8, dtype=F64), torch.nn.Linear(8, 9, dtype=F64)
    compat.load_state_dict(model, state, "core_qnn")  # strict
    x = torch.randn(4, 2, 8, dtype=F64)
    want = torch.nn.functional.linear(
        core_qnn_qlstm(x, {k[5:]: v for k, v in state.items() if k.startswith("lstm.")})[0],
        state["fco.weight"],
        state["fco.bias"],
    )
    torch.testing.assert_close(model.fco(model.lstm(x)[0]), want, **SAME)


def test_core_qnn_qrnn_state_maps_into_qrnn_with_the_biases_folded():
    # Runs on the built library: the mapping, checked through a tanh QRNN against core_qnn's
    # pre-activation (both biases, the recurrent one included) under tanh.
    generator = torch.Generator().manual_seed(2)
    state = qrnn_state(8, 12, generator)
    converted = compat.core_qnn.qrnn_state_dict(state)
    assert set(converted) == {
        *(f"cells.0.input.{c}_weight" for c in "rijk"),
        "cells.0.input.bias",
        *(f"cells.0.recurrent.{c}_weight" for c in "rijk"),
    }
    torch.testing.assert_close(converted["cells.0.input.bias"], state["wx.bias"] + state["uh.bias"], **SAME)
    rnn = qlayers.QRNN(8, 12, memory_efficient=False, dtype=F64)
    rnn.load_state_dict(converted)
    x = torch.randn(5, 3, 8, dtype=F64, generator=generator)
    output, h_n = rnn(x)
    want = core_qnn_qrnn(x, state, torch.tanh)
    torch.testing.assert_close(output, want[0], **SAME)
    torch.testing.assert_close(h_n[0], want[1], **SAME)


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_core_qnn_qrnn_loads_into_identity_qrnn(memory_efficient):
    generator = torch.Generator().manual_seed(3)
    state = qrnn_state(8, 12, generator)
    rnn = qlayers.QRNN(8, 12, nonlinearity="identity", memory_efficient=memory_efficient, dtype=F64)
    compat.load_state_dict(rnn, state, "core_qnn")
    x = torch.randn(5, 3, 8, dtype=F64, generator=generator)
    output, h_n = rnn(x)
    want = core_qnn_qrnn(x, state)
    torch.testing.assert_close(output, want[0], **SAME)
    torch.testing.assert_close(h_n[0], want[1], **SAME)
    leaves, x = with_grad(state), x.clone().requires_grad_()
    output, h_n = torch.func.functional_call(rnn, compat.core_qnn.qrnn_state_dict(leaves), (x,))
    reference_leaves, reference_x = with_grad(state), x.detach().clone().requires_grad_()
    assert_same_gradients(
        (output, h_n[0]),
        core_qnn_qrnn(reference_x, reference_leaves),
        [x, *leaves.values()],
        [reference_x, *reference_leaves.values()],
    )


def test_core_qnn_qrnn_into_a_qrnn_with_an_activation_is_refused():
    state = qrnn_state(8, 8, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match=r"has no activation on its state.*nonlinearity='identity', got 'tanh'"):
        compat.load_state_dict(qlayers.QRNN(8, 8), state, "core_qnn")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: qlayers.QLSTM(8, 8, num_layers=2), r"one layer in one direction; expected num_layers=1"),
        (lambda: qlayers.QLSTM(8, 8, bidirectional=True), r"expected num_layers=1 and bidirectional=False"),
        (lambda: qlayers.QLSTM(8, 8, bias=False), r"has biases; expected bias=True"),
    ],
)
def test_core_qnn_qlstm_into_another_configuration_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        compat.load_state_dict(make(), qlstm_state(8, 8, torch.Generator().manual_seed(5)), "core_qnn")


def test_core_qnn_qlstm_with_a_missing_gate_names_the_key():
    state = qlstm_state(8, 8, torch.Generator().manual_seed(6))
    del state["wox.k_weight"]
    with pytest.raises(ValueError, match=r"core_qnn QLSTM checkpoint: expected wox.k_weight"):
        compat.load_state_dict(qlayers.QLSTM(8, 8), state, "core_qnn")
    state = qlstm_state(8, 8, torch.Generator().manual_seed(6))
    state["uch.k_weight"] = torch.randn(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"uch.k_weight has shape \(3, 2\), expected \(2, 2\) as uch.r_weight"):
        compat.load_state_dict(qlayers.QLSTM(8, 8), state, "core_qnn")


# ---- rotation layers -------------------------------------------------------------------------------


def rotation_blocks(r, i, j, k, scale=None):
    """core_qnn's rotation as R[a][b] (output vector component a, input b): the sandwich
    q^ v conj(q^) of the weight divided by sqrt(|w|^2 + 1e-4), plus (1 - |q^|^2) v, since core_qnn's
    1 - 2(j^2 + k^2) diagonal assumes a unit quaternion that q^ is not quite."""
    w = torch.stack([r, i, j, k])
    unit = w / torch.sqrt((w * w).sum(0) + 1e-4)
    conj = unit * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=w.dtype).view(4, *[1] * r.dim())
    deficit = 1 - (unit * unit).sum(0)
    blocks = [[None] * 3 for _ in range(3)]
    for b in range(3):
        basis = torch.zeros_like(w)
        basis[b + 1] = 1
        rotated = product(product(unit, basis), conj)
        for a in range(3):
            blocks[a][b] = rotated[a + 1] + (deficit if a == b else 0)
            if scale is not None:
                blocks[a][b] = blocks[a][b] * scale
    return blocks


def rotation_state(shape, scale, bias_features, generator):
    state = {
        c: torch.randn(shape, generator=generator, dtype=F64) for c in ("r_weight", "i_weight", "j_weight", "k_weight")
    }
    state["zero_kernel"] = torch.zeros(shape, dtype=F64)
    if scale:
        state["scale_param"] = torch.randn(shape, generator=generator, dtype=F64)
    if bias_features:
        state["bias"] = torch.randn(bias_features, generator=generator, dtype=F64)
    return state


def rotation_reference_linear(x, state, quaternion_format):
    parts = [state[c] for c in ("r_weight", "i_weight", "j_weight", "k_weight")]
    blocks = rotation_blocks(*parts, state.get("scale_param"))
    vector = x.chunk(4 if quaternion_format else 3, dim=-1)[-3:]
    out = [sum(vector[b] @ blocks[a][b] for b in range(3)) for a in range(3)]
    if quaternion_format:
        out = [torch.zeros_like(out[0])] + out
    y = torch.cat(out, dim=-1)
    return y + state["bias"] if "bias" in state else y


@pytest.mark.parametrize(
    "quaternion_format, scale, bias",
    [(True, False, True), (True, True, True), (False, False, False), (False, True, False)],
)
def test_core_qnn_rotation_linear_computes_core_qnns_rotation(quaternion_format, scale, bias):
    generator = torch.Generator().manual_seed(7)
    layer = compat.core_qnn.QuaternionLinearAutograd(
        8, 12, bias=bias, rotation=True, quaternion_format=quaternion_format, scale=scale
    ).double()
    state = rotation_state((2, 3), scale, 12 if bias else 0, generator)
    compat.load_state_dict(layer, state, "core_qnn")  # strict: the same keys
    x = torch.randn(5, 8 if quaternion_format else 6, dtype=F64, generator=generator, requires_grad=True)
    leaves = dict(layer.named_parameters())
    got = layer(x)
    torch.testing.assert_close(got, rotation_reference_linear(x, state, quaternion_format), **SAME)
    reference_x, reference_state = x.detach().clone().requires_grad_(), with_grad(state)
    assert_same_gradients(
        [got],
        [rotation_reference_linear(reference_x, reference_state, quaternion_format)],
        [x, *(leaves[n] for n in state if leaves[n].requires_grad)],
        [reference_x, *(reference_state[n] for n in state if leaves[n].requires_grad)],
    )


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("operation, spatial", [("convolution1d", (7,)), ("convolution2d", (6, 5))])
def test_core_qnn_rotation_conv_computes_core_qnns_rotation(operation, spatial, scale):
    generator = torch.Generator().manual_seed(8)
    layer = compat.core_qnn.QuaternionConv(
        8, 12, 3, stride=2, padding=1, dilatation=1, operation=operation, rotation=True, scale=scale
    ).double()
    state = rotation_state((3, 2, *(3,) * len(spatial)), scale, 12, generator)
    compat.load_state_dict(layer, state, "core_qnn")
    x = torch.randn(2, 8, *spatial, dtype=F64, generator=generator)
    blocks = rotation_blocks(
        *(state[c] for c in ("r_weight", "i_weight", "j_weight", "k_weight")), state.get("scale_param")
    )
    zero = torch.zeros_like(state["r_weight"])
    rows = [[zero] * 4] + [[zero, *blocks[a]] for a in range(3)]  # output blocks along dim 0, input along dim 1
    kernel = torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)
    conv = torch.nn.functional.conv1d if len(spatial) == 1 else torch.nn.functional.conv2d
    torch.testing.assert_close(layer(x), conv(x, kernel, state["bias"], stride=2, padding=1), **SAME)


def test_core_qnn_rotation_checkpoint_into_speechbrain_spinor_is_refused():
    # SpeechBrain's spinor QLinear holds the same keys but applies the transposed rotation and
    # normalises by |w| + 1e-4: the load would compute another layer.
    state = rotation_state((2, 3), True, 12, torch.Generator().manual_seed(9))
    layer = speechbrain.QLinear(3, input_shape=8, spinor=True, vector_scale=True).double()
    with pytest.raises(ValueError, match=r"core_qnn's rotation.*SpeechBrain's rotation.*QuaternionLinearAutograd"):
        compat.load_state_dict(layer, state, "core_qnn")


def test_rotation_checkpoints_into_quaternion_products_are_refused():
    state = rotation_state((2, 3), False, 12, torch.Generator().manual_seed(10))
    with pytest.raises(ValueError, match=r"the module computes the quaternion product"):
        compat.load_state_dict(qlayers.QLinear(8, 12), state, "core_qnn", strict=False)  # would drop zero_kernel
    plain = {k: v for k, v in state.items() if k != "zero_kernel"}
    rotation = compat.core_qnn.QuaternionLinearAutograd(8, 12, rotation=True)
    with pytest.raises(ValueError, match=r"the checkpoint holds the quaternion product"):
        compat.load_state_dict(rotation, plain, "core_qnn", strict=False)
    with pytest.raises(ValueError, match=r"SpeechBrain's rotation.*core_qnn's rotation"):
        compat.load_state_dict(rotation, state, "speechbrain")


def test_core_qnn_rotation_that_never_ran_is_refused():
    with pytest.raises(ValueError, match=r"rotation=True is refused: core_qnn's QuaternionTransposeConv"):
        compat.core_qnn.QuaternionTransposeConv(8, 8, 3, 1, rotation=True)
    with pytest.raises(ValueError, match=r"quaternion_format=False is refused"):
        compat.core_qnn.QuaternionConv(8, 8, 3, 1, rotation=True, quaternion_format=False)
    with pytest.raises(ValueError, match=r"bias=True with quaternion_format=False is refused"):
        compat.core_qnn.QuaternionLinearAutograd(8, 8, rotation=True, quaternion_format=False)


# ---- layers and initialisation ---------------------------------------------------------------------


def test_core_qnn_layers_compute_their_product_and_load_their_checkpoints():
    generator = torch.Generator().manual_seed(11)
    state = {
        c: torch.randn(2, 3, generator=generator, dtype=F64) for c in ("r_weight", "i_weight", "j_weight", "k_weight")
    }
    state["bias"] = torch.randn(12, generator=generator, dtype=F64)
    x = torch.randn(4, 8, dtype=F64, generator=generator)
    want = quaternion_linear(x, {f"w.{k}": v for k, v in state.items()}, "w")
    for layer in (compat.core_qnn.QuaternionLinear(8, 12), compat.core_qnn.QuaternionLinearAutograd(8, 12)):
        compat.load_state_dict(layer.double(), state, "core_qnn")
        torch.testing.assert_close(layer(x), want, **SAME)

    names = ("r_weight", "i_weight", "j_weight", "k_weight")
    parts = [torch.randn(3, 2, 3, generator=generator, dtype=F64) for _ in names]
    bias = torch.randn(12, generator=generator, dtype=F64)
    conv = compat.core_qnn.QuaternionConv(8, 12, 3, 1, padding=1, operation="convolution1d").double()
    compat.load_state_dict(conv, {**dict(zip(names, parts)), "bias": bias}, "core_qnn")
    x = torch.randn(2, 8, 9, dtype=F64, generator=generator)
    y = qlayers.reference.quaternion_conv(x, *parts, bias, stride=1, padding=1)
    torch.testing.assert_close(conv(x), y, **SAME)
    # A transposed convolution's components are (in/4, out/4, *kernel): these (3, 2, 3) map 12 channels to 8.
    deconv = compat.core_qnn.QuaternionTransposeConv(12, 8, 3, 2, output_padding=1, operation="convolution1d")
    compat.load_state_dict(deconv.double(), {**dict(zip(names, parts)), "bias": bias[:8]}, "core_qnn")
    want = qlayers.reference.quaternion_conv_transpose(y, *parts, bias[:8], stride=2, output_padding=1)
    torch.testing.assert_close(deconv(y), want, **SAME)


def test_core_qnn_defaults_are_its_own():
    # QuaternionLinear and QuaternionTransposeConv default to "he", the others to "glorot".
    assert compat.core_qnn.QuaternionLinear(8, 8).init_criterion == "he"
    assert compat.core_qnn.QuaternionTransposeConv(8, 8, 3, 1).init_criterion == "he"
    assert compat.core_qnn.QuaternionLinearAutograd(8, 8).init_criterion == "glorot"
    assert compat.core_qnn.QuaternionConv(8, 8, 3, 1).init_criterion == "glorot"
    with pytest.raises(ValueError, match=r"QuaternionLinear: weight_init must be one of \('quaternion', 'unitary'\)"):
        compat.core_qnn.QuaternionLinear(8, 8, weight_init="random")  # not in core_qnn's QuaternionLinear either


def test_core_qnn_seed_makes_the_draws_reproducible():
    first, second = compat.core_qnn.QuaternionLinear(16, 16, seed=5), compat.core_qnn.QuaternionLinear(16, 16, seed=5)
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def mean_and_error(samples):
    """The sample mean and its standard error."""
    samples = samples.flatten().double()
    return samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())


def test_core_qnn_quaternion_scheme_has_he_modulus_by_default():
    # E[|q|^2] = 4 s^2 for a chi(4) modulus of scale s; QuaternionLinear(1024, 1024) has 65536 quaternions.
    layer = compat.core_qnn.QuaternionLinear(1024, 1024, seed=0)
    squared = sum(p.detach() ** 2 for p in (layer.r_weight, layer.i_weight, layer.j_weight, layer.k_weight))
    he = 1 / math.sqrt(2 * 256)
    mean, error = mean_and_error(squared / (4 * he**2))
    assert abs(mean - 1) < 6 * error, (mean, error)  # glorot would give 1/2
    assert error < 0.01


def test_core_qnn_unitary_and_random_schemes_ignore_the_criterion():
    shape = (256, 256)
    drawn = {}
    for scheme in ("unitary", "random"):
        for criterion, fans in (("glorot", (256, 256)), ("he", (256, 256)), ("he", (8, 1000))):
            parts = [torch.empty(shape, dtype=F64) for _ in range(4)]
            generator = torch.Generator().manual_seed(12)
            compat.core_qnn.init_components_(*parts, *fans, scheme, criterion, generator=generator)
            drawn[scheme, criterion, fans] = torch.stack(parts)
    for scheme in ("unitary", "random"):
        first, *others = (v for key, v in drawn.items() if key[0] == scheme)
        for other in others:
            torch.testing.assert_close(other, first, rtol=0, atol=0)
    unitary, random = drawn["unitary", "he", (256, 256)], drawn["random", "he", (256, 256)]
    modulus = torch.linalg.vector_norm(unitary, dim=0)
    assert modulus.max() < 1 and modulus.min() > 0.99  # |v| / (|v| + 1e-4), nowhere near qlayers' 2s
    assert random.abs().max() <= 1 and random.abs().max() > 0.999
    mean, error = mean_and_error(random**2)
    assert abs(mean - 1 / 3) < 6 * error, (mean, error)  # uniform in [-1, 1]: E[x^2] = 1/3


def core_qnn_direction_moment(components, eps_inside_root, samples=1_000_000):
    """E[u_0^4] of core_qnn's directions, uniform in the cube then normalised, from numpy draws."""
    v = np.random.default_rng(0).uniform(-1.0, 1.0, (samples, components))
    squared = (v * v).sum(axis=1, keepdims=True)
    u = v / (np.sqrt(squared + 1e-4) if eps_inside_root else np.sqrt(squared) + 1e-4)
    fourth = u[:, 0] ** 4
    return fourth.mean(), fourth.std() / math.sqrt(samples)


def test_core_qnn_directions_come_from_the_cube():
    # The fourth moment tells core_qnn's cube-normalised directions from uniform ones on the sphere
    # (qlayers' schemes): 1/8 in 4 dimensions and 1/5 in 3 for the sphere.
    parts = [torch.empty(512, 512, dtype=F64) for _ in range(4)]
    generator = torch.Generator().manual_seed(13)
    compat.core_qnn.init_components_(*parts, 512, 512, "unitary", "he", generator=generator)
    unit = torch.stack(parts) / torch.linalg.vector_norm(torch.stack(parts), dim=0)
    mean, error = mean_and_error(unit[0] ** 4)
    want, want_error = core_qnn_direction_moment(4, eps_inside_root=False)
    tolerance = 6 * math.hypot(error, want_error)
    assert abs(mean - want) < tolerance and abs(3 / 24 - want) > 5 * tolerance, (mean, want, tolerance)

    compat.core_qnn.init_components_(*parts, 512, 512, "quaternion", "glorot", generator=generator)
    vector = torch.stack(parts[1:])
    axis = vector / torch.linalg.vector_norm(vector, dim=0)
    mean, error = mean_and_error(axis[0] ** 4)
    want, want_error = core_qnn_direction_moment(3, eps_inside_root=True)
    tolerance = 6 * math.hypot(error, want_error)
    assert abs(mean - want) < tolerance and abs(3 / 15 - want) > 5 * tolerance, (mean, want, tolerance)
    # The phase is uniform in [-pi, pi]: E[cos^2] = 1/2 of the real part's share.
    share = parts[0] ** 2 / sum(p**2 for p in parts)
    mean, error = mean_and_error(share)
    assert abs(mean - 0.5) < 6 * error, (mean, error)


@pytest.mark.parametrize(
    "make, fan_in",
    [
        (lambda: qlayers.QLinear(64, 1024), 16),
        (lambda: qlayers.QConv2d(64, 256, 3), 16 * 9),
        (lambda: qlayers.QConvTranspose2d(256, 64, 3), 16 * 9),  # core_qnn's fan_in is the output channels
    ],
)
def test_init_layer_draws_qlayers_layers_as_core_qnn_does(make, fan_in):
    layer = make()
    with torch.no_grad():
        layer.bias.fill_(1.0)
    compat.core_qnn.init_layer_(layer, "quaternion", "he", generator=torch.Generator().manual_seed(14))
    squared = sum(p.detach().double() ** 2 for p in layer.components())
    mean, error = mean_and_error(squared * 2 * fan_in / 4)
    assert abs(mean - 1) < 6 * error, (mean, error)
    assert torch.count_nonzero(layer.bias) == 0
    compat.core_qnn.init_layer_(layer, "random", "he")
    assert abs(mean_and_error(torch.stack(layer.components()).detach() ** 2)[0] - 1 / 3) < 0.02
    with pytest.raises(ValueError, match=r"init_layer_: weight_init must be one of"):
        compat.core_qnn.init_layer_(layer, "polar", "he")
    with pytest.raises(TypeError, match=r"init_layer_: expected a layer with r_weight, i_weight, j_weight, k_weight"):
        compat.core_qnn.init_layer_(torch.nn.Linear(4, 4), "quaternion", "he")
