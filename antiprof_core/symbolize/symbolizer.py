"""Naming frames: kernel addresses from kallsyms, user addresses from each process's mappings.

The parts, one idea each: ``processes.ProcessTable`` (what /proc says of each process),
``files.FileCache`` (ELF files by identity within a byte budget, opened safely),
``perfmap.PerfMap`` (JIT symbols), ``kallsyms.KernelSymbols``. This class ties them together
and keeps Frame objects per process, reused across samples and windows so sinks dedupe by
identity; names themselves are shared across processes by (file, offset).

Return addresses (every frame but the leaf) are looked up one byte back, so a call that is the
last instruction of a function is charged to that function, not to the next one.

Naming has a deadline (``naming_deadline``: the next window's end, at least 10 s away): past it,
frames that would need a file read are delivered with their raw address (and mapping) and
counted in ``late_frames``, and named in a later window; the sampler never falls far behind.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from antiprof_core.model import Frame, FrameKind, Mapping, Process
from antiprof_core.symbolize import procfs
from antiprof_core.symbolize.demangle import demangle
from antiprof_core.symbolize.elf import DEBUG_ROOT, ElfFileError, ElfInfo, read_elf_bytes
from antiprof_core.symbolize.files import FileCache, FileKey, ProcessView
from antiprof_core.symbolize.kallsyms import KernelSymbols, LruCache
from antiprof_core.symbolize.perfmap import PerfMap, perf_map_name
from antiprof_core.symbolize.processes import ProcessState, ProcessTable

__all__ = ["ANON_PATH", "VDSO_PATH", "LruCache", "ProcessState", "Symbolizer"]

ANON_PATH = "//anon"  # perf's name for anonymous executable memory (JIT code)
VDSO_PATH = procfs.VDSO_PATH
NAME_BYTES = 400  # one held name, measured: its (file, offset) key, the demangled text, the LRU node
SHARE_DIVISOR = 8  # kernel frames and names each hold up to 1/8 of symbolizer.cache_mb; files the rest
MIN_NAMING_SECONDS = 10.0  # short windows still get this long: start-up reads every mapped file once
DEFAULT_CACHE_BYTES = 32 << 20


class Symbolizer:
    """Turns raw addresses into Frames; ``note_process`` may be called from another thread."""

    def __init__(
        self,
        kernel_mapping: Mapping | None = None,
        logger: logging.Logger | None = None,
        proc: Path = procfs.PROC,
        debug_root: Path = DEBUG_ROOT,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.kernel_mapping = kernel_mapping
        self._logger = logger or logging.getLogger("antiprof.symbols")
        self._proc = proc
        self.processes = ProcessTable(proc)
        self.files = FileCache(cache_bytes, debug_root, self._logger)
        self.kernel = KernelSymbols(proc / "kallsyms", kernel_mapping)
        self._names: LruCache[tuple[FileKey, int], tuple[str, int]] = LruCache(1)
        self.set_cache_budget(cache_bytes)
        self._vdso: ElfInfo | bool | None = None
        self.window_index = 0
        self.late_frames = 0  # frames left raw because naming ran past its deadline

    # --- processes ----------------------------------------------------------------------

    def note_process(self, pid: int) -> None:
        """Read a newly seen process's /proc entries now, before it has a chance to exit."""
        self.processes.note(pid)

    def state(self, pid: int, fallback_name: str = "") -> ProcessState:
        """The process's state, read now if it was never seen; a placeholder when it is gone."""
        state = self.processes.get(pid, fallback_name)
        if not state.built:
            self._build_mappings(state)
        return state

    def process(self, pid: int, fallback_name: str = "") -> Process:
        return self.state(pid, fallback_name).to_process()

    def known_pids(self) -> list[int]:
        return self.processes.pids()

    def end_window(self) -> list[int]:
        """Forget processes gone for two windows (their frames and perf maps go with them)."""
        self.window_index += 1
        return self.processes.forget_dead()

    def _build_mappings(self, state: ProcessState) -> None:
        """Mapping objects with build IDs, one per executable mapping; shared by every Frame in them."""
        mappings: list[Mapping] = []
        anonymous: list[bool] = []
        for entry in state.entries:
            is_anonymous = entry.anonymous and entry.path != VDSO_PATH
            path = ANON_PATH if is_anonymous and not entry.path.startswith("[") else entry.path
            build_id = None if is_anonymous else self._build_id(state.view, entry)
            mappings.append(
                Mapping(
                    start=entry.start,
                    end=entry.end,
                    file_offset=entry.offset,
                    path=path,
                    build_id=build_id,
                    inode=entry.inode,
                    device=entry.device,
                )
            )
            anonymous.append(is_anonymous)
        state.mappings = tuple(mappings)
        state.starts = [mapping.start for mapping in mappings]
        state.anonymous = anonymous
        state.built = True

    def _build_id(self, view: ProcessView, entry: procfs.MapsEntry) -> str | None:
        if entry.path == VDSO_PATH:
            vdso = self._vdso_elf()
            return vdso.build_id if vdso is not None else None
        if entry.path.startswith("["):
            return None
        return self.files.build_id(view, entry.path, FileKey.of(entry.device, entry.inode, entry.path))

    def _vdso_elf(self) -> ElfInfo | None:
        """The vDSO is the same image in every process: read ours from memory once."""
        if self._vdso is None:
            self._vdso = False
            image = procfs.read_own_vdso()
            if image is not None:
                try:
                    self._vdso = read_elf_bytes(image, VDSO_PATH)
                except ElfFileError as exc:
                    self._logger.debug("cannot read the vDSO: %s", exc)
        return self._vdso if isinstance(self._vdso, ElfInfo) else None

    # --- frames -------------------------------------------------------------------------

    @staticmethod
    def naming_deadline(window_seconds: float) -> float:
        """The ``deadline`` for naming a window that has just ended: the next window's end.

        Never less than MIN_NAMING_SECONDS away, so that with short windows the first ones (when
        every file mapped on the host is read once) are still named rather than left raw.
        """
        return time.monotonic() + max(window_seconds, MIN_NAMING_SECONDS)

    def kernel_frame(self, address: int, leaf: bool) -> Frame:
        return self.kernel.frame(address, leaf)

    def user_stack(
        self, state: ProcessState, addresses: tuple[int, ...], deadline: float | None = None
    ) -> tuple[Frame, ...]:
        """Frames for raw user addresses, leaf first (the first is the interrupted IP).

        The hot path of a drain: cached frames are fetched with one ``map`` in C, and only the
        misses go through the symbolizer. ``deadline`` is a ``time.monotonic()`` value: past
        it, misses that need a file read are left raw and counted.
        """
        if not addresses:
            return ()
        try:
            return (state.leaf_frames[addresses[0]], *map(state.return_frames.__getitem__, addresses[1:]))
        except KeyError:
            late = deadline is not None and time.monotonic() > deadline
            return tuple(self.user_frame(state, address, n == 0, late) for n, address in enumerate(addresses))

    def user_frame(self, state: ProcessState, address: int, leaf: bool, late: bool = False) -> Frame:
        frames = state.leaf_frames if leaf else state.return_frames
        frame = frames.get(address)
        if frame is not None:
            return frame
        index = state.mapping_index(address)
        stale = index is None and not late and state.refreshed_in_window != self.window_index
        if stale and procfs.alive(state.pid, self._proc):
            self._refresh(state)
            index = state.mapping_index(address)
            frames = state.leaf_frames if leaf else state.return_frames
        frame = self._name_user_address(state, index, address, leaf, late)
        if frame is None:  # late: raw now, named in a later window
            self.late_frames += 1
            mapping = state.mappings[index] if index is not None else None
            return Frame(address, FrameKind.NATIVE, None, 0, mapping)
        if frame.symbol is not None or (index is not None and not state.anonymous[index]):
            state.remember(frames, address, frame)  # unnamed JIT code may be in the perf map next window
        return frame

    def _refresh(self, state: ProcessState) -> None:
        """Re-read the maps of a live process whose address fell outside them (dlopen, exec)."""
        state.refreshed_in_window = self.window_index
        entries = sorted(procfs.read_maps(state.pid, self._proc, executable_only=True), key=lambda e: e.start)
        if entries and entries != state.entries:
            state.entries = entries
            state.name = procfs.read_comm(state.pid, self._proc) or state.name
            state.executable = procfs.read_exe(state.pid, self._proc) or state.executable
            state.command_line = procfs.read_cmdline(state.pid, self._proc) or state.command_line
            self._build_mappings(state)
            state.leaf_frames.clear()
            state.return_frames.clear()

    def _name_user_address(
        self, state: ProcessState, index: int | None, address: int, leaf: bool, late: bool
    ) -> Frame | None:
        lookup_address = address if leaf else address - 1
        back = address - lookup_address
        mapping = state.mappings[index] if index is not None else None
        if index is None or state.anonymous[index]:
            found = self._perf_map_lookup(state, lookup_address, late)
            if found is not None:
                return Frame(address, FrameKind.JIT, found[0], found[1] + back, mapping)
            return None if late else Frame(address, FrameKind.JIT if mapping else FrameKind.NATIVE, None, 0, mapping)
        assert mapping is not None
        file_offset = lookup_address - mapping.start + mapping.file_offset
        key = FileKey.of(mapping.device, mapping.inode, mapping.path)
        named = self._names.get((key, file_offset))
        if named is not None:
            return Frame(address, FrameKind.NATIVE, named[0], named[1] + back, mapping)
        elf = self._elf(state, mapping, key, late)
        if elf is False:
            return None
        if isinstance(elf, ElfInfo):
            found = elf.lookup(file_offset)
            if found is not None:
                named = (demangle(found[0]), found[1])
                self._names.put((key, file_offset), named)
                return Frame(address, FrameKind.NATIVE, named[0], named[1] + back, mapping)
        else:  # not ELF: JIT code in a file-backed mapping (memfd, /dev/zero) may be in the perf map
            found = self._perf_map_lookup(state, lookup_address, late)
            if found is not None:
                return Frame(address, FrameKind.JIT, found[0], found[1] + back, mapping)
        return Frame(address, FrameKind.NATIVE, None, 0, mapping)

    def _elf(self, state: ProcessState, mapping: Mapping, key: FileKey, late: bool) -> ElfInfo | bool | None:
        """The mapping's ELF file; None if it is not one, False if it would need a read past the deadline."""
        if mapping.path == VDSO_PATH:
            return self._vdso_elf()
        if late:
            return self.files.cached(key)
        return self.files.elf(state.view, mapping.path, key)

    def _perf_map_lookup(self, state: ProcessState, address: int, late: bool) -> tuple[str, int] | None:
        """The perf map is re-read (only what was appended) at most once a window per process."""
        if state.perf_map is None:
            if late:
                return None
            view, name = state.view, perf_map_name(state.namespace_pid)
            state.perf_map = PerfMap(lambda: view.open(name, 1 << 62), self._logger, f"PID {state.pid}")
        if state.perf_map_window != self.window_index and not late:
            state.perf_map_window = self.window_index
            state.perf_map.refresh()
        return state.perf_map.lookup(address)

    # --- accounting ---------------------------------------------------------------------

    def set_cache_budget(self, cache_bytes: int) -> None:
        """The ``symbolizer.cache_mb`` budget, in bytes, shared by every cache that grows with what
        the host runs: kernel frames and names each get up to 1/8, symbol tables the rest (they
        are held to it from the next file read). The kallsyms table, read once, is not in it."""
        share = cache_bytes // SHARE_DIVISOR
        self.kernel.budget_bytes = share
        self._names.capacity = max(share // NAME_BYTES, 1)
        self._names.put_limit()
        self.files.budget_bytes = cache_bytes - 2 * share
        self.cache_budget_bytes = cache_bytes

    def stats(self) -> dict[str, int]:
        """Figures for the agent's metrics."""
        return {
            "cache_bytes": self.files.bytes + self.kernel.nbytes + NAME_BYTES * len(self._names),
            "cache_budget_bytes": self.cache_budget_bytes,
            "cache_files": len(self.files),
            "cache_evictions": self.files.evictions,
            "file_errors": self.files.errors,
            "file_reads": self.files.reads,
            "kernel_frames": len(self.kernel),
            "names": len(self._names),
            "processes": len(self.processes),
            "late_frames": self.late_frames,
        }
