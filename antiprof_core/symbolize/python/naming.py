"""Names for (code object, instruction offset) pairs: qualified name, file and line.

A code object is read once per process through /proc/PID/mem and cached by address. Addresses
are reused once a code object is freed, so every hit is re-checked with one small read: the
fingerprint (first line, and the filename, qualname and line-table pointers) must still match,
and the object must still be a code object, or the entry is read again. Strings are read with a
length cap; anything odd in the target's memory raises PythonReadError and nothing else.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from attrs import frozen

from antiprof_core.model import Frame, FrameKind
from antiprof_core.symbolize.python.detect import PythonProcess
from antiprof_core.symbolize.python.errors import PythonReadError
from antiprof_core.symbolize.python.linetable import line_for_offset
from antiprof_core.symbolize.python.memory import ProcessMemory
from antiprof_core.symbolize.python.walker import RawPythonFrame

MAX_NAME_CHARS = 1024
MAX_LINETABLE_BYTES = 1 << 18
DEFAULT_CACHE_ENTRIES = 16384


@frozen
class CodeInfo:
    qualname: str
    filename: str
    first_line: int
    linetable: bytes
    fingerprint: bytes


@frozen
class PythonFrameName:
    qualname: str
    filename: str
    line: int | None


class CodeNamer:
    """Per-process cache of code objects, read through the process's memory."""

    def __init__(self, process: PythonProcess, memory: ProcessMemory, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.process = process
        self.memory = memory
        self.offsets = process.offsets
        self.max_entries = max_entries
        self._cache: OrderedDict[int, CodeInfo] = OrderedDict()
        self.reads = 0  # code objects read from the process (misses and invalidations)
        self.invalidations = 0
        first = min(
            self.offsets.code_firstlineno,
            self.offsets.code_filename,
            self.offsets.code_qualname,
            self.offsets.code_linetable,
        )
        last = (
            max(
                self.offsets.code_firstlineno,
                self.offsets.code_filename,
                self.offsets.code_qualname,
                self.offsets.code_linetable,
            )
            + 8
        )
        self._fingerprint_span = (first, last - first)

    def name(self, frame: RawPythonFrame) -> PythonFrameName:
        info = self.code_info(frame.code_address)
        line = (
            line_for_offset(info.linetable, info.first_line, frame.instruction_offset)
            if frame.instruction_offset != -1
            else None
        )
        return PythonFrameName(info.qualname, info.filename, line)

    def frame(self, raw: RawPythonFrame) -> Frame:
        """The model's frame for ``raw``; PythonReadError when the code object cannot be read."""
        name = self.name(raw)
        return Frame(
            address=raw.code_address,
            kind=FrameKind.CPYTHON,
            symbol=name.qualname,
            offset=max(raw.instruction_offset, 0),
            file=name.filename,
            line=name.line,
        )

    def code_info(self, address: int) -> CodeInfo:
        self._check_type(address, self.process.code_type_address, "not_code")
        fingerprint = self._fingerprint(address)
        cached = self._cache.get(address)
        if cached is not None:
            if cached.fingerprint == fingerprint:
                self._cache.move_to_end(address)
                return cached
            self.invalidations += 1
        info = self._read_code(address, fingerprint)
        self._cache[address] = info
        self._cache.move_to_end(address)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return info

    def _fingerprint(self, address: int) -> bytes:
        start, size = self._fingerprint_span
        return self.memory.read(address + start, size)

    def _read_code(self, address: int, fingerprint: bytes) -> CodeInfo:
        offsets = self.offsets
        self.reads += 1
        start = self._fingerprint_span[0]

        def pointer(offset: int) -> int:
            return int(struct.unpack_from("<Q", fingerprint, offset - start)[0])

        first_line = int(struct.unpack_from("<i", fingerprint, offsets.code_firstlineno - start)[0])
        return CodeInfo(
            qualname=self.read_str(pointer(offsets.code_qualname)),
            filename=self.read_str(pointer(offsets.code_filename)),
            first_line=first_line,
            linetable=self.read_bytes(pointer(offsets.code_linetable), MAX_LINETABLE_BYTES),
            fingerprint=fingerprint,
        )

    def _check_type(self, address: int, expected: int | None, cause: str) -> None:
        if expected is not None and self.memory.u64(address + self.offsets.object_type) != expected:
            raise PythonReadError(cause, f"object at {address:#x} has the wrong type")

    def read_str(self, address: int, max_chars: int = MAX_NAME_CHARS) -> str:
        """A compact str object's text, cut at ``max_chars`` characters."""
        offsets, memory = self.offsets, self.memory
        self._check_type(address, self.process.unicode_type_address, "not_str")
        length = struct.unpack("<q", memory.read(address + offsets.unicode_length, 8))[0]
        state = memory.u32(address + offsets.unicode_state)
        kind = (state >> offsets.unicode_kind_shift) & 0x7
        if not (state >> offsets.unicode_compact_bit) & 1 or kind not in (1, 2, 4) or length < 0:
            raise PythonReadError("bad_str", f"str at {address:#x}: state {state:#x}, length {length}")
        ascii_ = (state >> offsets.unicode_ascii_bit) & 1
        data = address + (offsets.unicode_ascii_data if ascii_ else offsets.unicode_compact_data)
        count = min(length, max_chars)
        raw = memory.read(data, count * kind)
        encoding = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return raw.decode("ascii" if ascii_ else encoding, "replace")

    def read_bytes(self, address: int, max_bytes: int) -> bytes:
        size = struct.unpack("<q", self.memory.read(address + self.offsets.bytes_size, 8))[0]
        if size < 0 or size > max_bytes:
            raise PythonReadError("bad_bytes", f"bytes at {address:#x}: size {size}")
        return self.memory.read(address + self.offsets.bytes_data, size)
