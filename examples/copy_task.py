"""Train a small quaternion LSTM on the copy task with both paths, and compare what they keep.

    python examples/copy_task.py [--steps 300] [--delay 10]

The model sees a sequence of random quaternion vectors followed by blank steps and must output,
at each step t >= delay, the input it saw at step t - delay (a task with a known answer: the
loss of a perfect model is 0; predicting zeros gives the input variance, 1.0). The memory-efficient
and plain (memory_efficient=False) models start from the same weights and see the same batches:
they reach the same loss, and the efficient one keeps a fraction of the bytes for backward.
"""

import argparse

import torch
from torch import nn

import qlayers
from qlayers.memory import SavedTensorBytes


class Copier(nn.Module):
    def __init__(self, features, hidden, memory_efficient):
        super().__init__()
        self.lstm = qlayers.QLSTM(features, hidden, memory_efficient=memory_efficient)
        self.readout = qlayers.QLinear(hidden, features, memory_efficient=memory_efficient)

    def forward(self, x):
        return self.readout(self.lstm(x)[0])


def batch(generator, steps, delay, size, features):
    x = torch.randn(steps, size, features, generator=generator)
    x[steps - delay :] = 0  # the tail is blank: the model must recall, not copy the present
    target = torch.zeros_like(x)
    target[delay:] = x[: steps - delay]
    return x, target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--delay", type=int, default=10, help="how far back the model must recall")
    parser.add_argument("--length", type=int, default=30, help="sequence length")
    parser.add_argument("--features", type=int, default=8, help="real input features (multiple of 4)")
    parser.add_argument("--hidden", type=int, default=128, help="real hidden features (multiple of 4)")
    options = parser.parse_args(argv)

    torch.manual_seed(0)
    models = {"efficient": Copier(options.features, options.hidden, True)}
    models["plain"] = Copier(options.features, options.hidden, False)
    models["plain"].load_state_dict(models["efficient"].state_dict())
    optimisers = {name: torch.optim.Adam(m.parameters(), lr=3e-3) for name, m in models.items()}
    data = {name: torch.Generator().manual_seed(1) for name in models}
    losses = {name: [] for name in models}
    kept = {}
    for step in range(options.steps):
        for name, model in models.items():
            x, target = batch(data[name], options.length, options.delay, 32, options.features)
            with SavedTensorBytes(exclude=model.parameters()) as saved:
                loss = (model(x)[options.delay :] - target[options.delay :]).pow(2).mean()
            optimisers[name].zero_grad()
            loss.backward()
            optimisers[name].step()
            losses[name].append(loss.item())
            kept[name] = saved.total
        if step % 50 == 0 or step == options.steps - 1:
            print(f"step {step:4d}  loss efficient {losses['efficient'][-1]:.5f}  plain {losses['plain'][-1]:.5f}")
    print(
        f"bytes kept for backward per step: efficient {kept['efficient']:,}  plain {kept['plain']:,} "
        f"({kept['plain'] / kept['efficient']:.1f}x)"
    )
    return losses, kept


if __name__ == "__main__":
    main()
