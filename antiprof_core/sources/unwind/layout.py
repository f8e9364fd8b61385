"""The byte layouts of the three maps the in-kernel unwinder reads (docs: the unwind-maps contract).

``struct unwind_row`` is the table's 12-byte row behind a u32 pc relative to the table's base, so
a file of a million rows costs 16 MiB of kernel memory, not 20; ``struct unwind_mapping`` and
``struct unwind_process`` say which rows a process's pcs use. Everything is little-endian and
packed, as the BPF program declares it.
"""

from __future__ import annotations

import struct
from array import array

from antiprof_core.sources.unwind.rows import ROW_SIZE
from antiprof_core.sources.unwind.table import UnwindTable

UNWIND_ROW = struct.Struct("<IiiBBBb")  # pc - base, cfa_offset, rbp_offset, cfa_kind, rbp_kind, param, ra_offset
UNWIND_MAPPING = struct.Struct("<QQQII")  # start, end, bias, row_start, row_count
UNWIND_PROCESS = struct.Struct("<II")  # first, count
MAX_PROCESS_MAPPINGS = 256  # the BPF walk's bound on one process's binary search
MAPPINGS_PER_PROCESS = 32  # unwind_mappings holds this many entries per unwind_processes slot
U32_SPAN = 1 << 32

assert UNWIND_ROW.size == 16 and UNWIND_MAPPING.size == 32 and UNWIND_PROCESS.size == 8


class TableTooLarge(Exception):
    """A table the maps cannot hold: its pcs do not fit u32 from its base, or it has more rows than the map."""


def kernel_rows(table: UnwindTable, capacity: int) -> tuple[int, bytes]:
    """(base, the rows as ``struct unwind_row`` bytes) for ``table``; raises TableTooLarge.

    Built with strided slice copies (sixteen C-level passes over the buffer), not a Python loop
    per row: python3.11's 65k rows take about a millisecond.
    """
    count = len(table.pcs)
    if count == 0:
        return 0, b""
    if count > capacity:
        raise TableTooLarge(f"{count} rows, more than the {capacity} of sampler.unwind_table_rows")
    base = table.pcs[0]
    span = table.pcs[-1] - base
    if span >= U32_SPAN:
        raise TableTooLarge(f"its pcs span {span:#x} bytes, more than a u32 offset from the first")
    relative = array("I", [pc - base for pc in table.pcs]).tobytes()
    if len(table.rows) != count * ROW_SIZE:
        raise TableTooLarge(f"{len(table.rows)} bytes of rows for {count} pcs")
    out = bytearray(count * UNWIND_ROW.size)
    for byte in range(4):
        out[byte :: UNWIND_ROW.size] = relative[byte::4]
    for byte in range(ROW_SIZE):
        out[4 + byte :: UNWIND_ROW.size] = table.rows[byte::ROW_SIZE]
    return base, bytes(out)


def pack_mapping(start: int, end: int, bias: int, row_start: int, row_count: int) -> bytes:
    return UNWIND_MAPPING.pack(start, end, bias % (1 << 64), row_start, row_count)


def pack_process(first: int, count: int) -> bytes:
    return UNWIND_PROCESS.pack(first, count)
