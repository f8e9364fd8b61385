"""The few ELF sections unwinding needs, read with bounded reads from a file nobody vouches for.

The agent runs as root and opens binaries other users control, so this reader parses the ELF
header and section table itself with ``struct`` (no library whose failure modes we do not
know), refuses anything that is not a regular little-endian x86-64 ELF64 file, caps every
size before reading, and turns every problem into one :class:`UnwindInputError`.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib

from attrs import frozen

MAX_FILE_SIZE = 4 << 30  # bigger than any real binary; a bound, not a guess at sizes
MAX_SECTION_SIZE = 64 << 20  # .eh_frame of the largest binaries (browsers, LLVM) is 10-30 MiB
MAX_NAMES_SIZE = 1 << 20  # the section-name table: a few hundred bytes in real files
MAX_SECTIONS = 65_280  # SHN_LORESERVE: real files never have more

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_CHDR = struct.Struct("<IIQQ")
_EM_X86_64 = 62
_SHT_NOBITS = 8
_SHT_NOTE = 7
_SHF_COMPRESSED = 0x800
_ELFCOMPRESS_ZLIB = 1
_NT_GNU_BUILD_ID = 3


class UnwindInputError(Exception):
    """A file cannot give unwind tables; the message is one line naming the file and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)  # both in args, so the error survives pickling (process worker)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@frozen
class Section:
    name: str
    address: int  # where the section is in the file's virtual address space
    data: bytes


@frozen
class ElfSections:
    """Build ID, debuglink and the unwind sections of one file (absent sections are None)."""

    path: str
    build_id: str | None
    debuglink: str | None
    eh_frame: Section | None
    debug_frame: Section | None
    eh_frame_hdr: Section | None


_WANTED = (".eh_frame", ".debug_frame", ".eh_frame_hdr", ".gnu_debuglink")


def read_sections(path: str, unwind: bool = True) -> ElfSections:
    """Open ``path`` without following a final symlink and read its unwind sections.

    With ``unwind`` False only the build ID and debuglink are read (a cache lookup).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise UnwindInputError(path, f"cannot open: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnwindInputError(path, "not a regular file")
        return read_sections_fd(fd, path, info.st_size, unwind)
    except OSError as error:
        raise UnwindInputError(path, f"read failed: {error.strerror or error}") from None
    finally:
        os.close(fd)


def read_sections_fd(fd: int, path: str, size: int, unwind: bool = True) -> ElfSections:
    """``read_sections`` of an ELF image of ``size`` bytes open at ``fd`` (a file in memory, say)."""
    if size > MAX_FILE_SIZE:
        raise UnwindInputError(path, f"file of {size} bytes is over the {MAX_FILE_SIZE} byte cap")
    return _read(fd, path, size, _WANTED if unwind else (".gnu_debuglink",))


def _pread(fd: int, path: str, size: int, offset: int, file_size: int, what: str) -> bytes:
    if size < 0 or offset < 0 or offset + size > file_size:
        raise UnwindInputError(path, f"{what} at {offset}+{size} lies outside the file ({file_size} bytes)")
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise UnwindInputError(path, f"{what}: file shrank while being read")
    return data


def _read(fd: int, path: str, file_size: int, wanted: tuple[str, ...]) -> ElfSections:
    header = _pread(fd, path, _EHDR.size, 0, file_size, "ELF header") if file_size >= _EHDR.size else b""
    if header[:4] != b"\x7fELF":
        raise UnwindInputError(path, "not an ELF file")
    if header[4] != 2 or header[5] != 1:
        raise UnwindInputError(path, "not a little-endian ELF64 file")
    (_, _, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = _EHDR.unpack(header)
    if machine != _EM_X86_64:
        raise UnwindInputError(path, f"machine {machine} is not x86-64")
    if shnum == 0 or shoff == 0:
        raise UnwindInputError(path, "no section table")
    if shentsize != _SHDR.size or shnum > MAX_SECTIONS or shstrndx >= shnum:
        raise UnwindInputError(path, "malformed section table header")
    table = _pread(fd, path, shnum * _SHDR.size, shoff, file_size, "section table")
    headers = [_SHDR.unpack_from(table, index * _SHDR.size) for index in range(shnum)]
    names_header = headers[shstrndx]
    if names_header[5] > MAX_NAMES_SIZE:
        raise UnwindInputError(path, f"section name table of {names_header[5]} bytes is over the cap")
    names = _section_bytes(fd, path, file_size, names_header, "section names")

    def name_of(offset: int) -> str:
        if offset >= len(names):
            return ""
        end = names.find(b"\0", offset)
        return names[offset : end if end >= 0 else len(names)].decode("ascii", "replace")

    found: dict[str, Section] = {}
    build_id = None
    for sh in headers:
        name = name_of(sh[0])
        if sh[1] == _SHT_NOTE and build_id is None and sh[5] <= 1 << 16:
            build_id = _build_id_from_notes(_section_bytes(fd, path, file_size, sh, name))
        if name in wanted and name not in found and sh[1] != _SHT_NOBITS:
            found[name] = Section(name, sh[3], _section_bytes(fd, path, file_size, sh, name))
    debuglink = None
    if ".gnu_debuglink" in found:
        raw = found[".gnu_debuglink"].data
        if b"\0" in raw:
            debuglink = raw[: raw.index(b"\0")].decode("utf-8", "replace") or None
    return ElfSections(
        path=path,
        build_id=build_id,
        debuglink=debuglink,
        eh_frame=found.get(".eh_frame"),
        debug_frame=found.get(".debug_frame"),
        eh_frame_hdr=found.get(".eh_frame_hdr"),
    )


def _section_bytes(fd: int, path: str, file_size: int, sh: tuple[int, ...], what: str) -> bytes:
    flags, offset, size = sh[2], sh[4], sh[5]
    if sh[1] == _SHT_NOBITS:
        return b""
    if size > MAX_SECTION_SIZE:
        raise UnwindInputError(path, f"section {what} of {size} bytes is over the {MAX_SECTION_SIZE} byte cap")
    data = _pread(fd, path, size, offset, file_size, f"section {what}")
    if flags & _SHF_COMPRESSED:
        data = _decompress(path, what, data)
    return data


def _decompress(path: str, what: str, data: bytes) -> bytes:
    """SHF_COMPRESSED sections (Debian's debug files): zlib only, inflated to at most the cap."""
    if len(data) < _CHDR.size:
        raise UnwindInputError(path, f"section {what}: truncated compression header")
    kind, _, size, _ = _CHDR.unpack_from(data)
    if kind != _ELFCOMPRESS_ZLIB:
        raise UnwindInputError(path, f"section {what}: compression type {kind} is not supported")
    if size > MAX_SECTION_SIZE:
        raise UnwindInputError(path, f"section {what} inflates to {size} bytes, over the cap")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data[_CHDR.size :], size)
    except zlib.error as error:
        raise UnwindInputError(path, f"section {what}: corrupt zlib data ({error})") from None
    if len(out) != size:
        raise UnwindInputError(path, f"section {what}: inflated to {len(out)} bytes, header says {size}")
    return out


def _build_id_from_notes(data: bytes) -> str | None:
    offset = 0
    while offset + 12 <= len(data):
        name_size, desc_size, kind = struct.unpack_from("<III", data, offset)
        name_start = offset + 12
        desc_start = name_start + ((name_size + 3) & ~3)
        end = desc_start + ((desc_size + 3) & ~3)
        if end > len(data):
            return None
        if kind == _NT_GNU_BUILD_ID and data[name_start : name_start + name_size] == b"GNU\0" and desc_size:
            return data[desc_start : desc_start + desc_size].hex()
        offset = end
    return None
