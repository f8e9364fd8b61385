"""The unwind maps as the BPF walk will read them: real BPF maps (made with bpf(2), no BCC), real
tables of real binaries, real processes. Every check reads the maps' bytes back and looks pcs up
the way the contract says the BPF program does, against the Python reference resolver."""

from __future__ import annotations

import bisect
import ctypes as ct
import itertools
import logging
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from antiprof_core.config import SamplerConfig
from antiprof_core.metrics import SamplerMetrics
from antiprof_core.model import Counters
from antiprof_core.sources.bpf import syscalls
from antiprof_core.sources.bpf.maps import ArrayMap, MapInfo, create_map
from antiprof_core.sources.unwind import build_table
from antiprof_core.sources.unwind.kernelmaps import NativeUnwindMaps
from antiprof_core.sources.unwind.layout import UNWIND_MAPPING, UNWIND_PROCESS, UNWIND_ROW, kernel_rows
from antiprof_core.sources.unwind.ranges import RangeAllocator
from antiprof_core.sources.unwind.rows import CfaKind, RbpKind, Row
from antiprof_core.sources.unwind.table import UnwindTable
from antiprof_core.sources.unwind.vdso import VDSO_WORKER_PATH as VDSO
from antiprof_core.sources.unwind.vdso import build_vdso_table
from antiprof_core.sources.unwind.walker import Registers, process_resolver, walk
from antiprof_core.sources.unwind.worker import UnwindTableBuilder
from antiprof_core.symbolize.elf import DEBUG_ROOT, ElfInfo, read_elf, read_elf_bytes
from antiprof_core.symbolize.procfs import read_maps, read_own_vdso
from antiprof_core.testing import require_bpf
from antiprof_core.testing.workloads import build_two_function_workload, compile_c

PYTHON = "/usr/bin/python3.11"
READY_SECONDS = 60.0  # a busy shared host: tables of python3.11 and libc are built in well under this

log = logging.getLogger("test.unwind_maps")

# Maps its own executable N times (PROT_EXEC, never adjacent with consecutive offsets, so the
# kernel keeps N mappings), or maps the file argv[2] once; says "ready" and sleeps.
MAPPER_SOURCE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int copies = atoi(argv[1]);
    const char *path = argc > 2 ? argv[2] : "/proc/self/exe";
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 1;
    for (int i = 0; i < copies; i++) {
        char *guard = mmap(NULL, 3 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mmap(guard + 4096, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_FIXED, fd, 0) == MAP_FAILED) return 2;
    }
    printf("ready\n");
    fflush(stdout);
    pause();
    return 0;
}
"""


# --- helpers: the maps, read back as the BPF program reads them ---------------------------


class Maps:
    """Three real maps of the contract's layout, and a NativeUnwindMaps filling them."""

    def __init__(self, rows: int = 1 << 20, processes: int = 64, mappings: int | None = None) -> None:
        self.infos: dict[str, MapInfo] = {
            "unwind_rows": create_map("unwind_rows", syscalls.MAP_TYPE_ARRAY, 4, UNWIND_ROW.size, rows),
            "unwind_mappings": create_map(
                "unwind_mappings", syscalls.MAP_TYPE_ARRAY, 4, UNWIND_MAPPING.size, mappings or 32 * processes
            ),
            "unwind_processes": create_map(
                "unwind_processes", syscalls.MAP_TYPE_HASH, 4, UNWIND_PROCESS.size, processes
            ),
        }
        builder = UnwindTableBuilder(cache_dir=None, process=False)
        self.unwind = NativeUnwindMaps(self.infos, SamplerConfig(), log, builder)
        self._rows = ArrayMap(self.infos["unwind_rows"])
        self._mappings = ArrayMap(self.infos["unwind_mappings"])

    def close(self) -> None:
        self.unwind.close()
        for info in self.infos.values():
            os.close(info.fd)

    def plan(self, *pids: int) -> None:
        for pid in pids:
            self.unwind.note_process(pid)
        assert self.unwind.wait_idle(READY_SECONDS), "the planner did not finish"

    def entry(self, tgid: int) -> tuple[int, int] | None:
        value = (ct.c_char * UNWIND_PROCESS.size)()
        if not syscalls.lookup(self.infos["unwind_processes"].fd, ct.c_uint32(tgid), value):
            return None
        first, count = UNWIND_PROCESS.unpack(value.raw)
        return first, count

    def mappings(self, tgid: int) -> list[tuple[int, int, int, int, int]]:
        """(start, end, bias, row_start, row_count) of the process's run; [] without an entry."""
        entry = self.entry(tgid)
        if entry is None:
            return []
        raw = self._mappings.read_range(*entry)
        return [UNWIND_MAPPING.unpack_from(raw, index * UNWIND_MAPPING.size) for index in range(entry[1])]

    def rows(self, start: int, count: int) -> list[tuple[int, ...]]:
        raw = self._rows.read_range(start, count)
        return [UNWIND_ROW.unpack_from(raw, index * UNWIND_ROW.size) for index in range(count)]


class MapWalker:
    """The contract's lookup over bytes read from the maps: mapping by binary search, then the row."""

    def __init__(self, maps: Maps, tgid: int) -> None:
        self.mappings = maps.mappings(tgid)
        self.starts = [mapping[0] for mapping in self.mappings]
        self.rows = {m[3]: maps.rows(m[3], m[4]) for m in self.mappings}
        self.row_pcs = {start: [row[0] for row in rows] for start, rows in self.rows.items()}

    def lookup(self, pc: int) -> Row | None:
        index = bisect.bisect_right(self.starts, pc) - 1
        if index < 0 or pc >= self.mappings[index][1] or not self.mappings[index][4]:
            return None  # the BPF walk takes a frame-pointer step here
        _, _, bias, row_start, _ = self.mappings[index]
        rows = self.rows[row_start]
        relative = (pc - bias) % (1 << 64)
        if relative >= rows[-1][0]:
            return None
        row = rows[bisect.bisect_right(self.row_pcs[row_start], relative) - 1] if relative >= rows[0][0] else None
        if row is None:
            return None
        pc_rel, cfa_offset, rbp_offset, cfa_kind, rbp_kind, param, ra_offset = row
        return Row(pc_rel, CfaKind(cfa_kind), cfa_offset, RbpKind(rbp_kind), rbp_offset, ra_offset, param)


def same_rule(a: Row, b: Row) -> bool:
    return (a.cfa_kind, a.cfa_offset, a.rbp_kind, a.rbp_offset, a.ra_offset, a.param) == (
        b.cfa_kind,
        b.cfa_offset,
        b.rbp_kind,
        b.rbp_offset,
        b.ra_offset,
        b.param,
    )


def executable_files(pid: int) -> list:  # type: ignore[type-arg]
    return [entry for entry in read_maps(pid, executable_only=True) if entry.inode and entry.path.startswith("/")]


def unwound_mappings(pid: int) -> list:  # type: ignore[type-arg]
    """What the unwinder gives a process tables for: its executable files and its vDSO."""
    entries = read_maps(pid, executable_only=True)
    return [entry for entry in entries if (entry.inode and entry.path.startswith("/")) or entry.path == VDSO]


def table_of(path: str) -> UnwindTable:
    return build_vdso_table(DEBUG_ROOT) if path == VDSO else build_table(path)


def elf_of(path: str) -> ElfInfo:
    if path == VDSO:
        image = read_own_vdso()
        assert image is not None
        return read_elf_bytes(image, VDSO)
    return read_elf(path)


def table_rows(path: str) -> int:
    return len(table_of(path).pcs)


@pytest.fixture
def maps_factory() -> Iterator:  # type: ignore[type-arg]
    require_bpf()
    made: list[Maps] = []

    def make(**kwargs: int) -> Maps:
        made.append(Maps(**kwargs))
        return made[-1]

    yield make
    for maps in made:
        maps.close()


@pytest.fixture
def spawn() -> Iterator:  # type: ignore[type-arg]
    """Start a process that prints a line when it is ready; all are killed at the end."""
    processes: list[subprocess.Popen[str]] = []

    def start(*command: str | Path, ready_line: bool = True) -> subprocess.Popen[str]:
        process = subprocess.Popen([str(part) for part in command], stdout=subprocess.PIPE, text=True)
        processes.append(process)
        if ready_line:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready", f"{command} did not start"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


def python_ready(spawn) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    code = "import json, time; print('ready', flush=True); time.sleep(300)"
    process: subprocess.Popen[str] = spawn(PYTHON, "-c", code)
    return process


@pytest.fixture(scope="module")
def mapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(MAPPER_SOURCE, tmp_path_factory.mktemp("mapper") / "mapper")


# --- map I/O without BCC --------------------------------------------------------------------


def test_array_written_and_read_back_in_batches() -> None:
    require_bpf()
    info = create_map("batch_test", syscalls.MAP_TYPE_ARRAY, 4, 16, 200_000)
    try:
        array = ArrayMap(info)
        data = b"".join(struct.pack("<IIII", index, ~index & 0xFFFFFFFF, 7, index * 3) for index in range(150_000))
        array.write_range(40_000, data)  # spans three WRITE_BATCH calls
        assert array.read_range(40_000, 150_000) == data
        assert array.read_range(39_999, 1) == bytes(16)
        assert array.read(40_001) == data[16:32]
        with pytest.raises(IndexError, match="outside map batch_test"):
            array.write_range(199_999, data[:32])
    finally:
        os.close(info.fd)


def test_ranges_are_first_fit_merged_and_freed_a_window_late() -> None:
    ranges = RangeAllocator(100)
    a, b, c = ranges.allocate(30), ranges.allocate(30), ranges.allocate(30)
    assert (a, b, c) == (0, 30, 60)
    assert a is not None and b is not None and c is not None
    assert ranges.allocate(20) is None and ranges.could_fit(10)
    ranges.retire(b, 30)
    assert ranges.allocate(20) is None and ranges.could_fit(30)
    assert not ranges.could_fit(31)  # 30 retired and 10 free at the end are not adjacent
    ranges.advance()  # a program may still have read the old pointer before this switch
    assert ranges.allocate(20) is None
    ranges.advance()
    assert ranges.allocate(20) == 30  # lowest fit
    ranges.retire(a, 30)
    ranges.retire(c, 30)
    ranges.advance()
    ranges.advance()
    assert ranges.largest_free() == 50 and ranges.free == 80  # [0,30) and [50,100), merged: 20 used between
    ranges.retire(30, 20)
    ranges.advance()
    ranges.advance()
    assert ranges.largest_free() == 100 and ranges.used == 0


def test_kernel_rows_are_the_tables_rows_behind_relative_pcs() -> None:
    table = build_table(PYTHON)
    base, raw = kernel_rows(table, 1 << 20)
    assert base == table.pcs[0] and len(raw) == 16 * len(table.pcs)
    for index in (0, 1, len(table.pcs) // 2, len(table.pcs) - 1):
        relative, *rule = UNWIND_ROW.unpack_from(raw, 16 * index)
        expected = table.lookup(table.pcs[index])
        assert relative + base == table.pcs[index]
        assert expected is not None
        assert tuple(rule) == (
            expected.cfa_offset,
            expected.rbp_offset,
            expected.cfa_kind,
            expected.rbp_kind,
            expected.param,
            expected.ra_offset,
        )
    assert UNWIND_ROW.unpack_from(raw, len(raw) - 16)[3] == CfaKind.NO_FDE  # every table ends in a stop row


# --- a live process -------------------------------------------------------------------------


def test_live_python_gets_every_file_with_its_real_rows(maps_factory, spawn) -> None:  # type: ignore[no-untyped-def]
    maps = maps_factory()
    process = python_ready(spawn)
    maps.plan(process.pid)
    runs = maps.mappings(process.pid)
    files = unwound_mappings(process.pid)
    assert [(start, end) for start, end, *_ in runs] == [(e.start, e.end) for e in files]
    for (start, end, bias, row_start, row_count), entry in zip(runs, files, strict=True):
        table = table_of(entry.path)
        assert row_count == len(table.pcs), entry.path
        rows = maps.rows(row_start, row_count)
        assert [relative + table.pcs[0] for relative, *_ in rows] == list(table.pcs), entry.path
        # the bias maps a runtime pc to the row pc: pc - bias = file address - table base
        info = elf_of(entry.path)
        file_address = info.file_address(entry.offset + (end - start) // 2)
        assert file_address is not None
        assert (start + (end - start) // 2 - bias) % (1 << 64) == file_address - table.pcs[0]
    spans = sorted((row_start, row_start + row_count) for *_, row_start, row_count in runs)
    assert all(left[1] <= right[0] for left, right in itertools.pairwise(spans)), "row ranges overlap"
    totals = maps.unwind.totals()
    assert totals["files_loaded"] == len(files) and totals["rows_loaded"] == sum(r[4] for r in runs)
    summary = maps.unwind.summary()
    assert summary.startswith(f"unwind tables: {len(files)} files, {totals['rows_loaded']} rows (")
    assert summary.endswith("for 1 processes")


def test_map_lookup_agrees_with_the_reference_resolver(maps_factory, spawn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """At pcs across every executable mapping (each function's start, middle and end, and a
    stride through the text), the row the maps give is the row the reference walker uses."""
    maps = maps_factory()
    workload = build_two_function_workload(tmp_path)
    processes = [python_ready(spawn), spawn(workload, ready_line=False)]
    deadline = time.monotonic() + READY_SECONDS
    while len(executable_files(processes[1].pid)) < 3 and time.monotonic() < deadline:  # libc mapped
        time.sleep(0.01)
    maps.plan(*(process.pid for process in processes))
    for process in processes:
        walker = MapWalker(maps, process.pid)
        resolve = process_resolver(process.pid)
        checked = 0
        for entry in executable_files(process.pid):
            info = read_elf(entry.path)
            pcs = set(range(entry.start, entry.end, 61))
            for start, end in zip(info.symbols.starts, info.symbols.ends, strict=True):
                for address in (start, start + 1, (start + end) // 2, end - 1):
                    for segment in info.segments:
                        if segment.vaddr <= address < segment.vaddr + segment.file_size:
                            pc = entry.start + address - segment.vaddr + segment.file_offset - entry.offset
                            if entry.start <= pc < entry.end:
                                pcs.add(pc)
            for pc in sorted(pcs):
                found = resolve(pc)
                expected = found[0].lookup(found[1]) if found is not None else None
                got = walker.lookup(pc)
                if got is None:  # only where the reference has no rule, or a stop past the last FDE
                    assert expected is None or expected.cfa_kind == CfaKind.NO_FDE, hex(pc)
                else:
                    assert expected is not None and same_rule(got, expected), f"{entry.path} at {pc:#x}"
                    checked += 1
        assert checked > 10_000


WALK_SOURCE = r"""
#include <stdlib.h>
volatile unsigned long sink;
__attribute__((noinline)) unsigned long alpha(unsigned long n) {
    for (;;) { n = n * 6364136223846793005UL + 1; sink = n; }
}
__attribute__((noinline)) static int compare(const void *a, const void *b) {
    sink += alpha(*(const int *)a);
    return *(const int *)a - *(const int *)b;
}
__attribute__((noinline)) int middle(void) {
    int values[64];
    for (int i = 0; i < 64; i++) values[i] = 64 - i;
    qsort(values, 64, sizeof values[0], compare);
    return values[0];
}
int main(void) { int r = middle(); sink = r; return 0; }
"""
_GDB_FRAME = re.compile(r"^#(\d+)\s+0x([0-9a-f]+) in (\S+)")


class MapTable:
    """The rows of one mapping as read from the map, with UnwindTable's ``lookup`` (relative pcs)."""

    def __init__(self, walker: MapWalker, pc_in_mapping: int) -> None:
        self._walker = walker
        self._bias = next(m[2] for m in walker.mappings if m[0] <= pc_in_mapping < m[1])

    def lookup(self, relative: int) -> Row | None:
        return self._walker.lookup((relative + self._bias) % (1 << 64))


def test_a_walk_over_the_map_bytes_alone_gives_gdbs_backtrace(maps_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The reference walker stepping with nothing but the maps' bytes (a -O2 -fomit-frame-pointer
    program inside libc's qsort, stopped by gdb) finds every frame gdb shows, down to main."""
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (scripts/setup-system.sh)")
    source = tmp_path / "walk.c"
    source.write_text(WALK_SOURCE)
    binary = tmp_path / "walk"
    subprocess.run(["gcc", "-O2", "-fomit-frame-pointer", "-o", str(binary), str(source)], check=True)
    maps = maps_factory()
    process = subprocess.Popen([str(binary)])
    try:
        deadline = time.monotonic() + READY_SECONDS
        while len(executable_files(process.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        maps.plan(process.pid)
        walker = MapWalker(maps, process.pid)

        def resolve(pc: int) -> tuple[MapTable, int] | None:
            index = bisect.bisect_right(walker.starts, pc) - 1
            if index < 0 or pc >= walker.mappings[index][1] or not walker.mappings[index][4]:
                return None
            return MapTable(walker, pc), (pc - walker.mappings[index][2]) % (1 << 64)

        stack = next(entry for entry in read_maps(process.pid) if entry.path == "[stack]")
        dump = tmp_path / "stack.bin"
        while True:  # attach until gdb stops it inside alpha (it gets there at once)
            output = subprocess.run(
                ["gdb", "-batch", "-nx", "-p", str(process.pid), "-ex", "set debuginfod enabled off",
                 "-ex", "info registers rip rsp rbp", "-ex", "bt",
                 "-ex", f"dump binary memory {dump} $rsp {stack.end:#x}"],
                capture_output=True, text=True, timeout=120,
            ).stdout  # fmt: skip
            frames = [(int(m.group(2), 16), m.group(3)) for m in map(_GDB_FRAME.match, output.splitlines()) if m]
            if frames and frames[0][1] == "alpha":
                break
            assert time.monotonic() < deadline, output
        registers = dict(re.findall(r"^(rip|rsp|rbp)\s+0x([0-9a-f]+)", output, re.MULTILINE))
        rsp = int(registers["rsp"], 16)
        memory = dump.read_bytes()

        def read(address: int) -> int | None:
            offset = address - rsp
            return int.from_bytes(memory[offset : offset + 8], "little") if 0 <= offset <= len(memory) - 8 else None

        start = Registers(int(registers["rip"], 16), rsp, int(registers["rbp"], 16))
        pcs, reason = walk(start, resolve, read)  # type: ignore[arg-type]
        names = [name for _, name in frames]
        assert {"compare", "middle", "main"} <= set(names), names
        assert pcs[: len(frames)] == [pc for pc, _ in frames], (names, [hex(pc) for pc in pcs])
        assert reason == "outermost", reason  # on past main to _start, where the return address is undefined
        assert len(pcs) >= len(frames)
    finally:
        process.kill()
        process.wait()


def test_exit_deletes_the_entry_and_frees_the_run(maps_factory, spawn) -> None:  # type: ignore[no-untyped-def]
    maps = maps_factory()
    first = python_ready(spawn)
    maps.plan(first.pid)
    entry = maps.entry(first.pid)
    assert entry is not None and entry[0] == 0
    first.kill()
    first.wait()
    maps.unwind.on_window()
    assert maps.entry(first.pid) is None
    second = python_ready(spawn)
    maps.plan(second.pid)
    second_entry = maps.entry(second.pid)
    assert second_entry is not None and second_entry[0] == entry[1]  # the old run is not reused yet
    second.kill()
    second.wait()
    maps.unwind.on_window()  # retires the second's run
    maps.unwind.on_window()  # a window later: both runs free
    third = python_ready(spawn)
    maps.plan(third.pid)
    assert maps.entry(third.pid) == (0, entry[1])
    assert maps.unwind.totals()["files_loaded"] == len(unwound_mappings(third.pid))  # tables stayed loaded


def test_a_library_loaded_later_is_added_when_the_process_is_sampled(maps_factory) -> None:  # type: ignore[no-untyped-def]
    maps = maps_factory()
    code = "import sys; print('ready', flush=True); sys.stdin.readline(); import _decimal; print('loaded', flush=True)"
    process = subprocess.Popen(
        [PYTHON, "-c", code + "; sys.stdin.readline()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "ready"
        maps.plan(process.pid)
        before = len(maps.mappings(process.pid))
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "loaded"
        decimal = next(e for e in executable_files(process.pid) if "_decimal" in e.path)
        maps.unwind.on_window(sampled=[process.pid])
        maps.unwind.on_window(sampled=[process.pid])  # REFRESH_WINDOWS later: its mappings are read again
        assert maps.unwind.wait_idle(READY_SECONDS)
        runs = maps.mappings(process.pid)
        assert len(runs) == before + 1 and decimal.start in [start for start, *_ in runs]
    finally:
        process.kill()
        process.wait()


# --- caps, eviction, refusals -----------------------------------------------------------------


def test_table_larger_than_the_map_is_refused_and_counted(maps_factory, spawn) -> None:  # type: ignore[no-untyped-def]
    process = python_ready(spawn)
    python_rows = table_rows(PYTHON)
    maps = maps_factory(rows=python_rows - 1)
    maps.plan(process.pid)
    counters = maps.unwind.counters()
    assert counters["tables_too_large"] >= 1
    python_start = next(e.start for e in executable_files(process.pid) if e.path == PYTHON)
    assert python_start not in [start for start, *_ in maps.mappings(process.pid)]  # walked by frame pointers
    assert maps.unwind.counters()["tables_too_large"] == 0  # counters() gives what was gained since the last call


def test_full_rows_evict_unused_files_first_then_least_recently_sampled(  # type: ignore[no-untyped-def]
    maps_factory, spawn, tmp_path
) -> None:
    """Three builds of one small program share libc, ld.so and the vDSO; the rows hold two of them. A file no
    live process maps gives way before an older one in use; then the least recently sampled file
    in use gives way, and its process is rewritten to walk it with frame pointers."""
    source = Path(build_two_function_workload(tmp_path / "one")).with_suffix(".c").read_text()
    binaries = [tmp_path / "one" / "two_functions"]
    for number in (2, 3):  # other build IDs: new files to load
        binaries.append(compile_c(source + f"\nint build_number_{number} = {number};\n", tmp_path / f"build{number}"))

    def start(binary: Path) -> subprocess.Popen[str]:
        process: subprocess.Popen[str] = spawn(binary, ready_line=False)
        deadline = time.monotonic() + READY_SECONDS
        while len(executable_files(process.pid)) < 3 and time.monotonic() < deadline:  # libc and ld.so mapped
            time.sleep(0.01)
        return process

    def starts(process: subprocess.Popen[str]) -> list[int]:
        return [start for start, *_ in maps.mappings(process.pid)]

    def binary_start(process: subprocess.Popen[str], binary: Path) -> int:
        start: int = next(e.start for e in executable_files(process.pid) if e.path == str(binary))
        return start

    first = start(binaries[0])
    rows = {entry.path: table_rows(entry.path) for entry in unwound_mappings(first.pid)}
    own_rows = rows[str(binaries[0])]
    maps = maps_factory(rows=sum(rows.values()) + own_rows + own_rows // 2)  # libc, ld.so, vDSO and two builds
    maps.plan(first.pid)
    maps.unwind.on_window(sampled=[first.pid])
    second = start(binaries[1])
    maps.plan(second.pid)
    assert len(starts(first)) == len(starts(second)) == 4  # the build, libc, ld.so and the vDSO
    maps.unwind.on_window(sampled=[second.pid])  # the second build sampled more recently than the first
    second.kill()
    second.wait()
    maps.unwind.on_window()  # the second is gone: its build is mapped by no one

    third = start(binaries[2])
    maps.plan(third.pid)
    assert maps.unwind.totals()["evictions"] == 1
    assert binary_start(first, binaries[0]) in starts(first)  # the older file in use stayed
    maps.unwind.on_window(sampled=[third.pid])
    maps.unwind.on_window(sampled=[third.pid])  # the rows given up are free a window later
    assert maps.unwind.wait_idle(READY_SECONDS)
    assert binary_start(third, binaries[2]) in starts(third)

    fourth = start(binaries[1])
    maps.plan(fourth.pid)
    assert maps.unwind.totals()["evictions"] == 2
    assert binary_start(first, binaries[0]) not in starts(first)  # least recently sampled: rewritten without it
    assert len(starts(first)) == 3 and binary_start(third, binaries[2]) in starts(third)
    maps.unwind.on_window(sampled=[fourth.pid])
    maps.unwind.on_window(sampled=[fourth.pid])
    assert maps.unwind.wait_idle(READY_SECONDS)
    assert binary_start(fourth, binaries[1]) in starts(fourth)
    assert maps.unwind.totals()["files_loaded"] == 7  # libc, ld.so, vDSO, the three builds, the second again


def test_processes_over_the_cap_are_refused_and_counted(maps_factory, spawn) -> None:  # type: ignore[no-untyped-def]
    maps = maps_factory(processes=2)
    processes = [python_ready(spawn) for _ in range(3)]
    maps.plan(*(process.pid for process in processes))
    written = [process.pid for process in processes if maps.entry(process.pid) is not None]
    assert len(written) == 2
    assert maps.unwind.counters()["processes_refused"] == 1


def test_mappings_beyond_256_are_left_out_and_counted(maps_factory, spawn, mapper) -> None:  # type: ignore[no-untyped-def]
    maps = maps_factory()
    process = spawn(mapper, "300")
    total = len(unwound_mappings(process.pid))
    assert total > 300
    maps.plan(process.pid)
    assert len(maps.mappings(process.pid)) == 256
    assert maps.unwind.counters()["mappings_left_out"] == total - 256


# --- hostile paths ----------------------------------------------------------------------------


def test_a_mapped_path_replaced_by_a_symlink_or_fifo_is_not_followed(  # type: ignore[no-untyped-def]
    maps_factory, spawn, mapper, tmp_path
) -> None:
    """Each process maps its copy of a binary, then the path it mapped becomes a symlink to
    python3.11, a FIFO, or a path through a symlinked directory to a copy of python3.11: no table
    of anything at those paths is read, nothing hangs, the processes' other files are loaded."""
    paths = [tmp_path / "a" / "victim", tmp_path / "b" / "victim", tmp_path / "c" / "sub" / "victim"]
    victims = []
    for path in paths:
        path.parent.mkdir(parents=True)
        shutil.copy(mapper, path)
        victims.append(spawn(mapper, "1", path))
    for path in paths:
        path.unlink()  # /proc/PID/maps still names it: "PATH (deleted)"
    paths[0].symlink_to(PYTHON)
    os.mkfifo(paths[1])
    paths[2].parent.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(PYTHON, elsewhere / "victim")
    paths[2].parent.symlink_to(elsewhere)
    maps = maps_factory()
    maps.plan(*(victim.pid for victim in victims))  # within READY_SECONDS: the FIFO hangs nothing
    for victim, path in zip(victims, paths, strict=True):
        mapped = [e for e in read_maps(victim.pid, executable_only=True) if e.path == str(path)]
        assert len(mapped) == 1, read_maps(victim.pid, executable_only=True)
        starts = [start for start, *_ in maps.mappings(victim.pid)]
        assert mapped[0].start not in starts
        assert len(starts) == len(unwound_mappings(victim.pid)) - 1  # libc, ld.so and the vDSO
    assert maps.unwind.totals()["mappings_left_out"] == 3
    assert maps.unwind.totals()["files_loaded"] == 4  # the mapper, libc, ld.so, vDSO: nothing at the hostile paths


# --- counters reach the window's readers --------------------------------------------------------


def test_unwind_counters_reach_prometheus() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = SamplerMetrics(registry)
    metrics.record(Counters(unwind_tables={"files_loaded": 3, "evictions": 1}))
    metrics.record(Counters(unwind_tables={"files_loaded": 2}))
    assert registry.get_sample_value("antiprof_unwind_tables_total", {"kind": "files_loaded"}) == 5
    assert registry.get_sample_value("antiprof_unwind_tables_total", {"kind": "evictions"}) == 1


def test_the_sampler_fills_the_unwind_maps_and_reports_their_counters(spawn) -> None:  # type: ignore[no-untyped-def]
    """BpfSampler wired to real maps of the program's layout (made here, no BCC; no program runs):
    a newly announced process gets its entry, the window carries the unwind counters, close ends it."""
    require_bpf()
    import threading

    from antiprof_core.sources.bpf.loader import LoadedProgram
    from antiprof_core.sources.bpf.program import COUNTER_NAMES, SAMPLE_KEY
    from antiprof_core.sources.bpf.sampler import BpfSampler
    from antiprof_core.testing import synthetic_host

    config = SamplerConfig(unwind_cache_dir="")
    infos = {
        "active_set": create_map("active_set", syscalls.MAP_TYPE_ARRAY, 4, 4, 1),
        "counters": create_map("counters", syscalls.MAP_TYPE_PERCPU_ARRAY, 4, 8, 2 * len(COUNTER_NAMES)),
        "known_tgids": create_map("known_tgids", syscalls.MAP_TYPE_LRU_HASH, 4, 1, 64),
        "new_tgids": create_map("new_tgids", syscalls.MAP_TYPE_RINGBUF, 0, 0, 4 * 4096),
        "unwind_rows": create_map("unwind_rows", syscalls.MAP_TYPE_ARRAY, 4, UNWIND_ROW.size, 1 << 18),
        "unwind_mappings": create_map("unwind_mappings", syscalls.MAP_TYPE_ARRAY, 4, UNWIND_MAPPING.size, 32 * 64),
        "unwind_processes": create_map("unwind_processes", syscalls.MAP_TYPE_HASH, 4, UNWIND_PROCESS.size, 64),
    }
    for name in ("stacks0", "stacks1"):
        infos[name] = create_map(name, syscalls.MAP_TYPE_HASH, 8, 8 * (config.max_stack_depth + 1), 64)
    for name in ("counts0", "counts1"):
        infos[name] = create_map(name, syscalls.MAP_TYPE_HASH, SAMPLE_KEY.size, 8, 64)
    program = LoadedProgram(os.dup(infos["active_set"].fd), infos, 0.0, 0)
    sampler = BpfSampler(config, synthetic_host(), log)
    sampler._program = program  # what start() does once the child has loaded the program
    sampler._open_maps(program)
    sampler._poll_thread = threading.Thread(target=sampler._poll, daemon=True)
    sampler._poll_thread.start()
    try:
        unwind = sampler._unwind_maps
        assert unwind is not None
        process = python_ready(spawn)
        sampler._on_new_tgid(struct.pack("<II", process.pid, 0))  # as the new_tgids ring buffer delivers it
        deadline = time.monotonic() + READY_SECONDS
        value = (ct.c_char * UNWIND_PROCESS.size)()
        while not syscalls.lookup(infos["unwind_processes"].fd, ct.c_uint32(process.pid), value):
            assert time.monotonic() < deadline, "the process never got an unwind entry"
            time.sleep(0.05)
        window = sampler.collect()
        files = len(unwound_mappings(process.pid))
        assert window.counters.unwind_tables["files_loaded"] == files
        assert window.counters.unwind_tables["rows_loaded"] > 100_000
        assert sampler.collect().counters.unwind_tables["files_loaded"] == 0  # a window's share, not a total
    finally:
        sampler.close()
    assert sampler._unwind_maps is None


def test_program_headers_agree_with_pyelftools() -> None:
    """The planner's own reader of build IDs and PT_LOAD segments gives what the symbolizer's gives."""
    from antiprof_core.sources.unwind.elfheaders import ElfHeaderError, read_headers

    libraries = sorted(Path("/usr/lib/x86_64-linux-gnu").glob("lib*.so.*"))[:40]
    checked = 0
    for path in [Path(PYTHON), Path("/usr/bin/sleep"), *libraries]:
        if path.is_symlink() or not path.is_file():
            continue
        expected = read_elf(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            headers = read_headers(fd, os.fstat(fd).st_size, str(path))
        finally:
            os.close(fd)
        assert (headers.build_id, headers.segments) == (expected.build_id, expected.segments), path
        checked += 1
    assert checked >= 10
    fd = os.open("/etc/passwd", os.O_RDONLY)
    try:
        with pytest.raises(ElfHeaderError, match="/etc/passwd: not a little-endian ELF64 file"):
            read_headers(fd, os.fstat(fd).st_size, "/etc/passwd")
    finally:
        os.close(fd)
