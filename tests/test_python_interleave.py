"""Python frames in place of the interpreter's, and the bytes the BPF walk shares with user space."""

from __future__ import annotations

from antiprof_core.model import Frame, FrameKind, Mapping
from antiprof_core.sources.python.interleave import interleave
from antiprof_core.sources.python.layout import PYTHON_PROCESS, pack_process, unpack_frame
from antiprof_core.symbolize.python import PythonProcess
from antiprof_core.symbolize.python.offsets import PY311, PY312
from antiprof_core.symbolize.python.walker import UNKNOWN_OFFSET

PYTHON = Mapping(0x400000, 0x800000, 0, "/usr/bin/python3.11")
HASHLIB = Mapping(0x7F0000000000, 0x7F0000100000, 0, "/usr/lib/python3.11/lib-dynload/_hashlib.so")


def native(name: str, address: int, mapping: Mapping = PYTHON) -> Frame:
    return Frame(address, FrameKind.NATIVE, name, mapping=mapping)


def python(name: str, line: int, entry: bool = False) -> tuple[Frame, bool]:
    return Frame(hash(name) & 0xFFFF0, FrameKind.CPYTHON, name, file="/srv/app.py", line=line), entry


def names(stack: tuple[Frame, ...]) -> list[str | None]:
    return [frame.symbol for frame in stack]


EVAL = "_PyEval_EvalFrameDefault"
BELOW = [native("PyEval_EvalCode", 0x401000), native("Py_BytesMain", 0x402000), native("main", 0x403000)]


def test_one_interpreter_call_is_replaced_by_its_python_frames() -> None:
    stack = (native(EVAL, 0x500000), *BELOW)
    frames = (python("heavy_math", 40), python("main", 50), python("<module>", 60, entry=True))
    assert names(interleave(stack, frames)) == [
        "heavy_math",
        "main",
        "<module>",
        "PyEval_EvalCode",
        "Py_BytesMain",
        "main",
    ]


def test_a_c_extension_shows_under_the_python_function_that_called_it() -> None:
    """sha256 -> Python's C call machinery -> an interpreter call -> another: two blocks of Python frames."""
    stack = (
        native("sha256_block_data_order", 0x7F0000001000, HASHLIB),
        native("_hashlib_HASH_update", 0x7F0000002000, HASHLIB),
        native(EVAL, 0x500000),
        native("_PyObject_Call", 0x404000),
        native(EVAL, 0x500000),
        *BELOW,
    )
    frames = (
        python("digest_all", 12),
        python("run", 20, entry=True),  # this interpreter call was entered from C (a callback)
        python("main", 30),
        python("<module>", 40, entry=True),
    )
    assert names(interleave(stack, frames)) == [
        "sha256_block_data_order",
        "_hashlib_HASH_update",
        "digest_all",
        "run",
        "_PyObject_Call",
        "main",
        "<module>",
        "PyEval_EvalCode",
        "Py_BytesMain",
        "main",
    ]


def test_python_frames_the_native_walk_did_not_reach_are_kept_as_outer_calls() -> None:
    leaf_only = (native("some_leaf", 0x7F0000001000, HASHLIB),)  # a walk that stopped at the leaf
    frames = (python("heavy_math", 40), python("<module>", 60, entry=True))
    assert names(interleave(leaf_only, frames)) == ["some_leaf", "heavy_math", "<module>"]
    one_call = (native(EVAL, 0x500000), native("PyObject_Call", 0x404000))  # a walk cut short
    frames = (python("inner", 1, entry=True), python("outer", 2, entry=True))
    assert names(interleave(one_call, frames)) == ["inner", "outer", "PyObject_Call"]


def test_a_stack_without_python_frames_is_left_alone() -> None:
    stack = (native(EVAL, 0x500000), *BELOW)
    assert interleave(stack, ()) is stack


def test_recorded_frames_unpack_as_the_bpf_program_packs_them() -> None:
    def pack(code: int, offset: int, entry: bool) -> int:  # what walk_python_frames writes
        return ((code >> 4) << 21) | (((offset + 2) // 2) << 1) | int(entry)

    for code, offset, entry in ((0x7F12_3456_7890, 0, False), (0x5555_0000_0010, 4094, True), (0x10, -2, False)):
        frame = unpack_frame(pack(code, offset, entry))
        assert (frame.code_address, frame.instruction_offset, frame.entry) == (code, offset, entry)
    unknown = unpack_frame((0x1234 << 21) | (0xFFFFF << 1))
    assert unknown.instruction_offset == UNKNOWN_OFFSET and unknown.code_address == 0x12340


def test_the_process_entry_holds_the_offsets_of_each_version() -> None:
    for offsets, current, cframe, is_entry, cstack in ((PY311, 576, 56, 68, None), (PY312, None, 56, None, 3)):
        process = PythonProcess(1, (3, 11, 2), "/usr/bin/python3.11", 0x8A0000, None, None, offsets)
        fields = PYTHON_PROCESS.unpack(pack_process(process, (4, 0xF0000000)))
        assert fields[:3] == (0x8A0000, 4, 0xF0000000)
        none = 0xFFFFFFFF
        assert fields[3] == (none if current is None else current)
        assert fields[8] == cframe and fields[14] == (none if is_entry is None else is_entry)
        assert fields[15] == (none if cstack is None else cstack)
        assert fields[16] == offsets.code_adaptive


def test_python_counters_reach_prometheus() -> None:
    from prometheus_client import CollectorRegistry

    from antiprof_core.metrics import SamplerMetrics
    from antiprof_core.model import Counters

    registry = CollectorRegistry()
    metrics = SamplerMetrics(registry)
    metrics.record(Counters(python={"frames_read": 40, "bad_read": 1}))
    metrics.record(Counters(python={"frames_read": 2, "processes_unsupported": 1}))
    assert registry.get_sample_value("antiprof_python_total", {"kind": "frames_read"}) == 42
    assert registry.get_sample_value("antiprof_python_total", {"kind": "processes_unsupported"}) == 1
