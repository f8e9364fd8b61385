"""The symbolizer's sharing and limits on real files and processes (no BPF): aliases, demangled
C++, JIT perf maps inside a container's own /tmp, one file cache across processes, the byte
budget, the naming deadline, and safe opening."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from antiprof_core.config import ConfigError, PluginCatalog, build_config
from antiprof_core.model import FrameKind
from antiprof_core.symbolize.demangle import demangle
from antiprof_core.symbolize.elf import read_elf
from antiprof_core.symbolize.kallsyms import FRAME_BYTES
from antiprof_core.symbolize.metrics import register_symbolizer_metrics
from antiprof_core.symbolize.symbolizer import Symbolizer
from antiprof_core.symbolize.symtab import build_symbol_table
from antiprof_core.symbolize.untrusted import UnsafeFileError, open_untrusted
from antiprof_core.testing.workloads import build_jit_workload

ALIASES = r"""
__asm__(".text\n"
        ".globl zero_first\n.type zero_first,@function\n"
        ".globl zero_second\n.type zero_second,@function\n"
        "zero_first:\nzero_second:\n"
        "  nop\n  nop\n  nop\n  nop\n  ret\n");
int after_the_aliases(int x) { return x + 1; }
"""

CXX = r"""
namespace shapes {
struct Circle {
    double radius;
    __attribute__((noinline)) double area(int scale) const { return 3.14159 * radius * radius * scale; }
};
}
extern "C" double (shapes::Circle::*area_pointer())(int) const { return &shapes::Circle::area; }
template <typename T> __attribute__((noinline)) T twice(T value) { return value * 2; }
template int twice<int>(int);
"""


def build(directory: Path, name: str, source: str, compiler: str = "cc") -> Path:
    if shutil.which(compiler) is None:
        pytest.skip(f"needs {compiler}")
    suffix = ".cc" if compiler == "g++" else ".c"
    path = directory / f"{name}{suffix}"
    path.write_text(source)
    library = directory / f"lib{name}.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(path)], check=True)
    return library


def symbol_address(library: ctypes.CDLL, name: str) -> int:
    value = ctypes.cast(getattr(library, name), ctypes.c_void_p).value
    assert value is not None
    return value


def test_size_zero_aliases_cover_their_code_up_to_the_next_symbol(tmp_path: Path) -> None:
    path = build(tmp_path, "aliases", ALIASES)
    table = read_elf(path).symbols
    library = ctypes.CDLL(str(path))
    start = symbol_address(library, "zero_first")
    symbolizer = Symbolizer()
    frame = symbolizer.user_frame(symbolizer.state(os.getpid()), start + 2, leaf=True)
    assert frame.symbol in ("zero_first", "zero_second") and frame.offset == 2
    assert "zero_first" in table.names() or "zero_second" in table.names()


def test_size_zero_alias_table_rules() -> None:
    table = build_symbol_table([(0x1000, 0, "b_alias"), (0x1000, 0, "a_alias"), (0x1010, 0, "next")])
    assert table.lookup(0x1008) in (("a_alias", 8), ("b_alias", 8))
    sized = build_symbol_table([(0x2000, 0, "zero"), (0x2000, 0x20, "sized"), (0x2040, 4, "later")])
    assert sized.lookup(0x201F) == ("sized", 0x1F) and sized.lookup(0x2030) is None


def test_cxx_frames_are_demangled(tmp_path: Path) -> None:
    path = build(tmp_path, "shapes", CXX, compiler="g++")
    library = ctypes.CDLL(str(path))
    mangled = next(name for name in read_elf(path).symbols.names() if "Circle4area" in name)
    assert mangled.startswith("_ZNK6shapes6Circle4area")
    address = symbol_address(library, mangled)
    symbolizer = Symbolizer()
    state = symbolizer.state(os.getpid())
    frame = symbolizer.user_frame(state, address + 1, leaf=True)
    assert frame.symbol == "shapes::Circle::area(int) const" and frame.offset == 1
    twice = symbolizer.user_frame(state, symbol_address(library, "_Z5twiceIiET_S0_"), leaf=True)
    assert twice.symbol == "int twice<int>(int)"


def test_rust_legacy_names_lose_their_hash_and_others_stay() -> None:
    assert demangle("_ZN4core3fmt5write17h9f1e1b0a0a0a0a0aE") == "core::fmt::write"
    assert demangle("_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17h0123456789abcdefE").startswith(
        "std::rt::lang_start"
    )
    for raw in ("main", "_Zgarbage", "JS:*fib", "_RNvCs1_4main4main", "_Z" + "N3foo" * 400 + "E"):
        assert demangle(raw) == raw


@pytest.fixture
def jit_in_a_container() -> Iterator[tuple[int, int, int]]:
    """The JIT workload in new PID and mount namespaces with a /tmp of its own, as in a container.

    Its perf map is /tmp/perf-NSPID.map inside; nothing exists at the agent's /tmp/perf-HOSTPID.map.
    Yields (host PID, namespace PID, JIT page address).
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    outside_tmp = Path(tempfile.mkdtemp(dir="/var/tmp"))  # /tmp is hidden by the namespace's own
    program = build_jit_workload(outside_tmp)
    script = (
        'mount -t tmpfs tmpfs /tmp && { "$0" 60 > /tmp/page & pid=$!;'
        " while [ ! -s /tmp/page ]; do sleep 0.01; done; page=$(cat /tmp/page);"
        ' echo "$page 100 jit_in_container" > /tmp/perf-$pid.map; echo "$page $pid"; wait; }'
    )
    outer = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(program),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert outer.stdout is not None
        ready, _, _ = select.select([outer.stdout], [], [], 30)
        assert ready, "the JIT workload in its namespaces did not start"
        page_text, namespace_pid = outer.stdout.readline().split()
        host_pid = find_host_pid(outer.pid, program)
        yield host_pid, int(namespace_pid), int(page_text, 16)
    finally:
        for pid in children(outer.pid):  # the namespace's PID 1: killing it ends everything inside
            os.kill(pid, signal.SIGKILL)
        outer.kill()
        outer.wait()
        shutil.rmtree(outside_tmp, ignore_errors=True)


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def find_host_pid(ancestor: int, program: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "exe") == str(program) and is_descendant(int(entry.name), ancestor):
                    return int(entry.name)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("the JIT workload did not start")


def is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def test_jit_perf_map_is_read_from_the_containers_own_tmp(jit_in_a_container: tuple[int, int, int]) -> None:
    host_pid, namespace_pid, page = jit_in_a_container
    status = Path(f"/proc/{host_pid}/status").read_text()
    assert f"NSpid:\t{host_pid}\t{namespace_pid}" in status
    assert not Path(f"/tmp/perf-{host_pid}.map").exists()
    deadline = time.monotonic() + 10
    frame = None
    while time.monotonic() < deadline:  # the map is written just after the page address is printed
        symbolizer = Symbolizer()
        frame = symbolizer.user_frame(symbolizer.state(host_pid), page + 4, leaf=True)
        if frame.symbol:
            break
        time.sleep(0.05)
    assert frame is not None and (frame.symbol, frame.offset, frame.kind) == ("jit_in_container", 4, FrameKind.JIT)


@functools.lru_cache(maxsize=4)
def middle_function(path: str) -> tuple[int, str]:
    """(file offset, name) of the middle function of an ELF file's symbol table."""
    info = read_elf(path)
    index = len(info.symbols) // 2
    vaddr = info.symbols.starts[index]
    segment = next(s for s in info.segments if s.vaddr <= vaddr < s.vaddr + s.file_size)
    return vaddr - segment.vaddr + segment.file_offset, info.symbols.name(index)


def libc_function_address(pid: int) -> tuple[int, str]:
    """A function of ``pid``'s libc and where it is: its file offset moved by the mapping."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and "x" in parts[1] and "libc.so" in parts[5]:
            file_offset, name = middle_function(parts[5])
            return int(parts[0].split("-")[0], 16) + file_offset - int(parts[2], 16), name
    raise AssertionError("no libc mapping")


def test_a_new_process_of_a_known_binary_reads_no_file_again(tmp_path: Path) -> None:
    program = build_jit_workload(tmp_path)
    first = subprocess.Popen([str(program), "30"], stdout=subprocess.DEVNULL)
    second = subprocess.Popen([str(program), "30"], stdout=subprocess.DEVNULL)
    try:
        wait_for_libc(first.pid, program)
        wait_for_libc(second.pid, program)
        symbolizer = Symbolizer()
        first_address, function = libc_function_address(first.pid)
        first_frame = symbolizer.user_frame(symbolizer.state(first.pid), first_address, leaf=True)
        reads = symbolizer.files.reads
        second_address, _ = libc_function_address(second.pid)
        second_frame = symbolizer.user_frame(symbolizer.state(second.pid), second_address, leaf=True)
        assert symbolizer.files.reads == reads  # build IDs and symbols of the program and libc: all shared
        assert first_frame.symbol == second_frame.symbol == function
        assert second_frame.mapping is not None and first_frame.mapping is not None
        assert second_frame.mapping.build_id == first_frame.mapping.build_id
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_files_beyond_the_byte_budget_are_evicted_least_recently_used_first(tmp_path: Path) -> None:
    libraries = [build(tmp_path, f"budget{n}", ALIASES.replace("after_the_aliases", f"after_{n}")) for n in range(4)]
    loaded = [ctypes.CDLL(str(path)) for path in libraries]
    one = read_elf(libraries[0]).nbytes
    symbolizer = Symbolizer(cache_bytes=int(one * 2.5))
    state = symbolizer.state(os.getpid())
    for n, library in enumerate(loaded):
        frame = symbolizer.user_frame(state, symbol_address(library, f"after_{n}"), leaf=True)
        assert frame.symbol == f"after_{n}"
    stats = symbolizer.stats()
    assert stats["cache_evictions"] > 0
    assert symbolizer.files.bytes <= symbolizer.files.budget_bytes


def test_kernel_frames_stay_within_their_share_of_the_budget_and_memory_is_counted(tmp_path: Path) -> None:
    """A busy host hits a long tail of kernel addresses: the frames held stop at 1/8 of cache_mb,
    what Python really holds for them is no more than what cache_bytes says, and names stay right."""
    base, functions = 0xFFFFFFFF81000000, 20_000
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("".join(f"{base + 64 * n:016x} T kernel_function_{n}\n" for n in range(functions)))
    symbolizer = Symbolizer(proc=tmp_path, cache_bytes=2 << 20)
    symbolizer.kernel_frame(base, leaf=True)  # reads the table
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(functions):
            for step in (1, 5, 9, 13):
                symbolizer.kernel_frame(base + 64 * n + step, leaf=True)
                symbolizer.kernel_frame(base + 64 * n + step, leaf=False)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = symbolizer.stats()
    counted = FRAME_BYTES * stats["kernel_frames"]  # cache_bytes counts this for them
    assert stats["kernel_frames"] == (2 << 20) // 8 // FRAME_BYTES  # of 160k distinct keys seen
    assert held <= counted <= stats["cache_budget_bytes"] // 8
    leaf = symbolizer.kernel_frame(base + 64 * 123 + 5, leaf=True)
    returned = symbolizer.kernel_frame(base + 64 * 124, leaf=False)  # a call that ends function 123
    assert (leaf.symbol, leaf.offset) == ("kernel_function_123", 5)
    assert (returned.symbol, returned.offset) == ("kernel_function_123", 64)


def test_past_the_deadline_misses_stay_raw_and_are_named_later(tmp_path: Path) -> None:
    library = ctypes.CDLL(str(build(tmp_path, "late", ALIASES)))
    address = symbol_address(library, "after_the_aliases")
    symbolizer = Symbolizer()
    state = symbolizer.state(os.getpid())
    late = symbolizer.user_stack(state, (address, address + 2), deadline=time.monotonic() - 1)
    assert [frame.symbol for frame in late] == [None, None] and late[0].address == address
    assert symbolizer.late_frames == 2
    named = symbolizer.user_stack(state, (address, address + 2), deadline=time.monotonic() + 60)
    assert [frame.symbol for frame in named] == ["after_the_aliases", "after_the_aliases"]
    assert symbolizer.late_frames == 2


def test_untrusted_open_refuses_symlinks_fifos_and_strangers_files(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("x")
    (tmp_path / "link").symlink_to(regular)
    (tmp_path / "dir_link").symlink_to(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    root, owners = str(tmp_path), {os.geteuid()}
    fd, info = open_untrusted(root, "/regular", owners, 10)
    os.close(fd)
    assert info.st_size == 1
    for name, expected in [
        ("/link", OSError),
        ("/dir_link/regular", OSError),
        ("/fifo", UnsafeFileError),
        ("/../../etc/passwd", OSError),
    ]:
        with pytest.raises(expected):
            fd, _ = open_untrusted(root, name, owners, 10)
            os.close(fd)
    with pytest.raises(UnsafeFileError, match="more than the 0 allowed"):
        open_untrusted(root, "/regular", owners, 0)
    with pytest.raises(UnsafeFileError, match="owned by uid"):
        open_untrusted(root, "/regular", {12345}, 10)


def test_symbolizer_section_sets_the_budget_and_is_validated() -> None:
    config = build_config({"symbolizer": {"cache_mb": 64}}, PluginCatalog(), {})
    assert config.symbolizer.cache_mb == 64 and build_config({}, PluginCatalog(), {}).symbolizer.cache_mb == 32
    with pytest.raises(ConfigError) as error:
        build_config({"symbolizer": {"cache_mb": 0}}, PluginCatalog(), {})
    assert error.value.problems and error.value.problems[0].startswith("symbolizer.cache_mb")


def test_cache_figures_are_served_as_prometheus_metrics(tmp_path: Path) -> None:
    library = ctypes.CDLL(str(build(tmp_path, "metrics", ALIASES)))
    symbolizer = Symbolizer()
    symbolizer.user_frame(symbolizer.state(os.getpid()), symbol_address(library, "after_the_aliases"), leaf=True)
    registry = CollectorRegistry()
    register_symbolizer_metrics(registry, symbolizer)
    text = generate_latest(registry).decode()
    held = registry.get_sample_value("antiprof_symbolizer_cache_bytes")
    assert held is not None and held > 1000
    assert "antiprof_symbolizer_cache_evictions_total 0.0" in text
    assert "antiprof_symbolizer_late_frames_total 0.0" in text


def wait_for_libc(pid: int, program: Path) -> int:
    """Once ``pid`` has exec'd ``program`` (before that it is a copy of this Python), its libc address."""
    deadline = time.monotonic() + 10
    while True:
        if os.readlink(f"/proc/{pid}/exe") == str(program):
            with contextlib.suppress(AssertionError):  # ld.so maps libc just after the exec
                address = libc_function_address(pid)[0]
                if "jit_spin" in Path(f"/proc/{pid}/maps").read_text():
                    return address
        assert time.monotonic() < deadline, f"{program} did not start"
        time.sleep(0.01)


def churn_round(symbolizer: Symbolizer, count: int, program: Path) -> None:
    """``count`` short processes named while alive, then gone and forgotten."""
    processes = [subprocess.Popen([str(program), "30"], stdout=subprocess.DEVNULL) for _ in range(count)]
    for process in processes:
        address = wait_for_libc(process.pid, program)
        assert symbolizer.user_frame(symbolizer.state(process.pid), address, leaf=True).symbol
    for process in processes:
        process.kill()
        process.wait()
    symbolizer.end_window()
    symbolizer.end_window()


def test_state_of_gone_processes_is_freed(tmp_path: Path) -> None:
    """Measured with tracemalloc: a second round of 40 processes leaves nothing behind."""
    import gc
    import tracemalloc

    program = build_jit_workload(tmp_path)
    symbolizer = Symbolizer()
    churn_round(symbolizer, 5, program)  # warms the file cache, which is meant to stay
    tracemalloc.start()
    try:
        churn_round(symbolizer, 40, program)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        churn_round(symbolizer, 40, program)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(symbolizer.processes) == 0 and symbolizer.known_pids() == []
    assert after - before < 40 * 1024, f"{after - before} bytes kept after 40 processes came and went"
    assert peak - before > 40 * 1024  # the processes did cost something while they were alive
