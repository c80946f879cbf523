"""Which formulation of a linear layer is fastest for each product, on this machine.

    python benchmarks/choose_linear.py [--dtype float32] [--rows 1 8 64 ...] [--features 64 512 ...]

Times each of a layer's three products (forward, input gradient, component gradients) alone, by
every formulation, on the same operands, with torch.utils.benchmark (all threads), and prints the
time of each with the winner. The thresholds of algorithm="auto" (csrc/layers/linear_choice.cpp)
come from these tables.
"""

import argparse

import torch
import torch.utils.benchmark as benchmark

import qlayers  # noqa: F401  (loads the operators)

FORMULATIONS = ("hamilton", "components", "eight", "direct")
MASKS = {
    "grad_input": [True, False, False, False, False, False],
    "grad_components": [False, True, True, True, True, False],
}


def product_call(phase, formulation, x, components, grad):
    if phase == "forward":
        return lambda: torch.ops.qlayers.quaternion_linear(x, *components, None, None, formulation)
    mask = MASKS[phase]
    return lambda: torch.ops.qlayers.quaternion_linear_backward(grad, x, *components, None, formulation, mask)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256, 512, 4096])
    parser.add_argument("--features", type=int, nargs="+", default=[64, 256, 512, 1024, 2048])
    parser.add_argument("--min-run-time", type=float, default=0.2)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; times in ms")
    print("| phase | rows | features | " + " | ".join(FORMULATIONS) + " | fastest |")
    print("|---|---:|---:|" + "---:|" * (len(FORMULATIONS) + 1))
    for phase in ("forward", "grad_input", "grad_components"):
        for features in args.features:
            n = features // 4
            components = [torch.randn(n, n, dtype=dtype) for _ in range(4)]
            for rows in args.rows:
                x = torch.randn(rows, features, dtype=dtype)
                grad = torch.randn(rows, features, dtype=dtype)
                times = {}
                with torch.no_grad():
                    for formulation in FORMULATIONS:
                        call = product_call(phase, formulation, x, components, grad)
                        call()
                        timer = benchmark.Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
                        times[formulation] = timer.blocked_autorange(min_run_time=args.min_run_time).median * 1e3
                fastest = min(times, key=times.get)
                cells = " | ".join(f"{times[f]:.4f}" for f in FORMULATIONS)
                print(f"| {phase} | {rows} | {features} | {cells} | {fastest} |", flush=True)


if __name__ == "__main__":
    main()
