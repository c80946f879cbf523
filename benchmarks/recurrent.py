"""The recurrent workloads of compare.py alone (QLSTM, QRNN, QLiGRU against torch's own layers and
the plain path): retained and peak memory, training and inference time, in one run.

    python benchmarks/recurrent.py [--size full|quick|tiny] [--markdown PATH]

compare.py runs the same workloads among all the others, with its grids (about an hour on 2 cores);
this is the few minutes' run for the recurrent engine.
"""

import argparse
import sys

import compare
import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(compare.SIZES), default="full")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables, with machine and versions, as Markdown")
    options = parser.parse_args(argv)
    device = torch.device(options.device)
    min_run_time = {"full": 1.0, "quick": 0.3, "tiny": 0.01}[options.size]
    torch.set_flush_denormal(True)  # as compare.py: time the layers, not subnormal arithmetic
    try:
        records = [
            compare.measure(workload, impl, device, min_run_time)
            for workload in compare.workloads(options.size, device.type)
            if workload.inference
            for impl in compare.IMPLEMENTATIONS
            if workload.factory(impl) is not None
        ]
    finally:
        torch.set_flush_denormal(False)
    header = f"torch {torch.__version__}, {device.type}: {compare.machine(device)}, sizes {options.size}"
    lines = compare.table(records) + ["", *compare.inference_table(records), "", *compare.lecture_claim(records)]
    print(header)
    print("\n".join(lines))
    if options.markdown:
        with open(options.markdown, "w") as f:
            f.write(f"# benchmarks/recurrent.py, sizes {options.size}\n\n{header}\n\n" + "\n".join(lines) + "\n")
    return records


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
