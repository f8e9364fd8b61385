"""Files nobody vouches for: every bad input is one UnwindInputError naming the file, never a
hang, a MemoryError or another exception, however the bytes are damaged."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from antiprof_core.sources.unwind import UnwindInputError, build_table
from antiprof_core.sources.unwind.cfi import FrameSectionError, parse_frames
from antiprof_core.sources.unwind.elfsections import read_sections

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def small_binary(directory: Path) -> Path:
    source = directory / "small.c"
    source.write_text("int twice(int x) { return 2 * x; }\nint main(int argc, char **argv) { return twice(argc); }\n")
    binary = directory / "small"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def test_not_elf_fifo_symlink_missing(tmp_path: Path) -> None:
    (tmp_path / "text").write_bytes(b"#!/bin/sh\necho hello\n")
    os.mkfifo(tmp_path / "fifo")  # opening must not wait for a writer
    (tmp_path / "link").symlink_to(LIBC)
    expected = {
        "text": "not an ELF file",
        "fifo": "not a regular file",
        "link": "cannot open",
        "missing": "cannot open",
    }
    for name, reason in expected.items():
        with pytest.raises(UnwindInputError) as caught:
            build_table(str(tmp_path / name))
        assert str(caught.value).startswith(f"{tmp_path / name}: {reason}"), str(caught.value)


def test_section_table_that_lies_about_sizes(tmp_path: Path) -> None:
    binary = small_binary(tmp_path)
    data = bytearray(binary.read_bytes())
    shoff, shentsize, shnum = struct.unpack_from("<Q", data, 0x28)[0], 64, struct.unpack_from("<H", data, 0x3C)[0]
    sections = read_sections(str(binary))
    assert sections.eh_frame is not None
    for index in range(shnum):  # make .eh_frame claim 1 TiB
        header = shoff + index * shentsize
        if struct.unpack_from("<Q", data, header + 16)[0] == sections.eh_frame.address:
            struct.pack_into("<Q", data, header + 32, 1 << 40)
    liar = tmp_path / "liar"
    liar.write_bytes(bytes(data))
    with pytest.raises(UnwindInputError, match=r"over the \d+ byte cap"):
        build_table(str(liar))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(Path(LIBC).read_bytes()[:200_000])
    with pytest.raises(UnwindInputError, match="outside the file"):
        build_table(str(truncated))


def test_foreign_elf_is_refused(tmp_path: Path) -> None:
    data = bytearray(small_binary(tmp_path).read_bytes())
    struct.pack_into("<H", data, 18, 183)  # e_machine: aarch64
    (tmp_path / "arm").write_bytes(bytes(data))
    with pytest.raises(UnwindInputError, match="is not x86-64"):
        build_table(str(tmp_path / "arm"))


@pytest.mark.parametrize("path", ["small", LIBC])
def test_damaged_frame_sections_fail_cleanly(tmp_path: Path, path: str) -> None:
    """Random byte flips and truncations: a table or FrameSectionError, nothing else, in bounded time."""
    binary = small_binary(tmp_path) if path == "small" else Path(path)
    section = read_sections(str(binary)).eh_frame
    assert section is not None
    generator = random.Random(11)
    rounds = 300 if path == "small" else 15
    started = time.monotonic()
    outcomes = {"table": 0, "error": 0}
    for _ in range(rounds):
        data = bytearray(section.data)
        for _ in range(generator.choice([1, 4, 32])):
            data[generator.randrange(len(data))] = generator.randrange(256)
        if generator.random() < 0.3:
            del data[generator.randrange(len(data)) :]
        try:
            parse_frames(bytes(data), section.address, True)
            outcomes["table"] += 1
        except FrameSectionError:
            outcomes["error"] += 1
    assert outcomes["table"] and outcomes["error"], outcomes
    assert time.monotonic() - started < 60


def test_binary_without_unwind_information(tmp_path: Path) -> None:
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy is not installed")
    binary = small_binary(tmp_path)
    subprocess.run(["objcopy", "--remove-section=.eh_frame", "--remove-section=.eh_frame_hdr", str(binary)], check=True)
    with pytest.raises(UnwindInputError, match=r"no \.eh_frame or \.debug_frame"):
        build_table(str(binary), debug_root=tmp_path)
