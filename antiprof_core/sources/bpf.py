"""The BPF sampler: loads bpf/profile.bpf.c through BCC and drains it once per window.

The kernel fills one of two map sets while this drains the other (see the BPF source), so no
sample is lost or split between windows. A poll thread reads two ring buffers: new PIDs, whose
/proc entries are read at once (a process that exits before the drain is still named), and in
trace mode the samples themselves, so the buffer never has to hold a whole window.

Limit: perf events are opened on the CPUs online at ``start()``; a CPU brought online later is
not sampled until the agent restarts (BCC's ``attach_perf_event`` has no hotplug hook).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import functools
import importlib.resources
import logging
import os
import struct
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from antiprof_core.config import SamplerConfig
from antiprof_core.model import Counters, Frame, Host, Process, ProfileWindow, Sample, SamplingMode
from antiprof_core.sources import SourceUnavailable
from antiprof_core.symbolize.symbolizer import Symbolizer

_CAP_SYS_ADMIN = 21
_CAP_PERFMON = 38
_CAP_BPF = 39

TASK_COMM_LEN = 16
# Order of the per-CPU counter slots; keep in sync with `enum counter` in bpf/profile.bpf.c.
COUNTER_NAMES = (
    "samples_seen",
    "samples_lost",
    "user_not_present",
    "user_collision",
    "user_map_full",
    "user_other",
    "kernel_not_present",
    "kernel_collision",
    "kernel_map_full",
    "kernel_other",
    "counts_map_full",
)
STACK_ERROR_NAMES = COUNTER_NAMES[2:]
MIN_STACKS = 4096
HEADROOM = 4  # stack-map buckets per expected stack: fewer hash collisions, room for a late drain
MAX_DEFAULT_STACKS = 65536
MAX_PIDS = 8192
SETTLE_SECONDS = 0.005  # a BPF program that read the old set index finishes within microseconds
POLL_MILLISECONDS = 100  # how soon a new PID's /proc entries are read


def _effective_capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _kernel_headers_present() -> bool:
    release = os.uname().release
    return Path(f"/lib/modules/{release}/build").exists() or Path("/sys/kernel/kheaders.tar.xz").exists()


@functools.cache
def bpf_unavailable_reason() -> str | None:
    """None when this process can load BPF here; otherwise one line: what is missing and the fix.

    Cheap on purpose (no BPF compile): tests call it to decide whether to run.
    """
    caps = _effective_capabilities()
    has_caps = bool(caps & (1 << _CAP_SYS_ADMIN)) or (bool(caps & (1 << _CAP_BPF)) and bool(caps & (1 << _CAP_PERFMON)))
    if not has_caps:
        return "not allowed to load BPF: run as root or grant CAP_BPF and CAP_PERFMON (setcap cap_bpf,cap_perfmon+ep)"
    try:
        import bcc  # noqa: F401
    except Exception as exc:  # ImportError, or OSError when libbcc.so is missing
        return (
            f"BCC cannot be imported ({type(exc).__name__}: {exc}): apt-get install python3-bpfcc"
            " and use a virtualenv made with --system-site-packages"
        )
    if not _kernel_headers_present():
        release = os.uname().release
        return (
            f"no kernel headers at /lib/modules/{release}/build: apt-get install linux-headers-{release}"
            " or link the nearest installed headers there (see the README)"
        )
    return None


def online_cpus(path: Path = Path("/sys/devices/system/cpu/online")) -> list[int]:
    """The CPUs online now (``0-3,5``), whatever this process's affinity."""
    try:
        text = path.read_text().strip()
    except OSError:
        return []
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def _next_power_of_two(value: int) -> int:
    return 1 << max(value - 1, 1).bit_length()


def stack_map_size(config: SamplerConfig, cpus: int) -> int:
    """Entries per stack map (and per counts map): ``max_stacks``, or four per possible sample
    of a window, as a power of two between 4096 and 65536.

    Each entry of a stack map is preallocated at 8 x max_stack_depth bytes, and there are two
    sets: at the default depth the largest default costs about 130 MiB of kernel memory.
    """
    if config.max_stacks:
        return _next_power_of_two(config.max_stacks)
    samples = int(config.frequency_hz * cpus * float(config.window))
    return min(max(_next_power_of_two(HEADROOM * samples), MIN_STACKS), MAX_DEFAULT_STACKS)


def bpf_source() -> str:
    return (importlib.resources.files("antiprof_core.bpf") / "profile.bpf.c").read_text()


class SampleKey(ct.Structure):
    _fields_ = [
        ("tgid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("user_stack_id", ct.c_int32),
        ("kernel_stack_id", ct.c_int32),
        ("comm", ct.c_char * TASK_COMM_LEN),
    ]


class SampleEvent(ct.Structure):
    _fields_ = [("ktime_ns", ct.c_uint64), ("set", ct.c_uint32), ("pad", ct.c_uint32), ("key", SampleKey)]


RawKey = tuple[int, int, int, int, int, bytes]  # tgid, tid, cpu, user stack id, kernel stack id, comm
_KEY_LAYOUT = struct.Struct(f"=IIIii{TASK_COMM_LEN}s")  # SampleKey's bytes, unpacked in C


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _raw_key(key: SampleKey) -> RawKey:
    return (key.tgid, key.tid, key.cpu, key.user_stack_id, key.kernel_stack_id, key.comm)


class BpfSampler:
    """A WindowSource of real on-CPU samples from every online CPU."""

    def __init__(
        self,
        config: SamplerConfig,
        host: Host,
        logger: logging.Logger,
        symbolizer: Symbolizer | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.logger = logger
        self.symbolizer = symbolizer or Symbolizer(host.kernel, logger=logger.getChild("symbols"))
        self.cpus = len(online_cpus()) or max(host.cpu_count, 1)
        self.max_stacks = stack_map_size(config, self.cpus)
        self.trace = config.mode is SamplingMode.TRACE
        self._bpf: Any = None
        self._active = 0
        self._window_start = 0
        self._lock = threading.Lock()
        self._new_tgids: list[int] = []
        self._events: list[tuple[int, int, RawKey]] = []  # (set, ktime, key)
        self._stop = threading.Event()
        self._consume_request = threading.Event()
        self._consumed = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._cleaner: threading.Thread | None = None
        self._poll_error: BaseException | None = None
        self.last_drain_seconds = 0.0  # reading and clearing the maps of the last window
        self.last_symbolize_seconds = 0.0  # turning them into Samples, Frames and Processes
        self._stack_type: Any = ct.c_uint64 * config.max_stack_depth
        self._stack_buffer: Any = self._stack_type()

    # --- life cycle ---------------------------------------------------------------------

    def cflags(self) -> list[str]:
        config = self.config
        samples_per_second = config.frequency_hz * self.cpus
        ring_pages = _next_power_of_two(max(samples_per_second * 80 * 2 // 4096, 16))
        return [
            f"-DMAX_STACK_DEPTH={config.max_stack_depth}",
            f"-DMAX_STACKS={self.max_stacks}",
            f"-DMAX_COUNTS={self.max_stacks}",
            f"-DMAX_PIDS={MAX_PIDS}",
            f"-DRINGBUF_PAGES={ring_pages}",
            f"-DFILTER_PIDS={int(bool(config.pids))}",
            f"-DKERNEL_STACKS={int(config.kernel_stacks)}",
            f"-DUSER_STACKS={int(config.user_stacks)}",
            f"-DINCLUDE_IDLE={int(config.include_idle)}",
            f"-DTRACE_MODE={int(self.trace)}",
            "-Wno-macro-redefined",
        ]

    def start(self) -> None:
        reason = bpf_unavailable_reason()
        if reason is not None:
            raise SourceUnavailable(reason)
        from bcc import BPF, PerfSWConfig, PerfType

        try:
            self._bpf = BPF(text=bpf_source().encode(), cflags=self.cflags())
        except Exception as exc:
            raise SourceUnavailable(f"the BPF program failed to compile or load: {_first_line(exc)}") from None
        try:
            if self.config.pids:
                pid_filter = self._bpf[b"pid_filter"]
                for pid in self.config.pids:
                    pid_filter[ct.c_uint32(pid)] = ct.c_uint8(1)
            self._bpf[b"new_tgids"].open_ring_buffer(self._on_new_tgid)
            if self.trace:
                self._bpf[b"sample_events"].open_ring_buffer(self._on_sample_event)
            self._bpf.attach_perf_event(
                ev_type=PerfType.SOFTWARE,
                ev_config=PerfSWConfig.CPU_CLOCK,
                fn_name=b"on_sample",
                sample_freq=self.config.frequency_hz,
            )
        except Exception as exc:
            self._bpf.cleanup()
            self._bpf = None
            raise SourceUnavailable(f"cannot attach the sampler to the CPU clock: {_first_line(exc)}") from None
        _release_compiler_memory(self._bpf)
        missing = [pid for pid in self.config.pids if not Path(f"/proc/{pid}").exists()]
        if missing:
            self.logger.warning("sampler.pids: no such process: %s", ", ".join(map(str, missing)))
        self._window_start = time.time_ns()
        self._poll_thread = threading.Thread(target=self._poll, name="antiprof-bpf-poll", daemon=True)
        self._poll_thread.start()
        self.logger.info(
            "sampling %d CPUs at %d Hz (%s mode); %d stacks per map set",
            self.cpus,
            self.config.frequency_hz,
            self.config.mode.value,
            self.max_stacks,
        )

    def close(self) -> None:
        self._wait_for_cleaner()
        self._stop.set()
        if self._poll_thread is not None:
            self._poll_thread.join(timeout=2)
            self._poll_thread = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    # --- the poll thread ----------------------------------------------------------------

    def _on_new_tgid(self, ctx: Any, data: Any, size: int) -> None:
        tgid = ct.cast(data, ct.POINTER(ct.c_uint32)).contents.value
        self._new_tgids.append(tgid)

    def _on_sample_event(self, ctx: Any, data: Any, size: int) -> None:
        event = ct.cast(data, ct.POINTER(SampleEvent)).contents
        with self._lock:
            self._events.append((event.set, event.ktime_ns, _raw_key(event.key)))

    def _poll(self) -> None:
        try:
            while not self._stop.is_set():
                self._bpf.ring_buffer_poll(timeout=POLL_MILLISECONDS)
                self._note_new_processes()
                if self._consume_request.is_set():
                    self._consume_request.clear()
                    self._bpf.ring_buffer_consume()
                    self._note_new_processes()
                    self._consumed.set()
        except BaseException as exc:  # reported by the next collect()
            self._poll_error = exc
            self._consumed.set()

    def _note_new_processes(self) -> None:
        while self._new_tgids:
            self.symbolizer.note_process(self._new_tgids.pop())

    def _consume_ring_buffers(self) -> None:
        """Have the poll thread (the only one that touches the ring buffers) empty them now."""
        self._consumed.clear()
        self._consume_request.set()
        if not self._consumed.wait(timeout=5):
            self.logger.warning("the BPF poll thread did not answer within 5 s")
        if self._poll_error is not None:
            raise RuntimeError(f"the BPF poll thread failed: {self._poll_error}")

    # --- draining -----------------------------------------------------------------------

    def collect(self) -> ProfileWindow:
        if self._bpf is None:
            raise RuntimeError("BpfSampler.collect() before start()")
        self._wait_for_cleaner()  # the set switched in next must be empty
        drained = self._active
        self._active = 1 - drained
        self._bpf[b"active_set"][ct.c_int(0)] = ct.c_uint32(self._active)
        end_ns = time.time_ns()
        time.sleep(SETTLE_SECONDS)
        self._consume_ring_buffers()

        drain_started = time.perf_counter()
        counters = self._read_counters(drained)
        if self.trace:
            raw = self._take_events(drained)
        else:
            raw = [(key, count, ()) for key, count in self._drain_counts(drained)]
        stacks = self._read_stacks(drained, raw, lost=counters["samples_lost"] > 0)
        symbolize_started = time.perf_counter()
        window = self._build_window(raw, stacks, counters, self._window_start, end_ns)
        self._window_start = end_ns
        self._forget_dead_processes()
        done = time.perf_counter()
        if self._cleaner is not None:
            self._cleaner.start()  # after the window is built: no fight for the GIL meanwhile
        self.last_drain_seconds = symbolize_started - drain_started
        self.last_symbolize_seconds = done - symbolize_started
        self.logger.debug(
            "window: %d samples, %d keys, %d stacks; drained in %.1f ms, symbolized in %.1f ms",
            window.sample_count,
            len(raw),
            len(stacks),
            1000 * self.last_drain_seconds,
            1000 * self.last_symbolize_seconds,
        )
        return window

    def _read_counters(self, drained: int) -> dict[str, int]:
        table = self._bpf[b"counters"]
        values = {}
        base = drained * len(COUNTER_NAMES)
        for slot, name in enumerate(COUNTER_NAMES):
            index = ct.c_int(base + slot)
            values[name] = int(sum(table[index]))
            table[index] = table.Leaf()
        return values

    def _take_events(self, drained: int) -> list[tuple[RawKey, int, tuple[int, ...]]]:
        with self._lock:  # the poll thread appends meanwhile
            events = self._events
            self._events = [event for event in events if event[0] != drained]
        offset = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        grouped: dict[RawKey, list[int]] = {}
        for set_index, ktime, key in events:
            if set_index == drained:
                grouped.setdefault(key, []).append(ktime + offset)
        return [(key, len(stamps), tuple(sorted(stamps))) for key, stamps in grouped.items()]

    def _drain_counts(self, drained: int) -> list[tuple[RawKey, int]]:
        table = self._bpf[f"counts{drained}".encode()]
        from bcc.libbcc import lib

        capacity = self.max_stacks
        keys = (SampleKey * capacity)()
        values = (ct.c_uint64 * capacity)()
        token = ct.c_uint32(0)
        total = 0
        first = True
        while total < capacity:
            count = ct.c_uint32(capacity - total)
            result = lib.bpf_lookup_and_delete_batch(
                table.map_fd,
                None if first else ct.byref(token),
                ct.byref(token),
                ct.byref(keys, ct.sizeof(SampleKey) * total),
                ct.byref(values, 8 * total),
                ct.byref(count),
            )
            error = ct.get_errno()
            total += count.value
            first = False
            if result != 0:
                if error != errno.ENOENT:
                    raise RuntimeError(f"draining the counts map failed: {os.strerror(error)}")
                break
            if count.value == 0:
                break
        key_bytes = memoryview(keys).cast("B")[: ct.sizeof(SampleKey) * total]
        counts = memoryview(values).cast("B").cast("Q")[:total].tolist()
        return list(zip(_KEY_LAYOUT.iter_unpack(key_bytes), counts, strict=True))

    def _read_stacks(
        self, drained: int, raw: Iterable[tuple[RawKey, int, tuple[int, ...]]], lost: bool
    ) -> dict[int, tuple[int, ...]]:
        """Every stack the window's keys name, read from the drained map.

        Deleting them costs one syscall each, so a thread does it after the window is built,
        while the agent waits for the next one; it must end before this set is switched in again.
        """
        from bcc.libbcc import lib

        fd = self._bpf[f"stacks{drained}".encode()].map_fd
        ids = {key[3] for key, _, _ in raw if key[3] >= 0} | {key[4] for key, _, _ in raw if key[4] >= 0}
        buffer = self._stack_buffer
        view = memoryview(buffer).cast("B").cast("Q")
        lookup = lib.bpf_lookup_elem
        stack_id = ct.c_int(0)
        key_pointer, buffer_pointer = ct.byref(stack_id), ct.byref(buffer)
        stacks: dict[int, tuple[int, ...]] = {}
        for number in ids:
            stack_id.value = number
            if lookup(fd, key_pointer, buffer_pointer) == 0:
                addresses = view.tolist()
                if 0 in addresses:
                    addresses = addresses[: addresses.index(0)]
                stacks[number] = tuple(addresses)
        self._cleaner = threading.Thread(
            target=self._delete_stacks, args=(fd, list(ids), lost), name="antiprof-bpf-clean", daemon=True
        )
        return stacks

    def _delete_stacks(self, fd: int, ids: list[int], everything: bool) -> None:
        from bcc.libbcc import lib

        delete = lib.bpf_delete_elem
        stack_id = ct.c_int(0)
        key_pointer = ct.byref(stack_id)
        for number in ids:
            stack_id.value = number
            delete(fd, key_pointer)
        if everything:  # stacks whose sample was dropped are referenced by no key: clear them all
            self._clear_stack_map(fd)

    def _wait_for_cleaner(self) -> None:
        if self._cleaner is not None:
            if self._cleaner.ident is None:  # built but never started: collect() failed midway
                self._cleaner.start()
            self._cleaner.join()
            self._cleaner = None

    def _clear_stack_map(self, fd: int) -> None:
        from bcc.libbcc import lib

        key = ct.c_int(0)
        next_key = ct.c_int(0)
        remaining = []
        if lib.bpf_get_first_key(fd, ct.byref(key), ct.sizeof(key)) == 0:
            remaining.append(key.value)
            while lib.bpf_get_next_key(fd, ct.byref(key), ct.byref(next_key)) == 0:
                remaining.append(next_key.value)
                key.value = next_key.value
        for number in remaining:
            key.value = number
            lib.bpf_delete_elem(fd, ct.byref(key))

    def _build_window(
        self,
        raw: list[tuple[RawKey, int, tuple[int, ...]]],
        stacks: dict[int, tuple[int, ...]],
        counters: dict[str, int],
        start_ns: int,
        end_ns: int,
    ) -> ProfileWindow:
        symbolizer = self.symbolizer
        deadline, late_before = symbolizer.naming_deadline(float(self.config.window)), symbolizer.late_frames
        kernel_stacks: dict[int, tuple[Frame, ...]] = {}
        user_stacks: dict[tuple[int, int], tuple[Frame, ...]] = {}
        samples = []
        processes: dict[int, Process] = {}
        names: dict[int, str] = {}
        for key, _, _ in raw:
            if key[0] == key[1] or key[0] not in names:
                names[key[0]] = _comm(key[5])
        states = {pid: symbolizer.state(pid, name) for pid, name in names.items() if pid}
        thread_names: dict[bytes, str] = {}
        for key, count, timestamps in raw:
            tgid, tid, cpu, user_id, kernel_id, comm = key
            thread_name = thread_names.get(comm)
            if thread_name is None:
                thread_name = thread_names[comm] = _comm(comm)
            kernel = kernel_stacks.get(kernel_id)
            if kernel is None:
                addresses = stacks.get(kernel_id, ())
                kernel = tuple(symbolizer.kernel_frame(a, n == 0) for n, a in enumerate(addresses))
                kernel_stacks[kernel_id] = kernel
            user = user_stacks.get((tgid, user_id))
            if user is None:
                addresses = stacks.get(user_id, ())
                user = symbolizer.user_stack(states[tgid], addresses, deadline) if addresses and tgid else ()
                user_stacks[(tgid, user_id)] = user
            samples.append(
                Sample(
                    pid=tgid,
                    tid=tid,
                    cpu=cpu,
                    thread_name=thread_name,
                    stack=kernel + user if kernel else user,
                    count=count,
                    timestamps=timestamps,
                )
            )
        for pid, name in names.items():
            processes[pid] = Process(pid=0, name="swapper") if pid == 0 else symbolizer.process(pid, name)
        if symbolizer.late_frames > late_before:
            self.logger.warning(
                "naming ran past the next window's end: %d frames delivered with raw addresses",
                symbolizer.late_frames - late_before,
            )
        stack_errors = {name: counters[name] for name in STACK_ERROR_NAMES}
        lost = counters["samples_lost"]
        overflow = counters["counts_map_full"] + counters["user_map_full"] + counters["kernel_map_full"]
        collisions = counters["user_collision"] + counters["kernel_collision"]
        if lost or overflow or collisions * 100 > counters["samples_seen"]:
            self.logger.warning(
                "window overflowed: %d samples lost, %d stacks not stored (map full), %d stacks lost to hash"
                " collisions out of %d samples; raise sampler.max_stacks (now %d)",
                lost,
                overflow,
                collisions,
                counters["samples_seen"],
                self.max_stacks,
            )
        return ProfileWindow(
            start_ns=start_ns,
            end_ns=end_ns,
            frequency_hz=self.config.frequency_hz,
            host=self.host,
            samples=tuple(samples),
            processes=processes,
            counters=Counters(samples_seen=counters["samples_seen"], samples_lost=lost, stack_errors=stack_errors),
            mode=self.config.mode,
        )

    def _forget_dead_processes(self) -> None:
        """Let a reused PID be announced again once its previous owner is forgotten."""
        forgotten = self.symbolizer.end_window()
        if forgotten:
            known = self._bpf[b"known_tgids"]
            for pid in forgotten:
                with contextlib.suppress(KeyError):
                    del known[ct.c_uint32(pid)]


def _release_compiler_memory(bpf: Any) -> None:
    """Give the compiler's heap back to the system once the program is loaded (about 60 MiB)."""
    bpf.free_bcc_memory()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ct.CDLL("libc.so.6").malloc_trim(0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
