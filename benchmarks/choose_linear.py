"""Which formulation of a linear layer is fastest for each product, on this machine.

    python benchmarks/choose_linear.py [--dtype float32] [--device cpu|cuda] [--rows 1 8 64 ...]
                                       [--features 64 512 ...] [--json PATH] [--markdown PATH]
                                       [--budget SECONDS]

Times each of a layer's three products (forward, input gradient, component gradients) alone, by
every formulation, on the same operands, with torch.utils.benchmark (all threads; its timer
synchronises CUDA), and prints the time of each with the winner. The thresholds of algorithm="auto"
(csrc/layers/linear_choice.cpp) come from these tables. On CUDA there is no direct formulation (the
op runs it as components), so three are timed; linear_choice.cpp takes hamilton for every product
off the CPU until `--device cuda` output measures otherwise: this script's summary is what a CUDA
rule is to be set from.

The summary, per product: for each features value (n = features / 4 input quaternions, the n of
linear_choice.cpp, with m = n here), the formulations that won in turn as rows grow, and the one that
won every larger row count measured, from which rows (rows / n beside it); then the extremes of the
cells each formulation won, beside the constants they inform: direct's largest rows x n
(kDirectMaxRowsTimesFeatures), components' largest rows / n and smallest n
(kComponentsMaxRowsPerFeature, kComponentsMinFeatures), eight's smallest rows, n and rows / n
(kEightMinRows, kEightMinFeatures, kEightMinRowsPerFeature), and the smallest rows from which
hamilton won every larger row count (kDenseGemmMinRows, which also asks rows >= n). Extremes are
what was measured, strays included: a cell won by under 5% (margin, the runner-up's time over the
winner's, below 1.05) is a tie, and the count of those is printed.

--json PATH is rewritten whole after every cell (atomically: a valid file at every moment): the run's
machine and options, "cells" (phase, rows, features, n, times_ms per formulation, fastest, margin)
and "summary" (the above, of the cells so far); --markdown PATH, the table and the summary, likewise.
--budget SECONDS starts no cell past that many
seconds from the first (the phase's last cell as the estimate), lists the cells it skipped in the
JSON, and exits 0; SIGTERM writes what was measured and exits 124 (benchmarks/incremental.py).
"""

import argparse
import json
import logging
import os
import sys

import torch

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns about the CUDA toolkit when a
# CUDA build of torch sees no GPU; no extension is built here (as in measure.py).
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

import torch.utils.benchmark as benchmark  # noqa: E402

import qlayers  # noqa: E402  (loads the operators)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import incremental  # noqa: E402
import measure  # noqa: E402

FORMULATIONS = ("hamilton", "components", "eight", "direct")
PHASES = ("forward", "grad_input", "grad_components")
MASKS = {
    "grad_input": [True, False, False, False, False, False],
    "grad_components": [False, True, True, True, True, False],
}
# The summary's words for the phases (its lines are prose, not the table's rows).
PHASE_WORDS = {"forward": "forward", "grad_input": "input gradient", "grad_components": "component gradients"}
TIE = 1.05  # a win by less than 5% is a tie


def product_call(phase, formulation, x, components, grad):
    if phase == "forward":
        return lambda: torch.ops.qlayers.quaternion_linear(x, *components, None, None, formulation)
    mask = MASKS[phase]
    return lambda: torch.ops.qlayers._quaternion_linear_backward(grad, x, *components, None, formulation, mask)


def formulations_on(device):
    # Off the CPU the op runs "direct" as components: timing it twice would say nothing.
    return FORMULATIONS if device.type == "cpu" else tuple(f for f in FORMULATIONS if f != "direct")


def measure_cell(phase, rows, features, dtype, device, min_run_time):
    """Every formulation's time for one product at one size: a cell of the table."""
    n = features // 4
    components = [torch.randn(n, n, dtype=dtype, device=device) for _ in range(4)]
    x = torch.randn(rows, features, dtype=dtype, device=device)
    grad = torch.randn(rows, features, dtype=dtype, device=device)
    times = {}
    with torch.no_grad():
        for formulation in formulations_on(device):
            call = product_call(phase, formulation, x, components, grad)
            call()
            timer = benchmark.Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
            times[formulation] = timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
    ranked = sorted(times, key=times.get)
    margin = times[ranked[1]] / times[ranked[0]] if len(ranked) > 1 and times[ranked[0]] > 0 else None
    cell = dict(phase=phase, rows=rows, features=features, n=n, times_ms=times, fastest=ranked[0], margin=margin)
    print(row(cell, formulations_on(device)), flush=True)
    return cell


def row(cell, formulations):
    cells = " | ".join(f"{cell['times_ms'][f]:.4f}" for f in formulations)
    return f"| {cell['phase']} | {cell['rows']} | {cell['features']} | {cells} | {cell['fastest']} |"


def runs(cells):
    """[(formulation, first rows, last rows)]: the winners in turn as rows grow (cells of one features)."""
    found = []
    for cell in sorted(cells, key=lambda c: c["rows"]):
        if found and found[-1][0] == cell["fastest"]:
            found[-1][2] = cell["rows"]
        else:
            found.append([cell["fastest"], cell["rows"], cell["rows"]])
    return found


def _extreme(pick, values):
    values = list(values)
    return pick(values) if values else None


def summary(cells):
    """Per phase: each features value's runs of winners, and the extremes of each formulation's wins."""
    found = {}
    for phase in PHASES:
        mine = [c for c in cells if c["phase"] == phase]
        if not mine:
            continue
        by_features = []
        for features in sorted({c["features"] for c in mine}):
            of = [c for c in mine if c["features"] == features]
            n = of[0]["n"]
            turns = runs(of)
            last, first, _ = turns[-1]
            by_features.append(
                dict(
                    features=features,
                    n=n,
                    runs=[dict(formulation=f, rows=[a, b]) for f, a, b in turns],
                    wins_every_larger=dict(formulation=last, from_rows=first, rows_per_n=first / n),
                )
            )

        def won(formulation, mine=mine):
            return [c for c in mine if c["fastest"] == formulation]

        hamilton_from = [
            f["wins_every_larger"] for f in by_features if f["wins_every_larger"]["formulation"] == "hamilton"
        ]
        observed = dict(
            direct_max_rows_times_n=_extreme(max, (c["rows"] * c["n"] for c in won("direct"))),
            components_max_rows_per_n=_extreme(max, (c["rows"] / c["n"] for c in won("components"))),
            components_min_n=_extreme(min, (c["n"] for c in won("components"))),
            eight_min_rows=_extreme(min, (c["rows"] for c in won("eight"))),
            eight_min_n=_extreme(min, (c["n"] for c in won("eight"))),
            eight_min_rows_per_n=_extreme(min, (c["rows"] / c["n"] for c in won("eight"))),
            hamilton_wins_every_larger_from_rows=_extreme(min, (h["from_rows"] for h in hamilton_from)),
        )
        ties = sum(c["margin"] is not None and c["margin"] < TIE for c in mine)
        found[phase] = dict(by_features=by_features, observed=observed, cells=len(mine), ties=ties)
    return found


CONSTANTS = {
    "direct_max_rows_times_n": "kDirectMaxRowsTimesFeatures",
    "components_max_rows_per_n": "kComponentsMaxRowsPerFeature",
    "components_min_n": "kComponentsMinFeatures",
    "eight_min_rows": "kEightMinRows",
    "eight_min_n": "kEightMinFeatures",
    "eight_min_rows_per_n": "kEightMinRowsPerFeature",
    "hamilton_wins_every_larger_from_rows": "kDenseGemmMinRows",
}


def summary_lines(found):
    lines = []
    for phase, part in found.items():
        lines += [
            "",
            f"{PHASE_WORDS[phase]}: winners as rows grow (n = features / 4), and the one that won all larger rows",
            "",
            "| features | n | winners by rows | wins every larger row count |",
            "|---:|---:|---|---|",
        ]
        for f in part["by_features"]:
            turns = " · ".join(
                f"{r['formulation']} {r['rows'][0]}" + (f"-{r['rows'][1]}" if r["rows"][1] != r["rows"][0] else "")
                for r in f["runs"]
            )
            every = f["wins_every_larger"]
            lines.append(
                f"| {f['features']} | {f['n']} | {turns} | {every['formulation']} from {every['from_rows']} rows "
                f"({every['rows_per_n']:.3g} n) |"
            )
        observed = "; ".join(
            f"{name} = {'-' if value is None else f'{value:.4g}'} ({CONSTANTS[name]})"
            for name, value in part["observed"].items()
        )
        lines += [
            "",
            f"{PHASE_WORDS[phase]}, observed: {observed}.",
            f"{part['ties']} of {part['cells']} cells won by under 5%.",
        ]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256, 512, 4096])
    parser.add_argument("--features", type=int, nargs="+", default=[64, 256, 512, 1024, 2048])
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--json", metavar="PATH", help="write the cells and the summary (after every cell)")
    parser.add_argument("--markdown", metavar="PATH", help="write the table and the summary (after every cell)")
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="start no cell past this many seconds")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    dtype = getattr(torch, args.dtype)
    machine = measure.machine(device)
    formulations = formulations_on(device)
    result = dict(
        torch=torch.__version__,
        qlayers=qlayers.__version__,
        device_type=device.type,
        device=machine,
        dtype=args.dtype,
        rows=args.rows,
        features=args.features,
        min_run_time=args.min_run_time,
        formulations=list(formulations),
        cells=[],
    )
    incremental.make_folders(args.json, args.markdown)
    header = [
        f"torch {torch.__version__}, {device.type}: {machine}, {args.dtype}; times in ms",
        "",
        "| phase | rows | features | " + " | ".join(formulations) + " | fastest |",
        "|---|---:|---:|" + "---:|" * (len(formulations) + 1),
    ]

    def save(so_far):
        so_far["summary"] = summary(so_far["cells"])
        if args.json:
            incremental.write_atomically(args.json, json.dumps(so_far, indent=1))
        if args.markdown:
            note = incremental.status_note(so_far)
            lines = ["# benchmarks/choose_linear.py", "", *([note, ""] if note else []), *header]
            lines += [row(cell, formulations) for cell in so_far["cells"]] + summary_lines(so_far["summary"])
            incremental.write_atomically(args.markdown, "\n".join(lines) + "\n")

    tasks = [
        incremental.Task(
            "cells",
            phase,
            f"{phase}: rows {rows}, features {features}",
            lambda phase=phase, rows=rows, features=features: measure_cell(
                phase, rows, features, dtype, device, args.min_run_time
            ),
        )
        for phase in PHASES
        for features in args.features
        for rows in args.rows
    ]
    print("\n".join(line for line in header if line))
    incremental.execute(tasks, result, incremental.Budget(args.budget), save)
    print("\n".join(summary_lines(result["summary"])))
    note = incremental.status_note(result)
    if note:
        print(note)
    status = incremental.exit_status(result)
    if status:
        sys.exit(status)
    return result


if __name__ == "__main__":
    main()
