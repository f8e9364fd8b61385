"""The symbolizer on real files: shared libraries loaded into this process, stripped files with
separate debug files, perf maps, kallsyms, cgroup paths. No BPF needed."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from antiprof_core.model import FrameKind
from antiprof_core.symbolize.elf import read_elf
from antiprof_core.symbolize.kallsyms import read_kallsyms
from antiprof_core.symbolize.perfmap import parse_perf_map
from antiprof_core.symbolize.procfs import container_id_from_cgroup, parse_maps_line
from antiprof_core.symbolize.symbolizer import LruCache, Symbolizer

LIBRARY_SOURCE = r"""
__attribute__((noinline)) static int antiprof_hidden_helper(int x) { return x * 7 + 1; }
__attribute__((noinline)) int antiprof_exported(int x) { return antiprof_hidden_helper(x) + 2; }
void *antiprof_helper_address(void) { return (void *)antiprof_hidden_helper; }
"""

CONTAINER = "3f9c1e0d5b7a4c2e8f6d1a0b9c8e7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d"


def build_library(directory: Path, name: str) -> Path:
    source = directory / f"{name}.c"
    source.write_text(LIBRARY_SOURCE)
    library = directory / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-g", "-O1", "-o", str(library), str(source)], check=True)
    return library


def build_id_of(path: Path) -> str:
    notes = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in notes.splitlines() if "Build ID" in line)


def split_debug(library: Path, debug: Path) -> None:
    """objcopy's usual recipe: keep the debug part aside, strip the library, link the two."""
    subprocess.run(["objcopy", "--only-keep-debug", str(library), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(library)], check=True)


def address_of(library: ctypes.CDLL, function: str) -> int:
    value = ctypes.cast(getattr(library, function), ctypes.c_void_p).value
    assert value is not None
    return value


def hidden_address(library: ctypes.CDLL) -> int:
    helper = library.antiprof_helper_address
    helper.restype = ctypes.c_void_p
    value = helper()
    assert value is not None
    return int(value)


needs_binutils = pytest.mark.skipif(not shutil.which("objcopy") or not shutil.which("cc"), reason="needs cc, binutils")


@needs_binutils
def test_shared_library_in_this_process_is_named_with_offset_mapping_and_build_id(tmp_path: Path) -> None:
    library_path = build_library(tmp_path, "libnamed")
    library = ctypes.CDLL(str(library_path))
    symbolizer = Symbolizer()
    state = symbolizer.state(os.getpid())
    frame = symbolizer.user_frame(state, address_of(library, "antiprof_exported") + 3, leaf=True)
    assert (frame.symbol, frame.offset, frame.kind) == ("antiprof_exported", 3, FrameKind.NATIVE)
    assert frame.mapping is not None and frame.mapping.path == str(library_path)
    assert frame.mapping.build_id == build_id_of(library_path)
    assert frame.mapping.inode == os.stat(library_path).st_ino
    assert frame.mapping.device == os.stat(library_path).st_dev
    assert frame.mapping in symbolizer.process(os.getpid()).mappings
    hidden = symbolizer.user_frame(state, hidden_address(library), leaf=True)
    assert hidden.symbol == "antiprof_hidden_helper"
    assert symbolizer.user_frame(state, address_of(library, "antiprof_exported") + 3, leaf=True) is frame


@needs_binutils
def test_return_addresses_are_charged_to_the_calling_function(tmp_path: Path) -> None:
    library_path = build_library(tmp_path, "libreturn")
    library = ctypes.CDLL(str(library_path))
    symbolizer = Symbolizer()
    state = symbolizer.state(os.getpid())
    start = address_of(library, "antiprof_exported")
    table = read_elf(library_path).symbols
    index = table.index_of("antiprof_exported")
    just_past = start + (table.ends[index] - table.starts[index])  # a return address at the very end
    assert symbolizer.user_frame(state, just_past, leaf=False).symbol == "antiprof_exported"


@needs_binutils
def test_stripped_library_is_named_from_its_debug_file_by_build_id(tmp_path: Path) -> None:
    library_path = build_library(tmp_path, "libbuildid")
    build_id = build_id_of(library_path)
    debug_root = tmp_path / "debug"
    debug_file = debug_root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    debug_file.parent.mkdir(parents=True)
    split_debug(library_path, debug_file)
    assert "antiprof_hidden_helper" not in read_elf(library_path, debug_root=tmp_path / "nowhere").symbols.names()
    library = ctypes.CDLL(str(library_path))
    symbolizer = Symbolizer(debug_root=debug_root)
    frame = symbolizer.user_frame(symbolizer.state(os.getpid()), hidden_address(library), leaf=True)
    assert frame.symbol == "antiprof_hidden_helper"
    assert frame.mapping is not None and frame.mapping.build_id == build_id


@needs_binutils
def test_stripped_library_is_named_from_its_debug_file_by_debuglink(tmp_path: Path) -> None:
    library_path = build_library(tmp_path, "libdebuglink")
    debug_file = tmp_path / ".debug" / "libdebuglink.so.debug"
    debug_file.parent.mkdir()
    split_debug(library_path, debug_file)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug_file}", str(library_path)], check=True)
    info = read_elf(library_path, debug_root=tmp_path / "nowhere")
    assert info.debuglink == "libdebuglink.so.debug"
    assert info.symbols_from == str(debug_file)
    assert "antiprof_hidden_helper" in info.symbols.names()


def test_perf_map_names_jit_code_and_the_latest_entry_wins() -> None:
    table = parse_perf_map(
        "7f0000001000 40 JS:*fib /app/x.js:3:10\n"
        "7f0000002000 10 JS:~old\n"
        "7f0000002000 20 JS:*recompiled\n"
        "garbage line\n"
    )
    assert table.lookup(0x7F0000001010) == ("JS:*fib /app/x.js:3:10", 0x10)
    assert table.lookup(0x7F0000002018) == ("JS:*recompiled", 0x18)
    assert table.lookup(0x7F0000001040) is None


def test_perf_map_of_a_process_names_its_anonymous_code(tmp_path: Path) -> None:
    """This process has no JIT; its perf map file names an anonymous executable page we map."""
    import mmap

    page = mmap.mmap(
        -1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    )
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        perf_map = Path(f"/tmp/perf-{os.getpid()}.map")
        perf_map.write_text(f"{address:x} 100 py::jitted_function\n")
        try:
            symbolizer = Symbolizer()
            frame = symbolizer.user_frame(symbolizer.state(os.getpid()), address + 8, leaf=True)
        finally:
            perf_map.unlink()
    finally:
        page.close()
    assert (frame.symbol, frame.offset, frame.kind) == ("py::jitted_function", 8, FrameKind.JIT)
    assert frame.mapping is not None and frame.mapping.path == "//anon"


def test_kallsyms_is_bisected_over_text_symbols_only(tmp_path: Path) -> None:
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(
        "ffffffff81000000 T _text\n"
        "ffffffff81000100 t do_thing\n"
        "ffffffff81000200 D some_data\n"
        "ffffffff81000300 T other_thing\t[ext4]\n"
    )
    table = read_kallsyms(kallsyms)
    assert table.lookup(0xFFFFFFFF81000250) == ("do_thing", 0x150)
    assert table.lookup(0xFFFFFFFF81000304) == ("other_thing", 4)
    hidden = tmp_path / "hidden"
    hidden.write_text("0000000000000000 T _text\n0000000000000000 T do_thing\n")
    assert len(read_kallsyms(hidden)) == 0


def test_real_kernel_address_is_named() -> None:
    with open("/proc/kallsyms") as handle:
        entries = [line.split() for line in handle if " T " in line]
    address, _, name = entries[len(entries) // 2][:3]
    if int(address, 16) == 0:
        pytest.skip("kernel addresses are hidden (kptr_restrict)")
    aliases = {entry[2] for entry in entries if entry[0] == address}
    frame = Symbolizer().kernel_frame(int(address, 16) + 1, leaf=True)
    assert (frame.kind, frame.offset) == (FrameKind.KERNEL, 1)
    assert frame.symbol in aliases and name in aliases


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        (f"0::/system.slice/docker-{CONTAINER}.scope\n", CONTAINER),
        (f"12:pids:/docker/{CONTAINER}\n0::/\n", CONTAINER),
        (f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CONTAINER}.scope\n", CONTAINER),
        (f"0::/kubepods/besteffort/pod0f1e/{CONTAINER}\n", CONTAINER),
        ("0::/user.slice/user-0.slice/session-1.scope\n", None),
    ],
)
def test_container_id_from_cgroup(cgroup: str, expected: str | None) -> None:
    assert container_id_from_cgroup(cgroup) == expected


def test_maps_line_keeps_device_inode_and_deleted_files() -> None:
    entry = parse_maps_line("7f10a000-7f10b000 r-xp 00002000 fd:01 123456  /opt/app/lib.so (deleted)")
    assert entry is not None
    assert (entry.start, entry.end, entry.offset, entry.inode) == (0x7F10A000, 0x7F10B000, 0x2000, 123456)
    assert entry.device == os.makedev(0xFD, 1) and entry.path == "/opt/app/lib.so" and entry.executable


def test_lru_cache_forgets_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
