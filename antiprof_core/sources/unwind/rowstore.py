"""Files' unwind tables in the ``unwind_rows`` array: which file owns which rows, and who gives way.

A file (by build ID, or device/inode/mtime without one) is loaded once however many processes map
it. Its table comes from the table worker; it is written into the lowest free run of rows that
fits, as ``struct unwind_row`` relative to the table's first pc. When no run fits, the least
recently sampled files give way: first those no live process maps, then, only if that is not
enough, files in use (their processes are rewritten to walk that file with frame pointers).
Rows given up are freed one window later (``RangeAllocator``), so a file may wait a window for room.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

from attrs import define, field

from antiprof_core.sources.bpf.maps import ArrayMap
from antiprof_core.sources.unwind.elfsections import UnwindInputError
from antiprof_core.sources.unwind.layout import TableTooLarge, kernel_rows
from antiprof_core.sources.unwind.processfiles import FileMapping
from antiprof_core.sources.unwind.ranges import RangeAllocator
from antiprof_core.sources.unwind.worker import TableResult, UnwindTableBuilder


class FileState(enum.Enum):
    PENDING = "pending"  # the worker is building or loading its table
    WAITING = "waiting"  # table ready, rows wait for room (freed one window late)
    LOADED = "loaded"  # rows in the map
    NO_TABLE = "no-table"  # no unwind information, unreadable, or not the file that was mapped
    TOO_LARGE = "too-large"  # more rows than the map, or pcs that do not fit u32 from the base
    EVICTED = "evicted"  # was loaded, gave way; built again (from the disk cache) if asked again


@define(eq=False)
class TableFile:
    key: str
    build_id: str | None
    state: FileState = FileState.PENDING
    future: Future[TableResult] | None = None
    base: int = 0  # the table's first pc: row pcs are relative to it
    row_start: int = 0
    row_count: int = 0
    rows: bytes | None = field(default=None, repr=False)  # kept only while WAITING
    users: set[int] = field(factory=set)  # tgids whose mappings point at it
    last_sampled: int = 0  # window number

    @property
    def settled(self) -> bool:
        """Nothing more will come for it without a new request (a process can be written)."""
        return self.state is not FileState.PENDING


class RowStore:
    """The rows map and the files in it; not thread-safe (``NativeUnwindMaps`` holds one lock)."""

    def __init__(
        self, rows_map: ArrayMap, builder: UnwindTableBuilder, logger: logging.Logger, on_built: Callable[[], None]
    ) -> None:
        self._map = rows_map
        self._on_built = on_built  # wakes whoever calls settle()
        self._builder = builder
        self._logger = logger
        self.ranges = RangeAllocator(rows_map.info.max_entries)
        self.files: dict[str, TableFile] = {}
        self.counts: Counter[str] = Counter()

    @property
    def capacity(self) -> int:
        return self.ranges.capacity

    def want(self, mapping: FileMapping, tgid: int, window: int) -> TableFile:
        """The file behind ``mapping``, its table asked for if it is not there; ``tgid`` becomes a user."""
        identity = mapping.file
        table_file = self.files.get(identity.key)
        if table_file is None:
            table_file = self.files[identity.key] = TableFile(identity.key, identity.build_id)
        if table_file.state in (FileState.PENDING, FileState.EVICTED) and table_file.future is None:
            table_file.state = FileState.PENDING
            table_file.future = self._builder.request(mapping.worker_path, identity.build_id, mapping.name)
            table_file.future.add_done_callback(lambda _: self._on_built())
        table_file.users.add(tgid)
        table_file.last_sampled = max(table_file.last_sampled, window)
        return table_file

    def drop_user(self, key: str, tgid: int) -> None:
        table_file = self.files.get(key)
        if table_file is not None:
            table_file.users.discard(tgid)

    def settle(self, window: int) -> set[str]:
        """Take finished builds and place waiting rows; returns the keys of files whose rows changed
        (loaded, evicted) or that settled without rows, so their users are rewritten."""
        changed: set[str] = set()
        for table_file in list(self.files.values()):
            future = table_file.future
            if table_file.state is FileState.PENDING and future is not None and future.done():
                table_file.future = None
                self._receive(table_file, future)
                changed.add(table_file.key)
            if table_file.state is FileState.WAITING:
                changed |= self._place(table_file, window)
        return changed

    def _receive(self, table_file: TableFile, future: Future[TableResult]) -> None:
        try:
            table = future.result().table
        except UnwindInputError as error:
            self._no_table(table_file, str(error))
            return
        except Exception as error:  # the worker died, was shut down, or a bug there: walk with frame pointers
            self._no_table(table_file, f"table worker failed: {type(error).__name__}: {error}")
            return
        if table.build_id != table_file.build_id:  # the worker opened another file than the one mapped
            self._no_table(table_file, f"the file read has build ID {table.build_id}, not {table_file.build_id}")
            return
        try:
            table_file.base, table_file.rows = kernel_rows(table, self.capacity)
        except TableTooLarge as error:
            table_file.state = FileState.TOO_LARGE
            self.counts["tables_too_large"] += 1
            self._logger.info("unwind table of %s not loaded: %s", table_file.key, error)
            return
        if not table_file.rows:
            self._no_table(table_file, "no rows")
            return
        table_file.state = FileState.WAITING

    def _no_table(self, table_file: TableFile, reason: str) -> None:
        table_file.state = FileState.NO_TABLE
        self.counts["files_without_table"] += 1
        self._logger.debug("no unwind table for %s: %s", table_file.key, reason)

    def _place(self, table_file: TableFile, window: int) -> set[str]:
        """Rows into the map if a run fits now, evicting what must give way; returns evicted keys."""
        assert table_file.rows is not None
        count = len(table_file.rows) // 16
        evicted: set[str] = set()
        start = self.ranges.allocate(count)
        if start is None:
            while not self.ranges.could_fit(count):
                victim = self._victim(table_file)
                if victim is None:
                    break
                self.evict(victim)
                evicted.add(victim.key)
            start = self.ranges.allocate(count)
            if start is None:  # room comes when the rows given up are freed, after the next window
                return evicted
        try:
            self._map.write_range(start, table_file.rows)
        except OSError as error:
            self.ranges.release(start, count)
            self._no_table(table_file, f"writing its rows failed: {error}")
            return evicted | {table_file.key}
        table_file.row_start, table_file.row_count, table_file.rows = start, count, None
        table_file.state = FileState.LOADED
        table_file.last_sampled = max(table_file.last_sampled, window)
        self.counts["files_loaded"] += 1
        self.counts["rows_loaded"] += count
        return evicted | {table_file.key}

    def _victim(self, incoming: TableFile) -> TableFile | None:
        """The loaded file to give way: unused before used, then least recently sampled."""
        loaded = [f for f in self.files.values() if f.state is FileState.LOADED and f is not incoming]
        if not loaded:
            return None
        return min(loaded, key=lambda f: (bool(f.users), f.last_sampled))

    def evict(self, table_file: TableFile) -> None:
        self.ranges.retire(table_file.row_start, table_file.row_count)
        table_file.state = FileState.EVICTED
        table_file.row_start = table_file.row_count = 0
        self.counts["evictions"] += 1
        if not table_file.users:  # nobody to rewrite: forget it altogether
            del self.files[table_file.key]

    def touch(self, key: str, window: int) -> None:
        table_file = self.files.get(key)
        if table_file is not None:
            table_file.last_sampled = window

    @property
    def loaded_files(self) -> int:
        return sum(1 for f in self.files.values() if f.state is FileState.LOADED)

    @property
    def waiting(self) -> bool:
        return any(f.state is FileState.WAITING for f in self.files.values())

    @property
    def pending(self) -> bool:
        return any(f.state is FileState.PENDING for f in self.files.values())
