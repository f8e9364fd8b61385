"""The agent's side of the CPython walk, with a real BPF map and real interpreters, no BPF program:
which processes get a ``python_processes`` entry, what is logged for the others, and how recorded
frames are named (shims, unreadable code objects)."""

from __future__ import annotations

import ctypes as ct
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from antiprof_core.sources.bpf import syscalls
from antiprof_core.sources.bpf.maps import create_map
from antiprof_core.sources.python.layout import PYTHON_PROCESS, SHIM
from antiprof_core.sources.python.processes import PythonProcesses
from antiprof_core.symbolize.python import ProcessMemory, PythonWalker, detect
from antiprof_core.testing import require_bpf
from antiprof_core.testing.python_workloads import cpython_interpreters, running_two_threads

DEBIAN_PYTHON = "/usr/bin/python3.11"


def pack(code: int, offset: int, entry: bool = False) -> int:
    """A frame as the BPF walk records it."""
    return ((code >> 4) << 21) | (((offset + 2) // 2) << 1) | int(entry)


@pytest.fixture
def python_processes() -> Iterator[tuple[PythonProcesses, int]]:
    require_bpf()
    info = create_map("python_processes", syscalls.MAP_TYPE_HASH, 4, PYTHON_PROCESS.size, 16)
    processes = PythonProcesses(info, logging.getLogger("antiprof.test.python"))
    try:
        yield processes, info.fd
    finally:
        processes.close()
        os.close(info.fd)


def entry_of(fd: int, pid: int) -> tuple[int, ...] | None:
    value = (ct.c_char * PYTHON_PROCESS.size)()
    if not syscalls.lookup(fd, ct.c_uint32(pid), value):
        return None
    return PYTHON_PROCESS.unpack(bytes(value))


def test_a_cpython_gets_its_entry_and_its_frames_named(
    python_processes: tuple[PythonProcesses, int], tmp_path: Path
) -> None:
    processes, fd = python_processes
    with running_two_threads(DEBIAN_PYTHON, tmp_path) as program:
        processes.note_process(program.pid)
        assert processes.wait_idle(30)
        found = detect(program.pid)
        entry = entry_of(fd, program.pid)
        assert entry is not None and entry[0] == found.runtime_address  # type: ignore[union-attr]
        program.stop()
        with ProcessMemory(program.pid) as memory:
            stack = PythonWalker(found, memory).walk(program.pid)  # type: ignore[arg-type]
        recorded = [pack(f.code_address, max(f.instruction_offset, -2), f.entry) for f in stack.frames]
        recorded.insert(1, SHIM)  # a 3.12-style shim under heavy_math: heavy_math becomes its call's entry
        recorded.append(pack(0x7FFF_0000_1000, 0))  # a made-up code object: delivered unnamed
        named = processes.frames(program.pid, recorded)
        late = processes.frames(program.pid, recorded, deadline=time.monotonic() - 1)  # the window ran out
        program.resume()
    assert [frame.symbol for frame, _ in late] == [None] * 4 and processes.counters()["late"] == len(recorded)
    assert [frame.symbol for frame, _ in named] == ["heavy_math", "main", "<module>", None]
    assert [entry for _, entry in named] == [True, False, True, False]
    assert named[0][0].file == str(program.path) and named[0][0].line is not None
    counters = processes.totals()
    assert counters["processes_found"] == 1 and counters["name_errors"] == 1
    processes.forget(program.pid)
    assert entry_of(fd, program.pid) is None


def test_an_old_cpython_is_logged_once_and_left_native(
    python_processes: tuple[PythonProcesses, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    processes, fd = python_processes
    old = next((i for i in cpython_interpreters() if i.version == (3, 10)), None)
    if old is None:
        pytest.skip("no CPython 3.10 on this machine")
    caplog.set_level(logging.WARNING)
    program = "import time; print('ready', flush=True); time.sleep(60)"
    started = [subprocess.Popen([old.path, "-c", program], stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for process in started:
            assert process.stdout is not None and process.stdout.readline() == b"ready\n"  # exec'd, not a fork
            processes.note_process(process.pid)
        assert processes.wait_idle(30)
    finally:
        for process in started:
            process.kill()
            process.wait()
    assert all(entry_of(fd, process.pid) is None for process in started)
    lines = [r.getMessage() for r in caplog.records if "Python frames not read" in r.getMessage()]
    assert len(lines) == 1 and "CPython 3.10: only 3.11 and newer are walked" in lines[0]
    assert processes.counters()["processes_unsupported"] == 2


def test_a_process_without_python_is_left_alone(python_processes: tuple[PythonProcesses, int]) -> None:
    processes, fd = python_processes
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        processes.note_process(sleeper.pid)
        assert processes.wait_idle(30)
        assert entry_of(fd, sleeper.pid) is None
        assert processes.counters() == dict.fromkeys(processes.counters(), 0)
    finally:
        sleeper.kill()
        sleeper.wait()
