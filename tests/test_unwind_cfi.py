"""The CFI decoder on hand-made .debug_frame and .eh_frame bytes: every rule kind the table
keeps, the expressions it recognises, and entries it must mark instead of trusting."""

from __future__ import annotations

import struct

import pytest

from antiprof_core.sources.unwind import CfaKind, RbpKind
from antiprof_core.sources.unwind.cfi import FrameSectionError, parse_frames
from antiprof_core.sources.unwind.table import UnwindTable, assemble
from antiprof_core.sources.unwind.walker import Registers, step

CIE_INSTRUCTIONS = b"\x0c\x07\x08\x90\x01"  # def_cfa rsp+8; ra at cfa-8


def debug_frame(*fdes: tuple[int, int, bytes]) -> bytes:
    """A 32-bit .debug_frame: one CIE (code 1, data -8, ra r16) and FDEs (begin, length, instructions)."""
    cie_body = struct.pack("<IB", 0xFFFF_FFFF, 1) + b"\0" + b"\x01\x78\x10" + CIE_INSTRUCTIONS
    data = struct.pack("<I", len(cie_body)) + cie_body
    for begin, length, instructions in fdes:
        body = struct.pack("<IQQ", 0, begin, length) + instructions
        data += struct.pack("<I", len(body)) + body
    return data


def table_of(data: bytes, is_eh: bool = False, address: int = 0) -> UnwindTable:
    fdes, counts = parse_frames(data, address, is_eh)
    return assemble(None, [fdes], counts)


def rules(table: UnwindTable) -> list[tuple[int, CfaKind, int, RbpKind, int]]:
    return [(row.pc, row.cfa_kind, row.cfa_offset, row.rbp_kind, row.rbp_offset) for row in table]


def test_a_frame_pointer_function_with_remember_and_restore_state() -> None:
    instructions = b"".join(
        [
            bytes([0x41, 0x0E, 16, 0x86, 2]),  # push rbp: cfa rsp+16, rbp at cfa-16
            bytes([0x43, 0x0D, 6]),  # mov rsp,rbp: cfa rbp+16
            bytes([0x0A, 0x4A, 0x0C, 7, 8, 0xC6]),  # remember; leave; ret: cfa rsp+8, rbp restored
            bytes([0x41, 0x0B]),  # restore_state: back in the body
        ]
    )
    table = table_of(debug_frame((0x1000, 0x20, instructions)))
    assert rules(table) == [
        (0x1000, CfaKind.RSP, 8, RbpKind.UNCHANGED, 0),
        (0x1001, CfaKind.RSP, 16, RbpKind.AT_CFA, -16),
        (0x1004, CfaKind.RBP, 16, RbpKind.AT_CFA, -16),
        (0x100E, CfaKind.RSP, 8, RbpKind.UNCHANGED, 0),
        (0x100F, CfaKind.RBP, 16, RbpKind.AT_CFA, -16),
        (0x1020, CfaKind.NO_FDE, 0, RbpKind.UNCHANGED, 0),
    ]
    assert table.lookup(0xFFF) is None


def test_rows_that_say_nothing_new_are_merged_and_gaps_are_marked() -> None:
    same = bytes([0x41, 0x0E, 8, 0x41, 0x2E, 0x10, 0x00])  # def_cfa_offset 8 again, GNU_args_size, nop
    table = table_of(debug_frame((0x2000, 0x10, same), (0x2010, 0x10, b""), (0x2040, 0x8, b"")))
    assert [(row.pc, row.cfa_kind) for row in table] == [
        (0x2000, CfaKind.RSP),  # two FDEs with one rule: one row
        (0x2020, CfaKind.NO_FDE),
        (0x2040, CfaKind.RSP),
        (0x2048, CfaKind.NO_FDE),
    ]


@pytest.mark.parametrize(
    ("expression", "kind", "offset", "param"),
    [
        (bytes([0x77, 8, 0x80, 0, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22]), CfaKind.PLT, 8, 11),  # binutils .plt
        (bytes([0x77, 8, 0x80, 0, 0x3F, 0x1A, 0x39, 0x2A, 0x33, 0x24, 0x22]), CfaKind.PLT, 8, 9),  # ld -z ibtplt
        (bytes([0x76, 0x78, 0x06]), CfaKind.DEREF_RBP, -8, 0),  # GCC's stack realignment
        (bytes([0x77, 0xA0, 0x01, 0x06]), CfaKind.CFA_EXPRESSION, 0, 0),  # a signal frame: *(rsp+160)
    ],
)
def test_cfa_expressions(expression: bytes, kind: CfaKind, offset: int, param: int) -> None:
    instructions = bytes([0x0F, len(expression)]) + expression
    row = table_of(debug_frame((0x3000, 0x10, instructions))).lookup(0x3000)
    assert row is not None and (row.cfa_kind, row.cfa_offset, row.param) == (kind, offset, param)


@pytest.mark.parametrize(
    ("instructions", "kind"),
    [
        (bytes([0x07, 16]), CfaKind.OUTERMOST),  # undefined rip: _start, clone3
        (bytes([0x0C, 10, 0]), CfaKind.CFA_REGISTER),  # cfa r10: the start of a realigning function
        (bytes([0x09, 16, 1]), CfaKind.RA_RULE),  # rip in rdx (longjmp)
        (bytes([0x10, 16, 2, 0x77, 0x10]), CfaKind.RA_RULE),  # rip by expression (signal frame)
        (bytes([0x3F]), CfaKind.BAD_FDE),  # no such op
        (bytes([0x0B]), CfaKind.BAD_FDE),  # restore_state with nothing remembered
        (bytes([0x0E]), CfaKind.BAD_FDE),  # an operand past the end
    ],
)
def test_rules_the_walk_cannot_follow_become_stop_rows(instructions: bytes, kind: CfaKind) -> None:
    table = table_of(debug_frame((0x4000, 0x10, instructions), (0x4010, 0x10, b"")))
    expected = [(0x4000, kind), (0x4010, CfaKind.RSP), (0x4020, CfaKind.NO_FDE)]
    assert [(row.pc, row.cfa_kind) for row in table] == expected
    assert table.counts["bad_fdes"] == (1 if kind == CfaKind.BAD_FDE else 0)
    assert table.counts[f"rows_{kind.name.lower()}"] == 1


def test_rbp_rules_other_than_a_save_slot_are_unknown() -> None:
    table = table_of(debug_frame((0x5000, 0x10, bytes([0x09, 6, 3, 0x41, 0x08, 6, 0x41, 0x86, 3]))))
    assert [(row.rbp_kind, row.rbp_offset) for row in table][:3] == [
        (RbpKind.UNKNOWN, 0),  # rbp in rbx
        (RbpKind.UNCHANGED, 0),  # same_value
        (RbpKind.AT_CFA, -24),
    ]


def eh_frame(address: int, begin: int, length: int, instructions: bytes) -> bytes:
    """A 'zPLR' CIE (pc-relative sdata4 pointers, as GCC emits for C++) and one FDE with an LSDA."""
    augmentation = b"\x9b" + struct.pack("<i", 0x100) + b"\x1b" + b"\x1b"  # personality, LSDA enc, FDE enc
    cie_body = struct.pack("<IB", 0, 1) + b"zPLR\0" + b"\x01\x78\x10" + bytes([len(augmentation)]) + augmentation
    cie_body += CIE_INSTRUCTIONS
    cie = struct.pack("<I", len(cie_body)) + cie_body
    fde_start = len(cie)
    pointer_at = fde_start + 8  # length, CIE pointer, then pc_begin
    fde_body = struct.pack("<Iii", fde_start + 4, begin - (address + pointer_at), length)
    fde_body += b"\x04" + struct.pack("<i", 0) + instructions
    return cie + struct.pack("<I", len(fde_body)) + fde_body + b"\0\0\0\0"


def test_eh_frame_with_personality_lsda_and_pc_relative_pointers() -> None:
    data = eh_frame(0x40_0000, 0x40_1230, 0x40, bytes([0x44, 0x0E, 32]))
    table = table_of(data, is_eh=True, address=0x40_0000)
    assert [(row.pc, row.cfa_kind, row.cfa_offset) for row in table] == [
        (0x40_1230, CfaKind.RSP, 8),
        (0x40_1234, CfaKind.RSP, 32),
        (0x40_1270, CfaKind.NO_FDE, 0),
    ]


def test_a_broken_entry_chain_is_a_section_error() -> None:
    data = debug_frame((0x1000, 0x10, b""))
    with pytest.raises(FrameSectionError):
        parse_frames(data + struct.pack("<II", 1000, 0), 0, False)  # an entry longer than the section
    with pytest.raises(FrameSectionError):
        parse_frames(data + struct.pack("<II", 4, 0x1000), 0, False)  # FDE pointing at no CIE
    with pytest.raises(FrameSectionError, match="more than 2 rows"):
        parse_frames(debug_frame((0x1000, 0x10, bytes([0x41, 0x0E, 16, 0x41, 0x0E, 24]))), 0, False, max_rows=2)


def test_walker_steps_through_rsp_rbp_and_plt_rows() -> None:
    plt = bytes([0x0E, 16, 0x46, 0x0E, 24, 0x4A, 0x0F, 11, 0x77, 8, 0x80, 0, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])
    table = table_of(debug_frame((0x1000, 0x20, bytes([0x41, 0x0E, 16, 0x86, 2, 0x43, 0x0D, 6])), (0x2000, 0x40, plt)))
    memory = {0x7F00: 0xAAAA, 0x7F08: 0x1234, 0x8000: 0x5678}

    def resolve(pc: int) -> tuple[UnwindTable, int]:
        return table, pc

    read = memory.get
    # in the body of a frame-pointer function: CFA = rbp + 16, ra at CFA-8, rbp at CFA-16
    assert step(Registers(0x1010, 0x7000, 0x7F00), resolve, read, leaf=True) == Registers(0x1234, 0x7F10, 0xAAAA)
    # a return address just past the function's last byte still belongs to it (looked up at pc-1)
    assert step(Registers(0x1020, 0x7000, 0x7F00), resolve, read, leaf=False) == Registers(0x1234, 0x7F10, 0xAAAA)
    assert step(Registers(0x1020, 0x7000, 0x7F00), resolve, read, leaf=True) == "no_fde"
    # PLT entries: rip & 15 below 11 -> CFA = rsp+8, at or above -> rsp+16 (after the push)
    assert step(Registers(0x2014, 0x8000, None), resolve, read, leaf=True) == Registers(0x5678, 0x8008, None)
    assert step(Registers(0x201B, 0x7FF8, None), resolve, read, leaf=True) == Registers(0x5678, 0x8008, None)
    assert step(Registers(0x1010, 0x7000, None), resolve, read, leaf=True) == "rbp_unknown"
    assert step(Registers(0x1010, 0x7000, 0x9000), resolve, read, leaf=True) == "bad_read"
