"""The example scripts run, and show what they claim."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import copy_task  # noqa: E402
import speechbrain_dropin  # noqa: E402
from conftest import needs_speechbrain  # noqa: E402


def test_copy_task_paths_agree_and_efficient_keeps_less():
    losses, kept = copy_task.main(["--steps", "25", "--hidden", "32", "--length", "12", "--delay", "4"])
    for efficient, plain in zip(losses["efficient"], losses["plain"]):
        assert abs(efficient - plain) <= 1e-5 * max(1.0, abs(plain))
    assert losses["efficient"][-1] < losses["efficient"][0]  # it learns
    assert kept["efficient"] < kept["plain"]


@needs_speechbrain
def test_speechbrain_dropin_trains_alike_and_keeps_less():
    # Each library trains in a child process: equal losses step by step (float32; dropout from the
    # mask bank the checkpoint carries), fewer bytes kept.
    arguments = ["--hidden", "8", "--steps", "12", "--batch", "3", "--train-steps", "3", "--dropout", "0.2"]
    results = speechbrain_dropin.main(arguments)
    theirs, ours = results["speechbrain"], results["qlayers"]
    assert len(theirs["losses"]) == len(ours["losses"]) == 3
    for a, b in zip(theirs["losses"], ours["losses"]):
        assert abs(a - b) <= 1e-5 * abs(a), (a, b)
    assert theirs["losses"][0] != theirs["losses"][1]  # the optimiser moved the weights
    assert ours["saved_bytes"] * 2 < theirs["saved_bytes"]
