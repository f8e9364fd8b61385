"""A reference unwinder in Python: step one frame with a table, as the BPF walk will.

For tests and for checking the BPF program: it reads memory through a callable, so it can
walk a live process (``/proc/PID/mem``) or a snapshot. Each step returns the caller's
registers, or a reason to stop named like the counters the BPF walk will keep.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from attrs import frozen

from antiprof_core.sources.unwind.build import build_table
from antiprof_core.sources.unwind.elfsections import UnwindInputError
from antiprof_core.sources.unwind.rows import CfaKind, RbpKind
from antiprof_core.sources.unwind.table import UnwindTable
from antiprof_core.symbolize.elf import ElfInfo, read_elf
from antiprof_core.symbolize.procfs import MapsEntry, read_maps

Resolver = Callable[[int], "tuple[UnwindTable, int] | None"]  # runtime pc -> (its file's table, file address)
Reader = Callable[[int], "int | None"]  # the 8 bytes at an address, little-endian, or None


@frozen
class Registers:
    rip: int
    rsp: int
    rbp: int | None  # None: not recoverable in this frame


def step(registers: Registers, resolve: Resolver, read: Reader, leaf: bool) -> Registers | str:
    """The caller's registers, or why the walk stops here (``no_table``, ``outermost``, ``bad_read`` ...).

    ``leaf`` is True for the interrupted frame; a caller's pc is a return address, looked up
    one byte back so a call that ends its function finds that function's row.
    """
    found = resolve(registers.rip)
    if found is None:
        return "no_table"
    table, address = found
    row = table.lookup(address if leaf else address - 1)
    if row is None:
        return "no_row"
    if row.stops:
        return row.cfa_kind.name.lower()
    if row.cfa_kind == CfaKind.RSP:
        cfa = registers.rsp + row.cfa_offset
    elif row.cfa_kind == CfaKind.PLT:
        cfa = registers.rsp + row.cfa_offset + (8 if (address & 15) >= row.param else 0)
    else:
        if registers.rbp is None:
            return "rbp_unknown"
        if row.cfa_kind == CfaKind.RBP:
            cfa = registers.rbp + row.cfa_offset
        else:  # DEREF_RBP
            pointer = read(registers.rbp + row.cfa_offset)
            if pointer is None:
                return "bad_read"
            cfa = pointer
    return_address = read(cfa + row.ra_offset)
    if return_address is None:
        return "bad_read"
    if return_address == 0:
        return "outermost"
    rbp: int | None = registers.rbp
    if row.rbp_kind == RbpKind.AT_CFA:
        rbp = read(cfa + row.rbp_offset)
        if rbp is None:
            return "bad_read"
    elif row.rbp_kind == RbpKind.AT_RBP:
        if registers.rbp is None:
            return "rbp_unknown"
        rbp = read(registers.rbp + row.rbp_offset)
        if rbp is None:
            return "bad_read"
    elif row.rbp_kind == RbpKind.UNKNOWN:
        rbp = None
    return Registers(return_address, cfa, rbp)


def walk(registers: Registers, resolve: Resolver, read: Reader, max_depth: int = 127) -> tuple[list[int], str]:
    """The pcs of the stack, leaf first, and why the walk ended (``depth`` when it hit ``max_depth``)."""
    pcs = [registers.rip]
    while len(pcs) < max_depth:
        result = step(registers, resolve, read, leaf=len(pcs) == 1)
        if isinstance(result, str):
            return pcs, result
        registers = result
        pcs.append(registers.rip)
    return pcs, "depth"


def process_resolver(pid: int, build: Callable[[str], UnwindTable] = build_table) -> Resolver:
    """A resolver over a live process's executable file mappings (tables built once per file)."""
    files: dict[str, tuple[UnwindTable, ElfInfo] | None] = {}
    mappings: list[MapsEntry] = []

    def resolve(pc: int) -> tuple[UnwindTable, int] | None:
        if not any(entry.start <= pc < entry.end for entry in mappings):  # new mappings (dlopen, exec)
            mappings[:] = [entry for entry in read_maps(pid) if entry.executable and entry.path.startswith("/")]
        for entry in mappings:
            if entry.start <= pc < entry.end:
                if entry.path not in files:
                    try:
                        files[entry.path] = (build(entry.path), read_elf(entry.path))
                    except (UnwindInputError, OSError, ValueError):
                        files[entry.path] = None
                loaded = files[entry.path]
                if loaded is None:
                    return None
                address = loaded[1].file_address(pc - entry.start + entry.offset)
                return None if address is None else (loaded[0], address)
        return None

    return resolve


class ProcessMemory:
    """A Reader over ``/proc/PID/mem`` (stop the process for a consistent walk); close it when done."""

    def __init__(self, pid: int) -> None:
        self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)

    def __call__(self, address: int) -> int | None:
        if not 0 <= address < 1 << 63:
            return None
        try:
            data = os.pread(self._fd, 8, address)
        except OSError:
            return None
        return int.from_bytes(data, "little") if len(data) == 8 else None

    def close(self) -> None:
        os.close(self._fd)
