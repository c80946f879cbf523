"""The benchmark's own machinery: its baselines compute the right thing, its counters count right."""

import json
import os
import sys

import pytest
import torch
from conftest import TOLERANCES
from torch import nn

import qlayers
from qlayers.memory import SavedTensorBytes

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import baselines  # noqa: E402
import compare  # noqa: E402


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


def test_anchor_reproduces_the_frozen_r_defect():
    # The benchmark measures the anchors as they are: r's flag gates every component.
    layer = baselines.AnchorQLinear(16, 8, dtype=torch.float64)
    layer.r_weight.requires_grad_(False)
    layer(torch.randn(3, 16, dtype=torch.float64)).sum().backward()
    assert layer.i_weight.grad is None


def test_compare_smoke(tmp_path):
    impls = ["qlayers", "autograd", "anchor-custom", "checkpoint", "dense"]
    paths = {kind: tmp_path / f"out.{kind}" for kind in ("json", "png", "md")}
    compare.main(
        [
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--impls",
            *impls,
            "--json",
            str(paths["json"]),
            "--plot",
            str(paths["png"]),
            "--markdown",
            str(paths["md"]),
        ]
    )
    result = json.loads(paths["json"].read_text())
    assert result["torch"] == torch.__version__
    assert isinstance(result["device"], str)
    records = result["records"]
    expected_pairs = [(w.name, i) for w in compare.workloads("tiny") for i in impls if w.factory(i) is not None]
    assert [(r["workload"], r["impl"]) for r in records] == expected_pairs
    assert any(w.factories is not None for w in compare.workloads("tiny"))  # the convolution workloads ran
    for record in records:
        assert set(record) == {"workload", "impl", "retained_bytes", "peak_bytes", "time_ms"}
        assert isinstance(record["retained_bytes"], int) and record["retained_bytes"] >= 0
        assert isinstance(record["peak_bytes"], int) and record["peak_bytes"] > 0
        assert record["time_ms"] > 0
    kept = {(r["workload"], r["impl"]): r["retained_bytes"] for r in records}
    for workload in compare.workloads("tiny"):
        # The plain path keeps the Hamilton matrices that qlayers does not.
        assert kept[(workload.name, "autograd")] > kept[(workload.name, "qlayers")]
        if not workload.name.startswith("QLSTM"):  # nn.LSTM's fused kernel keeps its gate workspace
            assert kept[(workload.name, "qlayers")] == kept[(workload.name, "dense")]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| workload | impl |" in paths["md"].read_text()
