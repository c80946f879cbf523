"""What the benchmark scripts share so that a run cut short still leaves what it measured.

A run is a list of tasks, each one measurement. execute() runs them in order and calls save() after
each, and the scripts' save() rewrites their JSON (and Markdown) whole, atomically
(write_atomically: a temporary file in the same folder, then os.replace), so the file on disk is
always a valid, complete document of what has been measured so far. Before each task the budget
(--budget SECONDS) is asked; once it says no, the rest is skipped and listed. SIGTERM (what
`timeout` sends) and Ctrl-C stop the run the same way, with what was measured saved.

The result dict gains: "status" ("running", "complete", "stopped for budget", "interrupted by
SIGTERM" or "interrupted by SIGINT"), "stopped_for_budget", "budget_s", "elapsed_s" (from the first
measurement), "skipped" (each skipped measurement's label, in order) and "skipped_workloads" (their
units, each once, as the scripts' --workloads names them).
"""

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

# The exit status of a run stopped by SIGTERM, as `timeout` reports a run it stopped.
TERMINATED_STATUS = 124
INTERRUPTED_STATUS = 130


def write_atomically(path, text):
    """Replace path's contents with text in one step: readers see the old file or the new, whole."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def make_folders(*paths):
    for path in paths:
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)


class Budget:
    """A measurement starts only while the seconds since the first one, plus the last measurement of
    the same unit (a rough estimate of this one; none for a unit's first), stay within the budget.

    Counted from the first measurement: imports and setup before it (seconds) are not included, so
    leave them a margin under a hard time limit. None: no limit. 0: nothing is measured."""

    def __init__(self, seconds: Optional[float], clock=time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.start = None
        self.last = {}

    def elapsed(self) -> float:
        return 0.0 if self.start is None else self.clock() - self.start

    def allows(self, unit) -> bool:
        now = self.clock()
        if self.start is None:
            self.start = now
        if self.seconds is None:
            return True
        elapsed = now - self.start
        return elapsed < self.seconds and elapsed + self.last.get(unit, 0.0) <= self.seconds

    def spent(self, unit, seconds):
        self.last[unit] = seconds


@dataclass
class Task:
    section: str  # the result list its record (or list of records) goes to
    unit: str  # its workload or section, as --workloads names it; the budget estimates by unit
    label: str  # how the skip list names it
    measure: Callable[[], object]


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (as KeyboardInterrupt is for SIGINT) to stop a run."""


@contextlib.contextmanager
def sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def skipped_summary(result) -> str:
    """The units skipped, in words: "qrnn, qligru (2 of 3), kernels"."""
    counts = result.get("skipped_counts", {})
    parts = []
    for unit in result.get("skipped_workloads", []):
        skipped, total = counts.get(unit, (0, 0))
        parts.append(unit if skipped == total else f"{unit} ({skipped} of {total})")
    return ", ".join(parts)


def status_note(result) -> Optional[str]:
    """One line on a run that is not complete (None for a complete one, or one saved before runs had
    a status)."""
    status = result.get("status", "complete")
    if status == "complete":
        return None
    if status == "running":
        return f"**Partial run**: still running, or killed, {result.get('elapsed_s', 0):.0f} s in."
    budget = f", budget {result['budget_s']:g} s" if result.get("budget_s") is not None else ""
    return (
        f"**Partial run**: {status}{budget}, after {result.get('elapsed_s', 0):.0f} s; "
        f"skipped {len(result.get('skipped', []))} measurements: {skipped_summary(result) or 'none'}."
    )


def execute(tasks, result, budget: Budget, save: Callable[[dict], None], progress=None) -> str:
    """Run the tasks in order into result's lists, calling save(result) after each measurement and at
    the end; stop before the first task the budget refuses, or at SIGTERM or Ctrl-C (the measurement
    under way is lost and listed as skipped). Returns the status it leaves in result."""
    result.update(status="running", stopped_for_budget=False, budget_s=budget.seconds, elapsed_s=0.0)
    result.update(skipped=[], skipped_workloads=[], skipped_counts={})
    save(result)
    done = 0
    try:
        with sigterm_raises():
            for task in tasks:
                if not budget.allows(task.unit):
                    result.update(status="stopped for budget", stopped_for_budget=True)
                    break
                started = budget.clock()
                value = task.measure()
                budget.spent(task.unit, budget.clock() - started)
                result[task.section] += value if isinstance(value, list) else [value]
                done += 1
                result["elapsed_s"] = budget.elapsed()
                save(result)
                if progress is not None:
                    progress.update()
            else:
                result["status"] = "complete"
    except (Terminated, KeyboardInterrupt) as stop:
        result["status"] = "interrupted by " + ("SIGTERM" if isinstance(stop, Terminated) else "SIGINT")
    left = tasks[done:]
    units = list(dict.fromkeys(task.unit for task in left))
    result.update(
        elapsed_s=budget.elapsed(),
        skipped=[task.label for task in left],
        skipped_workloads=units,
        skipped_counts={
            unit: [sum(t.unit == unit for t in left), sum(t.unit == unit for t in tasks)] for unit in units
        },
    )
    save(result)
    return result["status"]


def exit_status(result) -> int:
    """0 for a complete run or one the budget stopped; 124 after SIGTERM; 130 after Ctrl-C."""
    status = result.get("status", "complete")
    if status == "interrupted by SIGTERM":
        return TERMINATED_STATUS
    if status == "interrupted by SIGINT":
        return INTERRUPTED_STATUS
    return 0
