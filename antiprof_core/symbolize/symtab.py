"""A symbol table stored compactly: sorted address arrays and one blob of names.

A large binary has tens of thousands of function symbols (node: 78k). As Python objects that
is tens of MB; as three ``array('Q')`` and one ``bytes`` it is about 30 bytes a symbol, and a
lookup is still one bisect. Names are decoded only when a frame is named.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator

from attrs import field, frozen


@frozen(eq=False)
class SymbolTable:
    """Function symbols sorted by start; symbol ``i`` covers ``[starts[i], ends[i])``."""

    starts: array[int] = field(factory=lambda: array("Q"))
    ends: array[int] = field(factory=lambda: array("Q"))
    name_offsets: array[int] = field(factory=lambda: array("Q", [0]))  # name i is blob[o[i]:o[i+1]]
    blob: bytes = b""

    def lookup(self, address: int) -> tuple[str, int] | None:
        """(name, offset into it) of the function containing ``address``, or None."""
        index = bisect.bisect_right(self.starts, address) - 1
        if index < 0 or address >= self.ends[index]:
            return None
        return self.name(index), address - self.starts[index]

    def name(self, index: int) -> str:
        return self.blob[self.name_offsets[index] : self.name_offsets[index + 1]].decode(errors="replace")

    def names(self) -> Iterator[str]:
        return (self.name(index) for index in range(len(self.starts)))

    def index_of(self, name: str) -> int:
        return next(index for index, candidate in enumerate(self.names()) if candidate == name)

    @property
    def nbytes(self) -> int:
        """Memory held, for the cache budget."""
        arrays = (self.starts, self.ends, self.name_offsets)
        return sum(a.itemsize * a.buffer_info()[1] for a in arrays) + len(self.blob) + 200

    def __len__(self) -> int:
        return len(self.starts)


EMPTY = SymbolTable()
_TOP = (1 << 64) - 1  # no code starts at the last address


class SymbolTableBuilder:
    """Collects (start, size, name) into arrays and one bytearray, then sorts them into a table.

    About 30 bytes a symbol plus its name while collecting, where a list of tuples takes about
    200: reading node (140k entries from .symtab and .dynsym) peaked at 64 MiB that way, and each
    such peak left the agent's RSS higher for minutes.
    """

    def __init__(self) -> None:
        self._starts = array("Q")
        self._sizes = array("Q")
        self._name_ends = array("Q")
        self._blob = bytearray()

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, start: int, size: int, name: bytes) -> None:
        if 0 < start < _TOP:
            self._starts.append(start)
            self._sizes.append(min(size, _TOP))
            self._blob += name
            self._name_ends.append(len(self._blob))

    def truncate(self, length: int) -> None:
        """Forget what was added after the first ``length`` symbols (a source that failed halfway)."""
        if length < len(self._starts):
            del self._starts[length:], self._sizes[length:], self._name_ends[length:]
            del self._blob[self._name_ends[-1] if length else 0 :]

    def _name(self, index: int) -> bytes:
        return bytes(self._blob[self._name_ends[index - 1] if index else 0 : self._name_ends[index]])

    def build(self) -> SymbolTable:
        """Aliases (several names at one start) keep the largest, then the first name in byte order;
        the others are dropped before ends are computed, so a size-0 alias never ends where it starts."""
        count = len(self._starts)
        keys = [start << 32 | index for index, start in enumerate(self._starts)]  # one int each, sorted in C
        keys.sort()
        starts = array("Q")
        sizes = array("Q")
        offsets = array("Q", [0])
        blob = bytearray()
        position = 0
        while position < count:
            best = keys[position] & 0xFFFFFFFF
            start = self._starts[best]
            position += 1
            while position < count and keys[position] >> 32 == start:  # aliases
                other = keys[position] & 0xFFFFFFFF
                bigger = self._sizes[other] > self._sizes[best]
                if bigger or (self._sizes[other] == self._sizes[best] and self._name(other) < self._name(best)):
                    best = other
                position += 1
            starts.append(start)
            sizes.append(self._sizes[best])
            blob += self._blob[self._name_ends[best - 1] if best else 0 : self._name_ends[best]]
            offsets.append(len(blob))
        del keys
        ends = array("Q", starts)
        last = len(starts) - 1
        for index, size in enumerate(sizes):
            if size:
                ends[index] = min(starts[index] + size, _TOP)
            else:
                ends[index] = starts[index + 1] if index < last else starts[index] + 1
        return SymbolTable(starts, ends, offsets, bytes(blob))


def build_symbol_table(entries: Iterable[tuple[int, int, bytes | str]]) -> SymbolTable:
    """From (start, size, name). A size of 0 reaches to the next symbol at a higher address."""
    builder = SymbolTableBuilder()
    for start, size, name in entries:
        builder.add(start, size, name.encode() if isinstance(name, str) else name)
    return builder.build()
