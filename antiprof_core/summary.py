"""The hottest functions of a run, for ``antiprof record``: an in-process consumer and a table."""

from __future__ import annotations

import collections
import os
import threading

from attrs import frozen

from antiprof_core.consumer import Consumer
from antiprof_core.model import Frame, ProfileWindow


@frozen
class FunctionCost:
    function: str
    module: str
    self_samples: int
    total_samples: int


def frame_label(frame: Frame) -> tuple[str, str]:
    """(function, module) as a person reads them; unnamed frames keep their address.

    The module is the mapped file's name, or for a Python function its source file's name (so
    Python's ``main`` in app.py is not the interpreter's C ``main``), else the kind ("kernel").
    """
    if frame.mapping is not None:
        module = os.path.basename(frame.mapping.path)
    elif frame.file:
        module = os.path.basename(frame.file)
    else:
        module = frame.kind.value
    return (frame.symbol or f"[unknown] {frame.address:#x}", module)


class HottestFunctions(Consumer):
    """Adds up self (leaf) and total (anywhere on the stack) samples per function.

    Ranked by self, then total, then nearness to the leaf: with whole stacks, ``_start``,
    ``__libc_start_main`` and ``main`` all cost 100%, and of those the caller nearest the hot
    code is the one worth a row.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._self: collections.Counter[tuple[str, str]] = collections.Counter()
        self._total: collections.Counter[tuple[str, str]] = collections.Counter()
        self._depth: collections.Counter[tuple[str, str]] = collections.Counter()  # frames from the leaf x samples
        self.samples = 0

    def consume(self, window: ProfileWindow) -> None:
        with self._lock:
            for sample in window.samples:
                if not sample.stack:
                    continue
                self.samples += sample.count
                self._self[frame_label(sample.stack[0])] += sample.count
                nearest: dict[tuple[str, str], int] = {}
                for depth, frame in enumerate(sample.stack):
                    nearest.setdefault(frame_label(frame), depth)
                for label, depth in nearest.items():
                    self._total[label] += sample.count
                    self._depth[label] += depth * sample.count

    def top(self, limit: int = 20) -> list[FunctionCost]:
        with self._lock:
            ranked = sorted(
                self._total,
                key=lambda key: (-self._self[key], -self._total[key], self._depth[key] / self._total[key], key),
            )
            return [FunctionCost(f, m, self._self[(f, m)], self._total[(f, m)]) for f, m in ranked[:limit]]
