"""Reading an agent run's JSON sink for whole-stack checks: which windows count, what share of a
process's samples reach ``main``, and whether each window's counters add up.

In ``dwarf`` mode a process is walked with frame pointers until its unwind tables are loaded
(counted as ``unwind_fallback``), so share checks only count windows after the last one with
a fallback: what a user sees once the agent has settled, however slowly tables load on a busy host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from antiprof_core.codec import window_from_dict
from antiprof_core.model import ProfileWindow, Sample
from antiprof_core.testing.perfdwarf import reaches_entry

__all__ = [
    "FALLBACK_COUNTER",
    "counters_add_up",
    "entry_share",
    "read_windows",
    "samples_of",
    "settled",
    "settled_sample_counts",
    "share_with",
    "wait_for_settled_samples",
]

FALLBACK_COUNTER = "unwind_fallback"
"""``Counters.stack_errors`` key: samples walked with frame pointers because tables were not loaded yet."""


def _raw_windows(path: Path) -> list[dict[str, Any]]:
    """Whole lines only: the last one may still be being written."""
    if not path.exists():
        return []
    windows = []
    for line in path.read_text().splitlines():
        try:
            windows.append(json.loads(line))
        except ValueError:
            continue
    return windows


def _settled_raw(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_fallback = max(
        (index for index, window in enumerate(windows) if window["counters"]["stack_errors"].get(FALLBACK_COUNTER, 0)),
        default=-1,
    )
    return windows[last_fallback + 1 :]


def settled_sample_counts(path: Path, pids: Collection[int]) -> dict[int, int]:
    """Samples of each pid in the windows after the last one with a fallback (cheap: no symbols decoded)."""
    counts = dict.fromkeys(pids, 0)
    for window in _settled_raw(_raw_windows(path)):
        for sample in window["samples"]:
            if sample["pid"] in counts:
                counts[sample["pid"]] += sample["count"]
    return counts


def wait_for_settled_samples(
    path: Path, pids: Collection[int], samples: int, timeout: float, alive: Callable[[], bool] = lambda: True
) -> dict[int, int]:
    """Poll until every pid has ``samples`` settled samples; raises AssertionError after ``timeout``
    or when ``alive()`` turns false (the agent died), saying how far it got."""
    deadline = time.monotonic() + timeout
    while True:
        counts = settled_sample_counts(path, pids)
        if min(counts.values()) >= samples:
            return counts
        if not alive():
            raise AssertionError(f"the agent exited with {counts} settled samples of {samples} wanted")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s with {counts} settled samples of {samples} wanted")
        time.sleep(0.5)


def read_windows(path: Path) -> list[ProfileWindow]:
    return [window_from_dict(raw) for raw in _raw_windows(path)]


def settled(windows: list[ProfileWindow]) -> list[ProfileWindow]:
    """The windows after the last one in which a process was walked with frame pointers for want of tables."""
    last = max(
        (index for index, window in enumerate(windows) if window.counters.stack_errors.get(FALLBACK_COUNTER, 0)),
        default=-1,
    )
    return windows[last + 1 :]


def samples_of(windows: Iterable[ProfileWindow], pid: int) -> list[Sample]:
    return [sample for window in windows for sample in window.samples if sample.pid == pid]


def share_with(samples: Iterable[Sample], test: Callable[[list[str | None]], bool]) -> float:
    """Share of samples (by count) whose stack's symbol names, leaf first, pass ``test``."""
    total = hits = 0
    for sample in samples:
        total += sample.count
        if test([frame.symbol for frame in sample.stack]):
            hits += sample.count
    return hits / total if total else 0.0


def entry_share(samples: Iterable[Sample]) -> float:
    """Share of samples whose stack reaches main (or a thread's start), as perfdwarf.entry_share counts it."""
    return share_with(samples, reaches_entry)


def counters_add_up(window: ProfileWindow) -> bool:
    """Every sample the program saw was delivered or counted as lost."""
    return window.counters.samples_seen == window.sample_count + window.counters.samples_lost
