"""qlayers side by side with the other ways to write a quaternion layer, on this machine.

    python benchmarks/compare.py [--quick] [--device cpu|cuda] [--workloads NAME ...] [--budget SECONDS]
                                 [--json PATH] [--plot PATH] [--markdown PATH]
    python benchmarks/compare.py --from-json PATH [--plot PATH] [--markdown PATH]   (a saved run, redrawn)

For every workload and implementation, in one process:

- retained: bytes autograd keeps for backward, counted with saved-tensor hooks, each storage once,
  parameters left out (deterministic);
- peak: the peak memory of one training step (forward + backward) above what was allocated
  before it. CUDA: torch.cuda.max_memory_allocated after resetting the peak, minus the baseline.
  CPU: the allocator's own events from torch.profiler (profile_memory=True, the raw Kineto event
  list), each allocation and free summed in the order they happened, and the highest running sum
  taken (RSS is too noisy);
- time: the median of forward + backward from torch.utils.benchmark, all threads, CUDA synchronised.

Then the kernels alone: hamilton_expand and hamilton_reduce, their bandwidth (bytes read + written
per second) against a clone of the (4n, 4m) matrix they write or read. Then two speed grids, forward
+ backward against the dense layer: one QLinear by batch and features (each formulation beside
"auto"), and one 3 x 3 QConv2d by channels.

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
"""

import argparse
import itertools
import json
import logging
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Dict, List, Optional

# The output is the progress bar and the table. On a CPU run the profiler (peak memory) would log
# every start and stop, and kineto's failed GPU probe, at its default level; 6 is above its highest.
# Read when the profiler first starts, so it must be set before then; an explicit setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns about the CUDA toolkit when a
# CUDA build of torch sees no GPU; no extension is built here.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

import torch.utils.benchmark as benchmark  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import baselines  # noqa: E402
import incremental  # noqa: E402

import qlayers  # noqa: E402
from qlayers.memory import SavedTensorBytes  # noqa: E402

LayerFactory = Callable[[int, int], nn.Module]


def _compiled_plain(in_features, out_features):
    # One compiled graph serves every instance: parameters are graph inputs, not guards.
    return torch.compile(qlayers.QLinear(in_features, out_features, memory_efficient=False))


IMPLEMENTATIONS: Dict[str, LayerFactory] = {
    "qlayers": lambda i, o: qlayers.QLinear(i, o),
    "autograd": lambda i, o: qlayers.QLinear(i, o, memory_efficient=False),
    "anchor-custom": baselines.AnchorQLinear,
    "checkpoint": baselines.CheckpointedQLinear,
    "compiled": _compiled_plain,
    "dense": nn.Linear,
}


class Recurrence(nn.Module):
    """One layer applied at every step to a hidden state: h = tanh(layer(h) + x_t)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, xs):
        h = torch.zeros_like(xs[0])
        for x in xs:
            h = torch.tanh(self.layer(h) + x)
        return h


@dataclass
class Workload:
    name: str
    build: Callable[[LayerFactory], nn.Module]
    input_shape: tuple
    # Convolution workloads build from convolution factories (no anchor-custom: the anchors'
    # convolutions are plain autograd only).
    factories: Dict[str, LayerFactory] = None
    # Also time a torch.no_grad() forward (the recurrent layers' inference target).
    inference: bool = False
    key: str = ""  # its --workloads name

    def factory(self, impl):
        return (self.factories or IMPLEMENTATIONS).get(impl)


def _compiled_plain_conv(*args, **kwargs):
    return torch.compile(qlayers.QConv2d(*args, **kwargs, memory_efficient=False))


CONV_IMPLEMENTATIONS: Dict[str, LayerFactory] = {
    "qlayers": qlayers.QConv2d,
    "autograd": lambda *a, **k: qlayers.QConv2d(*a, **k, memory_efficient=False),
    "checkpoint": baselines.CheckpointedQConv2d,
    "compiled": _compiled_plain_conv,
    "dense": nn.Conv2d,
}


class SequenceOutput(nn.Module):
    """A recurrent layer's output sequence alone (drops the final states)."""

    def __init__(self, recurrent):
        super().__init__()
        self.recurrent = recurrent

    def forward(self, x):
        return self.recurrent(x)[0]


def recurrent_implementations(ours, torch_layer) -> Dict[str, LayerFactory]:
    """A quaternion recurrent layer, its plain-autograd path, and torch's own layer as the dense peer.
    The anchors' QLSTM and compiling a 100-step loop are left out."""
    return {
        "qlayers": ours,
        "autograd": lambda *a, **k: ours(*a, **k, memory_efficient=False),
        "dense": torch_layer,
    }


LSTM_IMPLEMENTATIONS = recurrent_implementations(qlayers.QLSTM, nn.LSTM)
RNN_IMPLEMENTATIONS = recurrent_implementations(qlayers.QRNN, nn.RNN)  # nn.RNN: tanh, as QRNN
LIGRU_IMPLEMENTATIONS = recurrent_implementations(qlayers.QLiGRU, nn.GRU)  # the nearest torch layer


def cnn(conv):
    """A small quaternion CNN for 32x32 images with 4 input channels (RGB + grey as the real part)."""
    return nn.Sequential(
        conv(4, 64, 3, padding=1),
        nn.ReLU(),
        conv(64, 128, 3, stride=2, padding=1),
        nn.ReLU(),
        conv(128, 128, 3, padding=1),
        nn.ReLU(),
        conv(128, 256, 3, stride=2, padding=1),
    )


def pointwise_block(conv, channels):
    """1x1 convolutions: the kernel is smallest next to the activations here."""
    return nn.Sequential(
        conv(channels, channels, 1), nn.ReLU(), conv(channels, channels, 1), nn.ReLU(), conv(channels, channels, 1)
    )


def mlp(layer, features, depth):
    blocks = []
    for _ in range(depth):
        blocks += [layer(features, features), nn.ReLU()]
    return nn.Sequential(*blocks)


# name -> sizes per preset: full (make bench), quick (--quick, under 3 minutes on 2 cores), tiny (tests)
SIZES = {
    "full": dict(
        small=2048,
        large=(4096, 512),
        mlp=(64, 1024),
        rnn=(100, 16, 512),
        cnn=(64, 32),
        pointwise=(32, 256, 16),
        lstm=(2, 512, 100, 16),
    ),
    "quick": dict(
        small=1024,
        large=(2048, 512),
        mlp=(64, 512),
        rnn=(50, 16, 256),
        cnn=(16, 32),
        pointwise=(8, 256, 16),
        lstm=(2, 256, 50, 16),
    ),
    "tiny": dict(
        small=64, large=(64, 32), mlp=(4, 32), rnn=(5, 2, 16), cnn=(2, 8), pointwise=(2, 16, 4), lstm=(1, 8, 4, 2)
    ),
}
# On a GPU the full QLSTM workload is the lecture's scale: 2 layers, hidden 1024, 200 steps, batch 16.
GPU_LSTM = (2, 1024, 200, 16)


def workloads(size: str, device_type: str = "cpu") -> List[Workload]:
    s = dict(SIZES[size])
    if size == "full" and device_type == "cuda":
        s["lstm"] = GPU_LSTM
    batch, large = s["large"]
    mlp_batch, mlp_features = s["mlp"]
    steps, rnn_batch, hidden = s["rnn"]
    cnn_batch, cnn_size = s["cnn"]
    pw_batch, channels, side = s["pointwise"]
    lstm_layers, lstm_hidden, lstm_steps, lstm_batch = s["lstm"]
    return [
        Workload(
            f"small batch: 8 x {s['small']}", lambda layer: layer(s["small"], s["small"]), (8, s["small"]), key="small"
        ),
        Workload(f"large batch: {batch} x {large}", lambda layer: layer(large, large), (batch, large), key="large"),
        Workload(
            f"MLP: 8 layers of {mlp_features}, batch {mlp_batch}",
            lambda layer: mlp(layer, mlp_features, 8),
            (mlp_batch, mlp_features),
            key="mlp",
        ),
        Workload(
            f"recurrence: {steps} steps, hidden {hidden}, batch {rnn_batch}",
            lambda layer: Recurrence(layer(hidden, hidden)),
            (steps, rnn_batch, hidden),
            key="recurrence",
        ),
        Workload(
            f"CNN: 4 convs on {cnn_size}x{cnn_size} images, batch {cnn_batch}",
            cnn,
            (cnn_batch, 4, cnn_size, cnn_size),
            CONV_IMPLEMENTATIONS,
            key="cnn",
        ),
        Workload(
            f"1x1 convs: 3 x {channels} channels, {side}x{side}, batch {pw_batch}",
            lambda conv: pointwise_block(conv, channels),
            (pw_batch, channels, side, side),
            CONV_IMPLEMENTATIONS,
            key="pointwise",
        ),
    ] + [
        Workload(
            f"{name}: {lstm_layers} layers, hidden {lstm_hidden}, {lstm_steps} steps, batch {lstm_batch}",
            lambda layer: SequenceOutput(layer(lstm_hidden, lstm_hidden, lstm_layers)),
            (lstm_steps, lstm_batch, lstm_hidden),
            implementations,
            inference=True,
            key=name.lower(),
        )
        for name, implementations in (
            ("QLSTM", LSTM_IMPLEMENTATIONS),
            ("QRNN", RNN_IMPLEMENTATIONS),
            ("QLiGRU", LIGRU_IMPLEMENTATIONS),
        )
    ]


@dataclass
class Record:
    workload: str
    impl: str
    retained_bytes: int
    peak_bytes: int
    time_ms: float
    inference_ms: Optional[float] = None  # torch.no_grad() forward, for workloads that ask for it


def training_step(model, x):
    model(x).sum().backward()


def retained_bytes(model, x):
    with SavedTensorBytes(exclude=model.parameters()) as saved:
        out = model(x)
    out.sum().backward()
    return saved.total


def peak_bytes(model, x, device):
    model.zero_grad(set_to_none=True)  # every implementation allocates its gradients in the step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        training_step(model, x)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    # acc_events: torch 2.9-2.11 warn on stderr ("Profiler clears events...") without it.
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True, acc_events=True
    ) as prof:
        training_step(model, x)
    # The raw event list: FunctionEvents fold allocations into the ops that made them.
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0))


def median_seconds(fn, arg, device, min_run_time):
    """Median seconds of fn(arg), synchronised on CUDA, with all threads."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    timer = benchmark.Timer(
        "fn(arg); sync()", globals=dict(fn=fn, arg=arg, sync=sync), num_threads=torch.get_num_threads()
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


def measure(workload, impl, device, min_run_time):
    torch.manual_seed(0)
    model = workload.build(workload.factory(impl)).to(device)
    x = torch.randn(workload.input_shape, device=device, requires_grad=True)
    training_step(model, x)  # warm up (and compile)
    retained = retained_bytes(model, x)
    peak = peak_bytes(model, x, device)
    seconds = median_seconds(lambda inputs: training_step(model, inputs), x, device, min_run_time)
    inference = None
    if workload.inference:
        with torch.no_grad():
            inference = median_seconds(model, x, device, min_run_time) * 1e3
    return Record(workload.name, impl, retained, peak, seconds * 1e3, inference)


# Kernel bandwidth: (components shape, dtype) per device type; large enough to leave the caches.
KERNEL_CASES = {
    "cpu": [((512, 512), dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)]
    + [((128, 128, 3, 3), torch.float32)],
    "cuda": [((4096, 4096), dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)]
    + [((512, 512, 3, 3), torch.float32)],
}


@dataclass
class KernelRecord:
    op: str
    shape: str
    dtype: str
    time_ms: float
    gb_per_s: float
    copy_gb_per_s: float
    fraction_of_copy: float


def kernel_bandwidth(device, min_run_time):
    """hamilton_expand and hamilton_reduce against a copy (clone) of the (4n, 4m) matrix they write or read.

    Bandwidth counts bytes read plus bytes written, for the ops and the copy alike; fraction_of_copy
    is the op's bandwidth over the copy's. Both allocate their outputs, as they do in a layer.
    """
    return [
        record
        for shape, dtype in KERNEL_CASES[device.type]
        for record in kernel_case(shape, dtype, device, min_run_time)
    ]


def kernel_case(shape, dtype, device, min_run_time) -> List[KernelRecord]:
    """One case of kernel_bandwidth: both ops and the copy at one shape and dtype."""
    records = []
    parts = [torch.randn(shape, device=device).to(dtype) for _ in range(4)]
    matrix = torch.ops.qlayers.hamilton_expand(*parts)
    moved = (matrix.numel() + 4 * parts[0].numel()) * matrix.element_size()
    copy_seconds = median_seconds(torch.clone, matrix, device, min_run_time)
    copy_rate = 2 * matrix.numel() * matrix.element_size() / copy_seconds
    for op, fn, arg in (
        ("expand", lambda p: torch.ops.qlayers.hamilton_expand(*p), parts),
        ("reduce", torch.ops.qlayers.hamilton_reduce, matrix),
    ):
        seconds = median_seconds(fn, arg, device, min_run_time)
        rate = moved / seconds
        records.append(
            KernelRecord(
                op,
                "x".join(map(str, shape)),
                str(dtype).replace("torch.", ""),
                seconds * 1e3,
                rate / 1e9,
                copy_rate / 1e9,
                rate / copy_rate,
            )
        )
    return records


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


# The speed grid (issue: "faster than a dense layer"): one QLinear, forward + backward.
GRID = {
    "full": dict(batches=(1, 8, 64, 512, 4096), features=(512, 1024, 2048, 4096)),
    "quick": dict(batches=(1, 8, 512), features=(512, 2048)),
    "tiny": dict(batches=(1, 8), features=(32,)),
}
GRID_IMPLS = {
    "qlayers": lambda f: qlayers.QLinear(f, f),
    "qlayers-hamilton": lambda f: qlayers.QLinear(f, f, algorithm="hamilton"),
    "qlayers-components": lambda f: qlayers.QLinear(f, f, algorithm="components"),
    "qlayers-eight": lambda f: qlayers.QLinear(f, f, algorithm="eight"),
    "autograd": lambda f: qlayers.QLinear(f, f, memory_efficient=False),
    "dense": lambda f: nn.Linear(f, f),
}


@dataclass
class GridRecord:
    batch: int
    features: int
    impl: str
    time_ms: float


def speed_grid(size, device, min_run_time, impls=GRID_IMPLS):
    return [
        grid_cell(batch, features, impl, device, min_run_time)
        for features in GRID[size]["features"]
        for batch in GRID[size]["batches"]
        for impl in impls
    ]


def grid_cell(batch, features, impl, device, min_run_time) -> GridRecord:
    x = torch.randn(batch, features, device=device, requires_grad=True)
    torch.manual_seed(0)
    layer = GRID_IMPLS[impl](features).to(device)
    training_step(layer, x)
    seconds = median_seconds(partial(training_step, layer), x, device, min_run_time)
    return GridRecord(batch, features, impl, seconds * 1e3)


def grid_table(records):
    by_key = {(r.batch, r.features, r.impl): r.time_ms for r in records}
    impls = list(dict.fromkeys(r.impl for r in records))
    lines = [
        "| batch | features | "
        + " | ".join(f"{impl} ms" for impl in impls)
        + " | qlayers / dense | qlayers / autograd |",
        "|---:|---:|" + "---:|" * (len(impls) + 2),
    ]
    for batch, features in dict.fromkeys((r.batch, r.features) for r in records):
        # A run cut short may lack some of a row's cells: "-" there.
        times = [by_key.get((batch, features, impl)) for impl in impls]
        ours = by_key.get((batch, features, "qlayers"))
        lines.append(
            f"| {batch} | {features} | "
            + " | ".join("-" if t is None else f"{t:.3f}" for t in times)
            + f" | {_over(ours, by_key.get((batch, features, 'dense')))}"
            + f" | {_over(ours, by_key.get((batch, features, 'autograd')))} |"
        )
    return lines


def _over(value, base):
    return "-" if value is None or not base else f"{value / base:.2f}"


# The conv grid: one 3 x 3 convolution (padding 1), forward + backward, against nn.Conv2d.
CONV_GRID = {
    "full": dict(channels=(128, 256, 512), batch=32, size=32),
    "quick": dict(channels=(128, 256), batch=8, size=16),
    "tiny": dict(channels=(8,), batch=2, size=4),
}
CONV_IMPLS = {
    "qlayers": lambda c: qlayers.QConv2d(c, c, 3, padding=1),
    "autograd": lambda c: qlayers.QConv2d(c, c, 3, padding=1, memory_efficient=False),
    "dense": lambda c: nn.Conv2d(c, c, 3, padding=1),
}


@dataclass
class ConvGridRecord:
    channels: int
    batch: int
    size: int
    impl: str
    time_ms: float


def conv_grid(size, device, min_run_time):
    return [
        conv_cell(size, channels, impl, device, min_run_time)
        for channels in CONV_GRID[size]["channels"]
        for impl in CONV_IMPLS
    ]


def conv_cell(size, channels, impl, device, min_run_time) -> ConvGridRecord:
    shape = CONV_GRID[size]
    x = torch.randn(shape["batch"], channels, shape["size"], shape["size"], device=device, requires_grad=True)
    torch.manual_seed(0)
    layer = CONV_IMPLS[impl](channels).to(device)
    training_step(layer, x)
    seconds = median_seconds(partial(training_step, layer), x, device, min_run_time)
    return ConvGridRecord(channels, shape["batch"], shape["size"], impl, seconds * 1e3)


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


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


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


# --workloads: each workload by its key (Workload.key, in workloads()' order), the sections measured
# after them, and the groups.
WORKLOAD_KEYS = ("small", "large", "mlp", "recurrence", "cnn", "pointwise", "qlstm", "qrnn", "qligru")
SECTIONS = ("kernels", "grid", "conv-grid")
GROUPS = {"all": WORKLOAD_KEYS + SECTIONS, "recurrent": ("qlstm", "qrnn", "qligru")}
WORKLOAD_CHOICES = (*GROUPS, *WORKLOAD_KEYS, *SECTIONS)


def plan(names) -> List[str]:
    """The units --workloads names, groups expanded, in the order given, each once."""
    return list(dict.fromkeys(unit for name in names for unit in GROUPS.get(name, (name,))))


def tasks(units, impls, size, device, min_run_time) -> List[incremental.Task]:
    """One task per measurement, in the order of units: each workload with each implementation, each
    kernel case, each cell of the two grids."""
    by_key = {w.key: w for w in workloads(size, device.type)}
    found = []
    for unit in units:
        if unit in by_key:
            w = by_key[unit]
            found += [
                incremental.Task("records", unit, f"{w.name} / {impl}", partial(measure, w, impl, device, min_run_time))
                for impl in impls
                if w.factory(impl) is not None
            ]
        elif unit == "kernels":
            found += [
                incremental.Task(
                    "kernels",
                    unit,
                    f"kernels: {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}",
                    partial(kernel_case, shape, dtype, device, min_run_time),
                )
                for shape, dtype in KERNEL_CASES[device.type]
            ]
        elif unit == "grid":
            found += [
                incremental.Task(
                    "grid",
                    unit,
                    f"grid: batch {batch}, features {features} / {impl}",
                    partial(grid_cell, batch, features, impl, device, min_run_time),
                )
                for features in GRID[size]["features"]
                for batch in GRID[size]["batches"]
                for impl in GRID_IMPLS
            ]
        elif unit == "conv-grid":
            found += [
                incremental.Task(
                    "conv_grid",
                    unit,
                    f"conv grid: {channels} channels / {impl}",
                    partial(conv_cell, size, channels, impl, device, min_run_time),
                )
                for channels in CONV_GRID[size]["channels"]
                for impl in CONV_IMPLS
            ]
        else:
            raise ValueError(f"unknown workload {unit!r}; expected one of {WORKLOAD_CHOICES}")
    return found


def run(options, parser, save=lambda result: None):
    """Measure on this machine: the header, the records, the kernels and the speed grids, calling
    save(result) after each measurement (incremental.execute: --budget, SIGTERM)."""
    size = options.size or ("quick" if options.quick else "full")
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    min_run_time = {"full": 1.0, "quick": 0.3, "tiny": 0.01}[size]
    units = plan(options.workloads)
    result = {
        "device": machine(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "qlayers": qlayers.__version__,
        "size": size,
        "workloads": units,
        **{key: [] for key, _ in RESULT_LISTS},
    }
    # Gradients that fade through a long untrained recurrence turn subnormal, and x86 arithmetic
    # on subnormals is slow (seen here: a 16x512x512 GEMM took 0.7 ms instead of 0.03 ms), which
    # would time the CPU's slow path, not the layers.
    torch.set_flush_denormal(True)

    from tqdm import tqdm

    todo = tasks(units, options.impls, size, device, min_run_time)
    try:
        with tqdm(total=len(todo), desc="compare", unit="run", file=sys.stderr) as bar:
            incremental.execute(todo, result, incremental.Budget(options.budget), save, bar)
    finally:
        torch.set_flush_denormal(False)  # torch's default, for whoever called main()
    return result


RESULT_LISTS = (("records", Record), ("kernels", KernelRecord), ("grid", GridRecord), ("conv_grid", ConvGridRecord))


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


def report(result):
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
        (
            "conv_grid",
            "One 3 x 3 convolution, forward + backward, by channels (qlayers = the 'auto' formulation):",
            conv_grid_table,
        ),
    ):
        if result[key]:
            lines += ["", title, ""] + rows(result[key])
    while lines and not lines[0]:
        lines.pop(0)
    note = incremental.status_note(result)
    return header, ([note] + ([""] if lines else []) if note else []) + lines


def write_outputs(result, options, plot_too=False):
    """--json and --markdown, each rewritten whole and atomically; the plot too when asked (not
    after every measurement: it takes a second or two)."""
    header, lines = report(result)
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


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads: under 3 minutes on a 2-core CPU")
    parser.add_argument("--size", choices=sorted(SIZES), help="workload sizes (default: full, or quick with --quick)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--impls", nargs="+", choices=list(IMPLEMENTATIONS), default=list(IMPLEMENTATIONS))
    parser.add_argument(
        "--workloads",
        nargs="+",
        type=str.lower,  # QLSTM or qlstm
        choices=WORKLOAD_CHOICES,
        default=["all"],
        metavar="NAME",
        help="what to measure, in this order, each once: workloads "
        + ", ".join(WORKLOAD_KEYS)
        + "; sections "
        + ", ".join(SECTIONS)
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
        result = load(options.from_json)
    else:
        result = run(options, parser, lambda so_far: write_outputs(so_far, options))
    header, lines = report(result)
    print(header)
    print("\n".join(lines))
    write_outputs(result, options, plot_too=True)
    status = incremental.exit_status(result)
    if status:
        sys.exit(status)
    return result["records"]


if __name__ == "__main__":
    main()
