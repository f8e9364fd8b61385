"""JIT symbols from a process's perf map (node --perf-basic-prof, python -X perf, the JVM agents).

Each line is ``START SIZE NAME`` in hex; a later line for the same start wins (code was
recompiled there). JITs append as they compile, so the file is read incrementally: only the
bytes added since the last read, at most ``READ_CHUNK_BYTES`` per refresh and ``max_bytes`` in
all, so a huge or endless file costs bounded memory and time per window. The file lives in the
process's own ``/tmp`` under its PID as its namespace numbers it (``perf-NSPID.map``); the
caller opens it (see ``files.ProcessFiles``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from antiprof_core.symbolize.symtab import EMPTY, SymbolTable, build_symbol_table
from antiprof_core.symbolize.untrusted import read_at_most

PERF_MAP_MAX_BYTES = 32 << 20
READ_CHUNK_BYTES = 2 << 20
MAX_LINE_BYTES = 4096
_ADDRESS_LIMIT = 1 << 64


def perf_map_name(namespace_pid: int) -> str:
    """The path a JIT writes to, as the process sees it."""
    return f"/tmp/perf-{namespace_pid}.map"


def _entries(data: bytes) -> Iterable[tuple[int, int, bytes]]:
    for line in data.split(b"\n"):
        parts = line.split(b" ", 2)
        if len(parts) != 3 or len(line) > MAX_LINE_BYTES:
            continue
        try:
            start, size = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            continue
        if 0 < start < _ADDRESS_LIMIT and 0 <= size < _ADDRESS_LIMIT:
            yield start, size, parts[2].rstrip(b"\r")


def _latest(entries: Iterable[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    latest = {start: (size, name) for start, size, name in entries}
    return [(start, size, name) for start, (size, name) in latest.items()]


def parse_perf_map(text: str | bytes) -> SymbolTable:
    """A whole perf map's text as a table (later lines win)."""
    return build_symbol_table(_latest(_entries(text.encode() if isinstance(text, str) else text)))


# opens the perf map for reading, checked; returns (fd, stat) or raises OSError
Opener = Callable[[], tuple[int, os.stat_result]]


class PerfMap:
    """One process's perf map, read as it grows."""

    def __init__(
        self, opener: Opener, logger: logging.Logger, owner: str = "", max_bytes: int = PERF_MAP_MAX_BYTES
    ) -> None:
        self._open = opener
        self._logger = logger
        self._owner = owner  # "PID 123", for the log
        self._max_bytes = max_bytes
        self._identity: tuple[int, int] | None = None
        self._offset = 0  # bytes consumed, always at a line boundary
        self.symbols: SymbolTable = EMPTY
        self.refused: str | None = None  # why the file was not read, once

    def refresh(self) -> None:
        """Read what was appended since the last refresh (bounded); keep the old table on error."""
        try:
            fd, info = self._open()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._refuse(str(exc))
            return
        try:
            identity = (info.st_dev, info.st_ino)
            if identity != self._identity or info.st_size < self._offset:
                self._identity, self._offset, self.symbols = identity, 0, EMPTY
            if self._offset >= self._max_bytes:
                self._refuse(f"perf map beyond {self._max_bytes} bytes; the rest is not read")
                return
            wanted = min(info.st_size, self._max_bytes) - self._offset
            if wanted <= 0:
                return
            data = read_at_most(fd, self._offset, min(wanted, READ_CHUNK_BYTES))
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1
        if end == 0:
            if len(data) < READ_CHUNK_BYTES:
                return  # a line still being written
            end = len(data)  # a chunk without one newline: garbage, skip it
        self._offset += end
        fresh = list(_entries(data[:end]))
        if fresh:
            old = self.symbols
            kept = (
                (old.starts[i], old.ends[i] - old.starts[i], old.blob[old.name_offsets[i] : old.name_offsets[i + 1]])
                for i in range(len(old))
            )
            self.symbols = build_symbol_table(_latest([*kept, *fresh]))

    def _refuse(self, reason: str) -> None:
        if self.refused is None:
            self.refused = reason
            self._logger.warning("perf map of %s not read: %s", self._owner or "a process", reason)

    def lookup(self, address: int) -> tuple[str, int] | None:
        return self.symbols.lookup(address)
