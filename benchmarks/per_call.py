"""What a small layer pays per call: QLinear against nn.Linear of the same size, batch 1.

    python benchmarks/per_call.py [--features 64] [--threads 1]

Times forward, and forward + backward (``layer(x).sum().backward()``), of ``QLinear(f, f)`` and
``nn.Linear(f, f)`` on one row with torch.utils.benchmark, and prints the ratios. At this size the
arithmetic is negligible: the times are the per-call cost of the Python module, the dispatcher and
autograd.
"""

import argparse

import torch
import torch.utils.benchmark as benchmark
from torch import nn

import qlayers


def median_us(fn, threads, min_run_time):
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(1, args.features, requires_grad=True)
    f = args.features
    layers = {"qlayers": qlayers.QLinear(f, f), "dense": nn.Linear(f, f)}
    times = {}
    for name, layer in layers.items():
        times[name] = (
            median_us(lambda layer=layer: layer(x), args.threads, args.min_run_time),
            median_us(lambda layer=layer: layer(x).sum().backward(), args.threads, args.min_run_time),
        )
    print(f"torch {torch.__version__}, {args.threads} thread(s), QLinear({args.features}, {args.features}), batch 1")
    print("| | forward us | forward + backward us |")
    print("|---|---:|---:|")
    for name, (forward, step) in times.items():
        print(f"| {name} | {forward:.1f} | {step:.1f} |")
    q, d = times["qlayers"], times["dense"]
    print(f"| qlayers / dense | {q[0] / d[0]:.2f} | {q[1] / d[1]:.2f} |")


if __name__ == "__main__":
    main()
