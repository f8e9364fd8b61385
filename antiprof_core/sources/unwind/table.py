"""An unwind table: sorted row pcs and packed rows for one file, and how FDEs become one.

Rows are kept as two flat buffers (``array('Q')`` of pcs, bytes of 12-byte rows) so a table
of a large binary is a few MiB with no Python object per row, loads from the cache with two
copies, and a lookup is one bisect. Consecutive identical rows are merged; a gap between
functions gets a ``NO_FDE`` row so a pc there never borrows its neighbour's rule.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

from attrs import field, frozen

from antiprof_core.sources.unwind.cfi import Fde
from antiprof_core.sources.unwind.rows import ROW_SIZE, CfaKind, Row, pack_stop, unpack_row

_NO_FDE = pack_stop(CfaKind.NO_FDE)


@frozen(eq=False)
class UnwindTable:
    """Rows of one file, addressed by the file's virtual addresses (undo the load bias first)."""

    build_id: str | None
    pcs: array = field(repr=lambda pcs: f"<{len(pcs)} rows>")  # type: ignore[type-arg]
    rows: bytes = field(repr=False)
    counts: Mapping[str, int] = field(factory=dict)  # fdes, bad_fdes, rows by stop kind, ...

    def __len__(self) -> int:
        return len(self.pcs)

    def lookup(self, pc: int) -> Row | None:
        """The row in force at ``pc``, or None below the first FDE."""
        index = bisect.bisect_right(self.pcs, pc) - 1
        if index < 0:
            return None
        return unpack_row(self.pcs[index], self.rows, index)

    def __iter__(self) -> Iterator[Row]:
        for index, pc in enumerate(self.pcs):
            yield unpack_row(pc, self.rows, index)

    @property
    def size_bytes(self) -> int:
        return len(self.pcs) * 8 + len(self.rows)


def assemble(build_id: str | None, sources: Sequence[list[Fde]], counts: Mapping[str, int]) -> UnwindTable:
    """One table from FDE lists in priority order (.eh_frame first): the first FDE over a pc wins."""
    entries = [(fde[0], priority, fde) for priority, fdes in enumerate(sources) for fde in fdes]
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    pcs: list[int] = []
    rows: list[bytes] = []
    covered_end = 0
    last = None
    overlapping = 0
    for begin, _, (_, end, fde_pcs, fde_rows) in entries:
        if begin < covered_end or not fde_pcs:
            overlapping += 1
            continue
        if pcs and begin > covered_end and last != _NO_FDE:
            pcs.append(covered_end)
            rows.append(_NO_FDE)
            last = _NO_FDE
        for pc, row in zip(fde_pcs, fde_rows, strict=True):
            if row != last:
                pcs.append(pc)
                rows.append(row)
                last = row
        covered_end = end
    if pcs:
        pcs.append(covered_end)
        rows.append(_NO_FDE)
    packed = b"".join(rows)
    all_counts = Counter(counts)
    all_counts["overlapping_fdes"] += overlapping
    all_counts["rows"] = len(pcs)
    for kind, number in Counter(packed[8::ROW_SIZE]).items():
        if kind >= CfaKind.NO_FDE:
            all_counts[f"rows_{CfaKind(kind).name.lower()}"] = number
    return UnwindTable(build_id, array("Q", pcs), packed, dict(all_counts))
