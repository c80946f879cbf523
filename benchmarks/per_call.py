"""What a small layer pays per call: a quaternion layer against the dense one of the same size, batch 1.

    python benchmarks/per_call.py [--layer linear|conv|autoencoder] [--features 64] [--threads 1] [--rounds 15]

Times forward, and forward + backward (``layer(x).sum().backward()``), with torch.utils.benchmark,
in interleaved rounds (each round times every layer once, so that a shared host's drift slows all
of them alike), and prints the median time over the rounds and the median of the rounds' ratios:
- linear: ``QLinear(f, f)`` against ``nn.Linear(f, f)`` on one row, and its operator called through
  ``torch.ops`` (boxed), which the module's eager call skips. At this size the arithmetic is
  negligible: the times are the per-call cost of the Python module, the dispatcher and autograd.
- conv: ``QConv2d(4, 32, 3, padding=1)`` on one 64 x 96 image against ``F.conv2d`` with the same
  real kernel (``hamilton_expand`` of the conjugate components, built once, a leaf that needs a
  gradient) and against the plain-autograd layer (``memory_efficient=False``), which rebuilds the
  kernel per call as core_qnn's layers do, and the operator through ``torch.ops``, as for linear.
- autoencoder: a training step's forward and backward of core_qnn's quaternion convolutional
  autoencoder (its ICASSP 2019 experiment: 4 -> 32 -> 40 channels by stride-2 3 x 3 convolutions and
  back by transposed ones, Hardtanh between) on one 4 x 64 x 96 image, built as core_qnn's users
  build it, from core_qnn's layer classes (qlayers.compat.core_qnn), against the same model on
  qlayers' plain-autograd layers (``memory_efficient=False``, core_qnn's formulation).
  The ratio is against the plain-autograd model: there is no dense model of the same function.
"""

import argparse
import statistics
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from torch import nn

import qlayers
from qlayers.compat import core_qnn


def interleaved_us(fns, threads, min_run_time, rounds):
    """Each function's time per call in microseconds, one list per function, a time per round.

    Calls per measurement are set once per function so that a round takes about
    ``min_run_time / rounds`` of each; then every round measures each function in turn.
    """
    timers = {name: benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads) for name, fn in fns.items()}
    share = min_run_time / rounds
    numbers = {}
    for name, timer in timers.items():
        once = timer.timeit(number=10).median  # seconds per call, warmed up
        numbers[name] = max(1, int(share / max(once, 1e-9)))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer.timeit(number=numbers[name]).median * 1e6)
    return times


def via_torch_ops(layer):
    """The layer's operator called as ``torch.ops.qlayers.*`` calls it, boxed: what the module's
    eager call (csrc/eager_calls.cpp) skips, minus the module's own Python."""
    r, i, j, k, bias = (layer.r_weight, layer.i_weight, layer.j_weight, layer.k_weight, layer.bias)
    if isinstance(layer, qlayers.QLinear):
        op = torch.ops.qlayers.quaternion_linear.default
        return lambda x: op(x, r, i, j, k, bias, None, layer.algorithm)
    op = torch.ops.qlayers.quaternion_conv.default
    options = (layer.stride, layer.padding, layer.dilation, layer.transposed, layer.output_padding, layer.groups)
    return lambda x: op(x, r, i, j, k, bias, *options, None, layer.algorithm)


def linear_layers(features):
    x = torch.randn(1, features, requires_grad=True)
    layer = qlayers.QLinear(features, features)
    title = f"QLinear({features}, {features}), batch 1"
    layers = {"qlayers": layer, "qlayers via torch.ops": via_torch_ops(layer), "dense": nn.Linear(features, features)}
    return title, x, layers, "dense"


def conv_layers(_features):
    x = torch.randn(1, 4, 64, 96, requires_grad=True)
    layer = qlayers.QConv2d(4, 32, 3, padding=1)
    plain = qlayers.QConv2d(4, 32, 3, padding=1, memory_efficient=False)
    plain.load_state_dict(layer.state_dict())
    r, i, j, k = (p.detach() for p in (layer.r_weight, layer.i_weight, layer.j_weight, layer.k_weight))
    kernel = torch.ops.qlayers.hamilton_expand(r, -i, -j, -k).requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    title = "QConv2d(4, 32, 3, padding=1), one 4 x 64 x 96 image"
    return (
        title,
        x,
        {
            "qlayers": layer,
            "qlayers via torch.ops": via_torch_ops(layer),
            "plain autograd": plain,
            "dense": lambda x: F.conv2d(x, kernel, bias, padding=1),
        },
        "dense",
    )


class CoreQnnAutoencoder(nn.Module):
    """core_qnn's QCAE as its users write it: its four layers (e1, e2, d5, d6) and Hardtanh, each
    layer core_qnn's class from qlayers.compat.core_qnn (qlayers' memory-efficient convolution
    behind core_qnn's signatures), or, with ``plain=True``, qlayers' plain-autograd modules under the
    same names (core_qnn's formulation: the real kernel rebuilt by autograd each call)."""

    def __init__(self, plain=False):
        super().__init__()
        self.act = nn.Hardtanh()
        down = {"kernel_size": 3, "stride": 2, "padding": 1}
        up = {**down, "output_padding": 1}
        if plain:
            conv = partial(qlayers.QConv2d, memory_efficient=False)
            transposed = partial(qlayers.QConvTranspose2d, memory_efficient=False)
        else:
            conv, transposed = core_qnn.QuaternionConv, core_qnn.QuaternionTransposeConv
        self.e1, self.e2 = conv(4, 32, **down), conv(32, 40, **down)
        self.d5, self.d6 = transposed(40, 32, **up), transposed(32, 4, **up)

    def forward(self, x):
        for layer in (self.e1, self.e2, self.d5):
            x = self.act(layer(x))
        return self.act(self.d6(x))


def autoencoder_models(_features):
    x = torch.randn(1, 4, 64, 96, requires_grad=True)
    model = CoreQnnAutoencoder()
    plain = CoreQnnAutoencoder(plain=True)
    plain.load_state_dict(model.state_dict())
    title = "core_qnn's convolutional autoencoder (4 -> 32 -> 40 -> 32 -> 4), one 4 x 64 x 96 image"
    return title, x, {"qlayers": model, "plain autograd": plain}, "plain autograd"


def median_ratio(times, reference_times):
    """The median over the rounds of one round's time over the reference's in the same round."""
    return statistics.median(t / r for t, r in zip(times, reference_times))


LAYERS = {"linear": linear_layers, "conv": conv_layers, "autoencoder": autoencoder_models}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=sorted(LAYERS), default="linear")
    parser.add_argument("--features", type=int, default=64, help="linear: in and out features")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per layer and phase, all rounds")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    title, x, layers, reference = LAYERS[args.layer](args.features)
    phases = {
        "forward": {name: (lambda layer=layer: layer(x)) for name, layer in layers.items()},
        "step": {name: (lambda layer=layer: layer(x).sum().backward()) for name, layer in layers.items()},
    }
    times = {phase: interleaved_us(fns, args.threads, args.min_run_time, args.rounds) for phase, fns in phases.items()}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds, {title}")
    print("| | forward us | forward + backward us |")
    print("|---|---:|---:|")
    for name in layers:
        forward, step = (statistics.median(times[phase][name]) for phase in phases)
        print(f"| {name} | {forward:.1f} | {step:.1f} |")
    for name in layers:
        if name != reference:
            forward, step = (median_ratio(times[phase][name], times[phase][reference]) for phase in phases)
            print(f"| {name} / {reference} | {forward:.2f} | {step:.2f} |")


if __name__ == "__main__":
    main()
