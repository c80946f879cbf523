"""Train one SpeechBrain-style quaternion speech model with SpeechBrain's layers, then with qlayers'.

    python examples/speechbrain_dropin.py [--hidden 512] [--steps 100] [--batch 16] [--train-steps 4]
                                          [--dropout 0.0]

The model: a QConv1d front end over 40 filterbank-like features, a 2-layer bidirectional QLiGRU
(SpeechBrain's defaults: batch-normalised projection, leaky ReLU; ``--dropout`` inside its cells,
from a mask bank the checkpoint carries, so both runs drop the same units) and a QLinear head
scoring 48 frame classes, trained with cross entropy and SGD on synthetic features whose labels a
fixed random projection decides. The only difference between the two runs is the import:

    from speechbrain.nnet.quaternion_networks import q_CNN, q_linear, q_RNN   # SpeechBrain
    from qlayers.compat import speechbrain                                    # qlayers

Each library trains in a process of its own, so that each one's peak memory is its own: the
SpeechBrain run saves its initial weights, the qlayers run loads them (strictly), and both see the
same batches. The script prints the loss of every step for both (they agree to float32 rounding),
and for each: the bytes autograd keeps for backward in one training step (counted with
saved-tensor hooks), the growth of the process's peak resident memory during training
(``ru_maxrss`` minus the resident size before the first step), and the median time of a training
step after the first. ``--hidden`` counts quaternions, as SpeechBrain's ``hidden_size`` does
(512 quaternions are 2048 real features per direction).

Needs speechbrain==1.1.2 (``make`` installs it into .venv).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

import torch
from torch import nn

from qlayers.memory import SavedTensorBytes

FEATURES, FRONT_QUATERNIONS, CLASSES = 40, 32, 48
LIBRARIES = ("speechbrain", "qlayers")


def layers_of(library):
    """The namespace a model takes its layer classes from: the one line a user changes."""
    if library == "speechbrain":
        from speechbrain.nnet.quaternion_networks import q_CNN, q_linear, q_RNN

        return types.SimpleNamespace(QConv1d=q_CNN.QConv1d, QLiGRU=q_RNN.QLiGRU, QLinear=q_linear.QLinear)
    from qlayers.compat import speechbrain

    return speechbrain


class SpeechModel(nn.Module):
    def __init__(self, layers, batch, steps, hidden, dropout=0.0):
        super().__init__()
        self.front = layers.QConv1d(FRONT_QUATERNIONS, 3, input_shape=(batch, steps, FEATURES))
        self.activation = nn.LeakyReLU()
        front_features = 4 * FRONT_QUATERNIONS
        shape = (batch, steps, front_features)
        self.rnn = layers.QLiGRU(hidden, input_shape=shape, num_layers=2, bidirectional=True, dropout=dropout)
        self.head = layers.QLinear(CLASSES // 4, input_shape=(batch, steps, 2 * 4 * hidden))

    def forward(self, x):
        return self.head(self.rnn(self.activation(self.front(x)))[0])


def batches(options):
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    for _ in range(options.train_steps):
        x = torch.randn(options.batch, options.steps, FEATURES, generator=generator)
        yield x, (x @ teacher).argmax(dim=-1)


def train(library, options, weights):
    """One library's run: losses, saved bytes, peak-memory growth and step times."""
    torch.manual_seed(0)
    model = SpeechModel(layers_of(library), options.batch, options.steps, options.hidden, options.dropout)
    if library == "speechbrain":
        torch.save(model.state_dict(), weights)
    else:
        model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses, times, saved_bytes = [], [], None
    resident_before = _resident_bytes()
    for x, labels in batches(options):
        start = time.perf_counter()
        with SavedTensorBytes(exclude=model.parameters()) as saved:
            loss = nn.functional.cross_entropy(model(x).reshape(-1, CLASSES), labels.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
        saved_bytes = saved.total if saved_bytes is None else saved_bytes
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - resident_before
    return {
        "losses": losses,
        "saved_bytes": saved_bytes,
        "peak_growth_bytes": peak_growth,
        "step_seconds": statistics.median(times[1:] or times),
    }


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512, help="QLiGRU hidden_size, in quaternions (SpeechBrain's)")
    parser.add_argument("--steps", type=int, default=100, help="time steps per sequence")
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch")
    parser.add_argument("--train-steps", type=int, default=4, help="optimiser steps")
    parser.add_argument("--dropout", type=float, default=0.0, help="QLiGRU dropout (SpeechBrain's default: 0)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--run", choices=LIBRARIES, help=argparse.SUPPRESS)  # a child's library
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    if options.run:
        print(json.dumps(train(options.run, options, options.weights)))
        return None

    shared = ["--hidden", options.hidden, "--steps", options.steps, "--batch", options.batch]
    shared += ["--train-steps", options.train_steps, "--threads", options.threads, "--dropout", options.dropout]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "initial.pt")
        for library in LIBRARIES:
            command = [sys.executable, os.path.abspath(__file__), "--run", library, "--weights", weights]
            child = subprocess.run(command + [str(a) for a in shared], capture_output=True, text=True)
            if child.returncode != 0:
                raise RuntimeError(f"the {library} run failed:\n{child.stderr}")
            results[library] = json.loads(child.stdout.strip().splitlines()[-1])

    sb, ql = results["speechbrain"], results["qlayers"]
    print(
        f"QLiGRU hidden_size {options.hidden} quaternions, dropout {options.dropout}, {options.steps} steps, "
        f"batch {options.batch}, "
        f"torch {torch.__version__}, {options.threads} threads"
    )
    print("step  loss SpeechBrain  loss qlayers   difference")
    for step, (a, b) in enumerate(zip(sb["losses"], ql["losses"])):
        print(f"{step:4d}  {a:16.8f}  {b:12.8f}  {b - a:+.2e}")
    print(f"{'':32s}{'SpeechBrain':>16s}{'qlayers':>16s}{'ratio':>10s}")
    rows = [
        ("bytes saved for backward", "saved_bytes", 1 / 2**20, "MiB"),
        ("peak resident growth", "peak_growth_bytes", 1 / 2**20, "MiB"),
        ("training step (median)", "step_seconds", 1.0, "s"),
    ]
    for label, key, unit, suffix in rows:
        a, b = sb[key] * unit, ql[key] * unit
        print(f"{label + ' (' + suffix + ')':32s}{a:16.2f}{b:16.2f}{a / b:9.1f}x")
    return results


if __name__ == "__main__":
    main()
