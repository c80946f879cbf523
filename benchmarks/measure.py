"""How benchmarks/compare.py measures: memory retained for backward, the peak of a training step, and
time, each as one record; the kernel cases and the cells of the speed grids; the run as a list of
tasks (benchmarks/incremental.py).

- retained: bytes autograd keeps for backward, counted with saved-tensor hooks, each storage once,
  parameters left out (deterministic);
- peak: the peak memory of one training step (forward + backward) above what was allocated
  before it. CUDA: torch.cuda.max_memory_allocated after resetting the peak, minus the baseline.
  CPU: the allocator's own events from torch.profiler (profile_memory=True, the raw Kineto event
  list), each allocation and free summed in the order they happened, and the highest running sum
  taken (RSS is too noisy);
- time: the median from torch.utils.benchmark (median_seconds: the benchmarks' one timing harness),
  all threads, CUDA synchronised.
"""

import itertools
import logging
import os
import platform
from dataclasses import dataclass
from functools import partial
from typing import List, Optional

# On a CPU run the profiler (peak memory) would log every start and stop, and kineto's failed GPU
# probe, at its default level; 6 is above its highest. Read when the profiler first starts, so it
# must be set before then; an explicit setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns about the CUDA toolkit when a
# CUDA build of torch sees no GPU; no extension is built here.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

import incremental  # noqa: E402
import torch.utils.benchmark as benchmark  # noqa: E402
import workloads  # noqa: E402

from qlayers import reference  # noqa: E402
from qlayers.memory import SavedTensorBytes  # noqa: E402


@dataclass
class Record:
    workload: str
    impl: str
    retained_bytes: int
    peak_bytes: int
    time_ms: float
    inference_ms: Optional[float] = None  # torch.no_grad() forward, for workloads that ask for it


@dataclass
class KernelRecord:
    op: str
    shape: str
    dtype: str
    time_ms: float
    gb_per_s: float
    copy_gb_per_s: float
    fraction_of_copy: float


@dataclass
class GridRecord:
    batch: int
    features: int
    impl: str
    time_ms: float
    forward_ms: Optional[float] = None  # torch.no_grad() forward; runs before it was measured lack it


@dataclass
class ConvGridRecord:
    channels: int
    batch: int
    size: int
    impl: str
    time_ms: float


# A run's lists of records, by their key in the result (and the JSON), with the kind of each.
RESULT_LISTS = (("records", Record), ("kernels", KernelRecord), ("grid", GridRecord), ("conv_grid", ConvGridRecord))


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # Which GEMM library qlayers' float32 CPU products took, and the times that chose it.
    return f"{cpu_model()}, {torch.get_num_threads()} threads, qlayers' CPU GEMM: {torch.ops.qlayers._cpu_gemm()}"


def training_step(model, x):
    """The step retained and peak measure: out.sum()'s gradient, expanded (stride 0), the case where a
    copy of the gradient would cost memory."""
    model(x).sum().backward()


def timed_step(model, x):
    """The step the times measure: a dense upstream gradient, as a loss behind other layers gives.
    An expanded one would let a layer skip work: qlayers' linear takes one row's products then."""
    out = model(x)
    out.backward(torch.ones_like(out))


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


def workload(w, impl, device, min_run_time) -> Record:
    """One workload with one implementation: retained, peak, training time (and inference time)."""
    torch.manual_seed(0)
    model = w.build(w.factory(impl)).to(device)
    x = torch.randn(w.input_shape, device=device, requires_grad=True)
    training_step(model, x)  # warm up (and compile)
    retained = retained_bytes(model, x)
    peak = peak_bytes(model, x, device)
    seconds = median_seconds(lambda inputs: timed_step(model, inputs), x, device, min_run_time)
    inference = None
    if w.inference:
        with torch.no_grad():
            inference = median_seconds(model, x, device, min_run_time) * 1e3
    return Record(w.name, impl, retained, peak, seconds * 1e3, inference)


def kernel_case(shape, dtype, device, min_run_time) -> List[KernelRecord]:
    """hamilton_expand and hamilton_reduce at one shape and dtype, each beside what plain autograd runs
    instead (torch.cat, reference.hamilton_matrix, and its backward), against a copy (clone) of the
    (4n, 4m) matrix they write or read.

    Bandwidth counts bytes read plus bytes written, for the ops and the copy alike; fraction_of_copy
    is the op's bandwidth over the copy's. All allocate their outputs, as they do in a layer.
    """
    records = []
    parts = [torch.randn(shape, device=device).to(dtype) for _ in range(4)]
    matrix = torch.ops.qlayers.hamilton_expand(*parts)
    moved = (matrix.numel() + 4 * parts[0].numel()) * matrix.element_size()
    copy_seconds = median_seconds(torch.clone, matrix, device, min_run_time)
    copy_rate = 2 * matrix.numel() * matrix.element_size() / copy_seconds
    leaves = [part.detach().clone().requires_grad_() for part in parts]
    graph = reference.hamilton_matrix(*leaves)  # the torch.cat graph whose backward plain autograd runs
    for op, fn, arg in (
        ("expand", lambda p: torch.ops.qlayers.hamilton_expand(*p), parts),
        ("expand (torch.cat)", lambda p: reference.hamilton_matrix(*p), parts),
        ("reduce", torch.ops.qlayers.hamilton_reduce, matrix),
        ("reduce (torch.cat backward)", lambda g: torch.autograd.grad(graph, leaves, g, retain_graph=True), matrix),
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


def grid_cell(batch, features, impl, device, min_run_time) -> GridRecord:
    """One cell of the speed grid: one QLinear (or its peer), forward + backward, and forward alone
    (torch.no_grad(): no autograd graph, nothing saved)."""
    x = torch.randn(batch, features, device=device, requires_grad=True)
    torch.manual_seed(0)
    layer = workloads.GRID_IMPLS[impl](features).to(device)
    training_step(layer, x)
    seconds = median_seconds(partial(timed_step, layer), x, device, min_run_time)
    with torch.no_grad():
        forward_seconds = median_seconds(layer, x, device, min_run_time)
    return GridRecord(batch, features, impl, seconds * 1e3, forward_seconds * 1e3)


def conv_cell(size, channels, impl, device, min_run_time) -> ConvGridRecord:
    """One cell of the conv grid: one 3 x 3 convolution (or its peer), forward + backward."""
    shape = workloads.CONV_GRID[size]
    x = torch.randn(shape["batch"], channels, shape["size"], shape["size"], device=device, requires_grad=True)
    torch.manual_seed(0)
    layer = workloads.CONV_IMPLS[impl](channels).to(device)
    training_step(layer, x)
    seconds = median_seconds(partial(timed_step, layer), x, device, min_run_time)
    return ConvGridRecord(channels, shape["batch"], shape["size"], impl, seconds * 1e3)


def tasks(units, impls, size, device, min_run_time) -> List[incremental.Task]:
    """One task per measurement, in the order of units: each workload with each implementation, each
    kernel case, each cell of the two grids."""
    by_key = {w.key: w for w in workloads.at_size(size, device.type)}
    found = []
    for unit in units:
        if unit in by_key:
            w = by_key[unit]
            found += [
                incremental.Task(
                    "records", unit, f"{w.name} / {impl}", partial(workload, w, impl, device, min_run_time)
                )
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
                for shape, dtype in workloads.KERNEL_CASES[device.type]
            ]
        elif unit == "grid":
            grid = workloads.GRID[size]
            found += [
                incremental.Task(
                    "grid",
                    unit,
                    f"grid: batch {batch}, features {features} / {impl}",
                    partial(grid_cell, batch, features, impl, device, min_run_time),
                )
                for features in grid["features"]
                for batch in grid["batches"]
                for impl in workloads.GRID_IMPLS
            ]
        elif unit == "conv-grid":
            found += [
                incremental.Task(
                    "conv_grid",
                    unit,
                    f"conv grid: {channels} channels / {impl}",
                    partial(conv_cell, size, channels, impl, device, min_run_time),
                )
                for channels in workloads.CONV_GRID[size]["channels"]
                for impl in workloads.CONV_IMPLS
            ]
        else:
            raise ValueError(f"unknown workload {unit!r}; expected one of {workloads.WORKLOAD_CHOICES}")
    return found
