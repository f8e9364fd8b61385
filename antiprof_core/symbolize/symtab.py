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


def build_symbol_table(entries: Iterable[tuple[int, int, bytes | str]]) -> SymbolTable:
    """From (start, size, name). A size of 0 reaches to the next symbol at a higher address.

    Aliases (several names at one start) keep the largest; the others are dropped before ends
    are computed, so a size-0 alias never ends where it starts.
    """
    ordered = sorted(  # by start, the largest first among aliases; tuples compare in C, no key function
        (start, -size, name.encode() if isinstance(name, str) else name)
        for start, size, name in entries
        if 0 < start < _TOP
    )
    starts = array("Q")
    sizes: list[int] = []
    offsets = array("Q", [0])
    names: list[bytes] = []
    total = 0
    for start, negative_size, name in ordered:
        if starts and starts[-1] == start:
            continue
        starts.append(start)
        sizes.append(-negative_size)
        names.append(name)
        total += len(name)
        offsets.append(total)
    ends = array("Q", starts)
    for index, size in enumerate(sizes):
        if size:
            ends[index] = min(starts[index] + size, _TOP)
        else:
            ends[index] = starts[index + 1] if index + 1 < len(starts) else starts[index] + 1
    return SymbolTable(starts, ends, offsets, b"".join(names))
