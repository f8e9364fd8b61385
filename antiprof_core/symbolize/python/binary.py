"""What the interpreter's ELF file says: its exact version and where ``_PyRuntime`` is.

The file is opened without following symlinks, must be the inode the process maps, and is
read through pyelftools with only a few symbol look-ups (GNU hash first, then a bounded scan).
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from attrs import frozen
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.hash import GNUHashSection

from antiprof_core.symbolize.python.files import open_regular

MAX_ELF_BYTES = 1 << 30
MAX_SCANNED_SYMBOLS = 200_000
PAGE = 4096
WANTED = ("_PyRuntime", "Py_Version", "PyCode_Type", "PyUnicode_Type")


@frozen
class LoadSegment:
    vaddr: int
    file_offset: int
    file_size: int


@frozen
class InterpreterBinary:
    path: str
    inode: int
    version_hex: int | None  # Py_Version (PY_VERSION_HEX), 3.11+
    symbols: dict[str, int]  # of WANTED, the ones found: ELF virtual addresses
    segments: tuple[LoadSegment, ...]

    def load_bias(self, map_start: int, map_offset: int) -> int | None:
        """Process address minus ELF address, from one mapping (start, file offset) of this file.

        A PT_LOAD segment is mapped from its page-aligned file offset at its page-aligned address.
        """
        for segment in self.segments:
            if segment.file_offset - segment.file_offset % PAGE == map_offset:
                return map_start - (segment.vaddr - segment.vaddr % PAGE)
        return None


class BinaryError(ValueError):
    """The interpreter file could not be read safely or is not an ELF file."""


def read_interpreter_binary(path: str, inode: int) -> InterpreterBinary:
    try:
        fd, info = open_regular(path, MAX_ELF_BYTES)
    except OSError as error:
        raise BinaryError(f"{path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as stream:
        if inode and info.st_ino != inode:
            raise BinaryError(f"{path}: inode {info.st_ino} is not the mapped inode {inode} (file replaced?)")
        try:
            elf = ELFFile(stream)
            if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
                raise BinaryError(f"{path}: not an x86-64 ELF file")
            segments = tuple(
                LoadSegment(segment["p_vaddr"], segment["p_offset"], segment["p_filesz"])
                for segment in elf.iter_segments()
                if segment["p_type"] == "PT_LOAD"
            )
            symbols = _find_symbols(elf)
            version_hex = None
            if "Py_Version" in symbols:
                raw = _read_at_vaddr(stream, segments, symbols["Py_Version"], 8, info.st_size)
                version_hex = struct.unpack("<Q", raw)[0] if raw is not None else None
        except BinaryError:
            raise
        except (ELFError, struct.error, ValueError, KeyError, OSError, IndexError, TypeError, AttributeError) as error:
            # pyelftools reports a corrupt file with any of these
            raise BinaryError(f"{path}: unreadable ELF file ({type(error).__name__}: {error})") from None
    return InterpreterBinary(path, info.st_ino, version_hex, symbols, segments)


def _find_symbols(elf: ELFFile) -> dict[str, int]:
    found: dict[str, int] = {}
    gnu_hash = elf.get_section_by_name(".gnu.hash")
    if isinstance(gnu_hash, GNUHashSection):
        for name in WANTED:
            symbol = gnu_hash.get_symbol(name)
            if symbol is not None and symbol["st_value"]:
                found[name] = symbol["st_value"]
    if len(found) == len(WANTED):
        return found
    for section_name in (".dynsym", ".symtab"):
        section = elf.get_section_by_name(section_name)
        if section is None or not hasattr(section, "iter_symbols"):
            continue
        for index, symbol in enumerate(section.iter_symbols()):
            if index >= MAX_SCANNED_SYMBOLS:
                break
            if symbol.name in WANTED and symbol.name not in found and symbol["st_value"]:
                found[symbol.name] = symbol["st_value"]
    return found


def _read_at_vaddr(
    stream: BinaryIO, segments: tuple[LoadSegment, ...], vaddr: int, size: int, file_size: int
) -> bytes | None:
    for segment in segments:
        if segment.vaddr <= vaddr and vaddr + size <= segment.vaddr + segment.file_size:
            offset = segment.file_offset + vaddr - segment.vaddr
            if offset + size > file_size:
                return None
            stream.seek(offset)
            data = stream.read(size)
            return data if len(data) == size else None
    return None
