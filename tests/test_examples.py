"""The example scripts run, and show what they claim."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import copy_task  # noqa: E402


def test_copy_task_paths_agree_and_efficient_keeps_less():
    losses, kept = copy_task.main(["--steps", "25", "--hidden", "32", "--length", "12", "--delay", "4"])
    for efficient, plain in zip(losses["efficient"], losses["plain"]):
        assert abs(efficient - plain) <= 1e-5 * max(1.0, abs(plain))
    assert losses["efficient"][-1] < losses["efficient"][0]  # it learns
    assert kept["efficient"] < kept["plain"]
