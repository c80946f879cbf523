"""DistributedDataParallel on 2 CPU processes (gloo, loopback): the gradients equal one process's."""

import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _distributed_worker as worker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def single_process_grads():
    grads = {}
    for kind in ("linear", "conv", "lstm"):
        model = worker.build(kind)
        x, _ = worker.batch(kind)
        # Each rank averages its half; DDP averages the ranks: the mean over the whole batch.
        model(x).pow(2).mean().backward()
        grads[kind] = {name: p.grad for name, p in model.named_parameters()}
    return grads


def run_workers(tmp_path, wrapper):
    out = tmp_path / "grads.pt"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "_distributed_worker.py"),
            "2",
            str(tmp_path / "rendezvous"),
            str(out),
            wrapper,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)


def compare(distributed, expected):
    for kind, grads in expected.items():
        assert set(distributed[kind]) == set(grads)
        for name, grad in grads.items():
            torch.testing.assert_close(distributed[kind][name], grad, rtol=1e-5, atol=1e-6, msg=f"{kind}: {name}")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_ddp_gradients_equal_single_process(tmp_path):
    compare(run_workers(tmp_path, "ddp"), single_process_grads())


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_fsdp2_gradients_equal_single_process(tmp_path):
    compare(run_workers(tmp_path, "fsdp2"), single_process_grads())
