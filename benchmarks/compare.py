"""qlayers side by side with the other ways to write a quaternion layer, on this machine.

    python benchmarks/compare.py [--quick] [--device cpu|cuda] [--workloads NAME ...] [--budget SECONDS]
                                 [--json PATH] [--plot PATH] [--markdown PATH]
    python benchmarks/compare.py --from-json PATH [--plot PATH] [--markdown PATH]   (a saved run, redrawn)

For every workload and implementation, in one process: retained bytes, peak memory and time, as
benchmarks/measure.py defines them.

Then the kernels alone: hamilton_expand and hamilton_reduce, each beside the torch.cat version that
plain autograd runs, their bandwidth (bytes read + written per second) against a clone of the
(4n, 4m) matrix they write or read. Then two speed grids, forward + backward against the dense
layer: one QLinear by batch and features (each formulation beside "auto"; also its forward alone,
under torch.no_grad()), and one 3 x 3 QConv2d by channels.

--workloads picks what is measured, in the order given: a workload by its key (small, large, mlp,
recurrence, cnn, pointwise, qlstm, qrnn, qligru), a section (kernels, grid, conv-grid), "recurrent"
(qlstm qrnn qligru: the lecture's QLSTM memory question and its kin) or "all" (the default: every
workload, then the sections), each once: `--workloads recurrent all` measures the recurrent layers
first, then the rest. --json and --markdown are rewritten whole after every measurement, atomically,
so a run cut short leaves a valid file of what it measured (benchmarks/incremental.py). --budget
SECONDS stops before the first measurement that would not fit (counted from the first measurement,
with the unit's last measurement as the estimate), lists what it skipped, writes everything, the
plot included, and exits 0; SIGTERM (`timeout`) writes what was measured and exits 124.

Implementations: qlayers (memory-efficient), autograd (plain, as the lecture writes it),
anchor-custom (the best-known libraries' custom backward, benchmarks/baselines.py), checkpoint
(plain under torch.utils.checkpoint), compiled (plain under torch.compile), dense (torch.nn.Linear
of the same real size: the speed floor).

This file is the command line; what is measured is benchmarks/workloads.py, how it is measured
benchmarks/measure.py (torch.utils.benchmark, the benchmarks' one timing harness), and the tables,
the plot and the JSON benchmarks/report.py.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import incremental  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402

import qlayers  # noqa: E402


def run(options, parser, save=lambda result: None):
    """Measure on this machine: the header, the records, the kernels and the speed grids, calling
    save(result) after each measurement (incremental.execute: --budget, SIGTERM)."""
    size = options.size or ("quick" if options.quick else "full")
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    min_run_time = {"full": 1.0, "quick": 0.3, "tiny": 0.01}[size]
    units = workloads.plan(options.workloads)
    result = {
        "device": measure.machine(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "qlayers": qlayers.__version__,
        "size": size,
        "workloads": units,
        **{key: [] for key, _ in measure.RESULT_LISTS},
    }
    # Gradients that fade through a long untrained recurrence turn subnormal, and x86 arithmetic
    # on subnormals is slow (seen here: a 16x512x512 GEMM took 0.7 ms instead of 0.03 ms), which
    # would time the CPU's slow path, not the layers.
    torch.set_flush_denormal(True)

    from tqdm import tqdm

    todo = measure.tasks(units, options.impls, size, device, min_run_time)
    try:
        with tqdm(total=len(todo), desc="compare", unit="run", file=sys.stderr) as bar:
            incremental.execute(todo, result, incremental.Budget(options.budget), save, bar)
    finally:
        torch.set_flush_denormal(False)  # torch's default, for whoever called main()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads: under 3 minutes on a 2-core CPU")
    parser.add_argument(
        "--size", choices=sorted(workloads.SIZES), help="workload sizes (default: full, or quick with --quick)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--impls", nargs="+", choices=list(workloads.IMPLEMENTATIONS), default=list(workloads.IMPLEMENTATIONS)
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        type=str.lower,  # QLSTM or qlstm
        choices=workloads.WORKLOAD_CHOICES,
        default=["all"],
        metavar="NAME",
        help="what to measure, in this order, each once: workloads "
        + ", ".join(workloads.WORKLOAD_KEYS)
        + "; sections "
        + ", ".join(workloads.SECTIONS)
        + "; recurrent (qlstm qrnn qligru); all (default: every workload, then the sections). "
        "'recurrent all' measures the recurrent layers first",
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="start no measurement past this many seconds from the first (with the last one of its workload as "
        "the estimate of its own); list what was skipped, write everything, exit 0",
    )
    parser.add_argument(
        "--from-json", metavar="PATH", help="measure nothing: report the run a --json file holds (redraw its plot)"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write the records as JSON (rewritten after every measurement, atomically)"
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of memory, time and qlayers' ratios")
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        help="write the table, with machine and versions, as Markdown (rewritten after every measurement)",
    )
    options = parser.parse_args(argv)
    incremental.make_folders(options.json, options.plot, options.markdown)
    if options.from_json:
        result = report.load(options.from_json)
    else:
        result = run(options, parser, lambda so_far: report.write_outputs(so_far, options))
    header, lines = report.header_and_lines(result)
    print(header)
    print("\n".join(lines))
    report.write_outputs(result, options, plot_too=True)
    status = incremental.exit_status(result)
    if status:
        sys.exit(status)
    return result["records"]


if __name__ == "__main__":
    main()
