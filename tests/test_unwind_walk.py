"""The reference walker on real processes: a C program built with -O2 -fomit-frame-pointer and
libc's qsort, stopped by gdb, walked from gdb's own register and stack snapshot; every
physical frame gdb's `bt` shows must be ours, in order, down to main and on to _start."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from antiprof_core.sources.unwind import CfaKind, UnwindTable, build_table
from antiprof_core.sources.unwind.walker import ProcessMemory, Registers, Resolver, process_resolver, step, walk
from antiprof_core.symbolize.procfs import read_maps

SOURCE = r"""
#include <stdlib.h>
#include <string.h>
volatile unsigned long sink;
volatile int spin = 1;
__attribute__((noinline)) unsigned long alpha(unsigned long n) {
    unsigned long x = n;
    while (spin) { x = x * 6364136223846793005UL + 1442695040888963407UL; sink = x; }
    return x;
}
__attribute__((noinline)) static int compare(const void *a, const void *b) {
    sink += alpha(*(const int *)a);
    return *(const int *)a - *(const int *)b;
}
__attribute__((noinline)) unsigned long middle(int use_qsort) {
    volatile unsigned long local[8];
    for (int i = 0; i < 8; i++) local[i] = sink + i;
    unsigned long r;
    if (use_qsort) {
        int values[64];
        for (int i = 0; i < 64; i++) values[i] = 64 - i;
        qsort(values, 64, sizeof values[0], compare);
        r = values[0];
    } else {
        r = alpha(local[3]);
    }
    sink += local[5];
    return r + 1;
}
int main(int argc, char **argv) {
    unsigned long r = middle(argc > 1 && strcmp(argv[1], "qsort") == 0);
    sink = r;
    return 0;
}
"""

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed (scripts/setup-system.sh)")

_FRAME = re.compile(r"^#(\d+)\s+0x([0-9a-f]+) in (\S+)")


REALIGNED_SOURCE = r"""
#include <string.h>
volatile int spin = 1;
volatile long sink;
__attribute__((noinline)) long alpha(long n) { while (spin) sink += n; return n; }
__attribute__((noinline)) long middle(long n, int m) {
    char buf[m];
    __attribute__((aligned(64))) char aligned[256];
    memset(buf, 1, m);
    memset(aligned, 2, sizeof aligned);
    long r = alpha(n + buf[m / 2] + aligned[n & 255]);
    sink += r;
    return r + 1;
}
int main(int argc, char **argv) { return (int)middle(argc, 100 + argc); }
"""


def build(directory: Path, *flags: str, source: str = SOURCE) -> Path:
    (directory / "walk.c").write_text(source)
    binary = directory / "walk"
    subprocess.run(["gcc", "-O2", "-fomit-frame-pointer", *flags, "-o", str(binary), str(directory / "walk.c")],
                   check=True)  # fmt: skip
    return binary


class Snapshot:
    """Registers, the stack's bytes and gdb's backtrace, all taken while gdb holds the process stopped."""

    def __init__(self, pid: int, directory: Path, debug_root: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        stack = next(entry for entry in read_maps(pid) if entry.path == "[stack]")
        dump = directory / "stack.bin"
        output = subprocess.run(
            ["gdb", "-batch", "-nx", "-iex", f"set debug-file-directory {debug_root or '/usr/lib/debug'}",
             "-p", str(pid), "-ex", "set debuginfod enabled off",
             "-ex", "info registers rip rsp rbp", "-ex", "bt",
             "-ex", f"dump binary memory {dump} $rsp {stack.end:#x}", *(f"-ex={command}" for command in extra)],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        registers: dict[str, str] = {}  # the first of each: later ones are other frames' (`extra`)
        for name, value in re.findall(r"^(rip|rsp|rbp)\s+0x([0-9a-f]+)", output, re.MULTILINE):
            registers.setdefault(name, value)
        self.registers = Registers(int(registers["rip"], 16), int(registers["rsp"], 16), int(registers["rbp"], 16))
        # physical frames only: gdb prints no address for frames inlined into the one above
        frames: dict[int, tuple[int, str]] = {}  # by number: `frame N` prints its line again
        for match in filter(None, map(_FRAME.match, output.splitlines())):
            frames.setdefault(int(match.group(1)), (int(match.group(2), 16), match.group(3)))
        self.frames = [frames[number] for number in sorted(frames)]
        self.stack = dump.read_bytes()
        self.output = output

    def read(self, address: int) -> int | None:
        offset = address - self.registers.rsp
        if not 0 <= offset <= len(self.stack) - 8:
            return None
        return int.from_bytes(self.stack[offset : offset + 8], "little")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield tmp_path, processes
    for process in processes:
        process.kill()
        process.wait()


def snapshot_in_alpha(
    pid: int, directory: Path, debug_root: Path | None = None, extra: tuple[str, ...] = ()
) -> Snapshot:
    """Attach until the program is inside alpha (it gets there within microseconds of starting)."""
    deadline = time.monotonic() + 60
    while True:
        snapshot = Snapshot(pid, directory, debug_root, extra)
        if snapshot.frames and snapshot.frames[0][1] == "alpha":
            return snapshot
        assert time.monotonic() < deadline, f"never caught the program in alpha: {snapshot.frames}"


def check_walk(snapshot: Snapshot, resolve: Resolver) -> None:
    pcs, reason = walk(snapshot.registers, resolve, snapshot.read)
    gdb_pcs = [pc for pc, _ in snapshot.frames]
    names = [name for _, name in snapshot.frames]
    assert names[-1] == "main", names
    assert pcs[: len(gdb_pcs)] == gdb_pcs, (names, [hex(pc) for pc in pcs], [hex(pc) for pc in gdb_pcs])
    # past main: __libc_start_call_main, __libc_start_main, _start, whose return address is undefined
    assert reason == "outermost" and len(pcs) == len(gdb_pcs) + 3, (reason, len(pcs), len(gdb_pcs))


def frame_pointer_walk(snapshot: Snapshot) -> list[int]:
    pcs, frame = [snapshot.registers.rip], snapshot.registers.rbp
    while frame and len(pcs) < 127:
        return_address, frame = snapshot.read(frame + 8), snapshot.read(frame)
        if not return_address:
            break
        pcs.append(return_address)
    return pcs


def test_the_workload_has_no_frame_pointer_prologues(tmp_path: Path) -> None:
    disassembly = subprocess.run(["objdump", "-d", str(build(tmp_path))], capture_output=True, text=True).stdout
    for function in ("main", "middle", "alpha"):
        body = disassembly.split(f"<{function}>:\n", 1)[1].split("\n\n", 1)[0]
        assert "%rsp,%rbp" not in body, f"{function} sets up a frame pointer:\n{body}"


@pytest.mark.parametrize("mode", ["direct", "qsort"])
def test_walk_matches_gdb_backtrace(running: tuple[Path, list[subprocess.Popen[bytes]]], mode: str) -> None:
    directory, processes = running
    binary = build(directory)
    process = subprocess.Popen([str(binary), mode])
    processes.append(process)
    resolve = process_resolver(process.pid)
    for _ in range(3):  # different stopping points inside alpha's loop
        snapshot = snapshot_in_alpha(process.pid, directory)
        expected = ["alpha", "middle", "main"] if mode == "direct" else ["alpha", "compare", "middle", "main"]
        assert [name for _, name in snapshot.frames if name in expected] == expected, snapshot.frames
        check_walk(snapshot, resolve)
        # the same snapshot walked by frame pointers does not get there: the check can fail
        assert snapshot.frames[-1][0] not in frame_pointer_walk(snapshot)


def test_walk_with_debug_frame_from_a_debug_file(running: tuple[Path, list[subprocess.Popen[bytes]]]) -> None:
    """No .eh_frame for our code: its CFI is only in .debug_frame, in a debug file found by build ID."""
    directory, processes = running
    binary = build(directory, "-g", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables")
    build_id = subprocess.run(["readelf", "-n", str(binary)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Build ID: ([0-9a-f]+)", build_id)
    assert match is not None, build_id
    build_id = match.group(1)
    debug_root = directory / "debug"
    debug_file = debug_root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    debug_file.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug_file)], check=True)
    subprocess.run(["strip", "--strip-debug", str(binary)], check=True)

    alone = build_table(str(binary))
    with_debug = build_table(str(binary), debug_root=debug_root)
    assert with_debug.counts.get("debug_file_fdes") == 1 and not alone.counts.get("debug_file_fdes")
    assert len(with_debug) > len(alone)

    def tables(path: str) -> UnwindTable:
        return with_debug if path == str(binary) else build_table(path)

    process = subprocess.Popen([str(binary), "direct"])
    processes.append(process)
    snapshot = snapshot_in_alpha(process.pid, directory, debug_root)
    check_walk(snapshot, process_resolver(process.pid, tables))
    pcs, reason = walk(snapshot.registers, process_resolver(process.pid), snapshot.read)
    assert len(pcs) == 1 and reason in ("no_fde", "no_row"), (pcs, reason)  # without the debug file


def test_walk_through_a_function_that_realigns_its_stack(running: tuple[Path, list[subprocess.Popen[bytes]]]) -> None:
    """GCC's DRAP: CFA = *(rbp-16), the caller's rbp saved at rbp+0 (two expressions the table keeps)."""
    directory, processes = running
    binary = build(directory, source=REALIGNED_SOURCE)
    middle_kinds = {row.cfa_kind for row in build_table(str(binary))}
    assert CfaKind.DEREF_RBP in middle_kinds
    process = subprocess.Popen([str(binary)])
    processes.append(process)
    resolve = process_resolver(process.pid)
    for _ in range(2):
        snapshot = snapshot_in_alpha(process.pid, directory, extra=("frame 2", "info registers rbp"))
        assert [name for _, name in snapshot.frames] == ["alpha", "middle", "main"]
        check_walk(snapshot, resolve)
        # main's rbp as gdb unwinds it = ours, read back from where middle saved it (rbp+0)
        main_rbp = int(re.findall(r"^rbp\s+0x([0-9a-f]+)", snapshot.output, re.MULTILINE)[-1], 16)
        in_middle = step(snapshot.registers, resolve, snapshot.read, leaf=True)
        assert isinstance(in_middle, Registers)
        in_main = step(in_middle, resolve, snapshot.read, leaf=False)
        assert isinstance(in_main, Registers) and in_main.rbp == main_rbp, (in_main, hex(main_rbp))


PYTHON_LOOP = """
def a(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
def b():
    while True:
        a(1000)
b()
"""


def test_walk_through_debians_python_matches_gdb(running: tuple[Path, list[subprocess.Popen[bytes]]]) -> None:
    """python3.11 has no frame pointers: the walk from wherever the interpreter is stopped reaches _start."""
    if not Path("/usr/bin/python3.11").exists():
        pytest.skip("/usr/bin/python3.11 is not installed")
    directory, processes = running
    process = subprocess.Popen(["/usr/bin/python3.11", "-c", PYTHON_LOOP])
    processes.append(process)
    resolve = process_resolver(process.pid)
    checked = 0
    deadline = time.monotonic() + 60
    while checked < 4:
        assert time.monotonic() < deadline, "never caught python3.11 in its loop"
        snapshot = Snapshot(process.pid, directory)
        names = [name for _, name in snapshot.frames]
        if "_PyEval_EvalFrameDefault" not in names:  # caught while starting up
            continue
        checked += 1
        pcs, reason = walk(snapshot.registers, resolve, snapshot.read)
        assert pcs == [pc for pc, _ in snapshot.frames], names
        assert reason == "outermost" and names[-1] == "_start", (reason, names)
        assert snapshot.frames[-1][0] not in frame_pointer_walk(snapshot)


def test_process_memory_reads_words_and_refuses_bad_addresses() -> None:
    word = ctypes.c_uint64(0x1122334455667788)
    memory = ProcessMemory(os.getpid())
    try:
        assert memory(ctypes.addressof(word)) == 0x1122334455667788
        assert memory(0) is None and memory(-8) is None and memory(1 << 64) is None
    finally:
        memory.close()
