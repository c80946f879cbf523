"""Run by tests/test_distributed.py in each of 2 processes (gloo over a file rendezvous)."""

import gc
import sys

import torch
import torch.distributed as dist
from torch import nn

import qlayers


def build(kind):
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Sequential(qlayers.QLinear(16, 32), nn.Tanh(), qlayers.QLinear(32, 8))
    if kind == "conv":
        return nn.Sequential(qlayers.QConv2d(8, 8, 3, padding=1), nn.ReLU(), qlayers.QConv2d(8, 4, 3))
    return nn.Sequential(_Last(qlayers.QLSTM(8, 12, num_layers=2)))


class _Last(nn.Module):
    def __init__(self, recurrent):
        super().__init__()
        self.recurrent = recurrent

    def forward(self, x):
        return self.recurrent(x)[0]


def batch(kind):
    torch.manual_seed(1)
    if kind == "linear":
        return torch.randn(8, 16), 0
    if kind == "conv":
        return torch.randn(8, 8, 6, 6), 0
    return torch.randn(5, 8, 8), 1  # (T, B, F): the batch dim is 1


def shard(x, dim, rank, world):
    return x.chunk(world, dim=dim)[rank]


def main(rank, world, rendezvous, out, wrapper):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    grads = {}
    for kind in ("linear", "conv", "lstm"):
        model = build(kind)
        if wrapper == "ddp":
            model = nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            fully_shard(model)
        x, dim = batch(kind)
        model(shard(x, dim, rank, world)).pow(2).mean().backward()
        named = model.module.named_parameters() if wrapper == "ddp" else model.named_parameters()
        grads[kind] = {
            name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
            for name, p in named
        }
        # Free the wrapper (DDP's reducer and its threads) while the process group still exists:
        # torn down after it, at exit, a gloo worker was seen to abort once in a loaded CI run.
        del model
        gc.collect()
    if rank == 0:
        torch.save(grads, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    world, rendezvous, out, wrapper = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    torch.multiprocessing.spawn(main, args=(world, rendezvous, out, wrapper), nprocs=world)
