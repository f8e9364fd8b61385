"""Kernel symbols from /proc/kallsyms: read and sorted once, then one bisect per address."""

from __future__ import annotations

from pathlib import Path

from antiprof_core.symbolize.elf import SymbolTable

_TEXT_TYPES = frozenset("tTwW")


def read_kallsyms(path: Path = Path("/proc/kallsyms")) -> SymbolTable:
    """Text symbols; each reaches to the next one. Empty when addresses are hidden (kptr_restrict)."""
    entries: list[tuple[int, str]] = []
    try:
        with path.open() as handle:
            for line in handle:
                parts = line.split(None, 3)
                if len(parts) < 3 or parts[1] not in _TEXT_TYPES:
                    continue
                address = int(parts[0], 16)
                if address:
                    entries.append((address, parts[2]))
    except OSError:
        return SymbolTable()
    entries.sort()
    starts: list[int] = []
    names: list[str] = []
    for address, name in entries:
        if starts and starts[-1] == address:
            continue
        starts.append(address)
        names.append(name)
    ends = [*starts[1:], starts[-1] + 4096] if starts else []
    return SymbolTable(tuple(starts), tuple(ends), tuple(names))
