"""What the symbolizer needs from an ELF file: function symbols with sizes, load segments, build ID.

Read once per file with pyelftools and kept as sorted arrays, so a lookup is one bisect.
Stripped files get their symbols from a separate debug file found by build ID or debuglink
under ``/usr/lib/debug``, as gdb and perf look for them.
"""

from __future__ import annotations

import bisect
import io
import struct
from pathlib import Path
from typing import BinaryIO

from attrs import frozen
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection
from elftools.elf.segments import NoteSegment

DEBUG_ROOT = Path("/usr/lib/debug")


@frozen
class LoadSegment:
    file_offset: int
    vaddr: int
    file_size: int


@frozen
class SymbolTable:
    """Function symbols sorted by start; ``ends[i]`` is the end of ``names[i]``."""

    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    def lookup(self, address: int) -> tuple[str, int] | None:
        """(name, offset into it) of the function containing ``address``, or None."""
        index = bisect.bisect_right(self.starts, address) - 1
        if index < 0 or address >= self.ends[index]:
            return None
        return self.names[index], address - self.starts[index]

    def __len__(self) -> int:
        return len(self.starts)


def build_symbol_table(entries: list[tuple[int, int, str]]) -> SymbolTable:
    """From (start, size, name); a size of 0 reaches to the next symbol."""
    entries = sorted({(start, size, name) for start, size, name in entries if start}, key=lambda e: (e[0], -e[1]))
    starts: list[int] = []
    ends: list[int] = []
    names: list[str] = []
    for index, (start, size, name) in enumerate(entries):
        if starts and starts[-1] == start:
            continue  # aliases: keep the first (largest) one
        end = start + size if size else entries[index + 1][0] if index + 1 < len(entries) else start + 1
        starts.append(start)
        ends.append(end)
        names.append(name)
    return SymbolTable(tuple(starts), tuple(ends), tuple(names))


@frozen
class ElfInfo:
    """The parts of one ELF file the symbolizer uses."""

    path: str
    build_id: str | None
    segments: tuple[LoadSegment, ...]
    symbols: SymbolTable
    debuglink: str | None = None
    symbols_from: str | None = None  # the debug file the symbols came from, if not ``path``

    def file_address(self, file_offset: int) -> int | None:
        """The ELF virtual address of a byte at ``file_offset`` (the load bias undone)."""
        for segment in self.segments:
            if segment.file_offset <= file_offset < segment.file_offset + segment.file_size:
                return file_offset - segment.file_offset + segment.vaddr
        return None

    def lookup(self, file_offset: int) -> tuple[str, int] | None:
        address = self.file_address(file_offset)
        return None if address is None else self.symbols.lookup(address)


_STT_FUNC = 2
_STT_GNU_IFUNC = 10
_SHN_UNDEF = 0


def _symbol_entries(elf: ELFFile) -> list[tuple[int, int, str]]:
    """Function symbols of .symtab and .dynsym as (value, size, name).

    pyelftools finds the sections; the fixed-size entries are then unpacked with one
    ``struct.iter_unpack`` pass, because pyelftools' per-symbol parsing takes seconds on large
    binaries (node: 78k symbols) and this runs while a window is being drained.
    """
    entries: list[tuple[int, int, str]] = []
    order = "<" if elf.little_endian else ">"
    for section in elf.iter_sections():
        if not isinstance(section, SymbolTableSection) or section["sh_type"] == "SHT_NOBITS":
            continue
        strings = elf.get_section(section["sh_link"]).data()
        data = section.data()
        if elf.elfclass == 64:
            records = (
                (name, info, shndx, value, size)
                for name, info, _, shndx, value, size in struct.iter_unpack(
                    order + "IBBHQQ", data[: len(data) // 24 * 24]
                )
            )
        else:
            records = (
                (name, info, shndx, value, size)
                for name, value, size, info, _, shndx in struct.iter_unpack(
                    order + "IIIBBH", data[: len(data) // 16 * 16]
                )
            )
        for name_offset, info, shndx, value, size in records:
            if (info & 0xF) not in (_STT_FUNC, _STT_GNU_IFUNC) or shndx == _SHN_UNDEF or not name_offset:
                continue
            end = strings.find(b"\0", name_offset)
            name = strings[name_offset : end if end >= 0 else None].decode(errors="replace")
            name = name.split("@", 1)[0] or name  # clock_gettime@GLIBC_2.2.5: drop the version
            entries.append((value, size, name))
    return entries


def _build_id(elf: ELFFile) -> str | None:
    """From the PT_NOTE segments: program headers only, no section table to parse."""
    for segment in elf.iter_segments():
        if isinstance(segment, NoteSegment):
            for note in segment.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return str(note["n_desc"])
    for section in elf.iter_sections():  # a debug file has its notes as sections only
        if isinstance(section, NoteSection):
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return str(note["n_desc"])
    return None


def read_build_id(path: str | Path) -> str | None:
    """The GNU build ID of one file, without reading its symbols; raises OSError or ELFError."""
    with open(path, "rb") as stream:
        return _build_id(ELFFile(stream))


def _debuglink(elf: ELFFile) -> str | None:
    section = elf.get_section_by_name(".gnu_debuglink")
    if section is None:
        return None
    data = section.data()
    return data[: data.index(b"\0")].decode(errors="replace") if b"\0" in data else None


def _has_symtab(elf: ELFFile) -> bool:
    section = elf.get_section_by_name(".symtab")
    return section is not None and section["sh_type"] == "SHT_SYMTAB"


def debug_file_candidates(
    path: str, build_id: str | None, debuglink: str | None, root: Path = DEBUG_ROOT
) -> list[Path]:
    """Where a separate debug file may be, in gdb's order: build ID first, then debuglink."""
    candidates: list[Path] = []
    if build_id and len(build_id) > 2:
        candidates.append(root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug")
    if debuglink:
        directory = Path(path).parent
        candidates += [
            root / directory.relative_to("/") / debuglink if directory.is_absolute() else root / directory / debuglink,
            directory / debuglink,
            directory / ".debug" / debuglink,
        ]
    return [candidate for candidate in candidates if str(candidate) != path]


def read_elf_stream(stream: BinaryIO, path: str, debug_root: Path = DEBUG_ROOT) -> ElfInfo:
    """Parse an open ELF image; raises ELFError or OSError when it is not one."""
    elf = ELFFile(stream)
    segments = tuple(
        LoadSegment(file_offset=seg["p_offset"], vaddr=seg["p_vaddr"], file_size=seg["p_filesz"])
        for seg in elf.iter_segments()
        if seg["p_type"] == "PT_LOAD"
    )
    build_id = _build_id(elf)
    debuglink = _debuglink(elf)
    entries = _symbol_entries(elf)
    symbols_from = None
    if not _has_symtab(elf):
        for candidate in debug_file_candidates(path, build_id, debuglink, debug_root):
            try:
                with candidate.open("rb") as debug_stream:
                    debug_elf = ELFFile(debug_stream)
                    if build_id and _build_id(debug_elf) not in (None, build_id):
                        continue
                    entries += _symbol_entries(debug_elf)
                    symbols_from = str(candidate)
                    break
            except (OSError, ELFError):
                continue
    return ElfInfo(
        path=path,
        build_id=build_id,
        segments=segments,
        symbols=build_symbol_table(entries),
        debuglink=debuglink,
        symbols_from=symbols_from,
    )


def read_elf(path: str | Path, debug_root: Path = DEBUG_ROOT, name: str | None = None) -> ElfInfo:
    """Read one ELF file from disk; raises OSError or ELFError.

    ``name`` is the file's path as the process sees it, when ``path`` is another way to it
    (``/proc/PID/root/...``): debug files are looked for next to ``name``.
    """
    with open(path, "rb") as stream:
        return read_elf_stream(stream, name or str(path), debug_root)


def read_elf_bytes(data: bytes, path: str) -> ElfInfo:
    """An ELF image held in memory (the vDSO)."""
    return read_elf_stream(io.BytesIO(data), path)
