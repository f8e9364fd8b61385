"""The vDSO's unwind table: code the kernel maps into every process, with an .eh_frame and no file.

Every 64-bit process on one kernel gets the same vDSO image, so the agent reads its own for the
build ID and segments, and the table worker its own to build the rows. ``VDSO_WORKER_PATH`` is
what the worker is given in place of a path. A time-reading loop (``clock_gettime``,
``gettimeofday``, Python's ``time.perf_counter``) spends much of its time in there; without a
table, every such sample's stack would stop at the vDSO.
"""

from __future__ import annotations

import os
from pathlib import Path

from antiprof_core.sources.unwind.build import build_table
from antiprof_core.sources.unwind.elfheaders import ElfHeaderError, ElfHeaders, read_headers
from antiprof_core.sources.unwind.elfsections import UnwindInputError, read_sections_fd
from antiprof_core.sources.unwind.table import UnwindTable
from antiprof_core.symbolize import procfs

VDSO_WORKER_PATH = procfs.VDSO_PATH

_ELF64_X86_64 = (b"\x7fELF\x02", 62)  # e_ident's magic and class, and e_machine


def own_vdso_headers() -> ElfHeaders | None:
    """The build ID and segments of this process's vDSO; None when it has none or it cannot be read."""
    image = procfs.read_own_vdso()
    if image is None:
        return None
    fd = _memory_file(image)
    try:
        return read_headers(fd, len(image), VDSO_WORKER_PATH)
    except (OSError, ElfHeaderError):
        return None
    finally:
        os.close(fd)


def build_vdso_table(debug_root: Path) -> UnwindTable:
    """The unwind table of this process's vDSO (in the table worker); UnwindInputError if none."""
    image = procfs.read_own_vdso()
    if image is None:
        raise UnwindInputError(VDSO_WORKER_PATH, "this process has no readable vDSO")
    fd = _memory_file(image)
    try:
        sections = read_sections_fd(fd, VDSO_WORKER_PATH, len(image))
    finally:
        os.close(fd)
    return build_table(VDSO_WORKER_PATH, debug_root, sections=sections)


def is_64_bit_vdso(pid: int, start: int, proc: Path = procfs.PROC) -> bool:
    """Whether the vDSO mapped at ``start`` in ``pid`` is the 64-bit x86-64 one (ours), not a
    32-bit or x32 process's: read from its ELF header through /proc/PID/mem."""
    try:
        fd = os.open(proc / str(pid) / "mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        header = os.pread(fd, 20, start)
    except OSError:
        return False
    finally:
        os.close(fd)
    magic, machine = _ELF64_X86_64
    return len(header) == 20 and header[:5] == magic and int.from_bytes(header[18:20], "little") == machine


def _memory_file(image: bytes) -> int:
    fd = os.memfd_create("antiprof-vdso", os.MFD_CLOEXEC)
    try:
        os.write(fd, image)
    except OSError:
        os.close(fd)
        raise
    return fd
