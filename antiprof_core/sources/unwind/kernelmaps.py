"""Keeping the in-kernel unwinder's maps filled: the sampler's one handle on native unwinding.

``NativeUnwindMaps`` owns the three maps of the unwind-maps contract. A new process is announced
by the poll thread (``note_process``: a queue append, nothing more); a planner thread of its own
reads the process's mappings, asks the table worker for the files' tables, writes their rows when
they arrive, then the process's mappings, then points the process's entry at them. Nothing here
runs on the window's path but ``on_window``, which only frees ranges retired a window ago and
forgets processes that exited.

Update rule (the BPF program must never read a half-written range): new rows or mappings go into
free ranges, the entry is pointed at them, and the old range is freed only after the next window
switch, when every program that could have read the old entry has finished.
"""

from __future__ import annotations

import collections
import ctypes as ct
import logging
import threading
from collections.abc import Collection, Mapping
from pathlib import Path

from attrs import define, field

from antiprof_core.config import SamplerConfig
from antiprof_core.sources.bpf.maps import ArrayMap, HashMap, MapInfo
from antiprof_core.sources.bpf.syscalls import BpfError
from antiprof_core.sources.unwind.layout import (
    MAX_PROCESS_MAPPINGS,
    UNWIND_MAPPING,
    UNWIND_PROCESS,
    UNWIND_ROW,
    pack_mapping,
)
from antiprof_core.sources.unwind.processfiles import FileMapping, ProcessFiles
from antiprof_core.sources.unwind.ranges import RangeAllocator
from antiprof_core.sources.unwind.rowstore import FileState, RowStore
from antiprof_core.sources.unwind.worker import UnwindTableBuilder
from antiprof_core.symbolize import procfs

MAP_NAMES = ("unwind_rows", "unwind_mappings", "unwind_processes")
COUNTER_NAMES = (
    "files_loaded",  # tables written into unwind_rows
    "rows_loaded",
    "evictions",  # files that gave way when the rows were full
    "tables_too_large",  # over the map, or pcs beyond a u32 offset
    "files_without_table",  # no unwind information, unreadable, or not the mapped file
    "processes_refused",  # unwind_processes or unwind_mappings full
    "mappings_left_out",  # beyond MAX_PROCESS_MAPPINGS in one process, or a file refused
)
IDLE_SECONDS = 0.5  # the planner's sleep when nothing wakes it
PLAN_BATCH = 64  # processes planned per pass of the planner before it writes entries
REFRESH_WINDOWS = 2  # a sampled process's mappings are read again this often (dlopen, exec)
MIB = 1024 * 1024


@define(eq=False)
class _Process:
    tgid: int
    mappings: list[FileMapping]
    first: int = 0  # its run in unwind_mappings (valid when count > 0)
    count: int = 0
    dirty: bool = True  # the run in the map is not what its files' states say
    sampled: int = 0  # the last window it had samples in
    checked: int = 0  # the window its mappings were last read in
    keys: set[str] = field(factory=set)


class NativeUnwindMaps:
    """Fills ``unwind_rows``, ``unwind_mappings`` and ``unwind_processes`` for the BPF walk.

    Takes ownership of ``builder`` (closed by ``close``). Thread-safe: ``note_process`` from the
    poll thread, ``on_window``/``counters``/``summary`` from the window's thread.
    """

    def __init__(
        self,
        maps: Mapping[str, MapInfo],
        config: SamplerConfig,
        logger: logging.Logger,
        builder: UnwindTableBuilder,
        proc: Path = procfs.PROC,
    ) -> None:
        for name, size in zip(MAP_NAMES, (UNWIND_ROW.size, UNWIND_MAPPING.size, UNWIND_PROCESS.size), strict=True):
            if name not in maps:
                raise ValueError(f"the BPF program has no {name} map")
            if maps[name].value_size != size:
                raise ValueError(f"BPF map {name} has {maps[name].value_size}-byte values, the layout needs {size}")
        self.config = config
        self._logger = logger
        self._builder = builder
        self._proc = proc
        self._rows = RowStore(ArrayMap(maps["unwind_rows"]), builder, logger, on_built=self._wake_planner)
        self._mappings_map = ArrayMap(maps["unwind_mappings"])
        self._processes_map = HashMap(maps["unwind_processes"])
        self._max_processes = min(config.unwind_processes, maps["unwind_processes"].max_entries)
        self._mapping_ranges = RangeAllocator(maps["unwind_mappings"].max_entries)
        self._files = ProcessFiles(proc)
        self._processes: dict[int, _Process] = {}
        self._window = 0
        self._lock = threading.Lock()
        self._queue: collections.deque[int] = collections.deque()
        self._announced: set[int] = set()  # noted by the BPF program: its entry may be gone (exec)
        self._queue_lock = threading.Lock()  # only around the queue and the idle flag: never held long
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._counts: collections.Counter[str] = collections.Counter()
        self._reported: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._logged_first_load = False
        self._thread = threading.Thread(target=self._run, name="antiprof-unwind-maps", daemon=True)
        self._thread.start()

    # --- the sampler's surface ---------------------------------------------------------------

    def note_process(self, tgid: int) -> None:
        """A process to walk with tables (new, or its PID reused): planned by the planner thread."""
        if tgid > 0:
            with self._queue_lock:
                self._idle.clear()
                self._queue.append(tgid)
                self._announced.add(tgid)
            self._wake.set()

    def recheck_process(self, tgid: int) -> None:
        """The BPF walk met code outside the mappings it has for ``tgid``: read them again (a
        library loaded since, or mapped by the loader after the first read)."""
        if tgid > 0:
            with self._queue_lock:
                self._idle.clear()
                self._queue.append(tgid)
            self._wake.set()

    def on_window(self, live: Collection[int] | None = None, sampled: Collection[int] = ()) -> None:
        """Once per window, after the drain: free what was retired a window ago, remember which files
        were ``sampled`` (PIDs with samples; a mapping of PID to samples puts the busiest first),
        forget processes not in ``live`` (read from /proc if None).

        A sampled process not planned yet goes to the front of the planner's queue, the busiest
        first: on a host where hundreds of processes start each second, the ones that use the CPU
        get their tables before those that only passed by.
        """
        if live is None:
            live = procfs.live_pids(self._proc)
        if isinstance(sampled, Mapping):
            sampled = sorted(sampled, key=sampled.__getitem__, reverse=True)
        with self._lock:
            self._window += 1
            freed = self._rows.ranges.advance()
            self._mapping_ranges.advance()
            refresh = []
            unplanned = []
            for tgid in sampled:
                process = self._processes.get(tgid)
                if process is None:
                    unplanned.append(tgid)
                else:
                    process.sampled = self._window
                    for key in process.keys:
                        self._rows.touch(key, self._window)
                    if self._window - process.checked >= REFRESH_WINDOWS:  # a library loaded since, or an exec
                        process.checked = self._window
                        refresh.append(tgid)
            for tgid in [tgid for tgid in self._processes if tgid not in live]:
                if not procfs.alive(tgid, self._proc):  # not one planned after ``live`` was read
                    self._forget(tgid)
            loaded = self._rows.loaded_files
            retry = bool(freed) and self._rows.waiting
        if retry or refresh or unplanned:  # rows freed: the files waiting for room are placed now
            with self._queue_lock:
                self._idle.clear()
                self._queue.extend(refresh)
                self._queue.extendleft(reversed(unplanned))
            self._wake.set()
        if loaded and not self._logged_first_load:
            self._logged_first_load = True
            self._logger.info("%s", self.summary())

    def counters(self) -> dict[str, int]:
        """What each counter gained since the last call (a window's share; they only grow)."""
        totals = self.totals()
        gained = {name: totals[name] - self._reported[name] for name in COUNTER_NAMES}
        self._reported = totals
        return gained

    def totals(self) -> dict[str, int]:
        """Every counter since start."""
        with self._lock:
            counts = self._counts + self._rows.counts
            counts["mappings_left_out"] += self._files.unreadable
            return {name: counts[name] for name in COUNTER_NAMES}

    def summary(self) -> str:
        """One line for the log: what is loaded and the kernel memory it takes."""
        with self._lock:
            files = self._rows.loaded_files
            rows = self._rows.ranges.used
            processes = sum(1 for process in self._processes.values() if process.count)
            capacity = self._rows.capacity
        return (
            f"unwind tables: {files} files, {rows} rows ({rows * UNWIND_ROW.size / MIB:.1f} MiB of kernel memory,"
            f" of {capacity * UNWIND_ROW.size / MIB:.0f} MiB reserved) for {processes} processes"
        )

    def wait_idle(self, timeout: float) -> bool:
        """Until every noted process is planned and every table asked for is in (tests, benchmarks)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._builder.close()

    # --- the planner thread ------------------------------------------------------------------

    def _wake_planner(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._work()
            except Exception:  # never let the planner die: log and try again on the next wake
                self._logger.exception("unwind maps: planning failed")

    def _work(self) -> None:
        # A bounded batch per pass, then the writes: under heavy process churn the queue may never
        # run dry, and the processes already planned must still get their entries.
        planned: set[int] = set()
        for _ in range(PLAN_BATCH):
            try:
                tgid = self._queue.popleft()
            except IndexError:
                break
            if tgid in planned:  # noted twice (PID reuse, sampled again): once per pass is enough
                continue
            planned.add(tgid)
            with self._queue_lock:
                announced = tgid in self._announced
                self._announced.discard(tgid)
            mappings = self._files.mappings(tgid)  # /proc and file headers: outside the lock
            with self._lock:
                self._plan(tgid, mappings, rewrite=announced)
        with self._lock:
            for key in self._rows.settle(self._window):
                table_file = self._rows.files.get(key)
                users = table_file.users if table_file is not None else set()
                for tgid in users:
                    if tgid in self._processes:
                        self._processes[tgid].dirty = True
            for process in list(self._processes.values()):
                if process.dirty and all(self._file_settled(key) for key in process.keys):
                    self._write(process)
            # a process still dirty waits for a pending table; a file waiting for room is not
            # work to wait for here: room comes with the next window
            busy = self._rows.pending
        with self._queue_lock:
            if self._queue:
                self._wake.set()  # the rest of the queue on the next pass
            elif not busy:
                self._idle.set()

    def _file_settled(self, key: str) -> bool:
        table_file = self._rows.files.get(key)
        return table_file is None or table_file.settled

    def _plan(self, tgid: int, mappings: list[FileMapping], rewrite: bool = False) -> None:
        """``rewrite``: write the entry even if nothing moved (the BPF program deleted it at an exec)."""
        process = self._processes.get(tgid)
        if not mappings:
            if process is not None:
                self._forget(tgid)
            return
        if process is None and len(self._processes) >= self._max_processes:
            self._counts["processes_refused"] += 1
            return
        if len(mappings) > MAX_PROCESS_MAPPINGS:
            self._counts["mappings_left_out"] += len(mappings) - MAX_PROCESS_MAPPINGS
            mappings = mappings[:MAX_PROCESS_MAPPINGS]
        if process is None:
            process = self._processes[tgid] = _Process(tgid, mappings, checked=self._window)
        elif _layout(process.mappings) == _layout(mappings):  # announced again, nothing moved
            process.dirty = process.dirty or rewrite
            return
        keys = {mapping.file.key for mapping in mappings}
        for key in process.keys - keys:
            self._rows.drop_user(key, tgid)
        for mapping in mappings:
            self._rows.want(mapping, tgid, self._window)
        process.mappings, process.keys, process.dirty = mappings, keys, True

    def _write(self, process: _Process) -> None:
        """The process's mappings with loaded tables into a free run, then its entry, then the old run retired."""
        process.dirty = False
        runs = []
        for mapping in process.mappings:
            table_file = self._rows.files.get(mapping.file.key)
            if table_file is not None and table_file.state is FileState.LOADED:
                bias = mapping.load_bias + table_file.base
                runs.append(pack_mapping(mapping.start, mapping.end, bias, table_file.row_start, table_file.row_count))
        old_first, old_count = process.first, process.count
        key = ct.c_uint32(process.tgid)
        if not runs:  # nothing to walk with tables: no entry, the whole stack by frame pointers
            if old_count:
                self._processes_map.delete(key)
                self._mapping_ranges.retire(old_first, old_count)
                process.count = 0
            return
        first = self._mapping_ranges.allocate(len(runs))
        if first is None:
            self._counts["processes_refused"] += 1
            return
        try:
            self._mappings_map.write_range(first, b"".join(runs))
            value = (ct.c_char * UNWIND_PROCESS.size).from_buffer_copy(UNWIND_PROCESS.pack(first, len(runs)))
            self._processes_map.set(key, value)
        except BpfError as error:  # E2BIG: unwind_processes is full
            self._mapping_ranges.release(first, len(runs))
            self._counts["processes_refused"] += 1
            self._logger.debug("unwind maps: process %d not written: %s", process.tgid, error)
            return
        process.first, process.count = first, len(runs)
        if old_count:
            self._mapping_ranges.retire(old_first, old_count)

    def _forget(self, tgid: int) -> None:
        process = self._processes.pop(tgid)
        for key in process.keys:
            self._rows.drop_user(key, tgid)
        if process.count:
            self._processes_map.delete(ct.c_uint32(tgid))
            self._mapping_ranges.retire(process.first, process.count)


def _layout(mappings: list[FileMapping]) -> list[tuple[int, int, int, str]]:
    return [(m.start, m.end, m.load_bias, m.file.key) for m in mappings]
