"""The benchmark's own machinery: its baselines compute the right thing, its counters count right."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TOLERANCES
from torch import nn

import qlayers
from qlayers.memory import SavedTensorBytes

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import baselines  # noqa: E402
import choose_linear  # noqa: E402
import compare  # noqa: E402
import eight_gemm_libraries  # noqa: E402
import measure  # noqa: E402
import per_call  # noqa: E402
import recurrent  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402


@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_dense_layer_keeps_exactly_its_input(input_requires_grad):
    layer = nn.Linear(64, 32)
    x = torch.randn(16, 64, requires_grad=input_requires_grad)
    with SavedTensorBytes(exclude=layer.parameters()) as saved:
        out = layer(x)
    assert saved.total == x.numel() * x.element_size()
    out.sum().backward()


def test_plain_layer_keeps_its_input_and_matrix():
    layer = qlayers.QLinear(64, 32, memory_efficient=False)
    x = torch.randn(16, 64, requires_grad=True)
    with SavedTensorBytes(exclude=layer.parameters()) as saved:
        layer(x)
    assert saved.total == (x.numel() + 64 * 32) * 4


@pytest.mark.parametrize("layer_class", [baselines.AnchorQLinear, baselines.CheckpointedQLinear])
def test_baselines_compute_the_same_layer(layer_class):
    layer = layer_class(16, 8, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_()
    plain = qlayers.QLinear(16, 8, memory_efficient=False, dtype=torch.float64)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    grad = torch.randn(5, 8, dtype=torch.float64)
    layer(x).backward(grad)
    out = plain(x_plain)
    out.backward(grad)
    torch.testing.assert_close(x.grad, x_plain.grad, **TOLERANCES[torch.float64])
    for mine, theirs in zip(layer.parameters(), plain.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, **TOLERANCES[torch.float64])


@pytest.mark.skipif("dense-onednn" not in workloads.GRID_IMPLS, reason="this torch has no oneDNN linear op")
def test_onednn_dense_layer_is_nn_linear_with_its_gemms_in_onednn():
    # float32 only (oneDNN's linear op): a loose tolerance, still far below a wrong sign or operand.
    layer = workloads.GRID_IMPLS["dense-onednn"](64)
    reference_layer = nn.Linear(64, 64)
    reference_layer.load_state_dict(layer.state_dict())
    with torch.profiler.profile() as profile:
        out = layer(x := torch.randn(9, 64, requires_grad=True))
        out.backward(grad := torch.randn(9, 64))
    assert sum(e.name == "mkldnn::_linear_pointwise" for e in profile.events()) == 3  # y, dL/dx, dL/dW
    x_reference = x.detach().clone().requires_grad_()
    out_reference = reference_layer(x_reference)
    out_reference.backward(grad)
    torch.testing.assert_close(out, out_reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_reference.grad, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(layer.parameters(), reference_layer.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def test_anchor_reproduces_the_frozen_r_defect():
    # The benchmark measures the anchors as they are: r's flag gates every component.
    layer = baselines.AnchorQLinear(16, 8, dtype=torch.float64)
    layer.r_weight.requires_grad_(False)
    layer(torch.randn(3, 16, dtype=torch.float64)).sum().backward()
    assert layer.i_weight.grad is None


# What a CUDA build of torch on a machine without a GPU printed among the progress bar and the table:
# the profiler's own logging (kineto) and torch.utils.cpp_extension's warning about the toolkit.
NOISE = ("ERROR", "No CUDA runtime", "USDT", "gpuGetDeviceCount")


def test_compare_smoke(tmp_path):
    # The main job as `make bench` runs it, in its own process: the profiler reads its settings once.
    impls = ["qlayers", "autograd", "anchor-custom", "checkpoint", "dense"]
    paths = {kind: tmp_path / f"out.{kind}" for kind in ("json", "png", "md")}
    env = {key: value for key, value in os.environ.items() if key != "KINETO_LOG_LEVEL"}
    command = [sys.executable, compare.__file__, "--size", "tiny", "--device", "cpu", "--impls", *impls]
    for kind, flag in (("json", "--json"), ("png", "--plot"), ("md", "--markdown")):
        command += [flag, str(paths[kind])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert not [line for line in output.splitlines() if any(noise in line for noise in NOISE)]
    # stderr is the progress bar alone (tqdm redraws it with carriage returns), stdout the table.
    updates = [part for part in done.stderr.replace("\r", "\n").splitlines() if part.strip()]
    assert updates and all(part.startswith("compare:") for part in updates), updates
    assert done.stdout.startswith("qlayers ") and "| workload | impl |" in done.stdout

    result = json.loads(paths["json"].read_text())
    assert result["torch"] == torch.__version__
    assert isinstance(result["device"], str)
    records = result["records"]
    expected_pairs = [(w.name, i) for w in workloads.at_size("tiny") for i in impls if w.factory(i) is not None]
    assert [(r["workload"], r["impl"]) for r in records] == expected_pairs
    assert any(w.factories is not None for w in workloads.at_size("tiny"))  # the convolution workloads ran
    for record in records:
        assert set(record) == {"workload", "impl", "retained_bytes", "peak_bytes", "time_ms", "inference_ms"}
        assert isinstance(record["retained_bytes"], int) and record["retained_bytes"] >= 0
        assert isinstance(record["peak_bytes"], int) and record["peak_bytes"] > 0
        assert record["time_ms"] > 0
        # The recurrent workloads (QLSTM, QRNN, QLiGRU) also time inference; the others do not.
        recurrent = record["workload"].split(":")[0] in ("QLSTM", "QRNN", "QLiGRU")
        assert (record["inference_ms"] is not None and record["inference_ms"] > 0) == recurrent
    kept = {(r["workload"], r["impl"]): r["retained_bytes"] for r in records}
    for workload in workloads.at_size("tiny"):
        # The plain path keeps the Hamilton matrices that qlayers does not.
        assert kept[(workload.name, "autograd")] > kept[(workload.name, "qlayers")]
        if not workload.inference:  # torch's recurrent layers keep their own gate workspaces
            assert kept[(workload.name, "qlayers")] == kept[(workload.name, "dense")]
    # The kernel section: both ops beside their torch.cat versions, at every case (the small float32
    # ones of the former pytest-benchmark suite among them), each against the same copy.
    kernels = result["kernels"]
    cases = [
        ("x".join(map(str, shape)), str(dtype).replace("torch.", "")) for shape, dtype in workloads.KERNEL_CASES["cpu"]
    ]
    ops = ["expand", "expand (torch.cat)", "reduce", "reduce (torch.cat backward)"]
    assert [(k["shape"], k["dtype"], k["op"]) for k in kernels] == [case + (op,) for case in cases for op in ops]
    assert all(k["time_ms"] > 0 and k["gb_per_s"] > 0 and k["copy_gb_per_s"] > 0 for k in kernels)
    for shape, dtype in workloads.SMALL_KERNEL_CASES:
        assert ("x".join(map(str, shape)), str(dtype).replace("torch.", "")) in cases
    assert "| expand (torch.cat) |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| workload | impl |" in paths["md"].read_text()
    # The speed grid: every cell with every implementation, forward + backward and forward alone.
    grid = workloads.GRID["tiny"]
    cells = [(b, f, impl) for f in grid["features"] for b in grid["batches"] for impl in workloads.GRID_IMPLS]
    assert [(g["batch"], g["features"], g["impl"]) for g in result["grid"]] == cells
    assert all(g["time_ms"] > 0 and g["forward_ms"] > 0 for g in result["grid"])
    assert "The same layers, forward alone (torch.no_grad()):" in paths["md"].read_text()

    # --from-json reports the same run again without measuring: the same Markdown, the same JSON.
    again = {kind: tmp_path / f"again.{kind}" for kind in ("json", "png", "md")}
    compare.main(
        ["--from-json", str(paths["json"])]
        + ["--json", str(again["json"]), "--plot", str(again["png"]), "--markdown", str(again["md"])]
    )
    assert again["md"].read_text() == paths["md"].read_text()
    assert json.loads(again["json"].read_text()) == result
    assert again["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def full_size_records():
    """A made-up run over the full workloads' names: qlayers keeps a quarter of autograd's bytes,
    takes half its time and 1.5 times dense's."""
    records = []
    for workload in workloads.at_size("full"):
        for impl, retained, peak, time_ms in (
            ("qlayers", 2**20, 2**21, 3.0),
            ("autograd", 2**22, 2**23, 6.0),
            ("dense", 2**20, 2**21, 2.0),
        ):
            records.append(measure.Record(workload.name, impl, retained, peak, time_ms))
    return records


def test_plot_is_readable(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="compare.py plots with matplotlib")
    from matplotlib.text import Text

    drawn = {}  # every text plot() draws, and where it was drawn last (layout draws it first)
    draw = Text.draw

    def record(text, renderer):
        draw(text, renderer)
        if text.get_visible() and text.get_text().strip():
            drawn[id(text)] = (text.get_text(), text.get_window_extent(renderer))

    monkeypatch.setattr(Text, "draw", record)
    records = full_size_records()
    path = tmp_path / "plot.png"
    report.plot(records, path, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    boxes = list(drawn.values())
    strings = [text for text, _ in boxes]

    # Short labels: each workload by its name up to the colon, no full name as a label.
    names = list(dict.fromkeys(r.workload for r in records))
    for name in names:
        assert name.split(":")[0] in strings
        assert name not in strings
    # No text runs into another.
    overlapping = [
        (a, b) for index, (a, box) in enumerate(boxes) for b, other in boxes[index + 1 :] if box.overlaps(other)
    ]
    assert not overlapping
    # The headline ratios are written out.
    for ratio in ("0.25×", "0.50×", "1.50×"):
        assert strings.count(ratio) >= len(names), ratio


def test_choose_linear_times_every_formulation(capsys):
    choose_linear.main(["--rows", "1", "3", "--features", "8", "--min-run-time", "0.001"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| forward") or "grad_" in line]
    assert len(rows) == 3 * 2  # three products x two row counts, one feature count
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] in choose_linear.FORMULATIONS
        assert all(float(t) > 0 for t in cells[3:-1])


@pytest.mark.skipif(not qlayers._torch_internals.onednn_linear_available(), reason="this torch has no oneDNN linear")
def test_eight_gemm_libraries_times_every_variant_against_the_onednn_dense_layer(capsys):
    eight_gemm_libraries.main(["--sizes", "8x16", "--rounds", "2", "--number", "1"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 8 x 16 |")]
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert len(cells) == 1 + 5 + 4  # the size, five times, four ratios
    assert all(float(c) > 0 for c in cells[1:])
    # The variants compute the products they name, each library the same ones.
    fns = eight_gemm_libraries.variants(8, 16)
    eight = fns["eight bmm"]()
    assert eight.shape == (8, 8, 4)
    torch.testing.assert_close(torch.stack(fns["eight oneDNN, weights packed"]()), eight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fns["dense oneDNN"](), fns["dense mm"](), rtol=1e-5, atol=1e-5)


def test_per_call_reports_both_layers(capsys):
    per_call.main(["--features", "8", "--min-run-time", "0.001"])
    out = capsys.readouterr().out
    assert "| qlayers |" in out and "| dense |" in out and "| qlayers / dense |" in out


def test_per_call_conv_compares_with_the_same_real_kernel(capsys):
    per_call.main(["--layer", "conv", "--min-run-time", "0.001"])
    out = capsys.readouterr().out
    assert "| qlayers / dense |" in out and "| plain autograd / dense |" in out
    title, x, layers, reference = per_call.conv_layers(None)
    assert reference == "dense"
    torch.testing.assert_close(layers["qlayers"](x), layers["dense"](x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layers["plain autograd"](x), layers["dense"](x), rtol=1e-5, atol=1e-5)
    assert torch.equal(layers["qlayers via torch.ops"](x), layers["qlayers"](x))  # one operator, two calls


def test_per_call_autoencoder_times_the_same_model_on_both_paths(capsys):
    per_call.main(["--layer", "autoencoder", "--min-run-time", "0.001"])
    assert "| qlayers / plain autograd |" in capsys.readouterr().out
    title, x, models, reference = per_call.autoencoder_models(None)
    assert reference == "plain autograd"
    outputs = {}
    for name, model in models.items():
        out = model(x)
        assert out.shape == x.shape  # stride-2 encoder, stride-2 transposed decoder: back to 64 x 96
        out.square().sum().backward()
        outputs[name] = (out, [p.grad.clone() for p in model.parameters()])
    (out, grads), (plain_out, plain_grads) = outputs["qlayers"], outputs["plain autograd"]
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_recurrent_benchmark_runs_the_three_recurrent_workloads(tmp_path):
    path = tmp_path / "recurrent.md"
    records = recurrent.main(["--size", "tiny", "--device", "cpu", "--markdown", str(path)])
    assert {r.workload.split(":")[0] for r in records} == {"QLSTM", "QRNN", "QLiGRU"}
    assert {r.impl for r in records} == {"qlayers", "autograd", "dense"}
    assert all(r.inference_ms is not None and r.inference_ms > 0 for r in records)
    kept = {(r.workload, r.impl): r.retained_bytes for r in records}
    for workload in {r.workload for r in records}:  # the plain path keeps a Hamilton matrix per step
        assert kept[(workload, "autograd")] > kept[(workload, "qlayers")]
    assert "| workload | impl | inference ms |" in path.read_text()


def test_times_use_a_dense_gradient_and_memory_an_expanded_one():
    # A timed step must not hand the layers an expanded (stride-0) gradient: qlayers' linear skips
    # work for one (one row's products), which no loss behind another layer gives.
    strides = []

    class Probe(nn.Module):
        def forward(self, x):
            y = x * 2
            y.register_hook(lambda g: strides.append(g.stride()))
            return y

    x = torch.randn(4, 3, requires_grad=True)
    measure.timed_step(Probe(), x)
    measure.training_step(Probe(), x)
    assert strides == [(3, 1), (0, 0)]
