"""The per-version offset tables are what CPython's own headers say, checked by compiling them.

A small C program prints offsetof() over each header set on the machine (Debian's 3.11, pyenv's
3.11, 3.12 and 3.13); the static tables must equal it, and 3.13's _Py_DebugOffsets, read from a
running interpreter, must describe the same structures.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from antiprof_core.symbolize.python import PythonProcess, detect
from antiprof_core.symbolize.python.memory import ProcessMemory
from antiprof_core.symbolize.python.offsets import (
    DEBUG_FIELDS_313,
    DEBUG_OFFSETS_SIZE,
    STATIC_TABLES,
    DebugOffsetsError,
    offsets_from_debug,
)
from antiprof_core.testing.python_workloads import pyenv_root

PROBE = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stdio.h>
#include <string.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_frame.h"
#define P(name, value) printf("%s %ld\n", name, (long)(value))
static int lowest_bit(PyASCIIObject *o) { unsigned int v; memcpy(&v, &o->state, sizeof v); return __builtin_ctz(v); }
int main(void) {
#if PY_VERSION_HEX >= 0x030D0000
    P("current_frame", offsetof(PyThreadState, current_frame));
    P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
    P("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
    P("debug_offsets_in_runtime", offsetof(_PyRuntimeState, debug_offsets));
    P("debug_offsets_size", sizeof(_Py_DebugOffsets));
#define D(field) P("debug." #field, offsetof(_Py_DebugOffsets, field))
    D(version); D(free_threaded); D(runtime_state.interpreters_head); D(interpreter_state.next);
    D(interpreter_state.threads_head); D(thread_state.next); D(thread_state.current_frame);
    D(thread_state.native_thread_id); D(thread_state.thread_id);
    D(interpreter_frame.previous); D(interpreter_frame.executable);
    D(interpreter_frame.instr_ptr); D(interpreter_frame.owner); D(code_object.filename); D(code_object.name);
    D(code_object.qualname); D(code_object.linetable); D(code_object.firstlineno); D(code_object.co_code_adaptive);
    D(pyobject.ob_type); D(bytes_object.ob_size); D(bytes_object.ob_sval); D(unicode_object.state);
    D(unicode_object.length); D(unicode_object.asciiobject_size);
#else
    P("tstate_cframe", offsetof(PyThreadState, cframe));
    P("current_frame", offsetof(_PyCFrame, current_frame));
    P("frame_code", offsetof(_PyInterpreterFrame, f_code));
    P("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
#endif
#if PY_VERSION_HEX < 0x030C0000
    P("runtime_tstate_current", offsetof(_PyRuntimeState, gilstate.tstate_current));
    P("frame_is_entry", offsetof(_PyInterpreterFrame, is_entry));
#else
    P("owner_cstack", FRAME_OWNED_BY_CSTACK);
#endif
    P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
    P("interp_next", offsetof(PyInterpreterState, next));
    P("interp_threads_head", offsetof(PyInterpreterState, threads.head));
    P("tstate_next", offsetof(PyThreadState, next));
    P("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
    P("tstate_thread_id", offsetof(PyThreadState, thread_id));
    P("frame_previous", offsetof(_PyInterpreterFrame, previous));
    P("frame_owner", offsetof(_PyInterpreterFrame, owner));
    P("code_filename", offsetof(PyCodeObject, co_filename));
    P("code_name", offsetof(PyCodeObject, co_name));
    P("code_qualname", offsetof(PyCodeObject, co_qualname));
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
    P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    P("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    P("object_type", offsetof(PyObject, ob_type));
    P("bytes_size", offsetof(PyVarObject, ob_size));
    P("bytes_data", offsetof(PyBytesObject, ob_sval));
    P("unicode_length", offsetof(PyASCIIObject, length));
    P("unicode_state", offsetof(PyASCIIObject, state));
    P("unicode_ascii_data", sizeof(PyASCIIObject));
    P("unicode_compact_data", sizeof(PyCompactUnicodeObject));
    PyASCIIObject o;
    memset(&o, 0, sizeof o); o.state.kind = 1; P("unicode_kind_shift", lowest_bit(&o));
    memset(&o, 0, sizeof o); o.state.compact = 1; P("unicode_compact_bit", lowest_bit(&o));
    memset(&o, 0, sizeof o); o.state.ascii = 1; P("unicode_ascii_bit", lowest_bit(&o));
    printf("version %d.%d\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);
    return 0;
}
"""


def _header_sets() -> list[tuple[str, Path]]:
    """(label, include dir) of the header sets the static tables (3.11, 3.12) are checked against."""
    found = [("debian-3.11", Path("/usr/include/python3.11"))]
    root = pyenv_root()
    for version in ("3.11.7", "3.12.1"):
        minor = version.rsplit(".", 1)[0]
        found.append(
            (f"pyenv-{version}", (root or Path("/nonexistent")) / "versions" / version / "include" / f"python{minor}")
        )
    return found


def _probe(include: Path, tmp_path: Path) -> dict[str, int]:
    if not (include / "internal" / "pycore_frame.h").is_file():
        pytest.skip(f"{include}: no CPython internal headers here")
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: scripts/setup-system.sh installs it")
    source = tmp_path / "probe.c"
    source.write_text(PROBE)
    binary = tmp_path / "probe"
    subprocess.run(["gcc", "-w", f"-I{include}", "-o", str(binary), str(source)], check=True, timeout=120)
    values: dict[str, int] = {}
    for line in subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.splitlines():
        name, value = line.split()
        if name == "version":
            major, minor = value.split(".")
            values["major"], values["minor"] = int(major), int(minor)
        else:
            values[name] = int(value)
    return values


TABLE_FIELDS = (
    "runtime_interpreters_head",
    "interp_next",
    "interp_threads_head",
    "tstate_next",
    "tstate_native_thread_id",
    "tstate_thread_id",
    "current_frame",
    "frame_previous",
    "frame_code",
    "frame_instr",
    "frame_owner",
    "code_filename",
    "code_name",
    "code_qualname",
    "code_linetable",
    "code_firstlineno",
    "code_adaptive",
    "object_type",
    "bytes_size",
    "bytes_data",
    "unicode_length",
    "unicode_state",
    "unicode_ascii_data",
    "unicode_compact_data",
    "unicode_kind_shift",
    "unicode_compact_bit",
    "unicode_ascii_bit",
)


@pytest.mark.parametrize(("label", "include"), _header_sets(), ids=[label for label, _ in _header_sets()])
def test_offset_table_matches_the_headers(label: str, include: Path, tmp_path: Path) -> None:
    probed = _probe(include, tmp_path)
    version = (probed["major"], probed["minor"])
    table = STATIC_TABLES[version]
    mismatches = {
        name: (getattr(table, name), probed[name]) for name in TABLE_FIELDS if getattr(table, name) != probed[name]
    }
    assert mismatches == {}, f"{label}: table vs headers"
    assert table.tstate_cframe == probed["tstate_cframe"]
    assert table.runtime_tstate_current == probed.get("runtime_tstate_current")
    assert table.owner_cstack == probed.get("owner_cstack")
    assert table.frame_is_entry == probed.get("frame_is_entry")


def test_debug_offsets_layout_and_values_match_the_313_headers(tmp_path: Path) -> None:
    """Our reading of _Py_DebugOffsets' own layout, and the offsets it yields from a live 3.13."""
    root = pyenv_root()
    include = (root or Path("/nonexistent")) / "versions" / "3.13.0" / "include" / "python3.13"
    python = (root or Path("/nonexistent")) / "versions" / "3.13.0" / "bin" / "python3.13"
    probed = _probe(include, tmp_path)
    assert probed["debug_offsets_in_runtime"] == 0
    assert probed["debug_offsets_size"] == DEBUG_OFFSETS_SIZE
    assert {name: probed[f"debug.{name}"] for name in DEBUG_FIELDS_313} == DEBUG_FIELDS_313
    if not python.exists():
        pytest.skip(f"{python} is absent")
    process = subprocess.Popen(
        [str(python), "-c", "import sys, time; print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        found = detect(process.pid)
        assert isinstance(found, PythonProcess), found
        with ProcessMemory(process.pid) as memory:
            raw = memory.read(found.runtime_address, DEBUG_OFFSETS_SIZE)
            offsets = offsets_from_debug(raw, (3, 13))
    finally:
        process.kill()
        process.wait()
    assert offsets == found.offsets
    mismatches = {
        name: (getattr(offsets, name), probed[name]) for name in TABLE_FIELDS if getattr(offsets, name) != probed[name]
    }
    assert mismatches == {}, "3.13 _Py_DebugOffsets vs headers"
    assert offsets.owner_cstack == probed["owner_cstack"]
    assert offsets.tstate_cframe is None and offsets.runtime_tstate_current is None
    assert offsets.frame_is_entry is None and "frame_is_entry" not in probed

    # what makes a process Unsupported instead of misread
    def rejected(data: bytes, version: tuple[int, int] = (3, 13)) -> str:
        with pytest.raises(DebugOffsetsError) as raised:
            offsets_from_debug(data, version)
        return str(raised.value)

    def patched(position: int, value: int) -> bytes:
        return raw[:position] + struct.pack("<Q", value) + raw[position + 8 :]

    assert "not known" in rejected(raw, (3, 14))
    assert "cookie" in rejected(b"xdebugpz" + raw[8:])
    assert "cookie" in rejected(raw[:100])
    assert "free-threaded" in rejected(patched(DEBUG_FIELDS_313["free_threaded"], 1))
    assert "version" in rejected(patched(DEBUG_FIELDS_313["version"], 0x030C01F0))
    assert "out-of-range" in rejected(patched(DEBUG_FIELDS_313["thread_state.current_frame"], 1 << 40))
