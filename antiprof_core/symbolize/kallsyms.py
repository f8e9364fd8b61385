"""Kernel symbols from /proc/kallsyms: read and sorted once, then one bisect per address."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

from antiprof_core.model import Frame, FrameKind, Mapping
from antiprof_core.symbolize.symtab import EMPTY, SymbolTable, build_symbol_table

_TEXT_TYPES = frozenset("tTwW")
K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        self.put_limit()

    def put_limit(self) -> None:
        """Forget the least recently used entries beyond ``capacity`` (after it was lowered)."""
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def read_kallsyms(path: Path = Path("/proc/kallsyms")) -> SymbolTable:
    """Text symbols; each reaches to the next one. Empty when addresses are hidden (kptr_restrict)."""
    entries: list[tuple[int, int, bytes]] = []
    try:
        with path.open("rb") as handle:
            for line in handle:
                parts = line.split(None, 3)
                if len(parts) < 3 or parts[1].decode(errors="replace") not in _TEXT_TYPES:
                    continue
                address = int(parts[0], 16)
                if address:
                    entries.append((address, 0, parts[2]))
    except (OSError, ValueError):
        return EMPTY
    table = build_symbol_table(entries)
    if len(table):
        table.ends[-1] = table.starts[-1] + 4096
    return table


FRAME_BYTES = 400  # one held kernel frame, measured (about 380): Frame, int key, LRU node, at most one name


class KernelSymbols:
    """Kernel frames by (address, leaf), reused across windows; kallsyms read on first use.

    Held within ``budget_bytes`` (a share of ``symbolizer.cache_mb``): a busy host hits a long
    tail of kernel addresses, and an unbounded cache of them grows for an hour. A miss costs one
    bisect. Frames of one function share its name string.
    """

    def __init__(self, kallsyms: Path, mapping: Mapping | None, budget_bytes: int = 4 << 20) -> None:
        self._path = kallsyms
        self._mapping = mapping
        self._table: SymbolTable | None = None
        self._frames: LruCache[int, Frame] = LruCache(max(budget_bytes // FRAME_BYTES, 1))
        self._names: dict[int, str] = {}  # by symbol index; emptied when it outgrows the frames

    @property
    def budget_bytes(self) -> int:
        return self._frames.capacity * FRAME_BYTES

    @budget_bytes.setter
    def budget_bytes(self, value: int) -> None:
        self._frames.capacity = max(value // FRAME_BYTES, 1)
        self._frames.put_limit()

    def frame(self, address: int, leaf: bool) -> Frame:
        key = address if leaf else ~address  # an int, not a tuple: one object less per entry
        frame = self._frames.get(key)
        if frame is not None:
            return frame
        if self._table is None:
            self._table = read_kallsyms(self._path)
        table = self._table
        lookup = address if leaf else address - 1
        index = bisect.bisect_right(table.starts, lookup) - 1
        symbol, offset = None, 0
        if index >= 0 and lookup < table.ends[index]:
            symbol = self._names.get(index)
            if symbol is None:
                if len(self._names) >= self._frames.capacity:
                    self._names.clear()
                symbol = self._names[index] = table.name(index)
            offset = lookup - table.starts[index] + (0 if leaf else 1)
        frame = Frame(address=address, kind=FrameKind.KERNEL, symbol=symbol, offset=offset, mapping=self._mapping)
        self._frames.put(key, frame)
        return frame

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        """The kallsyms table (read once, fixed) and the frames held."""
        return (self._table.nbytes if self._table is not None else 0) + FRAME_BYTES * len(self._frames)
