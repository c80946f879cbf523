"""What benchmarks/compare.py reports: the Markdown tables of a run (whole or cut short), the lecture's
claim restated, the plot, and the JSON written and read back (--json, --from-json).
"""

import json
import math
import os
from dataclasses import asdict
from typing import List

import incremental
from measure import RESULT_LISTS, Record


def table(records: List[Record]) -> List[str]:
    """Markdown rows: absolute figures, then ratios to autograd and to dense in the same run."""
    by_key = {(r.workload, r.impl): r for r in records}
    lines = [
        "| workload | impl | retained MiB | peak MiB | time ms | retained / autograd | peak / autograd "
        "| time / autograd | time / dense |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(value, base):
        return f"{value / base:.2f}" if base else "-"

    for r in records:
        auto = by_key.get((r.workload, "autograd"))
        dense = by_key.get((r.workload, "dense"))
        lines.append(
            f"| {r.workload} | {r.impl} | {r.retained_bytes / 2**20:.2f} | {r.peak_bytes / 2**20:.2f} "
            f"| {r.time_ms:.3f} | "
            f"{ratio(r.retained_bytes, auto.retained_bytes) if auto else '-'} | "
            f"{ratio(r.peak_bytes, auto.peak_bytes) if auto else '-'} | "
            f"{ratio(r.time_ms, auto.time_ms) if auto else '-'} | "
            f"{ratio(r.time_ms, dense.time_ms) if dense else '-'} |"
        )
    return lines


def inference_table(records: List[Record]) -> List[str]:
    """Markdown rows: the torch.no_grad() forward of the workloads that time it, against dense."""
    by_key = {(r.workload, r.impl): r for r in records}
    lines = ["| workload | impl | inference ms | inference / dense |", "|---|---|---:|---:|"]
    for r in records:
        if r.inference_ms is None:
            continue
        dense = by_key.get((r.workload, "dense"))
        versus = f"{r.inference_ms / dense.inference_ms:.2f}" if dense and dense.inference_ms else "-"
        lines.append(f"| {r.workload} | {r.impl} | {r.inference_ms:.3f} | {versus} |")
    return lines


def lecture_claim(records: List[Record]) -> List[str]:
    """The lecture's claim, restated for the QLSTM workload: peak memory plain / efficient, with time."""
    by_key = {(r.workload, r.impl): r for r in records}
    lines = []
    for workload in dict.fromkeys(r.workload for r in records):
        plain, ours = by_key.get((workload, "autograd")), by_key.get((workload, "qlayers"))
        if workload.startswith("QLSTM") and plain and ours and ours.peak_bytes:
            lines.append(
                f"Lecture's claim, {workload}: "
                f"peak memory plain / qlayers = {plain.peak_bytes / ours.peak_bytes:.2f}x, "
                f"time plain / qlayers = {plain.time_ms / ours.time_ms:.2f}x "
                "(the lecture: 24 GB -> 6-8 GB, i.e. 3-4x less memory, at 20% slower training)."
            )
    return lines


def kernel_table(records):
    lines = [
        "| op | components | dtype | time ms | GB/s | copy GB/s | fraction of copy |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r.op} | {r.shape} | {r.dtype} | {r.time_ms:.3f} | {r.gb_per_s:.1f} | {r.copy_gb_per_s:.1f} "
            f"| {r.fraction_of_copy:.2f} |"
        )
    return lines


def grid_table(records, field="time_ms"):
    """The speed grid's times in `field` (time_ms: forward + backward; forward_ms: forward alone)."""
    by_key = {(r.batch, r.features, r.impl): getattr(r, field) for r in records if getattr(r, field) is not None}
    impls = list(dict.fromkeys(r.impl for r in records))
    lines = [
        "| batch | features | "
        + " | ".join(f"{impl} ms" for impl in impls)
        + " | qlayers / dense | qlayers / dense-onednn | qlayers / autograd |",
        "|---:|---:|" + "---:|" * (len(impls) + 3),
    ]
    for batch, features in dict.fromkeys((r.batch, r.features) for r in records):
        # A run cut short may lack some of a row's cells: "-" there.
        times = [by_key.get((batch, features, impl)) for impl in impls]
        ours = by_key.get((batch, features, "qlayers"))
        lines.append(
            f"| {batch} | {features} | "
            + " | ".join("-" if t is None else f"{t:.3f}" for t in times)
            + f" | {_over(ours, by_key.get((batch, features, 'dense')))}"
            + f" | {_over(ours, by_key.get((batch, features, 'dense-onednn')))}"
            + f" | {_over(ours, by_key.get((batch, features, 'autograd')))} |"
        )
    return lines


def grid_forward_table(records):
    """The speed grid's forward times; none for a run that did not measure them."""
    return grid_table(records, "forward_ms") if any(r.forward_ms is not None for r in records) else []


def _over(value, base):
    return "-" if value is None or not base else f"{value / base:.2f}"


def conv_grid_table(records):
    by_key = {(r.channels, r.impl): r.time_ms for r in records}
    impls = list(dict.fromkeys(r.impl for r in records))
    lines = [
        "| channels | batch | image | " + " | ".join(f"{impl} ms" for impl in impls) + " | qlayers / dense |",
        "|---:|---:|---:|" + "---:|" * (len(impls) + 1),
    ]
    for r in records:
        if r.impl != impls[0]:
            continue
        times = [by_key.get((r.channels, impl)) for impl in impls]  # "-" where a run cut short lacks one
        ratio = _over(by_key.get((r.channels, "qlayers")), by_key.get((r.channels, "dense")))
        cells = " | ".join("-" if t is None else f"{t:.2f}" for t in times)
        lines.append(f"| {r.channels} | {r.batch} | {r.size}x{r.size} | {cells} | {ratio} |")
    return lines


def header_and_lines(result):
    """The header and the Markdown lines of a run, whole or cut short (sections with nothing left out)."""
    records, size = result["records"], result["size"]
    header = (
        f"qlayers {result['qlayers']}, torch {result['torch']}, {result['device_type']}: {result['device']}, "
        f"sizes {size}"
    )
    lines = []
    if records:
        lines += (
            table(records)
            + ["", "Inference (torch.no_grad() forward) of the recurrent workloads:", ""]
            + inference_table(records)
            + [""]
            + lecture_claim(records)
        )
    for key, title, rows in (
        ("kernels", "Kernels against a clone of the (4n, 4m) matrix, bandwidth = bytes read + written:", kernel_table),
        ("grid", "One layer, forward + backward, by batch and features (qlayers = algorithm 'auto'):", grid_table),
        ("grid", "The same layers, forward alone (torch.no_grad()):", grid_forward_table),
        (
            "conv_grid",
            "One 3 x 3 convolution, forward + backward, by channels (qlayers = the 'auto' formulation):",
            conv_grid_table,
        ),
    ):
        table_lines = rows(result[key]) if result[key] else []
        if table_lines:
            lines += ["", title, ""] + table_lines
    while lines and not lines[0]:
        lines.pop(0)
    note = incremental.status_note(result)
    return header, ([note] + ([""] if lines else []) if note else []) + lines


def short_name(workload: str) -> str:
    """A workload's label in the picture: its name up to the colon ("QLSTM", "1x1 convs")."""
    return workload.split(":")[0]


# The headline ratios: qlayers' figure over another implementation's, in the same run.
HEADLINES = [
    ("retained_bytes", "autograd", "retained\n÷ autograd"),
    ("peak_bytes", "autograd", "peak\n÷ autograd"),
    ("time_ms", "autograd", "time\n÷ autograd"),
    ("time_ms", "dense", "time\n÷ dense"),
]


def headline(by_key, workload, field, other) -> float:
    """qlayers' figure over another implementation's for one workload; NaN where one is missing."""
    ours, theirs = by_key.get((workload, "qlayers")), by_key.get((workload, other))
    if ours is None or theirs is None or not getattr(theirs, field):
        return math.nan
    return getattr(ours, field) / getattr(theirs, field)


def ratio_label(value: float) -> str:
    """Two decimals, or two significant digits under 0.1 (where two decimals would read 0.00)."""
    if math.isnan(value):
        return "–"
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.2g}×"


def plot(records: List[Record], path, title):
    """Memory and time per workload and implementation, and qlayers' headline ratios, as a PNG.

    Horizontal bars with the workloads' short names down the side, so that no label runs into
    another; the full names, with their sizes, are the footnote.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import FuncFormatter, NullFormatter

    names = list(dict.fromkeys(r.workload for r in records))
    impls = list(dict.fromkeys(r.impl for r in records))
    by_key = {(r.workload, r.impl): r for r in records}
    labels = [short_name(w) for w in names]
    metrics = [
        ("retained_bytes", "retained for backward (MiB)", 2**-20),
        ("peak_bytes", "peak of a training step (MiB)", 2**-20),
        ("time_ms", "forward + backward (ms)", 1.0),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    height = 0.8 / len(impls)
    colours = {impl: f"C{index}" for index, impl in enumerate(impls)}
    for ax, (field, label, scale) in zip(axes.flat, metrics):
        drawn = []
        for index, impl in enumerate(impls):
            # Log axes: a zero (nothing retained) has no bar.
            rows = [
                (w, getattr(by_key[(name, impl)], field) * scale)
                for w, name in enumerate(names)
                if (name, impl) in by_key and getattr(by_key[(name, impl)], field) > 0
            ]
            offset = (index - (len(impls) - 1) / 2) * height
            ax.barh([w + offset for w, _ in rows], [v for _, v in rows], height, color=colours[impl], label=impl)
            drawn += [v for _, v in rows]
        ax.set_xscale("log")
        if drawn:  # whole decades, labelled 0.1, 1, 10: never the crowded in-between labels
            low, high = (math.floor(math.log10(min(drawn))), math.ceil(math.log10(max(drawn))))
            ax.set_xlim(10.0**low, 10.0 ** max(high, low + 1))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    ratios = axes.flat[3]
    table = [[headline(by_key, name, field, other) for field, other, _ in HEADLINES] for name in names]
    # Colour by log ratio: green where qlayers keeps less or runs faster, red where it does not.
    logs = [[math.log10(max(value, 1e-3)) for value in row] for row in table]
    ratios.imshow(logs, cmap="RdYlGn_r", norm=TwoSlopeNorm(0.0, -1.5, 1.5), aspect="auto")
    for w, row in enumerate(table):
        for c, value in enumerate(row):
            dark = abs(logs[w][c]) > 1  # white on the darkest colours
            ratios.text(c, w, ratio_label(value), ha="center", va="center", fontsize=10, color="w" if dark else "k")
    ratios.set_xticks(range(len(HEADLINES)), [text for _, _, text in HEADLINES], fontsize=9)
    ratios.set_title("qlayers ÷ autograd and ÷ dense (under 1: less memory, faster)", fontsize=10)
    for ax in axes.flat:
        ax.set_yticks(range(len(names)), labels, fontsize=10)
        ax.set_ylim(len(names) - 0.5, -0.5)  # first workload on top
    fig.legend(
        *axes.flat[0].get_legend_handles_labels(), loc="upper center", ncol=len(impls), bbox_to_anchor=(0.5, 0.955)
    )
    fig.suptitle(title, fontsize=11)
    footnote = names[:1]
    for name in names[1:]:  # lines break between workloads, not inside one
        if len(footnote[-1]) + len(name) > 160:
            footnote.append(name)
        else:
            footnote[-1] += f" · {name}"
    fig.text(0.5, 0.01, "\n".join(footnote), ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(path):
    """A run written by --json, with its records as the dataclasses run() gives."""
    with open(path) as f:
        result = json.load(f)
    for key, kind in RESULT_LISTS:
        result[key] = [kind(**entry) for entry in result.get(key, [])]  # runs before a list existed lack it
    return result


def serialised(result) -> dict:
    lists = [key for key, _ in RESULT_LISTS]
    found = {key: value for key, value in result.items() if key not in lists}
    for key in lists:
        found[key] = [asdict(entry) for entry in result[key]]
    return found


def write_outputs(result, options, plot_too=False):
    """--json and --markdown, each rewritten whole and atomically; the plot too when asked (not
    after every measurement: it takes a second or two)."""
    header, lines = header_and_lines(result)
    if options.json:
        incremental.write_atomically(options.json, json.dumps(serialised(result), indent=1))
    if options.markdown:
        incremental.write_atomically(
            options.markdown,
            f"# benchmarks/compare.py, sizes {result['size']}\n\n{header}\n\n" + "\n".join(lines) + "\n",
        )
    if plot_too and options.plot and result["records"]:
        folder, name = os.path.split(options.plot)
        temporary = os.path.join(folder, f".{os.getpid()}.{name}")  # the extension stays: savefig reads it
        try:
            plot(result["records"], temporary, header)
            os.replace(temporary, options.plot)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
