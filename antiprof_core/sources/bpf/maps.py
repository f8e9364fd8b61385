"""The loaded program's maps, read by the agent through their file descriptors alone.

Each class holds one kind of map: a hash map drained in batches, a plain or per-CPU array read
by slot, and a ring buffer read through its memory mapping (the layout the kernel documents in
Documentation/bpf/ringbuf.rst: a consumer page, a producer page, then the data pages mapped
twice so a record never wraps).
"""

from __future__ import annotations

import ctypes as ct
import errno
import mmap
import os
import struct
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

from attrs import frozen

from antiprof_core.sources.bpf import syscalls
from antiprof_core.sources.bpf.program import online_cpus

BATCH_BYTES = 256 * 1024  # buffer for one batch of keys and values
_RINGBUF_BUSY = 1 << 31
_RINGBUF_DISCARD = 1 << 30
_RINGBUF_HEADER = 8
_U64 = struct.Struct("=Q")
WRITE_BATCH = 65536  # array slots per BPF_MAP_UPDATE_BATCH: bounds the key buffer, and one call's time


@frozen
class MapInfo:
    """A map the compiler child created, as the kernel describes it; ``fd`` is the agent's own copy."""

    name: str
    fd: int
    type: int
    key_size: int
    value_size: int
    max_entries: int


def create_map(name: str, map_type: int, key_size: int, value_size: int, max_entries: int) -> MapInfo:
    """A new map made by the agent itself (no BCC): maps user space owns, and real maps for tests."""
    fd = syscalls.map_create(map_type, key_size, value_size, max_entries, name)
    return MapInfo(name, fd, map_type, key_size, value_size, max_entries)


def possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has (possible, not online, CPUs)."""
    return len(online_cpus(Path("/sys/devices/system/cpu/possible"))) or os.cpu_count() or 1


class HashMap:
    """A BPF hash map: single keys set and deleted, or everything drained in batches."""

    def __init__(self, info: MapInfo) -> None:
        self.info = info
        per_batch = max(BATCH_BYTES // (info.key_size + info.value_size), 1)
        self._batch = min(per_batch, max(info.max_entries, 1))
        self._keys = (ct.c_char * (info.key_size * self._batch))()
        self._values = (ct.c_char * (info.value_size * self._batch))()

    def set(self, key: ct._CData, value: ct._CData) -> None:
        syscalls.update(self.info.fd, key, value)

    def delete(self, key: ct._CData) -> bool:
        return syscalls.delete(self.info.fd, key)

    def drain(self) -> Iterator[tuple[memoryview, memoryview]]:
        """Read and delete every entry: (all keys' bytes, all values' bytes) per batch syscall."""
        token = ct.c_uint64(0)
        first = True
        batch = self._batch
        info = self.info
        while True:
            try:
                count, done = syscalls.lookup_and_delete_batch(info.fd, token, first, self._keys, self._values, batch)
            except syscalls.BpfError as exc:
                if exc.errno == errno.ENOSPC and batch < info.max_entries:  # one bucket holds more than a batch
                    batch = min(2 * batch, info.max_entries)
                    self._keys = (ct.c_char * (info.key_size * batch))()
                    self._values = (ct.c_char * (info.value_size * batch))()
                    continue
                raise
            first = False
            if count:  # views of this map's buffers: valid until the next batch is read
                keys = memoryview(self._keys)[: count * info.key_size]
                yield keys, memoryview(self._values)[: count * info.value_size]
            if done:
                return


class ArrayMap:
    """A BPF array (or per-CPU array) of fixed-size values, read and written by index."""

    def __init__(self, info: MapInfo) -> None:
        self.info = info
        if info.type == syscalls.MAP_TYPE_PERCPU_ARRAY:  # one value per possible CPU, each 8-byte aligned
            size = (info.value_size + 7) // 8 * 8 * possible_cpus()
        else:
            size = info.value_size
        self._buffer = (ct.c_char * size)()
        self._index = ct.c_uint32(0)

    def read(self, index: int) -> bytes:
        """The raw value at ``index``; for a per-CPU array, every CPU's value one after another."""
        self._index.value = index
        if not syscalls.lookup(self.info.fd, self._index, self._buffer):
            raise KeyError(index)
        return self._buffer.raw

    def sum_u64(self, index: int) -> int:
        """The sum over CPUs of a u64 slot (a per-CPU counter)."""
        raw = self.read(index)
        return sum(value for (value,) in _U64.iter_unpack(raw))

    def write(self, index: int, value: bytes) -> None:
        self._index.value = index
        buffer = (ct.c_char * len(value)).from_buffer_copy(value)
        syscalls.update(self.info.fd, self._index, buffer)

    def write_range(self, first: int, values: bytes | bytearray | memoryview) -> None:
        """Slots ``first, first + 1, ...`` set from ``values`` (whole values back to back).

        One BPF_MAP_UPDATE_BATCH per WRITE_BATCH slots (a 16 MiB table in 16 calls, not a
        million); kernels or maps without batch update (EINVAL) get one update per slot.
        """
        size = self.info.value_size
        total = len(values) // size
        if total * size != len(values):
            raise ValueError(f"{len(values)} bytes are not whole {size}-byte values of map {self.info.name}")
        if first < 0 or first + total > self.info.max_entries:
            raise IndexError(f"slots {first}..{first + total} are outside map {self.info.name}")
        view = memoryview(values).cast("B")
        done = 0
        batched = self.info.type != syscalls.MAP_TYPE_PERCPU_ARRAY
        while done < total:
            count = min(total - done, WRITE_BATCH)
            chunk = view[done * size : (done + count) * size]
            if batched:
                indices = array("I", range(first + done, first + done + count))
                keys = (ct.c_uint32 * count).from_buffer(indices)
                buffer = (ct.c_char * len(chunk)).from_buffer_copy(chunk)
                try:
                    written = syscalls.update_batch(self.info.fd, keys, buffer, count)
                except syscalls.BpfError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    batched = False
                    continue
                if written != count:  # the kernel stops early only on an error it also returned
                    raise syscalls.BpfError(errno.EIO, f"batch update wrote {written} of {count} slots")
            else:
                for offset in range(count):
                    self.write(first + done + offset, chunk[offset * size : (offset + 1) * size].tobytes())
            done += count

    def read_range(self, first: int, count: int) -> bytes:
        """Slots ``first .. first + count - 1`` as bytes, in one BPF_MAP_LOOKUP_BATCH when it can."""
        size = self.info.value_size
        if count <= 0:
            return b""
        if self.info.type != syscalls.MAP_TYPE_PERCPU_ARRAY:
            keys = (ct.c_uint32 * count)()
            buffer = (ct.c_char * (size * count))()
            token = ct.c_uint64(max(first - 1, 0))  # the batch starts after the key in the token
            try:
                got, _ = syscalls.lookup_batch(self.info.fd, token, first == 0, keys, buffer, count)
            except syscalls.BpfError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            else:
                if got == count and keys[0] == first:
                    return buffer.raw
        return b"".join(self.read(index) for index in range(first, first + count))


class RingBuffer:
    """A BPF ring buffer read in place: records are handed to ``on_record`` as bytes."""

    def __init__(self, info: MapInfo, on_record: Callable[[bytes], None]) -> None:
        self.info = info
        self._on_record = on_record
        page = mmap.PAGESIZE
        size = info.max_entries  # a power of two number of bytes
        self._mask = size - 1
        self._consumer = mmap.mmap(info.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(info.fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = memoryview(self._producer)[page:]

    def consume(self) -> int:
        """Hand every committed record to ``on_record``; returns how many were read."""
        consumer = _U64.unpack_from(self._consumer, 0)[0]
        producer = _U64.unpack_from(self._producer, 0)[0]
        read = 0
        data, mask = self._data, self._mask
        while consumer < producer:
            offset = consumer & mask
            header = struct.unpack_from("=I", data, offset)[0]
            if header & _RINGBUF_BUSY:  # reserved, not yet submitted: the rest waits for the next call
                break
            length = header & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            if not header & _RINGBUF_DISCARD:
                start = offset + _RINGBUF_HEADER
                self._on_record(data[start : start + length].tobytes())
                read += 1
            consumer += (length + _RINGBUF_HEADER + 7) & ~7
            _U64.pack_into(self._consumer, 0, consumer)
            producer = _U64.unpack_from(self._producer, 0)[0]
        return read

    def close(self) -> None:
        self._data.release()
        self._producer.close()
        self._consumer.close()
