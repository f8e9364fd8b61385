"""What the symbolizer needs from an ELF file: function symbols with sizes, load segments, build ID.

pyelftools finds the headers, sections and notes; the symbol entries are unpacked with one
``struct.iter_unpack`` pass (pyelftools' per-symbol parsing takes seconds on node's 78k
symbols). Every file is hostile input: reads go through a ``BoundedReader`` (never past the
file, never beyond a byte budget), section sizes are checked against the file before they are
read, and anything the parser raises becomes one ``ElfFileError`` naming the file.

Stripped files get their symbols from a separate debug file found by build ID or debuglink,
as gdb and perf look for them; the caller decides how a candidate path is opened.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from attrs import frozen
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection
from elftools.elf.segments import NoteSegment

from antiprof_core.symbolize.symtab import EMPTY, SymbolTable, build_symbol_table
from antiprof_core.symbolize.untrusted import BoundedReader

DEBUG_ROOT = Path("/usr/lib/debug")
PARSE_BUDGET_BYTES = 192 << 20  # everything one file may make the parser read
SYMBOL_SECTION_MAX_BYTES = 96 << 20  # one symbol table or string table
NOTE_MAX_BYTES = 1 << 20
MAX_SECTIONS_SCANNED = 4096


class ElfFileError(Exception):
    """A file that is not a readable ELF image (or one the agent refuses to parse)."""


@frozen
class LoadSegment:
    file_offset: int
    vaddr: int
    file_size: int


@frozen(eq=False)
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

    @property
    def nbytes(self) -> int:
        return self.symbols.nbytes + 64 * len(self.segments) + len(self.path) + 300


# (candidate kind, path) -> an open binary stream or None; kind is "debug" (under the debug root)
# or "process" (next to the binary, in the process's view)
DebugOpener = Callable[[str, str], BinaryIO | None]

_STT_FUNC = 2
_STT_GNU_IFUNC = 10
_SHN_UNDEF = 0


def _section_bytes(elf: ELFFile, section: Any, limit: int) -> bytes:
    """A section's contents, refused when it claims more than the file holds or than ``limit``."""
    offset, size = section["sh_offset"], section["sh_size"]
    if section["sh_type"] == "SHT_NOBITS":
        return b""
    if size > limit or offset + size > elf.stream_len:
        raise ElfFileError(f"section {section.name or '?'} claims {size} bytes at {offset}, beyond the file or cap")
    data: bytes = section.data()
    return data


def _sections(elf: ELFFile) -> list[Any]:
    """The section objects, parsed once per file (pyelftools parses a header on every get_section)."""
    sections: list[Any] | None = getattr(elf, "_antiprof_sections", None)
    if sections is None:
        sections = [elf.get_section(index) for index in range(min(elf.num_sections(), MAX_SECTIONS_SCANNED))]
        setattr(elf, "_antiprof_sections", sections)  # noqa: B010
    return sections


def _symbol_entries(elf: ELFFile) -> list[tuple[int, int, bytes]]:
    """Function symbols of .symtab and .dynsym as (value, size, name)."""
    entries: list[tuple[int, int, bytes]] = []
    order = "<" if elf.little_endian else ">"
    for section in _sections(elf):
        if not isinstance(section, SymbolTableSection) or section["sh_type"] == "SHT_NOBITS":
            continue
        data = _section_bytes(elf, section, SYMBOL_SECTION_MAX_BYTES)
        if not 0 < section["sh_link"] < len(_sections(elf)):
            continue
        strings = _section_bytes(elf, _sections(elf)[section["sh_link"]], SYMBOL_SECTION_MAX_BYTES)
        if elf.elfclass == 64:
            records: Iterator[tuple[int, int, int, int, int]] = (
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
            end = strings.find(b"\0", name_offset, name_offset + 4096)
            name = strings[name_offset : end if end >= 0 else name_offset + 4096]
            name = name.split(b"@", 1)[0] or name  # clock_gettime@GLIBC_2.2.5: drop the version
            if name:
                entries.append((value, size, name))
    return entries


def _note_build_id(notes: Iterator[Any]) -> str | None:
    for note in notes:
        if note["n_type"] == "NT_GNU_BUILD_ID":
            desc = note["n_desc"]
            return desc if isinstance(desc, str) else bytes(desc).hex()
    return None


def _build_id(elf: ELFFile) -> str | None:
    """From the PT_NOTE segments: program headers only, no section table to parse."""
    for segment in elf.iter_segments():
        if isinstance(segment, NoteSegment) and segment["p_filesz"] <= NOTE_MAX_BYTES:
            found = _note_build_id(segment.iter_notes())
            if found:
                return found
    for section in _sections(elf):  # a debug file has its notes as sections only
        if isinstance(section, NoteSection) and section["sh_size"] <= NOTE_MAX_BYTES:
            found = _note_build_id(section.iter_notes())
            if found:
                return found
    return None


def _named_section(elf: ELFFile, name: str) -> Any:
    return next((section for section in _sections(elf) if section.name == name), None)


def _debuglink(elf: ELFFile) -> str | None:
    section = _named_section(elf, ".gnu_debuglink")
    if section is None:
        return None
    data = _section_bytes(elf, section, 4096)
    if b"\0" not in data:
        return None
    link = data[: data.index(b"\0")].decode(errors="replace")
    return link if link and "/" not in link and link not in (".", "..") else None


def _has_symtab(elf: ELFFile) -> bool:
    section = _named_section(elf, ".symtab")
    return section is not None and section["sh_type"] == "SHT_SYMTAB"


def debug_file_candidates(path: str, build_id: str | None, debuglink: str | None) -> list[tuple[str, str]]:
    """Where a separate debug file may be, in gdb's order: build ID first, then debuglink.

    ("debug", path under the debug root) or ("process", path in the process's view).
    """
    candidates: list[tuple[str, str]] = []
    if build_id and len(build_id) > 2:
        candidates.append(("debug", f".build-id/{build_id[:2]}/{build_id[2:]}.debug"))
    if debuglink:
        directory = os.path.dirname(path) or "/"
        candidates += [
            ("debug", os.path.join(directory, debuglink).lstrip("/")),
            ("process", os.path.join(directory, debuglink)),
            ("process", os.path.join(directory, ".debug", debuglink)),
        ]
    return [candidate for candidate in candidates if candidate != ("process", path)]


def _parse(stream: BinaryIO, path: str, symbols: bool, open_debug: DebugOpener | None) -> ElfInfo:
    elf = ELFFile(stream)
    segments = tuple(
        LoadSegment(file_offset=seg["p_offset"], vaddr=seg["p_vaddr"], file_size=seg["p_filesz"])
        for seg in elf.iter_segments()
        if seg["p_type"] == "PT_LOAD"
    )
    build_id = _build_id(elf)
    if not symbols:
        return ElfInfo(path=path, build_id=build_id, segments=segments, symbols=EMPTY)
    debuglink = _debuglink(elf)
    entries = _symbol_entries(elf)
    symbols_from = None
    if not _has_symtab(elf) and open_debug is not None:
        for kind, candidate in debug_file_candidates(path, build_id, debuglink):
            debug_stream = open_debug(kind, candidate)
            if debug_stream is None:
                continue
            try:
                debug_elf = ELFFile(debug_stream)
                if build_id and _build_id(debug_elf) not in (None, build_id):
                    continue
                entries += _symbol_entries(debug_elf)
            except Exception:  # a bad debug file is skipped, the binary's own symbols still count
                continue
            finally:
                debug_stream.close()
            symbols_from = candidate if kind == "process" else f"{kind}:{candidate}"
            break
    return ElfInfo(
        path=path,
        build_id=build_id,
        segments=segments,
        symbols=build_symbol_table(entries),
        debuglink=debuglink,
        symbols_from=symbols_from,
    )


def read_elf_stream(
    stream: BinaryIO, path: str, symbols: bool = True, open_debug: DebugOpener | None = None
) -> ElfInfo:
    """Parse an open ELF image; raises ElfFileError naming ``path`` for anything wrong with it."""
    try:
        return _parse(stream, path, symbols, open_debug)
    except ElfFileError as exc:
        raise ElfFileError(f"{path}: {exc}") from None
    except (Exception, RecursionError) as exc:  # pyelftools raises many kinds on malformed input
        text = str(exc).splitlines()[0] if str(exc).strip() else ""
        raise ElfFileError(f"{path}: {type(exc).__name__}: {text}"[:300]) from None


def read_elf_fd(fd: int, size: int, path: str, symbols: bool = True, open_debug: DebugOpener | None = None) -> ElfInfo:
    """Parse the ELF file open at ``fd`` (``size`` bytes), reading at most the parse budget."""
    reader: Any = BoundedReader(fd, size, PARSE_BUDGET_BYTES, path)
    return read_elf_stream(reader, path, symbols, open_debug)


class _BytesReader(BoundedReader):
    def __init__(self, data: bytes, path: str) -> None:
        super().__init__(-1, len(data), PARSE_BUDGET_BYTES, path)
        self._data = data

    def read(self, count: int = -1) -> bytes:
        start = self.tell()
        available = max(len(self._data) - start, 0)
        count = available if count is None or count < 0 else min(count, available)
        self.seek(start + count)
        return self._data[start : start + count]


def read_elf_bytes(data: bytes, path: str, symbols: bool = True) -> ElfInfo:
    """An ELF image held in memory (the vDSO, fuzzed inputs)."""
    reader: Any = _BytesReader(data, path)
    return read_elf_stream(reader, path, symbols)


def read_elf(path: str | Path, debug_root: Path = DEBUG_ROOT) -> ElfInfo:
    """Read one trusted ELF file (tests, tools); debug files are looked for under ``debug_root``.

    The symbolizer itself opens files through ``antiprof_core.symbolize.files``.
    """

    def open_debug(kind: str, candidate: str) -> BinaryIO | None:
        target = debug_root / candidate if kind == "debug" else Path(candidate)
        try:
            return target.open("rb")
        except OSError:
            return None

    with open(path, "rb") as stream:
        return read_elf_stream(stream, str(path), open_debug=open_debug)


__all__ = [
    "DEBUG_ROOT",
    "ElfFileError",
    "ElfInfo",
    "LoadSegment",
    "SymbolTable",
    "build_symbol_table",
    "debug_file_candidates",
    "read_elf",
    "read_elf_bytes",
    "read_elf_fd",
    "read_elf_stream",
]
