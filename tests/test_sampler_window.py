"""The pure half of the sampler: a drained set (keys, counts, stacks, counters) becomes a named
window, and decides whether a person must be warned. No BPF here: real addresses from this
process's libc and the running kernel, named by the real symbolizer."""

from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

from antiprof_core.model import FrameKind, SamplingMode
from antiprof_core.sources.bpf.program import COUNTER_NAMES, SAMPLE_EVENT, SAMPLE_KEY, decode_counts, decode_event
from antiprof_core.sources.bpf.window import build_window, overflow_warning
from antiprof_core.symbolize.symbolizer import Symbolizer
from antiprof_core.testing import synthetic_host

USER_HASH, KERNEL_HASH, LOST_HASH = 0x1111, 0x2222, 0x3333


def kernel_address(name: str) -> int | None:
    for line in Path("/proc/kallsyms").read_text().splitlines():
        address, _, symbol = line.split()[:3]
        if symbol == name and int(address, 16):
            return int(address, 16)
    return None


def counters(**values: int) -> dict[str, int]:
    return {name: values.get(name, 0) for name in COUNTER_NAMES}


def test_a_drained_set_becomes_named_samples_kernel_frames_first() -> None:
    libc = ct.CDLL("libc.so.6")
    getpid = ct.cast(libc.getpid, ct.c_void_p).value
    qsort = ct.cast(libc.qsort, ct.c_void_p).value
    assert getpid and qsort
    pid = os.getpid()
    comm = Path("/proc/self/comm").read_text().strip().encode()
    syscall_entry = kernel_address("do_syscall_64")
    stacks: dict[int, tuple[int, ...]] = {USER_HASH: (getpid + 2, qsort + 1)}  # a return address is named one byte back
    if syscall_entry:
        stacks[KERNEL_HASH] = (syscall_entry + 8,)
    raw = [
        ((pid, pid, 1, USER_HASH, KERNEL_HASH if syscall_entry else 0, 0, comm), 7, ()),
        ((pid, pid + 1, 0, LOST_HASH, 0, 0, b"worker\0"), 2, ()),  # its stack was never stored
    ]
    window = build_window(
        raw,
        stacks,
        counters(samples_seen=9),
        1_000,
        2_000,
        symbolizer=Symbolizer(),
        host=synthetic_host(),
        frequency_hz=99,
        mode=SamplingMode.AGGREGATE,
    )
    first, second = window.samples
    names = [frame.symbol or "" for frame in first.stack]
    if syscall_entry:
        assert names[0] == "do_syscall_64" and first.stack[0].kind is FrameKind.KERNEL
        names = names[1:]
    assert names[0].endswith("getpid") and names[1].endswith("qsort")
    assert (first.count, first.cpu, first.thread_name) == (7, 1, comm.decode())
    assert second.stack == () and second.thread_name == "worker" and second.tid == pid + 1
    assert window.processes[pid].name == comm.decode()
    assert window.counters.samples_seen == window.sample_count == 9


def test_the_bytes_of_a_key_and_an_event_decode_as_the_c_structs_lay_them_out() -> None:
    key = SAMPLE_KEY.pack(10, 11, 1, 0xAAAA, 0xBBBB, 0xCCCC, b"comm")
    assert SAMPLE_KEY.size == 56
    assert decode_counts(key + key, (5).to_bytes(8, "little") + (6).to_bytes(8, "little")) == [
        ((10, 11, 1, 0xAAAA, 0xBBBB, 0xCCCC, b"comm".ljust(16, b"\0")), 5),
        ((10, 11, 1, 0xAAAA, 0xBBBB, 0xCCCC, b"comm".ljust(16, b"\0")), 6),
    ]
    event = SAMPLE_EVENT.pack(123, 1, 10, 11, 1, 0xAAAA, 0xBBBB, 0xCCCC, b"comm")
    assert SAMPLE_EVENT.size == 72
    assert decode_event(event) == (1, 123, (10, 11, 1, 0xAAAA, 0xBBBB, 0xCCCC, b"comm".ljust(16, b"\0")))


def test_only_a_full_map_is_worth_a_warning() -> None:
    assert overflow_warning(counters(samples_seen=40, user_not_present=3, kernel_not_present=30), 4096) is None
    message = overflow_warning(counters(samples_seen=40, samples_lost=2, counts_map_full=2, user_map_full=1), 4096)
    assert message == (
        "window overflowed: 2 of 40 samples lost, 1 stacks not stored (map full); raise sampler.max_stacks (now 4096)"
    )
