"""The reference Python walk on real interpreters: names, files, lines, threads, bad memory.

Each CPython 3.11+ on the machine (Debian's python3.11, pyenv's 3.11, 3.12, 3.13) runs a program
with ``main -> heavy_math`` on its main thread and ``light_strings`` on a second one; the process
is stopped and walked, and each thread must read as what it runs. Older CPythons must be reported
as unsupported, with the reason.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from antiprof_core.model import FrameKind
from antiprof_core.symbolize.python import (
    CodeNamer,
    ProcessMemory,
    PythonProcess,
    PythonReadError,
    PythonWalker,
    Unsupported,
    detect,
)
from antiprof_core.symbolize.python.walker import RawPythonFrame
from antiprof_core.testing.python_workloads import (
    HEAVY_MATH_LINES,
    LIGHT_STRINGS_LINES,
    MAIN_CALL_LINE,
    MODULE_CALL_LINE,
    Interpreter,
    cpython_interpreters,
    running_two_threads,
)

SUPPORTED = [i for i in cpython_interpreters() if i.version >= (3, 11)]
OLDER = [i for i in cpython_interpreters() if i.version < (3, 11)]
ATTEMPTS = 50


def _named(namer: CodeNamer, frames: tuple[RawPythonFrame, ...]) -> list[tuple[str, str, int | None]]:
    return [(name.qualname, name.filename, name.line) for name in map(namer.name, frames)]


@pytest.mark.parametrize("interpreter", SUPPORTED, ids=lambda i: i.label)
def test_each_thread_reads_as_the_python_it_runs(interpreter: Interpreter, tmp_path: Path) -> None:
    with running_two_threads(interpreter.path, tmp_path) as program:
        path = str(program.path)
        for _ in range(ATTEMPTS):  # until both threads are caught inside their loops
            program.stop()
            try:
                found = detect(program.pid)
                assert isinstance(found, PythonProcess), found
                assert found.version[:2] == interpreter.version
                with ProcessMemory(program.pid) as memory:
                    walker = PythonWalker(found, memory)
                    namer = CodeNamer(found, memory)
                    assert set(walker.thread_states()) == {program.main_tid, program.worker_tid}
                    main_stack = walker.walk(program.main_tid)
                    worker_stack = walker.walk(program.worker_tid)
                    main_named = _named(namer, main_stack.frames)
                    worker_named = _named(namer, worker_stack.frames)
                    model_frame = namer.frame(main_stack.frames[0])
                    states = walker.thread_states()
                    by_pthread = walker.thread_states_by_pthread()
                    holder = walker.gil_holder()
            finally:
                program.resume()
            holder_known = holder in states.values() if interpreter.version == (3, 11) else holder is None
            if main_named[0][2] in HEAVY_MATH_LINES and worker_named[0][:1] == ("light_strings",) and holder_known:
                break
        assert [name for name, _, _ in main_named] == ["heavy_math", "main", "<module>"]
        assert all(file == path for _, file, _ in main_named)
        assert main_named[0][2] in HEAVY_MATH_LINES
        assert [line for _, _, line in main_named[1:]] == [MAIN_CALL_LINE, MODULE_CALL_LINE]
        assert not main_stack.truncated
        # the worker: its own function on top, under threading's bootstrap frames
        assert worker_named[0][:2] == ("light_strings", path)
        assert worker_named[0][2] in LIGHT_STRINGS_LINES
        assert [name for name, _, _ in worker_named[1:]] == [
            "Thread.run",
            "Thread._bootstrap_inner",
            "Thread._bootstrap",
        ]
        assert all(file.endswith("/threading.py") for _, file, _ in worker_named[1:])
        assert main_stack.frames != worker_stack.frames
        # where each _PyEval_EvalFrameDefault call starts: <module> (from C), Thread._bootstrap (thread start)
        assert [frame.entry for frame in main_stack.frames] == [False, False, True]
        # Thread.run calls its target with CALL_FUNCTION_EX: a new C-level call in 3.11, inlined from 3.12 on
        called_from_c = interpreter.version < (3, 12)
        assert [frame.entry for frame in worker_stack.frames] == [called_from_c, False, False, True]
        # the namespace-independent key finds the same thread states
        assert by_pthread == {
            program.main_pthread: states[program.main_tid],
            program.worker_pthread: states[program.worker_tid],
        }
        # 3.11 keeps the GIL holder in _PyRuntime.gilstate.tstate_current; 3.12+ only in TLS
        assert holder_known
        # what sinks will get
        assert (model_frame.kind, model_frame.symbol, model_frame.file) == (FrameKind.CPYTHON, "heavy_math", path)
        assert model_frame.line in HEAVY_MATH_LINES
        assert model_frame.address == main_stack.frames[0].code_address


@pytest.mark.parametrize("interpreter", SUPPORTED[:1], ids=lambda i: i.label)
def test_max_python_depth_bounds_the_walk(interpreter: Interpreter, tmp_path: Path) -> None:
    with running_two_threads(interpreter.path, tmp_path) as program:
        program.stop()
        found = detect(program.pid)
        assert isinstance(found, PythonProcess)
        with ProcessMemory(program.pid) as memory:
            walker = PythonWalker(found, memory)
            full = walker.walk(program.main_tid)
            cut = walker.walk(program.main_tid, max_depth=2)
        program.resume()
    assert len(full.frames) == 3 and not full.truncated
    assert cut.frames == full.frames[:2] and cut.truncated


@pytest.mark.parametrize("interpreter", OLDER, ids=lambda i: i.label)
def test_older_cpython_is_unsupported_with_a_reason(interpreter: Interpreter) -> None:
    process = subprocess.Popen(
        [interpreter.path, "-c", "import sys, time; sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(120)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        found = detect(process.pid)
    finally:
        process.kill()
        process.wait()
    assert isinstance(found, Unsupported), found
    major, minor = interpreter.version
    assert found.reason == f"CPython {major}.{minor}: only 3.11 and newer are walked (interpreter frames)"
    assert found.version is not None and found.version[:2] == interpreter.version


def test_a_process_without_python_is_not_detected() -> None:
    process = subprocess.Popen(["sleep", "60"])
    try:
        assert detect(process.pid) is None
    finally:
        process.kill()
        process.wait()
    assert detect(process.pid) is None  # gone: still None, no exception


REUSE_PROGRAM = r"""
import sys


def make(name, filename):
    namespace = {}
    exec(compile(f"def {name}():\n    return 1\n", filename, "exec"), namespace)
    return namespace[name].__code__


code = make("alpha", "/virtual/first.py")
print(id(code), flush=True)
sys.stdin.readline()
old = id(code)
del code
for attempt in range(20000):
    candidate = make("beta", "/virtual/second.py")
    if id(candidate) == old:
        print(old, flush=True)
        break
    del candidate
else:
    print("miss", flush=True)
sys.stdin.readline()
"""


def test_a_reused_code_object_address_is_read_again(tmp_path: Path) -> None:
    if not SUPPORTED:
        pytest.skip("no CPython 3.11+ on this machine")
    process = subprocess.Popen(
        [SUPPORTED[0].path, "-c", REUSE_PROGRAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        address = int(process.stdout.readline())
        found = detect(process.pid)
        assert isinstance(found, PythonProcess)
        with ProcessMemory(process.pid) as memory:
            namer = CodeNamer(found, memory)
            first = namer.code_info(address)
            assert (first.qualname, first.filename, first.first_line) == ("alpha", "/virtual/first.py", 1)
            assert namer.code_info(address) is first and namer.reads == 1  # cached
            process.stdin.write("\n")
            process.stdin.flush()
            reused = process.stdout.readline().strip()
            if reused == "miss":
                pytest.skip("the allocator did not hand the freed address out again")
            assert int(reused) == address
            second = namer.code_info(address)
        assert (second.qualname, second.filename) == ("beta", "/virtual/second.py")
        assert namer.invalidations == 1 and namer.reads == 2
    finally:
        process.kill()
        process.wait()


def test_hostile_addresses_raise_only_the_typed_error(tmp_path: Path) -> None:
    if not SUPPORTED:
        pytest.skip("no CPython 3.11+ on this machine")
    with running_two_threads(SUPPORTED[0].path, tmp_path) as program:
        program.stop()
        found = detect(program.pid)
        assert isinstance(found, PythonProcess)
        heap = [
            int(line.split("-")[0], 16)
            for line in Path(f"/proc/{program.pid}/maps").read_text().splitlines()
            if "rw-p" in line
        ]
        rng = random.Random(5)
        addresses = [0, 8, 1 << 47, (1 << 64) - 8, found.runtime_address, found.code_type_address or 0]
        addresses += [rng.choice(heap) + rng.randrange(0, 1 << 16, 8) for _ in range(300)]
        outcomes: dict[str, int] = {}
        with ProcessMemory(program.pid) as memory:
            walker = PythonWalker(found, memory)
            namer = CodeNamer(found, memory)
            for address in addresses:
                for attempt in (namer.code_info, namer.read_str, lambda a: walker.walk_thread_state(0, a)):
                    try:
                        attempt(address)
                        outcomes["ok"] = outcomes.get("ok", 0) + 1
                    except PythonReadError as error:
                        outcomes[error.cause] = outcomes.get(error.cause, 0) + 1
        program.resume()
    assert outcomes.get("not_code", 0) > 250  # garbage is recognised as not a code object
    assert "bad_pointer" in outcomes


def test_a_gone_process_is_a_typed_error() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    with pytest.raises(PythonReadError) as raised:
        ProcessMemory(process.pid)
    assert raised.value.cause == "no_process"
    assert not os.path.exists(f"/proc/{process.pid}/mem")
