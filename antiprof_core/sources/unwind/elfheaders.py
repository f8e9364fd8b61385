"""An ELF file's PT_LOAD segments and GNU build ID from its program headers, in three bounded reads.

The planner needs only these two things per mapped file, and it runs beside the window's drain:
pyelftools takes about 30 ms of GIL per file to give them (it parses the dynamic segment on the
way), this takes well under a millisecond. The file is hostile: every size is capped and every
read checked against the file's size; anything wrong is an ElfHeaderError naming the file.
"""

from __future__ import annotations

import os
import struct

from attrs import frozen

from antiprof_core.symbolize.elf import LoadSegment

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
_PT_LOAD = 1
_PT_NOTE = 4
_EM_X86_64 = 62
_NT_GNU_BUILD_ID = 3
MAX_PROGRAM_HEADERS = 4096
MAX_NOTE_BYTES = 1 << 16


class ElfHeaderError(Exception):
    """Not a readable x86-64 ELF64 file; the message names the file and says why."""


@frozen
class ElfHeaders:
    build_id: str | None
    segments: tuple[LoadSegment, ...]


def read_headers(fd: int, size: int, path: str) -> ElfHeaders:
    """PT_LOAD segments and the build ID (from PT_NOTE) of the ELF file open at ``fd``."""
    header = _read(fd, 0, _EHDR.size, size, path, "ELF header")
    if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        raise ElfHeaderError(f"{path}: not a little-endian ELF64 file")
    _, _, machine, _, _, phoff, _, _, _, phentsize, phnum, _, _, _ = _EHDR.unpack(header)
    if machine != _EM_X86_64:
        raise ElfHeaderError(f"{path}: machine {machine} is not x86-64")
    if phentsize != _PHDR.size or not 0 < phnum <= MAX_PROGRAM_HEADERS:
        raise ElfHeaderError(f"{path}: malformed program header table")
    table = _read(fd, phoff, phnum * _PHDR.size, size, path, "program headers")
    segments = []
    build_id = None
    for kind, _, offset, vaddr, _, filesz, _, _ in _PHDR.iter_unpack(table):
        if kind == _PT_LOAD:
            segments.append(LoadSegment(file_offset=offset, vaddr=vaddr, file_size=filesz))
        elif kind == _PT_NOTE and build_id is None and 0 < filesz <= MAX_NOTE_BYTES:
            build_id = _build_id(_read(fd, offset, filesz, size, path, "notes"))
    return ElfHeaders(build_id, tuple(segments))


def _read(fd: int, offset: int, count: int, size: int, path: str, what: str) -> bytes:
    if offset < 0 or count < 0 or offset + count > size:
        raise ElfHeaderError(f"{path}: {what} at {offset}+{count} lies outside the file ({size} bytes)")
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise ElfHeaderError(f"{path}: {what}: file shrank while being read")
    return data


def _build_id(notes: bytes) -> str | None:
    offset = 0
    while offset + 12 <= len(notes):
        name_size, desc_size, kind = struct.unpack_from("<III", notes, offset)
        name_start = offset + 12
        desc_start = name_start + ((name_size + 3) & ~3)
        end = desc_start + ((desc_size + 3) & ~3)
        if end > len(notes):
            return None
        if kind == _NT_GNU_BUILD_ID and notes[name_start : name_start + name_size] == b"GNU\0" and desc_size:
            return notes[desc_start : desc_start + desc_size].hex()
        offset = end
    return None
