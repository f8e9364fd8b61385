"""What the symbolizer knows of each process, read from /proc while it is alive.

A process is read as soon as the sampler first sees its PID (the poll thread calls ``note``),
so one that exits before the drain is still named; it is forgotten two windows after it is
gone. Only /proc text is read here: the ELF files it maps go through ``files.FileCache``.
"""

from __future__ import annotations

import bisect
import threading
from pathlib import Path

from attrs import define, field

from antiprof_core.model import Frame, Mapping, Process
from antiprof_core.symbolize import procfs
from antiprof_core.symbolize.files import ProcessView
from antiprof_core.symbolize.perfmap import PerfMap

MAX_FRAMES_PER_PROCESS = 50_000


@define
class ProcessState:
    pid: int
    name: str
    executable: str | None
    command_line: tuple[str, ...]
    container_id: str | None
    view: ProcessView
    namespace_pid: int
    entries: list[procfs.MapsEntry]  # executable mappings as read from /proc
    mappings: tuple[Mapping, ...] = ()  # built from entries on first use (that reads build IDs)
    starts: list[int] = field(factory=list)
    anonymous: list[bool] = field(factory=list)
    built: bool = False
    leaf_frames: dict[int, Frame] = field(factory=dict)  # by exact address (the interrupted IP)
    return_frames: dict[int, Frame] = field(factory=dict)  # by return address
    perf_map: PerfMap | None = None
    perf_map_window: int = -1  # the window the perf map was last refreshed in
    refreshed_in_window: int = -1
    dead_windows: int = 0

    def mapping_index(self, address: int) -> int | None:
        index = bisect.bisect_right(self.starts, address) - 1
        if index >= 0 and address < self.mappings[index].end:
            return index
        return None

    def remember(self, frames: dict[int, Frame], address: int, frame: Frame) -> None:
        if len(frames) >= MAX_FRAMES_PER_PROCESS:
            frames.clear()
        frames[address] = frame

    def to_process(self) -> Process:
        return Process(
            pid=self.pid,
            name=self.name,
            executable=self.executable,
            command_line=self.command_line,
            container_id=self.container_id,
            mappings=self.mappings,
        )


def read_process(pid: int, proc: Path, fallback_name: str = "") -> ProcessState | None:
    """Only /proc text here (fast, safe from the poll thread); None when the process is gone."""
    entries = sorted(procfs.read_maps(pid, proc, executable_only=True), key=lambda e: e.start)
    if not entries and not procfs.alive(pid, proc):
        return None
    status = procfs.read_status(pid, proc)
    return ProcessState(
        pid=pid,
        name=procfs.read_comm(pid, proc) or fallback_name,
        executable=procfs.read_exe(pid, proc),
        command_line=procfs.read_cmdline(pid, proc),
        container_id=procfs.read_container_id(pid, proc),
        view=ProcessView.of(pid, status.uid if status else None, proc),
        namespace_pid=status.namespace_pid if status else pid,
        entries=entries,
    )


def placeholder(pid: int, name: str, proc: Path) -> ProcessState:
    """A process that was gone before it could be read: named by the sampler's comm only."""
    return ProcessState(
        pid=pid,
        name=name,
        executable=None,
        command_line=(),
        container_id=None,
        view=ProcessView(pid, f"{proc}/{pid}/root", frozenset({0})),
        namespace_pid=pid,
        entries=[],
    )


class ProcessTable:
    """Every known process by PID; thread-safe for ``note`` from the sampler's poll thread."""

    def __init__(self, proc: Path) -> None:
        self._proc = proc
        self._lock = threading.Lock()
        self._processes: dict[int, ProcessState] = {}

    def __len__(self) -> int:
        return len(self._processes)

    def note(self, pid: int) -> None:
        with self._lock:
            if pid in self._processes:
                return
        state = read_process(pid, self._proc)
        if state is not None:
            with self._lock:
                self._processes.setdefault(pid, state)

    def get(self, pid: int, fallback_name: str) -> ProcessState:
        with self._lock:
            state = self._processes.get(pid)
        if state is None:
            state = read_process(pid, self._proc, fallback_name) or placeholder(pid, fallback_name, self._proc)
            with self._lock:
                state = self._processes.setdefault(pid, state)
        if not state.name and fallback_name:
            state.name = fallback_name
        return state

    def pids(self) -> list[int]:
        with self._lock:
            return list(self._processes)

    def forget_dead(self) -> list[int]:
        """Forget processes gone for two windows; returns their PIDs.

        Two, not one: a process that exits between the buffer switch and the drain still has
        samples in the next window.
        """
        forgotten = []
        live = procfs.live_pids(self._proc)
        with self._lock:
            for pid, state in list(self._processes.items()):
                if pid in live:
                    state.dead_windows = 0
                    continue
                state.dead_windows += 1
                if state.dead_windows >= 2:
                    del self._processes[pid]
                    forgotten.append(pid)
        return forgotten
