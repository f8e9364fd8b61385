"""The interpreter file is read as hostile: no symlinks, no FIFOs, no giant or corrupt files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from antiprof_core.symbolize.procfs import parse_maps_line
from antiprof_core.symbolize.python.binary import BinaryError, read_interpreter_binary
from antiprof_core.symbolize.python.detect import interpreter_candidates

DEBIAN_PYTHON = Path("/usr/bin/python3.11")


def test_the_real_interpreter_gives_its_version_and_runtime_symbol() -> None:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no /usr/bin/python3.11")
    binary = read_interpreter_binary(str(DEBIAN_PYTHON), DEBIAN_PYTHON.stat().st_ino)
    assert binary.version_hex is not None and binary.version_hex >> 16 == 0x030B
    assert {"_PyRuntime", "Py_Version", "PyCode_Type", "PyUnicode_Type"} <= set(binary.symbols)


def test_symlinks_fifos_corrupt_and_replaced_files_are_refused(tmp_path: Path) -> None:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no /usr/bin/python3.11")
    link = tmp_path / "libpython3.11.so.1.0"
    link.symlink_to(DEBIAN_PYTHON)
    fifo = tmp_path / "python3.11"
    os.mkfifo(fifo)
    garbage = tmp_path / "libpython3.12.so"
    garbage.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    truncated = tmp_path / "libpython3.13.so"
    truncated.write_bytes(DEBIAN_PYTHON.read_bytes()[:20000])
    copy = tmp_path / "python3.11-copy"
    shutil.copy(DEBIAN_PYTHON, copy)
    errors = {}
    for path, inode in ((link, 0), (fifo, 0), (garbage, 0), (truncated, 0), (copy, DEBIAN_PYTHON.stat().st_ino)):
        with pytest.raises(BinaryError) as raised:
            read_interpreter_binary(str(path), inode)
        errors[path.name] = str(raised.value)
    assert "Too many levels of symbolic links" in errors[link.name]
    assert "not a regular file" in errors[fifo.name]
    assert "unreadable ELF file" in errors[garbage.name]
    assert "unreadable ELF file" in errors[truncated.name] or "x86-64" in errors[truncated.name]
    assert "is not the mapped inode" in errors[copy.name]


def test_libpython_is_preferred_to_the_executable_that_links_it() -> None:
    lines = [
        "55d000000000-55d000001000 r--p 00000000 08:01 100 /opt/py/bin/python3.12",
        "7f0000000000-7f0000100000 r--p 00000000 08:01 200 /opt/py/lib/libpython3.12.so.1.0",
        "7f0000100000-7f0000200000 r-xp 00100000 08:01 200 /opt/py/lib/libpython3.12.so.1.0",
        "7f0000300000-7f0000400000 r-xp 00000000 08:01 300 /usr/lib/libc.so.6",
        "7f0000500000-7f0000600000 r-xp 00000000 08:01 400 /opt/py/lib/libpython3.13t.so.1.0",
    ]
    maps = [entry for entry in map(parse_maps_line, lines) if entry is not None]
    found = [(entry.path, entry.offset, version, flags) for entry, version, flags in interpreter_candidates(maps)]
    assert found == [
        ("/opt/py/lib/libpython3.12.so.1.0", 0, (3, 12), ""),
        ("/opt/py/lib/libpython3.13t.so.1.0", 0, (3, 13), "t"),
        ("/opt/py/bin/python3.12", 0, (3, 12), ""),
    ]
