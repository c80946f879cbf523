"""Every layer family through the shared checks of tests/layer_tester.py, on every device present:
reference equality, gradcheck/gradgradcheck, jvp, vmap and jacobians, per-sample gradients,
ensembles, torch.compile, autocast and saved bytes. The family-specific cases (options, edge shapes,
frozen layers, packed sequences, torch.nn twins) stay in the per-family files."""

import math

import torch
from conftest import randomise
from layer_tester import LayerTester
from torch import nn
from torch.func import functional_call

import qlayers
from qlayers import reference

COMPONENTS = ("r_weight", "i_weight", "j_weight", "k_weight")


def twin(layer, **changes):
    """`layer`'s class built again with `changes`, its parameters copied."""
    copy = layer.tester_build(**changes)
    copy.load_state_dict(layer.state_dict())
    return copy


class Family(LayerTester):
    """Builds through `make(dtype, device, **options)`; the layer remembers how, for its twins."""

    def build(self, dtype, device, **options):
        def make(**changes):
            return self.make(dtype, device, **{**options, **changes})

        layer = randomise(make(), self.init_std)
        layer.__dict__["tester_build"] = make  # not a submodule: named_parameters stay the layer's
        return layer

    init_std = 1.0

    def plain(self, layer):
        return twin(layer, memory_efficient=False)


# --- QLinear ------------------------------------------------------------------------------------


class TestQLinear(Family):
    # bias=False and each algorithm by name ("auto" takes one of them): the old gradchecks of
    # test_linear.py (bias or not), test_algorithms.py and test_eight_product.py (each algorithm), and
    # test_algorithms.py::test_both_algorithms_keep_only_the_input (saved bytes by algorithm).
    variants = {
        "no-bias": dict(bias=False),
        **{a: dict(algorithm=a) for a in ("hamilton", "components", "eight", "direct")},
    }
    gradgradcheck_fast_mode = False  # full mode takes a second here

    def make(self, dtype, device, **options):
        return qlayers.QLinear(8, 12, dtype=dtype, device=device, **options)

    def example(self, dtype, device):
        return torch.randn(3, 2, 8, dtype=dtype, device=device)  # two leading dims

    def reference(self, layer, params, x):
        return reference.quaternion_linear(x, *(params[n] for n in COMPONENTS), params.get("bias"))

    def peer(self, layer):
        return nn.Linear(8, 12, device=layer.bias.device)

    def expected_saved(self, layer, x):
        return x.numel() * 4  # the input alone, as nn.Linear keeps; the components are cast again in backward

    def plain_matrix_bytes(self, layer, x):
        return 8 * 12 * 4  # the (4n x 4m) Hamilton matrix


# --- QConv1d/2d/3d and QConvTranspose1d/2d/3d ---------------------------------------------------


class Convolution(Family):
    peer_class: type
    kernel_size = 3
    config: dict
    spatial: tuple

    def make(self, dtype, device, **options):
        return self.layer_class(8, 16, self.kernel_size, dtype=dtype, device=device, **{**self.config, **options})

    def example(self, dtype, device, batch=2):
        return torch.randn(batch, 8, *self.spatial, dtype=dtype, device=device)

    def gradcheck_example(self, device):
        return self.example(torch.float64, device, batch=1)

    def reference(self, layer, params, x):
        parts, bias = [params[n] for n in COMPONENTS], params.get("bias")
        if layer.transposed:
            return reference.quaternion_conv_transpose(
                x, *parts, bias, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation
            )
        return reference.quaternion_conv(x, *parts, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    def peer(self, layer):
        return self.peer_class(8, 16, self.kernel_size, device=layer.bias.device, **self.config)

    def expected_saved(self, layer, x):
        return x.numel() * 4  # the input alone: no real kernel

    def plain_matrix_bytes(self, layer, x):
        return 8 * 16 // layer.groups * math.prod(layer.kernel_size) * 4  # the real kernel


class TestQConv1d(Convolution):
    layer_class, peer_class = qlayers.QConv1d, nn.Conv1d
    config, spatial = dict(stride=2, padding=1, groups=2), (7,)
    # The eight-product convolution by name (groups 1 only): the old
    # test_eight_product.py::test_conv_eight_gradcheck_and_double_backward.
    variants = {"eight": dict(algorithm="eight", groups=1)}


class TestQConv2d(Convolution):
    # A different stride and dilation per dim (the old test_conv.py::test_gradcheck case).
    layer_class, peer_class = qlayers.QConv2d, nn.Conv2d
    config, spatial = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2), (5, 4)


class TestQConv3d(Convolution):
    layer_class, peer_class, kernel_size = qlayers.QConv3d, nn.Conv3d, 2
    config, spatial = dict(stride=(1, 2, 1), padding=1, groups=2), (3, 3, 2)


class TestQConvTranspose1d(Convolution):
    layer_class, peer_class = qlayers.QConvTranspose1d, nn.ConvTranspose1d
    config, spatial = dict(stride=2, padding=1, output_padding=1, groups=2), (5,)


class TestQConvTranspose2d(Convolution):
    layer_class, peer_class = qlayers.QConvTranspose2d, nn.ConvTranspose2d
    config = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2, output_padding=(1, 0))
    spatial = (5, 4)


class TestQConvTranspose3d(Convolution):
    layer_class, peer_class, kernel_size = qlayers.QConvTranspose3d, nn.ConvTranspose3d, 2
    config, spatial = dict(stride=(2, 1, 1), groups=2, output_padding=(1, 0, 0)), (3, 2, 2)


# --- QRNN, QLSTM, QLiGRU ------------------------------------------------------------------------


class Recurrent(Family):
    """Two layers, both directions; the reference is the plain path (QLinear with the real matrix, a
    step loop) on the same parameters. torch's own layers as the reference: tests/test_recurrent_engine.py."""

    peer_class: type
    not_applicable = {
        "test_autocast_keeps_no_low_precision_copies": "the engine keeps its projection and outputs in the "
        "autocast dtype, as nn.LSTM does; the existing tests assert no figure for it",
    }
    batch_dim = 1  # (T, B, F)
    init_std = 0.4
    steps, batch, hidden = 3, 2, 8

    gradcheck_options = dict(num_layers=1)

    def make(self, dtype, device, num_layers=2, **options):
        return self.layer_class(4, self.hidden, num_layers, bidirectional=True, dtype=dtype, device=device, **options)

    def example(self, dtype, device):
        return torch.randn(self.steps, self.batch, 4, dtype=dtype, device=device)

    def build(self, dtype, device, **options):
        layer = super().build(dtype, device, **options)
        layer.__dict__["tester_plain"] = self.plain(layer)  # built here, never inside a transform
        return layer

    def reference(self, layer, params, x):
        return functional_call(layer.__dict__["tester_plain"], params, (x,))

    def peer(self, layer):
        device = layer.cells[0].input.r_weight.device
        return self.peer_class(4, self.hidden, 2, bidirectional=True, device=device)

    def expected_saved(self, layer, x):
        # The input; per layer and direction (four) the projection's gate pre-activations, the
        # outputs, the cell states (QLSTM) and the initial states (h_0, and c_0 for QLSTM); layer 1
        # reads layer 0's joined outputs. What the engine keeps, as
        # tests/test_recurrent_engine.py::test_engine_keeps_less_than_the_step_loop_and_torch counts it.
        quantum, state = self.steps * self.batch * self.hidden * 4, self.batch * self.hidden * 4
        cell_state = self.layer_class.has_cell_state
        per_cell = (self.layer_class.gates + 1 + cell_state) * quantum + (1 + cell_state) * state
        return x.numel() * 4 + 4 * per_cell + 2 * quantum

    def plain_matrix_bytes(self, layer, x):
        # At least one recurrent (H x gates*H) matrix per step (the figure of
        # tests/test_recurrent.py::test_plain_path_keeps_one_matrix_per_step, one layer's worth).
        return self.steps * self.hidden * self.layer_class.gates * self.hidden * 4


class TestQRNN(Recurrent):
    layer_class, peer_class = qlayers.QRNN, nn.RNN


class TestQLSTM(Recurrent):
    layer_class, peer_class = qlayers.QLSTM, nn.LSTM
    known_failures = {
        "test_compile_matches_eager_and_saves_what_eager_saves": "compiled it keeps 5344 bytes, eager 5600 "
        "(measured): 256 bytes less, the size of the four zero initial cell states",
    }


class TestQLiGRU(Recurrent):
    # QLiGRU follows nn.LSTM's autocast dtypes: on the CPU nn.GRU is left out of autocast.
    layer_class, peer_class = qlayers.QLiGRU, nn.LSTM


# --- QBatchNorm ---------------------------------------------------------------------------------


def batch_norm_reference(norm, params, x):
    """QBatchNorm in training (batch statistics), from its docstring, one quaternion feature at a
    time: y = Γ L⁻¹ (x - μ) + β with L Lᵀ = V + eps·I (whiten), or (x - μ) / sqrt(E|x - μ|² + eps)
    times a scale (variance). In float32 or float64 with autocast off, returned in x's dtype."""
    features = norm.num_features // 4
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        channels_last = x.movedim(1, -1)
        q = channels_last.reshape(-1, 4, features).to(dtype)  # (N, 4, Q)
        outputs = []
        for f in range(features):
            centred = q[..., f] - q[..., f].mean(0)  # (N, 4)
            if norm.mode == "whiten":
                identity = torch.eye(4, dtype=dtype, device=x.device)
                spread = centred.t() @ centred / centred.shape[0] + norm.eps * identity
                y = centred @ torch.linalg.inv(torch.linalg.cholesky(spread)).t() @ params["weight"][f].to(dtype).t()
            else:
                y = centred / torch.sqrt(centred.pow(2).sum(1).mean() + norm.eps) * params["weight"][f].to(dtype)
            outputs.append(y + params["bias"].to(dtype).view(4, features)[:, f])
        out = torch.stack(outputs, -1).reshape(channels_last.shape).movedim(-1, 1)
    return out.to(x.dtype)


class BatchNorm(Family):
    not_applicable = {
        "test_per_sample_gradients_match_reference": "batch statistics: one sample alone has none",
        "test_saved_bytes": "no expected figure: the existing tests assert none for QBatchNorm",
        "test_autocast_keeps_no_low_precision_copies": "no expected figure: the existing tests assert none",
        "test_plain_path_keeps_its_real_matrices": "QBatchNorm has no memory_efficient=False path",
        "test_plain_path_matches_reference": "QBatchNorm has no memory_efficient=False path",
    }
    mode: str

    def build(self, dtype, device, **options):
        norm = qlayers.QBatchNorm(8, mode=self.mode, dtype=dtype, device=device, **options)
        with torch.no_grad():
            norm.weight.add_(0.3 * torch.randn_like(norm.weight))
            norm.bias.normal_()
        return norm

    def example(self, dtype, device):
        return torch.randn(5, 8, 3, dtype=dtype, device=device) * 2 + 1

    def gradcheck_example(self, device):
        return torch.randn(4, 8, 2, dtype=torch.float64, device=device)

    def reference(self, layer, params, x):
        return batch_norm_reference(layer, params, x)

    def peer(self, layer):
        return nn.BatchNorm1d(8, device=layer.bias.device)

    def for_transforms(self, layer):
        layer.track_running_stats = False  # no in-place update of an unbatched buffer under vmap
        return layer


class TestQBatchNormWhiten(BatchNorm):
    mode = "whiten"


class TestQBatchNormVariance(BatchNorm):
    mode = "variance"
    known_failures = {
        "test_compile_matches_eager_and_saves_what_eager_saves": "compiled it keeps 1000 bytes, eager 968 "
        "(measured): 32 bytes more",
    }
