"""The source line of a bytecode offset, from a 3.11+ ``co_linetable`` (the location table).

Each entry starts with a byte ``1cccclll``: ``llll + 1`` code units covered, code ``cccc`` saying
what follows. 15: no location; 14: long form (signed line delta, end-line delta, column + 1,
end column + 1, all varints); 13: line delta only; 10-12: line delta ``code - 10`` then two column
bytes; 0-9: same line, one column byte. Varints are 6-bit chunks, low first, 0x40 meaning "more";
a signed varint keeps the sign in its lowest bit. Only the line is kept here.
"""

from __future__ import annotations

MAX_VARINT_CHUNKS = 10


class _Reader:
    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def varint(self) -> int:
        value = shift = 0
        for _ in range(MAX_VARINT_CHUNKS):
            byte = self.data[self.position]
            self.position += 1
            value |= (byte & 0x3F) << shift
            shift += 6
            if not byte & 0x40:
                return value
        raise ValueError("varint too long")

    def svarint(self) -> int:
        value = self.varint()
        return -(value >> 1) if value & 1 else value >> 1


def line_for_offset(table: bytes, first_line: int, byte_offset: int) -> int | None:
    """The line of the instruction at ``byte_offset`` into the bytecode, None when it has none.

    A malformed table (hostile memory) gives None, never an exception.
    """
    if byte_offset < 0:
        return first_line  # not started yet: CPython reports the first line too
    target = byte_offset // 2  # code units
    reader = _Reader(table)
    line = first_line
    unit = 0
    try:
        while reader.position < len(table):
            head = table[reader.position]
            reader.position += 1
            if not head & 0x80:
                return None  # not at an entry start: corrupt
            code = (head >> 3) & 0x0F
            length = (head & 0x07) + 1
            current: int | None = line
            if code == 15:
                current = None
            elif code == 14:
                line += reader.svarint()
                current = line
                reader.varint()
                reader.varint()
                reader.varint()
            elif code == 13:
                line += reader.svarint()
                current = line
            elif code >= 10:
                line += code - 10
                current = line
                reader.position += 2
            else:
                reader.position += 1
            if target < unit + length:
                return current
            unit += length
    except (IndexError, ValueError):
        return None
    return None
