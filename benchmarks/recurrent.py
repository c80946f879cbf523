"""The recurrent workloads of compare.py alone (QLSTM, QRNN, QLiGRU against torch's own layers and
the plain path): retained and peak memory, training and inference time, in one run.

    python benchmarks/recurrent.py [--size full|quick|tiny] [--device cpu|cuda] [--workloads NAME ...]
                                   [--budget SECONDS] [--json PATH] [--markdown PATH]

compare.py runs the same workloads among all the others, with its grids (about an hour on 2 cores);
this is the few minutes' run for the recurrent engine. --json and --markdown are rewritten whole
after every measurement, atomically; --budget stops before the first measurement that would not
fit (exit 0), SIGTERM after writing what was measured (exit 124), as compare.py's
(benchmarks/incremental.py); the JSON has compare.py's layout, "records" only.
"""

import argparse
import json
import sys
from dataclasses import asdict

import incremental
import measure
import report
import torch
import workloads

import qlayers


def run(argv=None):
    """The run as a dict: compare.py's JSON layout with "records" alone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(workloads.SIZES), default="full")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--workloads",
        nargs="+",
        type=str.lower,  # QLSTM or qlstm
        choices=workloads.GROUPS["recurrent"],
        default=list(workloads.GROUPS["recurrent"]),
        metavar="NAME",
        help="which of qlstm, qrnn, qligru, in this order (default: all three)",
    )
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="start no measurement past this many seconds")
    parser.add_argument("--json", metavar="PATH", help="write the records as JSON (after every measurement)")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables, with machine and versions, as Markdown")
    options = parser.parse_args(argv)
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    min_run_time = {"full": 1.0, "quick": 0.3, "tiny": 0.01}[options.size]
    incremental.make_folders(options.json, options.markdown)
    header = f"torch {torch.__version__}, {device.type}: {measure.machine(device)}, sizes {options.size}"
    result = {
        "device": measure.machine(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "qlayers": qlayers.__version__,
        "size": options.size,
        "workloads": workloads.plan(options.workloads),
        "records": [],
    }

    def lines(so_far):
        records = so_far["records"]
        found = report.table(records) + ["", *report.inference_table(records), "", *report.lecture_claim(records)]
        note = incremental.status_note(so_far)
        return ([note, ""] if note else []) + found

    def save(so_far):
        if options.json:
            serialised = {**so_far, "records": [asdict(r) for r in so_far["records"]]}
            incremental.write_atomically(options.json, json.dumps(serialised, indent=1))
        if options.markdown:
            text = f"# benchmarks/recurrent.py, sizes {options.size}\n\n{header}\n\n" + "\n".join(lines(so_far))
            incremental.write_atomically(options.markdown, text + "\n")

    tasks = measure.tasks(result["workloads"], list(workloads.IMPLEMENTATIONS), options.size, device, min_run_time)
    torch.set_flush_denormal(True)  # as compare.py: time the layers, not subnormal arithmetic
    try:
        incremental.execute(tasks, result, incremental.Budget(options.budget), save)
    finally:
        torch.set_flush_denormal(False)
    print(header)
    print("\n".join(lines(result)))
    return result


def main(argv=None):
    """The records measured (measure.Record), as before --json; exits 124 after SIGTERM."""
    result = run(argv)
    status = incremental.exit_status(result)
    if status:
        sys.exit(status)
    return result["records"]


if __name__ == "__main__":
    result = run()
    status = incremental.exit_status(result)
    sys.exit(status or (0 if result["records"] or result["stopped_for_budget"] else 1))
