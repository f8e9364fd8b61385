"""The bpf(2) and perf_event_open(2) system calls through ctypes: what the agent needs to read,
flip and drain maps and to attach a loaded program, without libbcc or LLVM in its memory.
"""

from __future__ import annotations

import ctypes as ct
import errno
import fcntl
import os
import platform

_SYSCALL_NUMBERS = {  # (bpf, perf_event_open)
    "x86_64": (321, 298),
    "aarch64": (280, 241),
    "ppc64le": (361, 319),
    "s390x": (351, 331),
    "riscv64": (280, 241),
}
_BPF, _PERF_EVENT_OPEN = _SYSCALL_NUMBERS.get(platform.machine(), (0, 0))
_libc = ct.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ct.c_long

# bpf(2) commands, from include/uapi/linux/bpf.h
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24
MAP_LOOKUP_AND_DELETE_BATCH = 25
MAP_UPDATE_BATCH = 26

# map types the agent reads
MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_RINGBUF = 27

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_ATTR_DISABLED = 1 << 0
_PERF_ATTR_FREQ = 1 << 10
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_SET_BPF = 0x40042408


class BpfError(OSError):
    """A bpf(2) or perf_event_open(2) call failed; ``errno`` says why."""


class _ElemAttr(ct.Structure):
    _fields_ = [
        ("map_fd", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("key", ct.c_uint64),
        ("value", ct.c_uint64),
        ("flags", ct.c_uint64),
    ]


class _BatchAttr(ct.Structure):
    _fields_ = [
        ("in_batch", ct.c_uint64),
        ("out_batch", ct.c_uint64),
        ("keys", ct.c_uint64),
        ("values", ct.c_uint64),
        ("count", ct.c_uint32),
        ("map_fd", ct.c_uint32),
        ("elem_flags", ct.c_uint64),
        ("flags", ct.c_uint64),
    ]


class _CreateAttr(ct.Structure):
    """The head of the BPF_MAP_CREATE attributes: a plain map, no BTF, no inner map."""

    _fields_ = [
        ("map_type", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("inner_map_fd", ct.c_uint32),
        ("numa_node", ct.c_uint32),
        ("map_name", ct.c_char * 16),
    ]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class MapInfoStruct(ct.Structure):
    """The head of struct bpf_map_info: what a map is, asked of the kernel by its fd."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


class _PerfEventAttr(ct.Structure):
    """The first 72 bytes of struct perf_event_attr (PERF_ATTR_SIZE_VER1): all this needs."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("size", ct.c_uint32),
        ("config", ct.c_uint64),
        ("sample_freq", ct.c_uint64),
        ("sample_type", ct.c_uint64),
        ("read_format", ct.c_uint64),
        ("flags", ct.c_uint64),
        ("wakeup_events", ct.c_uint32),
        ("bp_type", ct.c_uint32),
        ("config1", ct.c_uint64),
        ("config2", ct.c_uint64),
    ]


def _bpf(command: int, attr: ct.Structure) -> int:
    if not _BPF:
        raise BpfError(errno.ENOSYS, f"the bpf syscall number on {platform.machine()} is not known")
    result = _syscall(_BPF, command, ct.byref(attr), ct.sizeof(attr))
    if result < 0:
        error = ct.get_errno()
        raise BpfError(error, os.strerror(error))
    return int(result)


def map_info(fd: int) -> MapInfoStruct:
    info = MapInfoStruct()
    _bpf(OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    return info


def lookup(fd: int, key: ct._CData, value: ct._CData) -> bool:
    """Fills ``value``; False when the key is not there."""
    attr = _ElemAttr(map_fd=fd, key=ct.addressof(key), value=ct.addressof(value))
    try:
        _bpf(MAP_LOOKUP_ELEM, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def update(fd: int, key: ct._CData, value: ct._CData) -> None:
    _bpf(MAP_UPDATE_ELEM, _ElemAttr(map_fd=fd, key=ct.addressof(key), value=ct.addressof(value)))


def delete(fd: int, key: ct._CData) -> bool:
    """False when the key was not there."""
    try:
        _bpf(MAP_DELETE_ELEM, _ElemAttr(map_fd=fd, key=ct.addressof(key)))
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def lookup_and_delete_batch(
    fd: int,
    token: ct.c_uint64,
    first: bool,
    keys: ct.Array[ct.c_char],
    values: ct.Array[ct.c_char],
    count: int,
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_AND_DELETE_BATCH: (entries moved into keys/values, whether the map is done).

    ``token`` carries the kernel's position from one call to the next.
    """
    attr = _BatchAttr(
        in_batch=0 if first else ct.addressof(token),
        out_batch=ct.addressof(token),
        keys=ct.addressof(keys),
        values=ct.addressof(values),
        count=count,
        map_fd=fd,
    )
    try:
        _bpf(MAP_LOOKUP_AND_DELETE_BATCH, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:  # the last batch: attr.count says how many it held
            return attr.count, True
        raise
    return attr.count, False


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> int:
    """A new map's fd (close-on-exec): the agent's own maps, and real maps for tests without BCC."""
    attr = _CreateAttr(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=name.encode()[:15],
    )
    return _bpf(MAP_CREATE, attr)


def update_batch(fd: int, keys: ct._CData, values: ct._CData, count: int) -> int:
    """One BPF_MAP_UPDATE_BATCH of ``count`` keys and values (flat, back to back): how many were written.

    Raises BpfError; EINVAL means the kernel (before 5.6) or the map type has no batch update.
    """
    attr = _BatchAttr(keys=ct.addressof(keys), values=ct.addressof(values), count=count, map_fd=fd)
    _bpf(MAP_UPDATE_BATCH, attr)
    return int(attr.count)


def lookup_batch(
    fd: int, token: ct.c_uint64, first: bool, keys: ct._CData, values: ct._CData, count: int
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH: (entries copied into keys/values, whether the map is done); nothing deleted."""
    attr = _BatchAttr(
        in_batch=0 if first else ct.addressof(token),
        out_batch=ct.addressof(token),
        keys=ct.addressof(keys),
        values=ct.addressof(values),
        count=count,
        map_fd=fd,
    )
    try:
        _bpf(MAP_LOOKUP_BATCH, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return attr.count, True
        raise
    return attr.count, False


def open_cpu_clock(cpu: int, frequency_hz: int) -> int:
    """A disabled software CPU-clock event on ``cpu`` for every task, sampling at ``frequency_hz``."""
    if not _PERF_EVENT_OPEN:
        raise BpfError(errno.ENOSYS, f"the perf_event_open syscall number on {platform.machine()} is not known")
    attr = _PerfEventAttr(
        type=PERF_TYPE_SOFTWARE,
        size=ct.sizeof(_PerfEventAttr),
        config=PERF_COUNT_SW_CPU_CLOCK,
        sample_freq=frequency_hz,
        flags=_PERF_ATTR_DISABLED | _PERF_ATTR_FREQ,
    )
    fd = _syscall(_PERF_EVENT_OPEN, ct.byref(attr), -1, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        error = ct.get_errno()
        raise BpfError(error, f"perf_event_open on CPU {cpu}: {os.strerror(error)}")
    return int(fd)


def attach_and_enable(event_fd: int, program_fd: int) -> None:
    """Run the program on each sample of the event, and start the event."""
    fcntl.ioctl(event_fd, _PERF_EVENT_IOC_SET_BPF, program_fd)
    fcntl.ioctl(event_fd, _PERF_EVENT_IOC_ENABLE, 0)
