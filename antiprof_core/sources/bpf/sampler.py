"""The BPF sampler: has bpf/profile.bpf.c compiled apart, attaches it, and drains it once per window.

The kernel fills one of two map sets while this drains the other (see the BPF source), so no
sample is lost or split between windows. A poll thread reads two ring buffers: new PIDs, whose
/proc entries are read at once (a process that exits before the drain is still named), and in
trace mode the samples themselves, so the buffer never has to hold a whole window.

``start()`` returns once the program is attached to every CPU (or raises SourceUnavailable with
one line): a caller that needs a readiness signal takes the return of ``start()`` as it, and
``attached_seconds`` says how long it took.

Limit: perf events are opened on the CPUs online at ``start()``; a CPU brought online later is
not sampled until the agent restarts.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes as ct
import logging
import os
import select
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from antiprof_core.config import SamplerConfig
from antiprof_core.model import Host, ProfileWindow, SamplingMode, Unwinder
from antiprof_core.sources import SourceUnavailable
from antiprof_core.sources.bpf import syscalls
from antiprof_core.sources.bpf.availability import bpf_unavailable_reason
from antiprof_core.sources.bpf.loader import Compilation, CompileTimeout, LoadedProgram
from antiprof_core.sources.bpf.maps import ArrayMap, HashMap, RingBuffer
from antiprof_core.sources.bpf.program import (
    COUNTER_NAMES,
    PROGRAM_FUNCTION,
    PYTHON_PROCESSES_MAP,
    RawKey,
    bpf_source,
    cflags,
    decode_counts,
    decode_event,
    decode_stacks,
    kernel_memory_bytes,
    map_names,
    native_unwinder,
    online_cpus,
    raw_tracepoints,
    stack_map_size,
    tail_calls,
)
from antiprof_core.sources.bpf.window import RawSample, build_window, overflow_warning

if TYPE_CHECKING:
    from antiprof_core.sources.python.processes import PythonProcesses
    from antiprof_core.sources.unwind.kernelmaps import NativeUnwindMaps
from antiprof_core.symbolize.symbolizer import Symbolizer

SETTLE_SECONDS = 0.005  # a BPF program that read the old set index finishes within microseconds
POLL_MILLISECONDS = 100  # how soon a new PID's /proc entries are read
MIB = 1024 * 1024
ANNOUNCEMENT = struct.Struct("=II")  # struct announcement: tgid, reason
ANNOUNCE_UNMAPPED = 1  # the native walk met code outside the process's mappings: read them again
PRELOAD_SECONDS = 10.0  # python3.11's tables take about 3 s cold on a busy 2-CPU host


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
        self.online = online_cpus() or list(range(max(host.cpu_count, 1)))
        self.cpus = len(self.online)
        self.max_stacks = stack_map_size(config, self.cpus)
        self.trace = config.mode is SamplingMode.TRACE
        self.program_text = bpf_source()
        self.attached_seconds = 0.0  # from start() to sampling on every CPU
        self.compiler_peak_bytes = 0  # the compiler child's VmHWM
        self.last_drain_seconds = 0.0  # reading and clearing the maps of the last window
        self.last_symbolize_seconds = 0.0  # turning them into Samples, Frames and Processes
        self._program: LoadedProgram | None = None
        self._events_fds: list[int] = []
        self._rings: list[RingBuffer] = []
        self._active = 0
        self._window_start = 0
        self._counter_totals = [[0] * len(COUNTER_NAMES) for _ in range(2)]
        self._last_stacks: dict[int, tuple[int, ...]] = {}  # the last window's, by hash
        self._lock = threading.Lock()
        self._new_tgids: list[tuple[int, int]] = []  # (tgid, reason), as the BPF program announced them
        self._events: list[tuple[int, int, RawKey]] = []  # (set, ktime, key)
        self._stop = threading.Event()
        self._consume_request = threading.Event()
        self._consumed = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._poll_error: BaseException | None = None
        self._unwind_maps: NativeUnwindMaps | None = None  # when the program walks with unwind tables
        self._python: PythonProcesses | None = None  # when the program reads CPython frames

    # --- life cycle ---------------------------------------------------------------------

    def cflags(self) -> list[str]:
        return cflags(self.config, self.max_stacks, self.cpus)

    def _compile(self) -> Compilation:
        return Compilation(
            self.program_text,
            self.cflags(),
            PROGRAM_FUNCTION,
            map_names(self.config),
            tail_calls(self.config),
            raw_tracepoints(self.config),
        )

    def start(self) -> None:
        """Compile apart, attach on every online CPU; returns when sampling has begun."""
        reason = bpf_unavailable_reason()
        if reason is not None:
            raise SourceUnavailable(reason)
        started = time.monotonic()
        self.logger.info(
            "compiling the BPF program in a child process (BCC and LLVM stay there: about 175 MiB for a few seconds)"
        )
        compilation = self._compile()
        # Meanwhile, what needs no program: the perf events (opened disabled) and the kernel's symbols.
        try:
            self._events_fds = [syscalls.open_cpu_clock(cpu, self.config.frequency_hz) for cpu in self.online]
        except OSError as exc:
            self._close_events()
            compilation.cancel()
            raise SourceUnavailable(f"cannot open the CPU clock event: {exc.strerror or exc}") from None
        if self.config.kernel_stacks:
            self.symbolizer.kernel_frame(0, True)  # reads kallsyms now, while the child compiles
        try:
            try:
                program, diagnostics = compilation.result()
            except CompileTimeout:
                raise  # a second compile would only take as long again
            except SourceUnavailable as exc:
                if self.config.unwinder is not Unwinder.AUTO or not native_unwinder(self.config):
                    raise
                # "auto" asks for the best walk the kernel allows: without the native unwinder
                # (no BTF for bpf_task_pt_regs, a verifier that refuses it), frame pointers.
                self.logger.warning(
                    "the native unwinder cannot be loaded (%s); walking user stacks by frame pointers", exc
                )
                self.config = attrs.evolve(self.config, unwinder=Unwinder.FRAME_POINTER)
                program, diagnostics = self._compile().result()
        except SourceUnavailable:
            self._close_events()
            raise
        if diagnostics.strip():
            self.logger.debug("BPF compiler output:\n%s", diagnostics.rstrip())
        self._program = program
        self.compiler_peak_bytes = program.compiler_peak_bytes
        try:
            self._open_maps(program)
            self._prepare_named_processes()
            for fd in self._events_fds:
                syscalls.attach_and_enable(fd, program.program_fd)
        except OSError as exc:
            self.close()
            raise SourceUnavailable(f"cannot attach the sampler to the CPU clock: {exc.strerror or exc}") from None
        missing = [pid for pid in self.config.pids if not Path(f"/proc/{pid}").exists()]
        if missing:
            self.logger.warning("sampler.pids: no such process: %s", ", ".join(map(str, missing)))
        self._window_start = time.time_ns()
        self._poll_thread = threading.Thread(target=self._poll, name="antiprof-bpf-poll", daemon=True)
        self._poll_thread.start()
        self.attached_seconds = time.monotonic() - started
        self.logger.info(
            "sampling attached in %.2f s (compile %.2f s, compiler child peak %.0f MiB): %d CPUs at %d Hz"
            " (%s mode, user stacks by %s); %d stacks per map set (%.0f MiB of kernel memory)",
            self.attached_seconds,
            program.compile_seconds,
            program.compiler_peak_bytes / MIB,
            self.cpus,
            self.config.frequency_hz,
            self.config.mode.value,
            "unwind tables, else frame pointers" if native_unwinder(self.config) else "frame pointers",
            self.max_stacks,
            kernel_memory_bytes(self.config, self.max_stacks) / MIB,
        )

    def _open_maps(self, program: LoadedProgram) -> None:
        maps = program.maps
        self._active_set = ArrayMap(maps["active_set"])
        self._counters = ArrayMap(maps["counters"])
        self._stacks = (HashMap(maps["stacks0"]), HashMap(maps["stacks1"]))
        self._known_tgids = HashMap(maps["known_tgids"])
        if not self.trace:
            self._counts = (HashMap(maps["counts0"]), HashMap(maps["counts1"]))
        if self.config.pids:
            pid_filter = HashMap(maps["pid_filter"])
            for pid in self.config.pids:
                pid_filter.set(ct.c_uint32(pid), ct.c_uint8(1))
        self._rings = [RingBuffer(maps["new_tgids"], self._on_new_tgid)]
        if "unwind_rows" in maps:
            # imported here: the unwind package imports this one's maps module (no import cycle)
            from antiprof_core.sources.unwind.kernelmaps import NativeUnwindMaps
            from antiprof_core.sources.unwind.worker import UnwindTableBuilder

            cache_dir = Path(self.config.unwind_cache_dir) if self.config.unwind_cache_dir else None
            builder = UnwindTableBuilder(cache_dir)
            self._unwind_maps = NativeUnwindMaps(maps, self.config, self.logger.getChild("unwind"), builder)
        if PYTHON_PROCESSES_MAP in maps:
            from antiprof_core.sources.python.processes import PythonProcesses  # imports this package's maps

            self._python = PythonProcesses(maps[PYTHON_PROCESSES_MAP], self.logger.getChild("python"))
        if self.trace:
            self._rings.append(RingBuffer(maps["sample_events"], self._on_sample_event))

    def _prepare_named_processes(self) -> None:
        """With ``pids`` set, their unwind tables are loaded and their Python interpreters found
        before the first sample.

        Otherwise a process is first walked by frame pointers until its tables are in, and a short
        ``antiprof record -p PID`` would show the same code in two stack shapes. Bounded: a host
        too slow to build them in time samples anyway, counting those walks as ``unwind_fallback``.
        """
        if not self.config.pids:
            return
        started = time.monotonic()
        preparers = [p for p in (self._python, self._unwind_maps) if p is not None]
        for preparer in preparers:  # both start on every process, then both are waited for
            for pid in self.config.pids:
                preparer.note_process(pid)
        ready = [preparer.wait_idle(max(PRELOAD_SECONDS - (time.monotonic() - started), 0.1)) for preparer in preparers]
        if all(ready):
            self.logger.info(
                "the %d named processes prepared (unwind tables, Python interpreters) in %.2f s",
                len(self.config.pids),
                time.monotonic() - started,
            )
        else:
            self.logger.warning(
                "the named processes not all prepared within %.0f s: sampling begins, the rest walked"
                " by frame pointers (and Python frames unread) until they are",
                PRELOAD_SECONDS,
            )

    def close(self) -> None:
        self._stop.set()
        self._close_events()  # detaches the program from every CPU
        unwind_maps, self._unwind_maps = self._unwind_maps, None
        if unwind_maps is not None:  # before the maps' fds are closed with the program
            unwind_maps.close()
        python, self._python = self._python, None
        if python is not None:
            python.close()
        poll_thread, self._poll_thread = self._poll_thread, None
        if poll_thread is not None:
            poll_thread.join(timeout=10)
        if poll_thread is None or not poll_thread.is_alive():  # else it may still read them: leave them be
            for ring in self._rings:
                ring.close()
            self._rings = []
        if self._program is not None:
            self._program.close()
            self._program = None

    def _close_events(self) -> None:
        for fd in self._events_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._events_fds = []

    # --- the poll thread ----------------------------------------------------------------

    def _on_new_tgid(self, record: bytes) -> None:
        tgid, reason = ANNOUNCEMENT.unpack_from(record)
        self._new_tgids.append((tgid, reason))

    def _on_sample_event(self, record: bytes) -> None:
        event = decode_event(record)
        with self._lock:
            self._events.append(event)

    def _poll(self) -> None:
        poller = select.poll()
        for ring in self._rings:
            poller.register(ring.info.fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                poller.poll(POLL_MILLISECONDS)
                self._consume_rings()
                if self._consume_request.is_set():
                    self._consume_request.clear()
                    self._consume_rings()
                    self._consumed.set()
        except BaseException as exc:  # reported by the next collect()
            self._poll_error = exc
            self._consumed.set()

    def _consume_rings(self) -> None:
        for ring in self._rings:
            ring.consume()
        while self._new_tgids:
            tgid, reason = self._new_tgids.pop()
            if reason == ANNOUNCE_UNMAPPED:
                if self._unwind_maps is not None:
                    self._unwind_maps.recheck_process(tgid)
                continue
            self.symbolizer.note_process(tgid)
            if self._unwind_maps is not None:
                self._unwind_maps.note_process(tgid)
            if self._python is not None:
                self._python.note_process(tgid)

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
        if self._program is None:
            raise RuntimeError("BpfSampler.collect() before start()")
        drained = self._active
        self._active = 1 - drained
        self._active_set.write(0, struct.pack("=I", self._active))
        end_ns = time.time_ns()
        time.sleep(SETTLE_SECONDS)
        self._consume_ring_buffers()

        drain_started = time.perf_counter()
        counters = self._read_counters(drained)
        raw: list[RawSample]
        if self.trace:
            raw = self._take_events(drained)
        else:
            raw = [
                (key, count, ())
                for keys, values in self._counts[drained].drain()
                for key, count in decode_counts(keys, values)
            ]
        stacks: dict[int, tuple[int, ...]] = {}
        for keys, values in self._stacks[drained].drain():
            decode_stacks(keys, values, self.config.max_stack_depth, stacks, self._last_stacks)
        self._last_stacks = stacks
        symbolize_started = time.perf_counter()
        deadline = self.symbolizer.naming_deadline(float(self.config.window))
        late_before = self.symbolizer.late_frames
        window = build_window(
            raw,
            stacks,
            counters,
            self._window_start,
            end_ns,
            symbolizer=self.symbolizer,
            host=self.host,
            frequency_hz=self.config.frequency_hz,
            mode=self.config.mode,
            deadline=deadline,
            python=self._python,
        )
        self._window_start = end_ns
        if self._unwind_maps is not None:
            samples_by_pid: collections.Counter[int] = collections.Counter()
            for (tgid, *_), count, _ in raw:
                if tgid:  # not the idle task
                    samples_by_pid[tgid] += count
            self._unwind_maps.on_window(sampled=samples_by_pid)
            counters_now = attrs.evolve(window.counters, unwind_tables=self._unwind_maps.counters())
            window = attrs.evolve(window, counters=counters_now)
        if self._python is not None:
            python_counters = {**window.counters.python, **self._python.counters()}
            window = attrs.evolve(window, counters=attrs.evolve(window.counters, python=python_counters))
        warning = overflow_warning(counters, self.max_stacks)
        if warning:
            self.logger.warning("%s", warning)
        if self.symbolizer.late_frames > late_before:
            self.logger.warning(
                "naming ran past the next window's end: %d frames delivered with raw addresses",
                self.symbolizer.late_frames - late_before,
            )
        self._forget_dead_processes()
        done = time.perf_counter()
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
        """What the drained set's counters gained since it was last drained (they only grow)."""
        totals = self._counter_totals[drained]
        base = drained * len(COUNTER_NAMES)
        values = {}
        for slot, name in enumerate(COUNTER_NAMES):
            total = self._counters.sum_u64(base + slot)
            values[name] = total - totals[slot]
            totals[slot] = total
        return values

    def _take_events(self, drained: int) -> list[RawSample]:
        with self._lock:  # the poll thread appends meanwhile
            events = self._events
            self._events = [event for event in events if event[0] != drained]
        offset = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        grouped: dict[RawKey, list[int]] = {}
        for set_index, ktime, key in events:
            if set_index == drained:
                grouped.setdefault(key, []).append(ktime + offset)
        return [(key, len(stamps), tuple(sorted(stamps))) for key, stamps in grouped.items()]

    def _forget_dead_processes(self) -> None:
        """Let a reused PID be announced again once its previous owner is forgotten."""
        for pid in self.symbolizer.end_window():
            self._known_tgids.delete(ct.c_uint32(pid))
            if self._python is not None:
                self._python.forget(pid)
