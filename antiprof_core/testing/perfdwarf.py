"""``perf record --call-graph dwarf`` as the reference for whole native stacks.

perf copies the top of the user stack (8 KiB by default) with every sample and unwinds it
afterwards from the files' .eh_frame (libdw): slow and heavy, but it walks binaries built
without frame pointers. Tests and benchmarks run it on the same process, at the same time as
the agent, and compare what share of stacks reach the program's entry.

    recording = record_dwarf([pid], seconds=5, directory=tmp_path)
    share = entry_share(recording.stacks)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from attrs import frozen

__all__ = [
    "ENTRY_SYMBOLS",
    "PerfFrame",
    "PerfRecording",
    "PerfStack",
    "PerfUnavailable",
    "entry_share",
    "parse_perf_script",
    "reaches_entry",
    "record_dwarf",
]

ENTRY_SYMBOLS = frozenset(
    {
        "main",
        "Py_BytesMain",
        "__libc_start_call_main",
        "__libc_start_main",
        "__libc_start_main_impl",
        "_start",
        "start_thread",
        "clone3",
        "__clone3",
        "clone",
        "__clone",
    }
)
"""Names a stack that was walked to its bottom contains: ``main`` (or CPython's ``Py_BytesMain``;
Debian's binaries are stripped, so ``main`` itself is often unnamed) and the libc start code
under it, or a thread's ``start_thread``/``clone3``. Versions (``@@GLIBC_2.34``) are ignored."""


class PerfUnavailable(RuntimeError):
    """perf is missing or could not record; the message says why (one line)."""


@frozen
class PerfFrame:
    address: int
    symbol: str | None  # None: perf printed [unknown]
    dso: str  # "inlined" for a frame perf added for inlined code


@frozen
class PerfStack:
    pid: int
    tid: int
    frames: tuple[PerfFrame, ...]  # leaf first: kernel frames, then user frames

    @property
    def symbols(self) -> list[str]:
        """Symbol names, leaf first, without version suffixes; unknown frames are left out."""
        return [frame.symbol.split("@", 1)[0] for frame in self.frames if frame.symbol]


@frozen
class PerfRecording:
    stacks: tuple[PerfStack, ...]
    data_bytes: int  # size of perf.data

    @property
    def bytes_per_sample(self) -> float:
        return self.data_bytes / max(len(self.stacks), 1)

    def of(self, pid: int) -> list[PerfStack]:
        return [stack for stack in self.stacks if stack.pid == pid]


def reaches_entry(symbols: Iterable[str | None]) -> bool:
    """Whether a stack (its frames' symbol names) was walked down to main or a thread's start."""
    return any(symbol is not None and symbol.split("@", 1)[0] in ENTRY_SYMBOLS for symbol in symbols)


def entry_share(stacks: Sequence[PerfStack]) -> float:
    """Share of ``stacks`` that reach the program's entry (0 when there are none)."""
    if not stacks:
        return 0.0
    return sum(reaches_entry(stack.symbols) for stack in stacks) / len(stacks)


def record_dwarf(
    pids: Sequence[int],
    seconds: float,
    directory: Path,
    frequency_hz: int = 99,
    stack_bytes: int = 8192,
    timeout: float = 300.0,
) -> PerfRecording:
    """Record ``pids`` for ``seconds`` with DWARF call graphs (cpu-clock, as the agent samples), then
    unwind with ``perf script``. Blocks for the whole recording; run it while the agent samples."""
    perf = shutil.which("perf")
    if perf is None:
        raise PerfUnavailable("perf is not installed: apt-get install linux-perf")
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "perf.data"
    record = subprocess.run(
        [perf, "record", "--quiet", "-e", "cpu-clock", "-F", str(frequency_hz),
         "--call-graph", f"dwarf,{stack_bytes}", "-p", ",".join(str(pid) for pid in pids),
         "-o", str(data), "--", "sleep", str(seconds)],
        capture_output=True, text=True, timeout=timeout + seconds, check=False,
    )  # fmt: skip
    if record.returncode != 0 or not data.exists():
        last = (record.stderr.strip().splitlines() or ["no output"])[-1]
        raise PerfUnavailable(f"perf record exited {record.returncode}: {last}")
    script = subprocess.run(
        [perf, "script", "--no-inline", "-i", str(data), "-F", "pid,tid,ip,sym,dso"],
        capture_output=True, text=True, errors="replace", timeout=timeout, check=False,
    )  # fmt: skip
    if script.returncode != 0:
        last = (script.stderr.strip().splitlines() or ["no output"])[-1]
        raise PerfUnavailable(f"perf script exited {script.returncode}: {last}")
    return PerfRecording(tuple(parse_perf_script(script.stdout)), data.stat().st_size)


_HEADER = re.compile(r"^\s*(\d+)/(\d+)\s*$")
_FRAME = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")


def parse_perf_script(text: str) -> list[PerfStack]:
    """Stacks from ``perf script -F pid,tid,ip,sym,dso``: a ``PID/TID`` line, then one line per frame."""
    stacks: list[PerfStack] = []
    header: tuple[int, int] | None = None
    frames: list[PerfFrame] = []
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if header is not None:
                stacks.append(PerfStack(header[0], header[1], tuple(frames)))
            header, frames = None, []
            continue
        if header is None:
            matched = _HEADER.match(line)
            if matched:
                header = (int(matched.group(1)), int(matched.group(2)))
            continue
        frame = _FRAME.match(line)
        if frame:
            symbol = frame.group(2)
            symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
            frames.append(PerfFrame(int(frame.group(1), 16), None if symbol == "[unknown]" else symbol, frame.group(3)))
    return stacks
