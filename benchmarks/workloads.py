"""What benchmarks/compare.py measures: the implementations, the workloads at each size, the kernel
cases and the two speed grids, and the --workloads names that pick among them.

Each implementation is a factory with a layer's signature (in and out features, or a convolution's
arguments); a Workload builds its model from one. Nothing here measures (benchmarks/measure.py) or
reports (benchmarks/report.py).
"""

from dataclasses import dataclass
from typing import Callable, Dict, List

import baselines
import torch
from torch import nn

import qlayers
from qlayers import _torch_internals

LayerFactory = Callable[[int, int], nn.Module]


def _compiled_plain(in_features, out_features):
    # One compiled graph serves every instance: parameters are graph inputs, not guards.
    return torch.compile(qlayers.QLinear(in_features, out_features, memory_efficient=False))


IMPLEMENTATIONS: Dict[str, LayerFactory] = {
    "qlayers": lambda i, o: qlayers.QLinear(i, o),
    "autograd": lambda i, o: qlayers.QLinear(i, o, memory_efficient=False),
    "anchor-custom": baselines.AnchorQLinear,
    "checkpoint": baselines.CheckpointedQLinear,
    "compiled": _compiled_plain,
    "dense": nn.Linear,
}


class Recurrence(nn.Module):
    """One layer applied at every step to a hidden state: h = tanh(layer(h) + x_t)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, xs):
        h = torch.zeros_like(xs[0])
        for x in xs:
            h = torch.tanh(self.layer(h) + x)
        return h


@dataclass
class Workload:
    name: str
    build: Callable[[LayerFactory], nn.Module]
    input_shape: tuple
    # Convolution workloads build from convolution factories (no anchor-custom: the anchors'
    # convolutions are plain autograd only).
    factories: Dict[str, LayerFactory] = None
    # Also time a torch.no_grad() forward (the recurrent layers' inference target).
    inference: bool = False
    key: str = ""  # its --workloads name

    def factory(self, impl):
        return (self.factories or IMPLEMENTATIONS).get(impl)


def _compiled_plain_conv(*args, **kwargs):
    return torch.compile(qlayers.QConv2d(*args, **kwargs, memory_efficient=False))


CONV_IMPLEMENTATIONS: Dict[str, LayerFactory] = {
    "qlayers": qlayers.QConv2d,
    "autograd": lambda *a, **k: qlayers.QConv2d(*a, **k, memory_efficient=False),
    "checkpoint": baselines.CheckpointedQConv2d,
    "compiled": _compiled_plain_conv,
    "dense": nn.Conv2d,
}


class SequenceOutput(nn.Module):
    """A recurrent layer's output sequence alone (drops the final states)."""

    def __init__(self, recurrent):
        super().__init__()
        self.recurrent = recurrent

    def forward(self, x):
        return self.recurrent(x)[0]


def recurrent_implementations(ours, torch_layer) -> Dict[str, LayerFactory]:
    """A quaternion recurrent layer, its plain-autograd path, and torch's own layer as the dense peer.
    The anchors' QLSTM and compiling a 100-step loop are left out."""
    return {
        "qlayers": ours,
        "autograd": lambda *a, **k: ours(*a, **k, memory_efficient=False),
        "dense": torch_layer,
    }


LSTM_IMPLEMENTATIONS = recurrent_implementations(qlayers.QLSTM, nn.LSTM)
RNN_IMPLEMENTATIONS = recurrent_implementations(qlayers.QRNN, nn.RNN)  # nn.RNN: tanh, as QRNN
LIGRU_IMPLEMENTATIONS = recurrent_implementations(qlayers.QLiGRU, nn.GRU)  # the nearest torch layer


def cnn(conv):
    """A small quaternion CNN for 32x32 images with 4 input channels (RGB + grey as the real part)."""
    return nn.Sequential(
        conv(4, 64, 3, padding=1),
        nn.ReLU(),
        conv(64, 128, 3, stride=2, padding=1),
        nn.ReLU(),
        conv(128, 128, 3, padding=1),
        nn.ReLU(),
        conv(128, 256, 3, stride=2, padding=1),
    )


def pointwise_block(conv, channels):
    """1x1 convolutions: the kernel is smallest next to the activations here."""
    return nn.Sequential(
        conv(channels, channels, 1), nn.ReLU(), conv(channels, channels, 1), nn.ReLU(), conv(channels, channels, 1)
    )


def mlp(layer, features, depth):
    blocks = []
    for _ in range(depth):
        blocks += [layer(features, features), nn.ReLU()]
    return nn.Sequential(*blocks)


# name -> sizes per preset: full (make bench), quick (--quick, under 3 minutes on 2 cores), tiny (tests)
SIZES = {
    "full": dict(
        small=2048,
        large=(4096, 512),
        mlp=(64, 1024),
        rnn=(100, 16, 512),
        cnn=(64, 32),
        pointwise=(32, 256, 16),
        lstm=(2, 512, 100, 16),
    ),
    "quick": dict(
        small=1024,
        large=(2048, 512),
        mlp=(64, 512),
        rnn=(50, 16, 256),
        cnn=(16, 32),
        pointwise=(8, 256, 16),
        lstm=(2, 256, 50, 16),
    ),
    "tiny": dict(
        small=64, large=(64, 32), mlp=(4, 32), rnn=(5, 2, 16), cnn=(2, 8), pointwise=(2, 16, 4), lstm=(1, 8, 4, 2)
    ),
}
# On a GPU the full QLSTM workload is the lecture's scale: 2 layers, hidden 1024, 200 steps, batch 16.
GPU_LSTM = (2, 1024, 200, 16)


def at_size(size: str, device_type: str = "cpu") -> List[Workload]:
    """Every workload, in --workloads' order, at a size of SIZES (the full QLSTM at the lecture's scale on a GPU)."""
    s = dict(SIZES[size])
    if size == "full" and device_type == "cuda":
        s["lstm"] = GPU_LSTM
    batch, large = s["large"]
    mlp_batch, mlp_features = s["mlp"]
    steps, rnn_batch, hidden = s["rnn"]
    cnn_batch, cnn_size = s["cnn"]
    pw_batch, channels, side = s["pointwise"]
    lstm_layers, lstm_hidden, lstm_steps, lstm_batch = s["lstm"]
    return [
        Workload(
            f"small batch: 8 x {s['small']}", lambda layer: layer(s["small"], s["small"]), (8, s["small"]), key="small"
        ),
        Workload(f"large batch: {batch} x {large}", lambda layer: layer(large, large), (batch, large), key="large"),
        Workload(
            f"MLP: 8 layers of {mlp_features}, batch {mlp_batch}",
            lambda layer: mlp(layer, mlp_features, 8),
            (mlp_batch, mlp_features),
            key="mlp",
        ),
        Workload(
            f"recurrence: {steps} steps, hidden {hidden}, batch {rnn_batch}",
            lambda layer: Recurrence(layer(hidden, hidden)),
            (steps, rnn_batch, hidden),
            key="recurrence",
        ),
        Workload(
            f"CNN: 4 convs on {cnn_size}x{cnn_size} images, batch {cnn_batch}",
            cnn,
            (cnn_batch, 4, cnn_size, cnn_size),
            CONV_IMPLEMENTATIONS,
            key="cnn",
        ),
        Workload(
            f"1x1 convs: 3 x {channels} channels, {side}x{side}, batch {pw_batch}",
            lambda conv: pointwise_block(conv, channels),
            (pw_batch, channels, side, side),
            CONV_IMPLEMENTATIONS,
            key="pointwise",
        ),
    ] + [
        Workload(
            f"{name}: {lstm_layers} layers, hidden {lstm_hidden}, {lstm_steps} steps, batch {lstm_batch}",
            lambda layer: SequenceOutput(layer(lstm_hidden, lstm_hidden, lstm_layers)),
            (lstm_steps, lstm_batch, lstm_hidden),
            implementations,
            inference=True,
            key=name.lower(),
        )
        for name, implementations in (
            ("QLSTM", LSTM_IMPLEMENTATIONS),
            ("QRNN", RNN_IMPLEMENTATIONS),
            ("QLiGRU", LIGRU_IMPLEMENTATIONS),
        )
    ]


# The kernel cases: (components shape, dtype) per device type. First the bandwidth cases, large enough
# to leave the caches; then float32 at small sizes (128 x 128, 512 x 512, a 64 x 64 x 3 x 3 kernel),
# where launch and per-call costs show: the cases the former pytest-benchmark suite timed.
SMALL_KERNEL_CASES = [((128, 128), torch.float32), ((512, 512), torch.float32), ((64, 64, 3, 3), torch.float32)]
KERNEL_CASES = {
    "cpu": [((512, 512), dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)]
    + [((128, 128, 3, 3), torch.float32)]
    + [case for case in SMALL_KERNEL_CASES if case != ((512, 512), torch.float32)],
    "cuda": [((4096, 4096), dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)]
    + [((512, 512, 3, 3), torch.float32)]
    + SMALL_KERNEL_CASES,
}


# The speed grid (issue: "faster than a dense layer"): one QLinear, forward + backward.
GRID = {
    "full": dict(batches=(1, 8, 64, 512, 4096), features=(512, 1024, 2048, 4096)),
    "quick": dict(batches=(1, 8, 512), features=(512, 2048)),
    "tiny": dict(batches=(1, 8), features=(32,)),
}
GRID_IMPLS = {
    "qlayers": lambda f: qlayers.QLinear(f, f),
    "qlayers-hamilton": lambda f: qlayers.QLinear(f, f, algorithm="hamilton"),
    "qlayers-components": lambda f: qlayers.QLinear(f, f, algorithm="components"),
    "qlayers-eight": lambda f: qlayers.QLinear(f, f, algorithm="eight"),
    "autograd": lambda f: qlayers.QLinear(f, f, memory_efficient=False),
    "dense": lambda f: nn.Linear(f, f),
}
# Beside nn.Linear as shipped (MKL), the same dense layer through oneDNN, where qlayers' GEMMs run:
# the ratio to it is the algorithm's gain alone.
if _torch_internals.onednn_linear_available():
    GRID_IMPLS["dense-onednn"] = lambda f: baselines.OneDNNLinear(f, f)


# The conv grid: one 3 x 3 convolution (padding 1), forward + backward, against nn.Conv2d.
CONV_GRID = {
    "full": dict(channels=(128, 256, 512), batch=32, size=32),
    "quick": dict(channels=(128, 256), batch=8, size=16),
    "tiny": dict(channels=(8,), batch=2, size=4),
}
CONV_IMPLS = {
    "qlayers": lambda c: qlayers.QConv2d(c, c, 3, padding=1),
    "autograd": lambda c: qlayers.QConv2d(c, c, 3, padding=1, memory_efficient=False),
    "dense": lambda c: nn.Conv2d(c, c, 3, padding=1),
}


# --workloads: each workload by its key (Workload.key, in at_size()'s order), the sections measured
# after them, and the groups.
WORKLOAD_KEYS = ("small", "large", "mlp", "recurrence", "cnn", "pointwise", "qlstm", "qrnn", "qligru")
SECTIONS = ("kernels", "grid", "conv-grid")
GROUPS = {"all": WORKLOAD_KEYS + SECTIONS, "recurrent": ("qlstm", "qrnn", "qligru")}
WORKLOAD_CHOICES = (*GROUPS, *WORKLOAD_KEYS, *SECTIONS)


def plan(names) -> List[str]:
    """The units --workloads names, groups expanded, in the order given, each once."""
    return list(dict.fromkeys(unit for name in names for unit in GROUPS.get(name, (name,))))
