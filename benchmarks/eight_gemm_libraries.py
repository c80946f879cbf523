"""The eight-product formulation's GEMMs on each CPU library, against a dense layer's GEMM on each.

    python benchmarks/eight_gemm_libraries.py [--sizes 512x1024 4096x1024 512x2048] [--rounds 12]

For a QLinear(F, F) forward at R rows, times the GEMMs alone, float32 on the CPU, in interleaved
rounds (each round times every variant once; the medians of the rounds' ratios are printed):
- dense mm, dense oneDNN: the (R, F) @ (F, F) product of a dense layer through torch's mm (MKL or
  OpenBLAS) and through oneDNN's linear with its weight reordered once
  (``mkldnn::_reorder_linear_weight`` then ``mkldnn::_linear_pointwise``);
- eight bmm: the eight (R, F/4) @ (F/4, F/4) products as one bmm, as csrc/layers/linear_eight.cpp
  computes them today (in chunks of rows there; here all rows at once);
- eight oneDNN, weights packed: the same eight products through oneDNN's linear, each weight
  reordered once beforehand (the cost a recurrent engine would pay once per sequence);
- eight oneDNN, packed per call: the same, each weight reordered in the call (what one QLinear call
  would pay).
The operand sums and the combination (block_mix) are the same work on either library and are not
timed. The question it answers: how much of half the multiplications oneDNN would realise. Needs a
torch with oneDNN's linear (qlayers._torch_internals.onednn_linear_available()).
"""

import argparse
import statistics
import time

import torch

from qlayers import _torch_internals


def variants(rows, features):
    reorder, linear = _torch_internals.onednn_reorder_linear_weight, _torch_internals.onednn_linear
    n = features // 4
    x, weight = torch.randn(rows, features), torch.randn(features, features)
    packed = reorder(weight.t().contiguous(), rows)
    sums, left = torch.randn(8, rows, n), torch.randn(8, n, n)
    products = torch.empty(8, rows, n)
    packed_left = [reorder(left[t].t().contiguous(), rows) for t in range(8)]

    def eight_packed_per_call():
        for t in range(8):
            linear(sums[t], reorder(left[t].t().contiguous(), rows))

    return {
        "dense mm": lambda: torch.mm(x, weight),
        "dense oneDNN": lambda: linear(x, packed),
        "eight bmm": lambda: torch.bmm(sums, left, out=products),
        "eight oneDNN, weights packed": lambda: [linear(sums[t], packed_left[t]) for t in range(8)],
        "eight oneDNN, packed per call": eight_packed_per_call,
    }


def interleaved_ms(fns, rounds, number):
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - start) / number * 1e3)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "4096x1024", "512x2048", "1024x2048"])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--number", type=int, default=3, help="calls per variant per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not _torch_internals.onednn_linear_available():
        raise SystemExit("eight_gemm_libraries: this torch has no oneDNN")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds, float32, CPU")
    names = None
    for size in args.sizes:
        rows, features = (int(v) for v in size.split("x"))
        times = interleaved_ms(variants(rows, features), args.rounds, args.number)
        if names is None:
            names = list(times)
            print(
                "| rows x features | "
                + " | ".join(f"{name} ms" for name in names)
                + " | "
                + " | ".join(f"{name} / dense oneDNN" for name in names if name != "dense oneDNN")
                + " |"
            )
            print("|---|" + "---:|" * (2 * len(names) - 1))
        base = times["dense oneDNN"]
        medians = [f"{statistics.median(times[name]):.3f}" for name in names]
        ratios = [f"{statistics.median(t / b for t, b in zip(times[name], base)):.2f}"
                  for name in names if name != "dense oneDNN"]  # fmt: skip
        print(f"| {rows} x {features} | " + " | ".join(medians) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
