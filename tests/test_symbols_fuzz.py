"""Fuzzing the parsers that read other users' bytes: ELF files and perf maps.

The corpus is in the repository (tests/fuzz/elf: small real binaries, 64- and 32-bit, stripped
and not; tests/fuzz/perfmap); hypothesis mutates it, through the same file-descriptor path the
agent uses. Whatever the bytes, parsing ends within its time budget with a result or one
ElfFileError. Examples are derandomized so CI is repeatable and bounded (well under 60 s);
ANTIPROF_FUZZ_EXAMPLES=N runs N random examples per test for a longer local search.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from antiprof_core.symbolize.elf import ElfFileError, ElfInfo, read_elf_fd
from antiprof_core.symbolize.perfmap import PerfMap, parse_perf_map
from antiprof_core.symbolize.untrusted import check_file

CORPUS = Path(__file__).parent / "fuzz"
ELF_SEEDS = {path.name: path.read_bytes() for path in sorted((CORPUS / "elf").iterdir())}
PERF_MAP_SEEDS = [path.read_bytes() for path in sorted((CORPUS / "perfmap").iterdir())]
EXAMPLES = int(os.environ.get("ANTIPROF_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 250,
    derandomize=not EXAMPLES,
    deadline=None,  # timed below, with a budget that allows for a busy machine
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PARSE_SECONDS = 5.0
INTERESTING = [0, 1, 0x7F, 0xFF, 0xFFFF, 1 << 31, (1 << 32) - 1, 1 << 63, (1 << 64) - 1]


@contextmanager
def in_memfd(data: bytes) -> Iterator[int]:
    fd = os.memfd_create("fuzz")
    try:
        os.write(fd, data)
        yield fd
    finally:
        os.close(fd)


def parse(data: bytes) -> None:
    started = time.monotonic()
    with in_memfd(data) as fd:
        try:
            info = read_elf_fd(fd, len(data), "fuzzed")
        except ElfFileError as exc:
            assert str(exc).startswith("fuzzed: ")
        else:
            for address in (0, 1, *info.symbols.starts[:20], (1 << 64) - 1):
                info.lookup(address)
            assert all(isinstance(name, str) for name in info.symbols.names())
    assert time.monotonic() - started < PARSE_SECONDS


def header_field_patch(seed: bytes, offset: int, width: int, value: int) -> bytes:
    data = bytearray(seed)
    if offset + width <= len(data):
        data[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(data)


def section_field(seed: bytes, section_type: int, field_offset: int, value: int) -> bytes:
    """A 64-bit file with one field of every section of ``section_type`` set to ``value``."""
    data = bytearray(seed)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    for index in range(shnum):
        header = shoff + index * shentsize
        if struct.unpack_from("<I", data, header + 4)[0] == section_type:
            struct.pack_into("<Q", data, header + field_offset, value)
    return bytes(data)


@st.composite
def mutated_elf(draw: st.DrawFn) -> bytes:
    data = bytearray(ELF_SEEDS[draw(st.sampled_from(sorted(ELF_SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["byte", "field", "header_field", "truncate"]))
        if not data:
            break
        if kind == "byte":
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind in ("field", "header_field"):
            limit = 0x40 if kind == "header_field" else len(data) - 8
            width = draw(st.sampled_from([1, 2, 4, 8]))
            offset = draw(st.integers(0, max(limit - width, 0)))
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, (1 << (8 * width)) - 1))
            data = bytearray(header_field_patch(bytes(data), offset, width, value))
        else:
            data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


HUGE_SYMTAB = section_field(ELF_SEEDS["lib.so"], 2, 32, 1 << 63)
HUGE_SYMTAB_ALIGNED = section_field(ELF_SEEDS["lib.so"], 2, 32, (1 << 63) - (1 << 63) % 24)
HUGE_NOTE = section_field(ELF_SEEDS["exe"], 7, 32, (1 << 64) - 1)
LINK_LOOP = section_field(ELF_SEEDS["lib.so"], 2, 40, 0xFFFF_FFFF)  # sh_link


@FUZZ
@given(mutated_elf())
@example(HUGE_SYMTAB)
@example(HUGE_SYMTAB_ALIGNED)
@example(HUGE_NOTE)
@example(LINK_LOOP)
@example(b"")
@example(b"\x7fELF")
def test_any_elf_bytes_parse_or_fail_with_one_error(data: bytes) -> None:
    parse(data)


def test_the_corpus_itself_is_named() -> None:
    """The seeds are real binaries: they must parse, so mutations start from meaningful input."""
    for name, data in ELF_SEEDS.items():
        with in_memfd(data) as fd:
            info = read_elf_fd(fd, len(data), name)
        assert len(info.symbols) > 0, name
    assert "exported" in list(
        read_elf_fd_bytes(ELF_SEEDS["stripped.so"]).symbols.names()
    )  # from .dynsym: stripped files keep their exports


def read_elf_fd_bytes(data: bytes) -> ElfInfo:
    with in_memfd(data) as fd:
        return read_elf_fd(fd, len(data), "seed")


@st.composite
def mutated_perf_map(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(PERF_MAP_SEEDS))
    lines = seed.split(b"\n")
    extra = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=200),
                st.builds(
                    lambda start, size, name: f"{start:x} {size:x} {name}".encode(errors="replace"),
                    st.integers(0, (1 << 70)),
                    st.integers(0, (1 << 70)),
                    st.text(max_size=50),
                ),
            ),
            max_size=30,
        )
    )
    return b"\n".join(draw(st.permutations([*lines, *extra])))


@FUZZ
@given(mutated_perf_map())
def test_any_perf_map_bytes_parse(data: bytes) -> None:
    table = parse_perf_map(data)
    for index in range(len(table)):
        assert table.starts[index] < table.ends[index]
        assert table.lookup(table.starts[index]) is not None


@FUZZ
@given(st.lists(mutated_perf_map(), min_size=1, max_size=4))
def test_a_growing_perf_map_read_in_pieces_matches_reading_it_whole(pieces: list[bytes]) -> None:
    """The agent reads only what a JIT appended since the last window, through a real fd."""
    import logging

    fd = os.memfd_create("perfmap")
    try:
        perf_map = PerfMap(lambda: (os.dup(fd), check_file(fd, "map", {os.geteuid()}, 1 << 40)), logging.getLogger())
        written = b""
        for piece in pieces:
            piece = piece if piece.endswith(b"\n") else piece + b"\n"
            os.write(fd, piece)
            written += piece
            perf_map.refresh()
        whole = parse_perf_map(written)
        for start in whole.starts[:50]:
            assert perf_map.lookup(start) == whole.lookup(start)
    finally:
        os.close(fd)
