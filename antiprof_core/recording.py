"""What ``antiprof record`` shows while it runs and after: progress, and the files this run wrote.

Progress goes to stderr (stdout keeps the table): a live bar with elapsed and remaining time and
the samples so far on a terminal, an occasional plain line otherwise (logs, CI, pipes).
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from antiprof_core.consumer import Consumer
from antiprof_core.model import ProfileWindow

_PLAIN_EVERY = 2.0  # seconds between plain progress lines, at least (or a tenth of the run)


class SampleCounter(Consumer):
    """An in-process consumer: when sampling started (its first start) and how many samples came in."""

    name = "progress"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.started_at = 0.0
        self.samples = 0
        self.windows = 0

    def start(self) -> None:
        if not self.started.is_set():
            self.started_at = time.monotonic()
            self.started.set()

    def consume(self, window: ProfileWindow) -> None:
        self.samples += window.sample_count
        self.windows += 1


@contextmanager
def show_progress(
    counter: SampleCounter, duration: float, starting: str, console: Console | None = None
) -> Iterator[Console | None]:
    """Shows ``starting`` until sampling starts, then elapsed, remaining and samples, until the block ends.

    Yields the live console on a terminal (so logs can be printed above the bar), else None.
    """
    console = console or Console(stderr=True)
    done = threading.Event()
    if console.is_terminal:
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("elapsed,"),
            TimeRemainingColumn(),
            TextColumn("left, {task.fields[samples]:,} samples"),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(starting, total=duration, samples=0, start=False)

            def update() -> None:
                counter.started.wait()
                progress.start_task(task)
                progress.update(task, description="sampling")
                while not done.wait(0.2):
                    elapsed = min(time.monotonic() - counter.started_at, duration)
                    progress.update(task, completed=elapsed, samples=counter.samples)

            thread = threading.Thread(target=update, name="record-progress", daemon=True)
            thread.start()
            try:
                yield console
            finally:
                done.set()
                counter.started.set()  # the updater may still wait for a start that never came
                thread.join(1.0)
        return
    stream = sys.stderr
    _line(stream, starting)

    def report() -> None:
        counter.started.wait()
        if done.is_set():
            return
        _line(stream, f"sampling for {duration:g}s")
        last = time.monotonic()
        while not done.wait(0.5):
            now = time.monotonic()
            if now - last >= max(_PLAIN_EVERY, duration / 10):
                elapsed = min(now - counter.started_at, duration)
                _line(
                    stream,
                    f"sampling: {elapsed:.0f}s elapsed, {duration - elapsed:.0f}s left, {counter.samples:,} samples",
                )
                last = now

    thread = threading.Thread(target=report, name="record-progress", daemon=True)
    thread.start()
    try:
        yield None
    finally:
        done.set()
        counter.started.set()
        thread.join(1.0)


def _line(stream: TextIO, text: str) -> None:
    stream.write(f"antiprof: {text}\n")
    stream.flush()


FileState = tuple[int, int, int, int]  # device, inode, size, mtime (ns)


def snapshot(directory: Path) -> dict[str, FileState]:
    """Regular files in ``directory`` as they are now (symlinks are not ours and are left out)."""
    found: dict[str, FileState] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return found
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found[entry.name] = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def written_since(directory: Path, before: dict[str, FileState]) -> list[Path]:
    """Files created or changed since ``before`` was taken (a rewrite by rename is a new inode), sorted."""
    after = snapshot(directory)
    return [directory / name for name, state in sorted(after.items()) if before.get(name) != state]
