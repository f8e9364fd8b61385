"""The bytes the BPF program's CPython walk reads and writes.

``struct python_process`` (the value of ``python_processes``) gives the walk where ``_PyRuntime``
is and the offsets of the fields it follows; each frame the walk records is one u64:
``code object address >> 4`` (43 bits), ``(instruction offset + 2) / 2`` (20 bits), entry (1 bit),
or ``SHIM`` for a C-stack shim frame (3.12+), which marks the frame above it as its call's entry.
"""

from __future__ import annotations

import os
import struct

from antiprof_core.model import Frame
from antiprof_core.symbolize.python.detect import PythonProcess
from antiprof_core.symbolize.python.walker import UNKNOWN_OFFSET, RawPythonFrame

PythonFrames = tuple[tuple[Frame, bool], ...]  # named, leaf first; True on the first frame of an interpreter call
PYTHON_PROCESS = struct.Struct("<QQQ14I")
NO_OFFSET = 0xFFFFFFFF
FRAME_BYTES = 80  # the walk reads this much of each _PyInterpreterFrame
UNKNOWN_UNITS = 0xFFFFF
SHIM = 1  # the slot of a C-stack shim frame (3.12+): code 0, entry bit set
CODE_ALIGNMENT = 16  # code objects come from malloc or pymalloc, both 16-byte aligned on x86-64

assert PYTHON_PROCESS.size == 80


class LayoutError(ValueError):
    """Offsets the BPF walk cannot use (a field beyond the bytes it reads of a frame)."""


def _optional(offset: int | None) -> int:
    return NO_OFFSET if offset is None else offset


def pack_process(process: PythonProcess, pidns: tuple[int, int]) -> bytes:
    """``struct python_process`` for ``process``; ``pidns`` is (kernel dev_t, inode) of its PID namespace."""
    o = process.offsets
    frame_fields = [o.frame_previous, o.frame_code, o.frame_instr]
    byte_fields = [o.frame_owner] + ([o.frame_is_entry] if o.frame_is_entry is not None else [])
    if max(frame_fields) > FRAME_BYTES - 8 or max(byte_fields) >= FRAME_BYTES:
        raise LayoutError(f"a _PyInterpreterFrame field lies beyond the {FRAME_BYTES} bytes the walk reads")
    return PYTHON_PROCESS.pack(
        process.runtime_address,
        pidns[0],
        pidns[1],
        _optional(o.runtime_tstate_current),
        o.runtime_interpreters_head,
        o.interp_threads_head,
        o.tstate_next,
        o.tstate_native_thread_id,
        _optional(o.tstate_cframe),
        o.current_frame,
        o.frame_previous,
        o.frame_code,
        o.frame_instr,
        o.frame_owner,
        _optional(o.frame_is_entry),
        _optional(o.owner_cstack),
        o.code_adaptive,
    )


def pid_namespace(pid: int, proc: str = "/proc") -> tuple[int, int]:
    """(dev_t as the kernel encodes it, inode) of the process's PID namespace; (0, 0) if unknown."""
    try:
        info = os.stat(f"{proc}/{pid}/ns/pid")  # a magic link into nsfs: stat, not open, is safe
    except OSError:
        return 0, 0
    return (os.major(info.st_dev) << 20) | os.minor(info.st_dev), info.st_ino


def unpack_frame(value: int) -> RawPythonFrame:
    """One recorded frame back into (code address, instruction offset in bytes, entry)."""
    units = (value >> 1) & UNKNOWN_UNITS
    offset = UNKNOWN_OFFSET if units == UNKNOWN_UNITS else units * 2 - 2
    return RawPythonFrame(code_address=(value >> 21) * CODE_ALIGNMENT, instruction_offset=offset, entry=bool(value & 1))
