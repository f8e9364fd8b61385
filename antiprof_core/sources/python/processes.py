"""Which sampled processes run CPython, told to the BPF walk through ``python_processes``; and the
names of the frames the walk records for them.

A process is looked at once, when the BPF program first samples it (and again after an exec):
:func:`~antiprof_core.symbolize.python.detect` finds its interpreter, version and offsets, off the
window's path on a thread of its own. A CPython that cannot be walked (older than 3.11, a
free-threaded build, a layout not known) is logged once per interpreter and reason, counted,
and profiled natively.
"""

from __future__ import annotations

import collections
import ctypes as ct
import logging
import queue
import threading
import time
from collections.abc import Sequence

from attrs import define

from antiprof_core.model import Frame, FrameKind
from antiprof_core.sources.bpf.maps import HashMap, MapInfo
from antiprof_core.sources.bpf.syscalls import BpfError
from antiprof_core.sources.python.layout import (
    PYTHON_PROCESS,
    SHIM,
    LayoutError,
    PythonFrames,
    pack_process,
    pid_namespace,
    unpack_frame,
)
from antiprof_core.symbolize.python import CodeNamer, ProcessMemory, PythonProcess, PythonReadError, Unsupported, detect

MAX_OPEN_MEMORY = 256  # /proc/PID/mem descriptors kept open; the least recently used are closed
# Code objects remembered over all processes (about 1 KiB each with their line tables), shared
# out evenly: a host of many Python processes does not multiply the agent's memory.
CODE_OBJECTS = 16384
MIN_CODE_OBJECTS = 256
COUNTER_NAMES = ("processes_found", "processes_unsupported", "processes_refused", "name_errors", "late")


@define
class _Known:
    process: PythonProcess
    namer: CodeNamer
    memory_open: bool = True


class PythonProcesses:
    """Owned by the BPF sampler: ``note_process`` from its poll thread, the rest from the window's."""

    def __init__(self, map_info: MapInfo, logger: logging.Logger, proc: str = "/proc") -> None:
        if map_info.value_size != PYTHON_PROCESS.size:
            size = map_info.value_size
            raise ValueError(f"BPF map python_processes has {size}-byte values, not {PYTHON_PROCESS.size}")
        self._map = HashMap(map_info)
        self._capacity = map_info.max_entries
        self._logger = logger
        self._proc = proc
        self._known: dict[int, _Known] = {}
        self._open: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        self._counts: collections.Counter[str] = collections.Counter()
        self._reported: collections.Counter[str] = collections.Counter()
        self._queue: queue.SimpleQueue[int | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="antiprof-python-detect", daemon=True)
        self._thread.start()

    def note_process(self, tgid: int) -> None:
        """A process sampled for the first time (or since an exec): is it a CPython?"""
        if tgid > 0:
            self._queue.put(tgid)

    def frames(self, tgid: int, recorded: Sequence[int], deadline: float | None = None) -> PythonFrames:
        """The frames the BPF walk recorded for ``tgid``, named; unnamed when the code object cannot be
        read, or past ``deadline`` (``time.monotonic()``: the window's naming deadline, counted as
        ``late``), so a process that fills its frames with made-up code objects cannot hold a window."""
        if deadline is not None and time.monotonic() > deadline:
            with self._lock:
                self._counts["late"] += len(recorded)
            return tuple((self._unnamed(value), False) for value in recorded if value != SHIM)
        with self._lock:
            known = self._known.get(tgid)
            if known is not None and not self._reopen(tgid, known):
                known = None
            out: list[tuple[Frame, bool]] = []
            for value in recorded:
                if value == SHIM:  # under the first frame of a call from C: that frame is the call's entry
                    if out:
                        out[-1] = (out[-1][0], True)
                    continue
                raw = unpack_frame(value)
                frame = None
                if known is not None:
                    try:
                        frame = known.namer.frame(raw)
                    except PythonReadError:
                        self._counts["name_errors"] += 1
                out.append((frame or self._unnamed(value), raw.entry))
            return tuple(out)

    @staticmethod
    def _unnamed(value: int) -> Frame:
        raw = unpack_frame(value)
        return Frame(raw.code_address, FrameKind.CPYTHON, None, max(raw.instruction_offset, 0))

    def forget(self, tgid: int) -> None:
        """The process is gone (or its PID about to be reused): its entry and descriptor go."""
        with self._lock:
            self._forget(tgid)

    def totals(self) -> dict[str, int]:
        """Every counter since start."""
        with self._lock:
            return {name: self._counts[name] for name in COUNTER_NAMES}

    def counters(self) -> dict[str, int]:
        """What each counter gained since the last call."""
        with self._lock:
            gained = {name: self._counts[name] - self._reported[name] for name in COUNTER_NAMES}
            self._reported = collections.Counter(self._counts)
        return gained

    def wait_idle(self, timeout: float) -> bool:
        """Until every noted process has been looked at (tests)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        with self._lock:
            for known in self._known.values():
                known.namer.memory.close()
            self._known.clear()

    # --- the detection thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            tgid = self._queue.get()
            if tgid is None:
                return
            if isinstance(tgid, threading.Event):
                tgid.set()
                continue
            try:
                self._look_at(tgid)
            except Exception:  # never let the thread die: the process is profiled natively
                self._logger.exception("Python detection failed for process %d", tgid)

    def _look_at(self, tgid: int) -> None:
        result = detect(tgid, self._proc)
        if isinstance(result, Unsupported):
            self._unsupported(tgid, result.interpreter, result.reason)
            return
        if result is None:
            self.forget(tgid)
            return
        try:
            value = pack_process(result, pid_namespace(tgid, self._proc))
            memory = ProcessMemory(tgid, self._proc)
        except (LayoutError, PythonReadError) as error:
            self._unsupported(tgid, result.interpreter, str(error))
            return
        with self._lock:
            self._forget(tgid)
            if len(self._known) >= self._capacity:
                memory.close()
                self._counts["processes_refused"] += 1
                return
            try:
                self._map.set(ct.c_uint32(tgid), (ct.c_char * PYTHON_PROCESS.size).from_buffer_copy(value))
            except BpfError as error:
                memory.close()
                self._counts["processes_refused"] += 1
                self._logger.debug("python_processes: process %d not written: %s", tgid, error)
                return
            self._known[tgid] = _Known(result, CodeNamer(result, memory))
            self._share_code_objects()
            self._mark_open(tgid)
            self._counts["processes_found"] += 1
        version = ".".join(map(str, result.version))
        self._logger.debug("process %d runs CPython %s (%s): its frames are read", tgid, version, result.interpreter)

    def _unsupported(self, tgid: int, interpreter: str, reason: str) -> None:
        with self._lock:
            self._forget(tgid)
            self._counts["processes_unsupported"] += 1
            first = (interpreter, reason) not in self._logged
            self._logged.add((interpreter, reason))
        if first:
            self._logger.warning("%s (process %d): Python frames not read: %s", interpreter, tgid, reason)

    # --- open descriptors (under the lock) -----------------------------------------------------

    def _forget(self, tgid: int) -> None:
        known = self._known.pop(tgid, None)
        if known is None:
            return
        known.namer.memory.close()
        self._open.pop(tgid, None)
        self._map.delete(ct.c_uint32(tgid))

    def _share_code_objects(self) -> None:
        share = max(CODE_OBJECTS // max(len(self._known), 1), MIN_CODE_OBJECTS)
        for known in self._known.values():
            known.namer.max_entries = share

    def _mark_open(self, tgid: int) -> None:
        self._open[tgid] = None
        self._open.move_to_end(tgid)
        while len(self._open) > MAX_OPEN_MEMORY:
            oldest, _ = self._open.popitem(last=False)
            closed = self._known.get(oldest)
            if closed is not None:
                closed.namer.memory.close()
                closed.memory_open = False

    def _reopen(self, tgid: int, known: _Known) -> bool:
        if not known.memory_open:
            try:
                known.namer.memory = ProcessMemory(tgid, self._proc)
            except PythonReadError:
                return False
            known.memory_open = True
        self._mark_open(tgid)
        return True
