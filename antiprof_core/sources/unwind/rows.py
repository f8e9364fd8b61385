"""What one unwind row says: how to find the CFA, the return address and the caller's rbp.

A row holds from its pc up to the next row's pc. It is 12 packed bytes (``ROW``), so a table
is two flat buffers (pcs, rows) with no per-row Python objects, and the same bytes can go
into a BPF map later. Kinds from ``FIRST_STOP`` on say why a walk must stop at that pc.
"""

from __future__ import annotations

import enum
import struct

from attrs import frozen

ROW = struct.Struct("<iiBBBb")  # cfa_offset, rbp_offset, cfa_kind, rbp_kind, param, ra_offset
ROW_SIZE = ROW.size


class CfaKind(enum.IntEnum):
    RSP = 1  # CFA = rsp + cfa_offset
    RBP = 2  # CFA = rbp + cfa_offset
    PLT = 3  # CFA = rsp + cfa_offset + 8 * ((rip & 15) >= param): the lazy-binding PLT expression
    DEREF_RBP = 4  # CFA = *(rbp + cfa_offset): functions that realign their stack (GCC's drap)
    # From here on, the walk stops at this pc and counts the kind as the reason.
    NO_FDE = 16  # no FDE covers the pc (a gap between functions)
    OUTERMOST = 17  # the return address is undefined: the first frame of a thread (_start, clone3)
    CFA_REGISTER = 18  # CFA from a register the walk does not have (r10, r13 while realigning)
    CFA_EXPRESSION = 19  # a CFA expression other than the PLT and deref-rbp forms (signal frames)
    RA_RULE = 20  # the return address is not at CFA + N
    BAD_FDE = 21  # instructions that could not be decoded


FIRST_STOP = CfaKind.NO_FDE


class RbpKind(enum.IntEnum):
    UNCHANGED = 0  # the caller's rbp is the current rbp
    AT_CFA = 1  # the caller's rbp is saved at CFA + rbp_offset
    UNKNOWN = 2  # in another register or an expression: the caller's rbp cannot be recovered
    AT_RBP = 3  # saved at rbp + rbp_offset (this frame's rbp): GCC's stack realignment


@frozen
class Row:
    """One row, unpacked for tests, the reference walker and readers; the tables hold bytes."""

    pc: int
    cfa_kind: CfaKind
    cfa_offset: int = 0
    rbp_kind: RbpKind = RbpKind.UNCHANGED
    rbp_offset: int = 0
    ra_offset: int = -8
    param: int = 0

    @property
    def stops(self) -> bool:
        return self.cfa_kind >= FIRST_STOP


def pack_stop(kind: CfaKind) -> bytes:
    return ROW.pack(0, 0, kind, 0, 0, 0)


def unpack_row(pc: int, data: bytes | memoryview, index: int) -> Row:
    cfa_offset, rbp_offset, cfa_kind, rbp_kind, param, ra_offset = ROW.unpack_from(data, index * ROW_SIZE)
    return Row(pc, CfaKind(cfa_kind), cfa_offset, RbpKind(rbp_kind), rbp_offset, ra_offset, param)
