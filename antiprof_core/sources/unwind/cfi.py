"""Decode .eh_frame / .debug_frame into unwind rows: CIEs, FDEs and the x86-64 DW_CFA ops.

Written for the job rather than taken from pyelftools, whose general decoder needs about a
minute for libc and fails on one of its entries. Only three registers matter for a walk (the
CFA's base, rbp and the return address), so the interpreter keeps just those and skips every
other rule while staying in step with the bytes. A malformed FDE becomes a ``BAD_FDE`` row
(the walk stops there) instead of failing the file; a malformed section structure raises
:class:`FrameSectionError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from antiprof_core.sources.unwind.rows import ROW, CfaKind, RbpKind, pack_stop

MAX_REMEMBERED = 64  # DW_CFA_remember_state nesting; compilers use one or two levels
MAX_FDE_SIZE = 1 << 20  # real FDEs are at most a few KiB; a bigger one is marked bad, not run

_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_S16 = struct.Struct("<h").unpack_from
_S32 = struct.Struct("<i").unpack_from
_S64 = struct.Struct("<q").unpack_from
_PACK = ROW.pack

_RBP, _RSP, _RA = 6, 7, 16
_RA_UNDEFINED, _RA_UNSUPPORTED = 1000, 1001  # ra_offset sentinels outside the i8 range

# The state the interpreter keeps, as one tuple so remember/restore and CIE caching are cheap:
# (cfa_register, cfa_offset, cfa_expression_row or None, rbp_kind, rbp_offset, ra_offset)
State = tuple[int, int, Any, int, int, int]
_INITIAL: State = (_RSP, 8, None, RbpKind.UNCHANGED, 0, -8)


class FrameSectionError(Exception):
    """The section's entry structure is broken (not one FDE's instructions)."""


class _BadInstructions(Exception):
    pass


# --- LEB128 and encoded pointers -----------------------------------------------------------


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _BadInstructions("LEB128 longer than 64 bits")


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return (result - (1 << shift) if byte & 0x40 else result), pos
        if shift > 63:
            raise _BadInstructions("LEB128 longer than 64 bits")


_FIXED: dict[int, tuple[Callable[..., tuple[int]], int]] = {
    0x00: (_U64, 8),
    0x02: (_U16, 2),
    0x03: (_U32, 4),
    0x04: (_U64, 8),
    0x0A: (_S16, 2),
    0x0B: (_S32, 4),
    0x0C: (_S64, 8),
}


def read_encoded(data: bytes, pos: int, encoding: int, section_address: int) -> tuple[int, int]:
    """A DW_EH_PE_* pointer at ``pos``: (value, next pos). Only absolute and pc-relative apply."""
    fmt = encoding & 0x0F
    field_address = section_address + pos
    if fmt in _FIXED:
        reader, size = _FIXED[fmt]
        if pos + size > len(data):
            raise _BadInstructions("pointer past the end")
        value = reader(data, pos)[0]
        pos += size
    elif fmt == 0x01:
        value, pos = _uleb(data, pos)
    elif fmt == 0x09:
        value, pos = _sleb(data, pos)
    else:
        raise _BadInstructions(f"pointer format {fmt:#x}")
    application = encoding & 0x70
    if application == 0x10:
        value += field_address
    elif application != 0:
        raise _BadInstructions(f"pointer application {application:#x}")
    return value & 0xFFFF_FFFF_FFFF_FFFF, pos


# --- CFA expressions the walk understands --------------------------------------------------


def _cfa_expression(block: bytes) -> bytes:
    """The packed row for a DW_CFA_def_cfa_expression block (rbp and ra filled in later)."""
    # The lazy PLT: DW_OP_breg7 N; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_litT; DW_OP_ge;
    # DW_OP_lit3; DW_OP_shl; DW_OP_plus  (ld's lazy .plt: T = 11, with -z ibtplt T = 9)
    if (
        len(block) == 11
        and block[0] == 0x77
        and block[1] < 0x40
        and block[2:6] == b"\x80\x00\x3f\x1a"
        and 0x30 <= block[6] <= 0x4F
        and block[7:] == b"\x2a\x33\x24\x22"
    ):
        return _PACK(block[1], 0, CfaKind.PLT, 0, block[6] - 0x30, 0)
    # Stack realignment (GCC's DRAP): DW_OP_breg6 N; DW_OP_deref
    if len(block) >= 3 and block[0] == 0x76 and block[-1] == 0x06:
        try:
            offset, end = _sleb(block, 1)
        except (_BadInstructions, IndexError):
            offset, end = 0, -1
        if end == len(block) - 1:
            return _PACK(offset, 0, CfaKind.DEREF_RBP, 0, 0, 0)
    return pack_stop(CfaKind.CFA_EXPRESSION)


def _pack_state(state: State) -> bytes:
    cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset = state
    if ra_offset == _RA_UNDEFINED:
        return pack_stop(CfaKind.OUTERMOST)
    if ra_offset == _RA_UNSUPPORTED or not -128 <= ra_offset <= 127:
        return pack_stop(CfaKind.RA_RULE)
    if expression is not None:
        if expression[8] >= CfaKind.NO_FDE:
            return bytes(expression)
        kind = expression[8]
        cfa_offset = ROW.unpack_from(expression)[0]
        param = expression[10]
    elif cfa_register == _RSP:
        kind, param = CfaKind.RSP, 0
    elif cfa_register == _RBP:
        kind, param = CfaKind.RBP, 0
    else:
        return pack_stop(CfaKind.CFA_REGISTER)
    if not -(1 << 31) <= cfa_offset < 1 << 31 or not -(1 << 31) <= rbp_offset < 1 << 31:
        return pack_stop(CfaKind.CFA_REGISTER)
    return _PACK(cfa_offset, rbp_offset, kind, rbp_kind, param, ra_offset)


# --- the interpreter -------------------------------------------------------------------------


def interpret(
    data: bytes,
    pos: int,
    end: int,
    state: State,
    initial: State,
    loc: int,
    code_align: int,
    data_align: int,
    encoding: int,
    section_address: int,
    pcs: list[int] | None,
    rows: list[bytes] | None,
) -> State:
    """Run CFA instructions ``data[pos:end]`` from ``state``; append (pc, row) when rows change.

    ``initial`` is the CIE's state (what DW_CFA_restore goes back to). With ``pcs`` None (a
    CIE's initial instructions) nothing is emitted and the final state is returned.
    """
    cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset = state
    remembered: list[State] = []
    last = rows[-1] if rows else None
    while pos < end:
        op = data[pos]
        pos += 1
        high = op & 0xC0
        if high:
            low = op & 0x3F
            if high == 0x40:  # DW_CFA_advance_loc
                delta = low * code_align
            elif high == 0x80:  # DW_CFA_offset
                byte = data[pos]
                pos += 1
                if byte < 0x80:
                    value = byte
                else:
                    value, pos = _uleb(data, pos - 1)
                if low == _RBP:
                    rbp_kind, rbp_offset = RbpKind.AT_CFA, value * data_align
                elif low == _RA:
                    ra_offset = value * data_align
                continue
            else:  # DW_CFA_restore
                if low == _RBP:
                    rbp_kind, rbp_offset = initial[3], initial[4]
                elif low == _RA:
                    ra_offset = initial[5]
                continue
        elif op == 0x02:  # DW_CFA_advance_loc1
            delta = data[pos] * code_align
            pos += 1
        elif op == 0x03:  # DW_CFA_advance_loc2
            delta = _U16(data, pos)[0] * code_align
            pos += 2
        elif op == 0x04:  # DW_CFA_advance_loc4
            delta = _U32(data, pos)[0] * code_align
            pos += 4
        elif op == 0x0E:  # DW_CFA_def_cfa_offset
            byte = data[pos]
            pos += 1
            if byte < 0x80:
                cfa_offset = byte
            else:
                cfa_offset, pos = _uleb(data, pos - 1)
            continue
        elif op == 0x0C:  # DW_CFA_def_cfa
            cfa_register, pos = _uleb(data, pos)
            cfa_offset, pos = _uleb(data, pos)
            expression = None
            continue
        elif op == 0x0D:  # DW_CFA_def_cfa_register
            cfa_register, pos = _uleb(data, pos)
            expression = None
            continue
        elif op == 0x00:  # DW_CFA_nop
            continue
        elif op == 0x0A:  # DW_CFA_remember_state
            if len(remembered) >= MAX_REMEMBERED:
                raise _BadInstructions("remember_state nested too deep")
            remembered.append((cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset))
            continue
        elif op == 0x0B:  # DW_CFA_restore_state (the CFA rule is restored too, as GCC expects)
            if not remembered:
                raise _BadInstructions("restore_state without remember_state")
            cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset = remembered.pop()
            continue
        else:
            pos, cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset, new_loc = _rare_op(
                op, data, pos, initial, (cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset),
                loc, code_align, data_align, encoding, section_address,
            )  # fmt: skip
            if new_loc == loc:
                continue
            delta = new_loc - loc
            if delta < 0:
                raise _BadInstructions("DW_CFA_set_loc goes backwards")
        # An advance: the current state holds from loc until loc + delta.
        if pcs is not None and delta:
            row = _pack_state((cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset))
            if row != last:
                if pcs and pcs[-1] == loc:
                    rows[-1] = row  # type: ignore[index]
                else:
                    pcs.append(loc)
                    rows.append(row)  # type: ignore[union-attr]
                last = row
        loc += delta
    if pos > end:
        raise _BadInstructions("an operand runs past the end of the entry")
    final: State = (cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset)
    if pcs is not None:
        row = _pack_state(final)
        if row != last:
            pcs.append(loc)
            rows.append(row)  # type: ignore[union-attr]
    return final


def _rare_op(
    op: int,
    data: bytes,
    pos: int,
    initial: State,
    state: State,
    loc: int,
    code_align: int,
    data_align: int,
    encoding: int,
    section_address: int,
) -> tuple[int, int, int, Any, int, int, int, int]:
    """Every op besides the hot ones; returns (pos, *state, loc)."""
    cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset = state
    if op in (0x05, 0x11, 0x2F):  # offset_extended, offset_extended_sf, GNU_negative_offset_extended
        register, pos = _uleb(data, pos)
        if op == 0x11:
            value, pos = _sleb(data, pos)
        else:
            value, pos = _uleb(data, pos)
        value = -value * data_align if op == 0x2F else value * data_align
        if register == _RBP:
            rbp_kind, rbp_offset = RbpKind.AT_CFA, value
        elif register == _RA:
            ra_offset = value
    elif op == 0x06:  # DW_CFA_restore_extended
        register, pos = _uleb(data, pos)
        if register == _RBP:
            rbp_kind, rbp_offset = initial[3], initial[4]
        elif register == _RA:
            ra_offset = initial[5]
    elif op in (0x07, 0x08):  # DW_CFA_undefined, DW_CFA_same_value
        register, pos = _uleb(data, pos)
        if register == _RBP:
            rbp_kind, rbp_offset = (RbpKind.UNKNOWN if op == 0x07 else RbpKind.UNCHANGED), 0
        elif register == _RA:
            ra_offset = _RA_UNDEFINED if op == 0x07 else _RA_UNSUPPORTED
    elif op == 0x09:  # DW_CFA_register
        register, pos = _uleb(data, pos)
        _, pos = _uleb(data, pos)
        if register == _RBP:
            rbp_kind, rbp_offset = RbpKind.UNKNOWN, 0
        elif register == _RA:
            ra_offset = _RA_UNSUPPORTED
    elif op == 0x12:  # DW_CFA_def_cfa_sf
        cfa_register, pos = _uleb(data, pos)
        value, pos = _sleb(data, pos)
        cfa_offset, expression = value * data_align, None
    elif op == 0x13:  # DW_CFA_def_cfa_offset_sf
        value, pos = _sleb(data, pos)
        cfa_offset = value * data_align
    elif op == 0x0F:  # DW_CFA_def_cfa_expression
        size, pos = _uleb(data, pos)
        expression = _cfa_expression(data[pos : pos + size])
        pos += size
    elif op in (0x10, 0x16):  # DW_CFA_expression, DW_CFA_val_expression
        register, pos = _uleb(data, pos)
        size, pos = _uleb(data, pos)
        block = data[pos : pos + size]
        pos += size
        if register == _RBP:
            rbp_kind, rbp_offset = RbpKind.UNKNOWN, 0
            if op == 0x10 and size >= 2 and block[0] == 0x76:  # saved at DW_OP_breg6 N: realigned frames
                offset, end = _sleb(block, 1)
                if end == size:
                    rbp_kind, rbp_offset = RbpKind.AT_RBP, offset
        elif register == _RA:
            ra_offset = _RA_UNSUPPORTED
    elif op in (0x14, 0x15):  # DW_CFA_val_offset, DW_CFA_val_offset_sf: a value, not a save slot
        register, pos = _uleb(data, pos)
        _, pos = _uleb(data, pos) if op == 0x14 else _sleb(data, pos)
        if register == _RBP:
            rbp_kind, rbp_offset = RbpKind.UNKNOWN, 0
        elif register == _RA:
            ra_offset = _RA_UNSUPPORTED
    elif op == 0x2E:  # DW_CFA_GNU_args_size: only matters for exception handling
        _, pos = _uleb(data, pos)
    elif op == 0x01:  # DW_CFA_set_loc
        loc, pos = read_encoded(data, pos, encoding, section_address)
    else:
        raise _BadInstructions(f"unknown DW_CFA op {op:#04x}")
    return pos, cfa_register, cfa_offset, expression, rbp_kind, rbp_offset, ra_offset, loc


# --- CIEs, FDEs and the section walk -----------------------------------------------------------


class _Cie:
    __slots__ = ("address_size", "code_align", "data_align", "encoding", "has_augmentation_data", "state")

    def __init__(
        self, code_align: int, data_align: int, encoding: int, has_augmentation_data: bool, address_size: int
    ) -> None:
        self.code_align = code_align
        self.data_align = data_align
        self.encoding = encoding
        self.has_augmentation_data = has_augmentation_data
        self.address_size = address_size
        self.state: State = _INITIAL


def _entry_bounds(data: bytes, pos: int) -> tuple[int, int, bool]:
    """(start of the entry's body, its end, whether it is 64-bit DWARF) for the entry at ``pos``."""
    if pos + 4 > len(data):
        raise FrameSectionError(f"entry at {pos:#x}: truncated length")
    length = _U32(data, pos)[0]
    is64 = length == 0xFFFF_FFFF
    if is64:
        if pos + 12 > len(data):
            raise FrameSectionError(f"entry at {pos:#x}: truncated length")
        length = _U64(data, pos + 4)[0]
        body = pos + 12
    else:
        body = pos + 4
    end = body + length
    if end > len(data):
        raise FrameSectionError(f"entry at {pos:#x}: length {length} runs past the section end")
    return body, end, is64


def _parse_cie(data: bytes, pos: int, is_eh: bool, section_address: int) -> _Cie:
    body, end, is64 = _entry_bounds(data, pos)
    cursor = body + (4 if is_eh or not is64 else 8)
    try:
        version = data[cursor]
        nul = data.index(b"\0", cursor + 1, end)
        augmentation = data[cursor + 1 : nul]
        cursor = nul + 1
        address_size = 8
        if version >= 4:
            address_size = data[cursor]
            cursor += 2  # address_size, segment_selector_size
        code_align, cursor = _uleb(data, cursor)
        data_align, cursor = _sleb(data, cursor)
        if version == 1:
            cursor += 1
        else:
            _, cursor = _uleb(data, cursor)
        encoding = 0
        has_z = augmentation.startswith(b"z")
        if has_z:
            size, cursor = _uleb(data, cursor)
            instructions = cursor + size
            for char in augmentation[1:]:
                if char == ord("R"):
                    encoding = data[cursor]
                    cursor += 1
                elif char == ord("P"):
                    personality = data[cursor]
                    if personality & 0x70 == 0x50:  # aligned: skip padding to the pointer size
                        cursor = -(-(cursor + 1) // 8) * 8 - 1
                    _, cursor = read_encoded(data, cursor + 1, personality & 0x8F, section_address)
                elif char == ord("L"):
                    cursor += 1
                elif char not in b"SB":
                    break  # unknown: the size lets us skip the rest
            cursor = instructions
        elif augmentation not in (b"", b"eh"):
            raise FrameSectionError(f"CIE at {pos:#x}: augmentation {augmentation!r} cannot be skipped")
        if version not in (1, 3, 4) or code_align == 0 or cursor > end:
            raise FrameSectionError(f"CIE at {pos:#x}: version {version}, code alignment {code_align}")
        cie = _Cie(code_align, data_align, encoding, has_z, address_size)
        cie.state = interpret(
            data, cursor, end, _INITIAL, _INITIAL, 0, code_align, data_align, encoding, section_address, None, None
        )
    except (_BadInstructions, IndexError, ValueError, struct.error) as error:
        raise FrameSectionError(f"CIE at {pos:#x}: {error}") from None
    return cie


Fde = tuple[int, int, list[int], list[bytes]]  # (begin, end, row pcs, packed rows)


def parse_frames(
    data: bytes, section_address: int, is_eh: bool, max_rows: int = 4_000_000
) -> tuple[list[Fde], dict[str, int]]:
    """Every FDE of one .eh_frame (``is_eh``) or .debug_frame section, with its rows.

    Returns the FDEs in section order and counts (``fdes``, ``bad_fdes``, ``skipped_fdes``).
    Raises FrameSectionError when the chain of entries itself is broken or there are more
    than ``max_rows`` rows (memory stays bounded whatever the file says).
    """
    try:
        return _parse_frames(data, section_address, is_eh, max_rows)
    except (IndexError, ValueError, OverflowError, struct.error, _BadInstructions) as error:
        raise FrameSectionError(f"malformed entry ({error})") from None


def _parse_frames(data: bytes, section_address: int, is_eh: bool, max_rows: int) -> tuple[list[Fde], dict[str, int]]:
    total_rows = 0
    fdes: list[Fde] = []
    counts = {"fdes": 0, "bad_fdes": 0, "skipped_fdes": 0}
    cies: dict[int, _Cie] = {}
    pos = 0
    size = len(data)
    while pos + 4 <= size:
        body, end, is64 = _entry_bounds(data, pos)
        if end == body:  # a zero terminator
            if is_eh:
                break
            pos = end
            continue
        if is_eh:
            ident = _U32(data, body)[0]
            is_cie = ident == 0
            cie_pos = body - ident
            cursor = body + 4
        elif is64:
            ident = _U64(data, body)[0]
            is_cie = ident == 0xFFFF_FFFF_FFFF_FFFF
            cie_pos, cursor = ident, body + 8
        else:
            ident = _U32(data, body)[0]
            is_cie = ident == 0xFFFF_FFFF
            cie_pos, cursor = ident, body + 4
        if is_cie:
            if pos not in cies:
                cies[pos] = _parse_cie(data, pos, is_eh, section_address)
            pos = end
            continue
        cie = cies.get(cie_pos)
        if cie is None:
            if not 0 <= cie_pos < size:
                raise FrameSectionError(f"FDE at {pos:#x}: CIE pointer {cie_pos:#x} is outside the section")
            cie = cies[cie_pos] = _parse_cie(data, cie_pos, is_eh, section_address)
        counts["fdes"] += 1
        try:
            if is_eh:
                begin, cursor = read_encoded(data, cursor, cie.encoding, section_address)
                length, cursor = read_encoded(data, cursor, cie.encoding & 0x0F, section_address)
            else:
                fmt = 0x04 if cie.address_size == 8 else 0x03
                begin, cursor = read_encoded(data, cursor, fmt, section_address)
                length, cursor = read_encoded(data, cursor, fmt, section_address)
            if cie.has_augmentation_data:
                skip, cursor = _uleb(data, cursor)
                cursor += skip
        except (_BadInstructions, IndexError, struct.error):
            counts["bad_fdes"] += 1
            pos = end
            continue
        if begin == 0 or length == 0 or begin + length > 0xFFFF_FFFF_FFFF_FFFF:
            counts["skipped_fdes"] += 1  # discarded code (begin 0 after linking) or empty
            pos = end
            continue
        pcs: list[int] = []
        rows: list[bytes] = []
        try:
            if end - cursor > MAX_FDE_SIZE:
                raise _BadInstructions("FDE too large")
            interpret(
                data, cursor, end, cie.state, cie.state, begin, cie.code_align, cie.data_align,
                cie.encoding, section_address, pcs, rows,
            )  # fmt: skip
        except (_BadInstructions, IndexError, struct.error):
            counts["bad_fdes"] += 1
            pcs, rows = [begin], [pack_stop(CfaKind.BAD_FDE)]
        if pcs and pcs[-1] >= begin + length:  # rows past the FDE's end say nothing
            while pcs and pcs[-1] >= begin + length:
                pcs.pop()
                rows.pop()
        fdes.append((begin, begin + length, pcs, rows))
        total_rows += len(pcs)
        if total_rows > max_rows:
            raise FrameSectionError(f"more than {max_rows} rows")
        pos = end
    return fdes, counts
