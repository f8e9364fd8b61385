"""Where CPython keeps what a stack walk needs, per minor version.

3.11 and 3.12 have no self-description: their offsets come from their own internal headers
(``offsetof`` over ``pycore_runtime.h``, ``pycore_interp.h``, ``pycore_frame.h``, ``cpython/code.h``
on x86-64), and ``tests/test_python_offsets.py`` recompiles that probe against every header set
on the machine and compares it with this table. 3.13 publishes them itself: ``_PyRuntime`` starts
with ``_Py_DebugOffsets`` (cookie ``xdebugpy``), read from the running process by
:func:`offsets_from_debug`; its own layout is fixed per minor version, so it is known here for 3.13.
"""

from __future__ import annotations

import struct

from attrs import frozen


@frozen
class PythonOffsets:
    """Byte offsets into CPython's structures (x86-64), the same set the BPF walk will get."""

    # _PyRuntimeState
    runtime_interpreters_head: int
    runtime_tstate_current: int | None  # 3.11: gilstate.tstate_current, the GIL holder; later versions keep it in TLS
    # PyInterpreterState
    interp_next: int
    interp_threads_head: int
    # PyThreadState
    tstate_next: int
    tstate_native_thread_id: int
    tstate_thread_id: int  # pthread_self() of the thread: its TLS base (fsbase), the same in every PID namespace
    tstate_cframe: int | None  # 3.11/3.12: tstate->cframe->current_frame; None: tstate->current_frame directly
    current_frame: int  # in _PyCFrame when tstate_cframe is set, else in PyThreadState
    # _PyInterpreterFrame
    frame_previous: int
    frame_code: int  # f_code (3.11, 3.12) / f_executable (3.13)
    frame_instr: int  # prev_instr (3.11, 3.12: the last instruction run) / instr_ptr (3.13: the current one)
    frame_owner: int
    owner_cstack: int | None  # FRAME_OWNED_BY_CSTACK: the C-stack shim frames (3.12+), skipped by the walk
    frame_is_entry: int | None  # 3.11: is_entry, set on the first frame of a _PyEval_EvalFrameDefault call
    # PyCodeObject
    code_filename: int
    code_name: int
    code_qualname: int
    code_linetable: int
    code_firstlineno: int
    code_adaptive: int  # co_code_adaptive: the bytecode the instruction pointers point into
    # PyObject, PyBytesObject, PyASCIIObject / PyCompactUnicodeObject
    object_type: int
    bytes_size: int
    bytes_data: int
    unicode_length: int
    unicode_state: int
    unicode_ascii_data: int  # sizeof(PyASCIIObject): compact ASCII text follows it
    unicode_compact_data: int  # sizeof(PyCompactUnicodeObject): other compact text follows it
    unicode_kind_shift: int = 2  # state bit fields: interned:2, kind:3, compact:1, ascii:1
    unicode_compact_bit: int = 5
    unicode_ascii_bit: int = 6


# offsetof() over CPython 3.11.2 (Debian 12) and 3.11.7 headers: identical.
PY311 = PythonOffsets(
    runtime_interpreters_head=40,
    runtime_tstate_current=576,
    interp_next=0,
    interp_threads_head=16,
    tstate_next=8,
    tstate_native_thread_id=160,
    tstate_thread_id=152,
    tstate_cframe=56,
    current_frame=8,
    frame_previous=48,
    frame_code=32,
    frame_instr=56,
    frame_owner=69,
    owner_cstack=None,
    frame_is_entry=68,
    code_filename=112,
    code_name=120,
    code_qualname=128,
    code_linetable=136,
    code_firstlineno=72,
    code_adaptive=184,
    object_type=8,
    bytes_size=16,
    bytes_data=32,
    unicode_length=16,
    unicode_state=32,
    unicode_ascii_data=48,
    unicode_compact_data=72,
)

# offsetof() over CPython 3.12.1 headers.
PY312 = PythonOffsets(
    runtime_interpreters_head=40,
    runtime_tstate_current=None,
    interp_next=0,
    interp_threads_head=72,
    tstate_next=8,
    tstate_native_thread_id=144,
    tstate_thread_id=136,
    tstate_cframe=56,
    current_frame=0,
    frame_previous=8,
    frame_code=0,
    frame_instr=56,
    frame_owner=70,
    owner_cstack=3,
    frame_is_entry=None,  # 3.12+: a shim frame sits under each call's first frame instead
    code_filename=112,
    code_name=120,
    code_qualname=128,
    code_linetable=136,
    code_firstlineno=68,
    code_adaptive=192,
    object_type=8,
    bytes_size=16,
    bytes_data=32,
    unicode_length=16,
    unicode_state=32,
    unicode_ascii_data=40,
    unicode_compact_data=56,
)

STATIC_TABLES: dict[tuple[int, int], PythonOffsets] = {(3, 11): PY311, (3, 12): PY312}

DEBUG_COOKIE = b"xdebugpy"
DEBUG_OFFSETS_SIZE = 584  # sizeof(_Py_DebugOffsets) in 3.13
# Where each field used here sits inside 3.13's _Py_DebugOffsets (all uint64_t after the cookie).
DEBUG_FIELDS_313: dict[str, int] = {
    "version": 8,
    "free_threaded": 16,
    "runtime_state.interpreters_head": 40,
    "interpreter_state.next": 64,
    "interpreter_state.threads_head": 72,
    "thread_state.next": 168,
    "thread_state.current_frame": 184,
    "thread_state.thread_id": 192,
    "thread_state.native_thread_id": 200,
    "interpreter_frame.previous": 232,
    "interpreter_frame.executable": 240,
    "interpreter_frame.instr_ptr": 248,
    "interpreter_frame.owner": 264,
    "code_object.filename": 280,
    "code_object.name": 288,
    "code_object.qualname": 296,
    "code_object.linetable": 304,
    "code_object.firstlineno": 312,
    "code_object.co_code_adaptive": 344,
    "pyobject.ob_type": 360,
    "bytes_object.ob_size": 520,
    "bytes_object.ob_sval": 528,
    "unicode_object.state": 544,
    "unicode_object.length": 552,
    "unicode_object.asciiobject_size": 560,
}
_SANE_OFFSET = 1 << 16  # no field of these structures is this far in; a larger value means a bad read


class DebugOffsetsError(ValueError):
    """The bytes at the start of _PyRuntime are not a 3.13 _Py_DebugOffsets we can trust."""


def offsets_from_debug(data: bytes, expected_version: tuple[int, int]) -> PythonOffsets:
    """PythonOffsets from the ``_Py_DebugOffsets`` bytes a 3.13 process carries at ``&_PyRuntime``."""
    if expected_version != (3, 13):
        raise DebugOffsetsError(
            f"the _Py_DebugOffsets layout of {expected_version[0]}.{expected_version[1]} is not known"
        )
    if len(data) < DEBUG_OFFSETS_SIZE or data[:8] != DEBUG_COOKIE:
        raise DebugOffsetsError("no _Py_DebugOffsets cookie at the start of _PyRuntime")
    field = {name: struct.unpack_from("<Q", data, position)[0] for name, position in DEBUG_FIELDS_313.items()}
    version_hex = field.pop("version")
    if (version_hex >> 24, (version_hex >> 16) & 0xFF) != expected_version:
        raise DebugOffsetsError(f"_Py_DebugOffsets says version {version_hex:#x}, the binary says {expected_version}")
    if field.pop("free_threaded"):
        raise DebugOffsetsError("free-threaded build (no GIL): its object layout is not supported")
    if any(value >= _SANE_OFFSET for value in field.values()):
        raise DebugOffsetsError("_Py_DebugOffsets holds an out-of-range offset")
    ascii_size = field["unicode_object.asciiobject_size"]
    return PythonOffsets(
        runtime_interpreters_head=field["runtime_state.interpreters_head"],
        runtime_tstate_current=None,
        interp_next=field["interpreter_state.next"],
        interp_threads_head=field["interpreter_state.threads_head"],
        tstate_next=field["thread_state.next"],
        tstate_native_thread_id=field["thread_state.native_thread_id"],
        tstate_thread_id=field["thread_state.thread_id"],
        tstate_cframe=None,
        current_frame=field["thread_state.current_frame"],
        frame_previous=field["interpreter_frame.previous"],
        frame_code=field["interpreter_frame.executable"],
        frame_instr=field["interpreter_frame.instr_ptr"],
        frame_owner=field["interpreter_frame.owner"],
        owner_cstack=3,  # enum _frameowner, unchanged in 3.13 (the offsets test checks it)
        frame_is_entry=None,
        code_filename=field["code_object.filename"],
        code_name=field["code_object.name"],
        code_qualname=field["code_object.qualname"],
        code_linetable=field["code_object.linetable"],
        code_firstlineno=field["code_object.firstlineno"],
        code_adaptive=field["code_object.co_code_adaptive"],
        object_type=field["pyobject.ob_type"],
        bytes_size=field["bytes_object.ob_size"],
        bytes_data=field["bytes_object.ob_sval"],
        unicode_length=field["unicode_object.length"],
        unicode_state=field["unicode_object.state"],
        unicode_ascii_data=ascii_size,
        unicode_compact_data=ascii_size + 16,  # + utf8_length + utf8 pointer (checked by the offsets test)
    )
