"""Is this process a CPython we can walk, and with which addresses and offsets?

The interpreter is the mapped ``libpython3.X.so`` (shared builds, like pyenv's) or the
``python3.X`` executable itself (static builds, like Debian's). Its version comes from the
``Py_Version`` symbol (3.11+), the file name only when that is missing; ``_PyRuntime`` is found
in the ELF symbols and moved by the mapping's load bias. A process that maps an interpreter we
cannot walk gets an :class:`Unsupported` with the reason, to be logged once and counted.
"""

from __future__ import annotations

import os
import re

from attrs import frozen

from antiprof_core.symbolize.procfs import MapsEntry, parse_maps_line
from antiprof_core.symbolize.python.binary import BinaryError, InterpreterBinary, read_interpreter_binary
from antiprof_core.symbolize.python.errors import PythonReadError
from antiprof_core.symbolize.python.files import read_small_file
from antiprof_core.symbolize.python.memory import ProcessMemory
from antiprof_core.symbolize.python.offsets import (
    DEBUG_OFFSETS_SIZE,
    STATIC_TABLES,
    DebugOffsetsError,
    PythonOffsets,
    offsets_from_debug,
)

MAX_MAPS_BYTES = 16 << 20
_LIBPYTHON = re.compile(r"^libpython(\d+)\.(\d+)([a-z]*)\.so")
_EXECUTABLE = re.compile(r"^python(\d+)\.(\d+)([a-z]*)$")


@frozen
class PythonProcess:
    """A CPython process the walker can read: where its runtime is and how its structures look."""

    pid: int
    version: tuple[int, int, int]  # major, minor, micro
    interpreter: str  # the mapped file holding _PyRuntime
    runtime_address: int  # &_PyRuntime in the process
    code_type_address: int | None  # &PyCode_Type, to tell code objects from garbage
    unicode_type_address: int | None
    offsets: PythonOffsets


@frozen
class Unsupported:
    """A process that maps a Python interpreter we do not walk, and why."""

    pid: int
    interpreter: str
    version: tuple[int, int, int] | None
    reason: str


def read_process_maps(pid: int, proc: str = "/proc") -> list[MapsEntry]:
    """/proc/PID/maps read without following links, capped; empty when gone or unreadable."""
    try:
        text = read_small_file(f"{proc}/{pid}/maps", MAX_MAPS_BYTES).decode("utf-8", "replace")
    except OSError:
        return []
    return [entry for entry in map(parse_maps_line, text.splitlines()) if entry is not None]


def interpreter_candidates(maps: list[MapsEntry]) -> list[tuple[MapsEntry, tuple[int, int], str]]:
    """(lowest mapping, (major, minor) from the name, build flags) per interpreter file, libpython first."""
    lowest: dict[str, MapsEntry] = {}
    for entry in maps:
        if entry.path.startswith("/") and (entry.path not in lowest or entry.offset < lowest[entry.path].offset):
            lowest[entry.path] = entry
    found = []
    for path, entry in lowest.items():
        name = os.path.basename(path)
        match = _LIBPYTHON.match(name) or _EXECUTABLE.match(name)
        if match:
            rank = 0 if name.startswith("lib") else 1
            found.append((rank, entry, (int(match.group(1)), int(match.group(2))), match.group(3)))
    found.sort(key=lambda item: item[0])
    return [(entry, version, flags) for _, entry, version, flags in found]


def detect(pid: int, proc: str = "/proc") -> PythonProcess | Unsupported | None:
    """None when ``pid`` maps no CPython; never raises for a hostile or vanishing process."""
    candidates = interpreter_candidates(read_process_maps(pid, proc))
    if not candidates:
        return None
    problems: list[Unsupported] = []
    for entry, name_version, flags in candidates:
        result = _detect_one(pid, proc, entry, name_version, flags)
        if isinstance(result, PythonProcess):
            return result
        if result is not None:
            problems.append(result)
    return problems[0] if problems else None


def _detect_one(
    pid: int, proc: str, entry: MapsEntry, name_version: tuple[int, int], flags: str
) -> PythonProcess | Unsupported | None:
    path = entry.path
    try:
        binary = read_interpreter_binary(path, entry.inode)
    except BinaryError as error:
        return Unsupported(pid, path, None, f"cannot read the interpreter: {error}")
    version = _version(binary, name_version)
    if version[:2] < (3, 11):
        return Unsupported(
            pid,
            path,
            version,
            f"CPython {version[0]}.{version[1]}: only 3.11 and newer are walked (interpreter frames)",
        )
    if "_PyRuntime" not in binary.symbols:
        return None  # e.g. a python3.X executable linked to libpython: the library holds the runtime
    if "t" in flags:
        return Unsupported(
            pid, path, version, "free-threaded CPython build (no GIL): its object layout is not supported"
        )
    bias = binary.load_bias(entry.start, entry.offset)
    if bias is None:
        return Unsupported(pid, path, version, "no ELF load segment matches the mapping of the interpreter")
    runtime = binary.symbols["_PyRuntime"] + bias
    offsets = STATIC_TABLES.get(version[:2])
    if offsets is None:
        offsets_or_reason = _offsets_from_process(pid, proc, runtime, version)
        if isinstance(offsets_or_reason, str):
            return Unsupported(pid, path, version, offsets_or_reason)
        offsets = offsets_or_reason
    code_type = binary.symbols.get("PyCode_Type")
    unicode_type = binary.symbols.get("PyUnicode_Type")
    return PythonProcess(
        pid=pid,
        version=version,
        interpreter=path,
        runtime_address=runtime,
        code_type_address=None if code_type is None else code_type + bias,
        unicode_type_address=None if unicode_type is None else unicode_type + bias,
        offsets=offsets,
    )


def _version(binary: InterpreterBinary, name_version: tuple[int, int]) -> tuple[int, int, int]:
    if binary.version_hex is not None:
        hex_ = binary.version_hex
        return (hex_ >> 24) & 0xFF, (hex_ >> 16) & 0xFF, (hex_ >> 8) & 0xFF
    return name_version[0], name_version[1], 0


def _offsets_from_process(pid: int, proc: str, runtime: int, version: tuple[int, int, int]) -> PythonOffsets | str:
    """3.13+: the offsets the running interpreter describes in its _Py_DebugOffsets, or why not."""
    try:
        with ProcessMemory(pid, proc) as memory:
            data = memory.read(runtime, DEBUG_OFFSETS_SIZE)
    except PythonReadError as error:
        return f"cannot read _Py_DebugOffsets from the process: {error}"
    try:
        return offsets_from_debug(data, version[:2])
    except DebugOffsetsError as error:
        return f"CPython {version[0]}.{version[1]}: {error}"
