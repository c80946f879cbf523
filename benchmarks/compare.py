"""qlayers against plain autograd: bytes kept for backward and time of a training step.

    python benchmarks/compare.py [--quick] [--device cpu|cuda]

Bytes kept are counted with saved-tensor hooks (deterministic; parameters left out). Times are
medians of forward + backward from torch.utils.benchmark, with all threads.
"""

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.utils.benchmark as benchmark
from torch import nn

import qlayers
from qlayers.memory import SavedTensorBytes

IMPLEMENTATIONS = {
    "qlayers": dict(memory_efficient=True),
    "autograd": dict(memory_efficient=False),
}


@dataclass
class Workload:
    name: str
    build: Callable[[dict, torch.device], nn.Module]
    make_input: Callable[[torch.device], torch.Tensor]


class Recurrence(nn.Module):
    """One QLinear applied at every step: h = tanh(q(h) + x_t)."""

    def __init__(self, hidden, **layer_args):
        super().__init__()
        self.cell = qlayers.QLinear(hidden, hidden, **layer_args)

    def forward(self, xs):
        h = torch.zeros_like(xs[0])
        for x in xs:
            h = torch.tanh(self.cell(h) + x)
        return h


def workloads(quick):
    features = 1024 if quick else 2048
    steps, hidden = (25, 256) if quick else (100, 512)
    return [
        Workload(
            f"linear batch 8 x {features}",
            lambda args, device: qlayers.QLinear(features, features, **args, device=device),
            lambda device: torch.randn(8, features, device=device, requires_grad=True),
        ),
        Workload(
            f"recurrence {steps} steps, hidden {hidden}, batch 16",
            lambda args, device: Recurrence(hidden, **args).to(device),
            lambda device: torch.randn(steps, 16, hidden, device=device),
        ),
    ]


def step(model, x):
    model(x).sum().backward()


def measure(workload, args, device):
    model = workload.build(args, device)
    x = workload.make_input(device)
    with SavedTensorBytes(exclude=model.parameters()) as saved:
        out = model(x)
    out.sum().backward()
    timer = benchmark.Timer(
        "step(model, x); sync()",
        globals=dict(step=step, model=model, x=x, sync=torch.cuda.synchronize if device.type == "cuda" else lambda: None),
        num_threads=torch.get_num_threads(),
    )
    return saved.total, timer.blocked_autorange(min_run_time=0.5 if device.type == "cpu" else 1.0).median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller workloads, a minute on a laptop CPU")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    options = parser.parse_args(argv)
    device = torch.device(options.device)
    print(f"qlayers {qlayers.__version__}, torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    header = f"{'workload':<40} {'impl':<9} {'kept (MiB)':>11} {'time (ms)':>10} {'kept / autograd':>16} {'time / autograd':>16}"
    print(header)
    print("-" * len(header))
    for workload in workloads(options.quick):
        results = {impl: measure(workload, args, device) for impl, args in IMPLEMENTATIONS.items()}
        base_bytes, base_time = results["autograd"]
        for impl, (kept, seconds) in results.items():
            print(
                f"{workload.name:<40} {impl:<9} {kept / 2**20:>11.2f} {seconds * 1e3:>10.3f} "
                f"{kept / base_bytes:>16.3f} {seconds / base_time:>16.3f}"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
