"""JIT symbols from ``/tmp/perf-PID.map`` (node --perf-basic-prof, python -X perf, the JVM agents).

Each line is ``START SIZE NAME`` in hex. JITs append as they compile, so the file is re-read
when it has grown; a later line for the same start wins (code was recompiled there).
"""

from __future__ import annotations

from pathlib import Path

from antiprof_core.symbolize.elf import SymbolTable, build_symbol_table


def perf_map_path(pid: int) -> Path:
    return Path(f"/tmp/perf-{pid}.map")


def parse_perf_map(text: str) -> SymbolTable:
    latest: dict[int, tuple[int, str]] = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3:
            continue
        try:
            start, size = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            continue
        latest[start] = (size, parts[2])
    return build_symbol_table([(start, size, name) for start, (size, name) in latest.items()])


class PerfMap:
    """One process's perf map, reloaded when the file changes size."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._size = -1
        self._symbols = SymbolTable()

    def symbols(self) -> SymbolTable:
        try:
            size = self._path.stat().st_size
        except OSError:
            return self._symbols
        if size != self._size:
            try:
                text = self._path.read_text(errors="replace")
            except OSError:
                return self._symbols
            self._symbols = parse_perf_map(text)
            self._size = size
        return self._symbols

    def lookup(self, address: int) -> tuple[str, int] | None:
        return self.symbols().lookup(address)
