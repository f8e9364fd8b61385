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

from attrs import field, frozen

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
    fingerprint: tuple[int, int, int, int]
    lines: dict[int, int | None] = field(factory=dict, eq=False)  # instruction offset -> line, filled on use


@frozen
class PythonFrameName:
    qualname: str
    filename: str
    line: int | None
    first_line: int


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
        # One read per lookup covers the type and every fingerprint field (they sit close together).
        fields = (
            self.offsets.object_type,
            self.offsets.code_firstlineno,
            self.offsets.code_filename,
            self.offsets.code_qualname,
            self.offsets.code_linetable,
        )
        self._header_start = min(fields)
        self._header_size = max(fields) + 8 - self._header_start

    def name(self, frame: RawPythonFrame) -> PythonFrameName:
        info = self.code_info(frame.code_address)
        offset = frame.instruction_offset
        if offset == -1:
            line = None
        elif offset in info.lines:
            line = info.lines[offset]
        else:
            line = info.lines[offset] = line_for_offset(info.linetable, info.first_line, offset)
        return PythonFrameName(info.qualname, info.filename, line, info.first_line)

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
            start_line=name.first_line,
        )

    def code_info(self, address: int) -> CodeInfo:
        try:
            header = self.memory.read(address + self._header_start, self._header_size)
        except PythonReadError:
            cached = self._cache.get(address)
            if cached is None:
                raise
            # Nothing left to check against (a process that exited mid-window): its last window
            # keeps the names read while it ran.
            return cached
        if self.process.code_type_address is not None and self._pointer(header, self.offsets.object_type) != (
            self.process.code_type_address
        ):
            raise PythonReadError("not_code", f"object at {address:#x} is not a code object")
        # co_firstlineno and the name, file and line-table pointers: what changes when the address is reused
        fingerprint = (
            int(struct.unpack_from("<i", header, self.offsets.code_firstlineno - self._header_start)[0]),
            self._pointer(header, self.offsets.code_filename),
            self._pointer(header, self.offsets.code_qualname),
            self._pointer(header, self.offsets.code_linetable),
        )
        cached = self._cache.get(address)
        if cached is not None:
            if cached.fingerprint == fingerprint:
                self._cache.move_to_end(address)
                return cached
            self.invalidations += 1
        self.reads += 1
        first_line, filename, qualname, linetable = fingerprint
        info = CodeInfo(
            qualname=self.read_str(qualname),
            filename=self.read_str(filename),
            first_line=first_line,
            linetable=self.read_bytes(linetable, MAX_LINETABLE_BYTES),
            fingerprint=fingerprint,
        )
        self._cache[address] = info
        self._cache.move_to_end(address)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return info

    def _pointer(self, header: bytes, offset: int) -> int:
        return int(struct.unpack_from("<Q", header, offset - self._header_start)[0])

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
