"""A tiny ELF file that only names addresses: perf reads its ``.symtab`` like any shared object's.

Python functions have no machine code, so perf has nothing to symbolize them against. This
writes an ELF64 shared object whose ``.text`` is ``SHT_NOBITS`` (it occupies no bytes) and whose
symbol table gives each slot of that empty text a name; a GNU build-ID note lets perf match the
file to the build ID in perf.data. ``pyelftools`` reads it back in the tests; nothing here
executes or links.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from attrs import frozen

TEXT_OFFSET = 0x1000  # the text's address and file offset (equal, so every perf reads symbols alike)

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_NOTE_HEAD = struct.Struct("<III")

_ELF_IDENT = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, version 1, System V
_ET_DYN = 3
_MACHINES = {"x86_64": 62, "aarch64": 183, "arm64": 183, "riscv64": 243, "ppc64le": 21, "s390x": 22}
_PT_LOAD, _PT_NOTE = 1, 4
_PF_X, _PF_R = 1, 4
_SHT_PROGBITS, _SHT_SYMTAB, _SHT_STRTAB, _SHT_NOTE, _SHT_NOBITS = 1, 2, 3, 7, 8
_SHF_ALLOC, _SHF_EXECINSTR = 0x2, 0x4
_STB_GLOBAL, _STT_FUNC, _STV_DEFAULT = 1, 2, 0
_NT_GNU_BUILD_ID = 3
_TEXT_INDEX = 2  # section order: null, .note.gnu.build-id, .text, .symtab, .strtab, .shstrtab


@frozen
class ElfSymbol:
    name: str
    offset: int  # from the start of .text
    size: int


@frozen
class SymbolImage:
    data: bytes
    build_id: bytes  # 20 bytes, SHA-1 of the symbols: the same names at the same places give the same file


def symbol_image(symbols: Sequence[ElfSymbol], text_size: int, arch: str = "x86_64") -> SymbolImage:
    """An ELF image naming ``symbols`` in a ``.text`` of ``text_size`` bytes at ``TEXT_OFFSET`` (none in the file)."""
    digest = hashlib.sha1(text_size.to_bytes(8, "little"))
    for symbol in symbols:
        digest.update(struct.pack("<QQ", symbol.offset, symbol.size) + symbol.name.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    build_id = digest.digest()

    note = _NOTE_HEAD.pack(4, len(build_id), _NT_GNU_BUILD_ID) + b"GNU\0" + build_id
    strtab = bytearray(b"\0")
    symtab = bytearray(_SYM.pack(0, 0, 0, 0, 0, 0))
    for symbol in symbols:
        name_at = len(strtab)
        strtab += symbol.name.encode("utf-8", "surrogateescape") + b"\0"
        info = (_STB_GLOBAL << 4) | _STT_FUNC
        symtab += _SYM.pack(name_at, info, _STV_DEFAULT, _TEXT_INDEX, TEXT_OFFSET + symbol.offset, symbol.size)
    names = [b"", b".note.gnu.build-id", b".text", b".symtab", b".strtab", b".shstrtab"]
    shstrtab = bytearray()
    name_offsets = []
    for name in names:
        name_offsets.append(len(shstrtab))
        shstrtab += name + b"\0"

    phdrs_at = _EHDR.size
    note_at = phdrs_at + 2 * _PHDR.size
    symtab_at = _align(note_at + len(note), 8)
    strtab_at = symtab_at + len(symtab)
    shstrtab_at = strtab_at + len(strtab)
    shdrs_at = _align(shstrtab_at + len(shstrtab), 8)

    ehdr = _EHDR.pack(
        _ELF_IDENT, _ET_DYN, _MACHINES.get(arch, 0), 1, 0, phdrs_at, shdrs_at, 0,
        _EHDR.size, _PHDR.size, 2, _SHDR.size, len(names), len(names) - 1,
    )  # fmt: skip
    phdrs = _PHDR.pack(
        _PT_LOAD, _PF_R | _PF_X, TEXT_OFFSET, TEXT_OFFSET, TEXT_OFFSET, 0, text_size, 0x1000
    ) + _PHDR.pack(_PT_NOTE, _PF_R, note_at, note_at, note_at, len(note), len(note), 4)
    shdrs = b"".join(
        [
            _SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            _SHDR.pack(name_offsets[1], _SHT_NOTE, _SHF_ALLOC, note_at, note_at, len(note), 0, 0, 4, 0),
            _SHDR.pack(
                name_offsets[2],
                _SHT_NOBITS,
                _SHF_ALLOC | _SHF_EXECINSTR,
                TEXT_OFFSET,
                TEXT_OFFSET,
                text_size,
                0,
                0,
                16,
                0,
            ),
            _SHDR.pack(name_offsets[3], _SHT_SYMTAB, 0, 0, symtab_at, len(symtab), 4, 1, 8, _SYM.size),
            _SHDR.pack(name_offsets[4], _SHT_STRTAB, 0, 0, strtab_at, len(strtab), 0, 0, 1, 0),
            _SHDR.pack(name_offsets[5], _SHT_STRTAB, 0, 0, shstrtab_at, len(shstrtab), 0, 0, 1, 0),
        ]
    )
    body = bytearray(ehdr + phdrs + note)
    body += bytes(symtab_at - len(body)) + symtab + strtab + shstrtab
    body += bytes(shdrs_at - len(body)) + shdrs
    return SymbolImage(bytes(body), build_id)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & -alignment
