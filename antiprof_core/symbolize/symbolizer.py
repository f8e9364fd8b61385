"""Naming frames: kernel addresses from kallsyms, user addresses from each process's mappings.

The symbolizer keeps one state per process (its executable mappings, read from /proc as soon
as the sampler first sees the PID, so a process that exits before the drain is still named)
and shares what can be shared: ELF files are read once per (device, inode) in a bounded LRU,
and Frame objects are reused across samples and windows, which lets sinks dedupe by identity.

Return addresses (every frame but the leaf) are looked up one byte back, so a call that is the
last instruction of a function is charged to that function, not to the next one.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

from attrs import define, field
from elftools.common.exceptions import ELFError

from antiprof_core.model import Frame, FrameKind, Mapping, Process
from antiprof_core.symbolize import procfs
from antiprof_core.symbolize.elf import DEBUG_ROOT, ElfInfo, SymbolTable, read_build_id, read_elf, read_elf_bytes
from antiprof_core.symbolize.kallsyms import read_kallsyms
from antiprof_core.symbolize.perfmap import PerfMap, perf_map_path

K = TypeVar("K")
V = TypeVar("V")

ANON_PATH = "//anon"  # perf's name for anonymous executable memory (JIT code)
VDSO_PATH = "[vdso]"
MAX_FRAMES_PER_PROCESS = 200_000


class LruCache(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@define
class ProcessState:
    """What the symbolizer knows of one process; read from /proc while it is alive."""

    pid: int
    name: str
    executable: str | None
    command_line: tuple[str, ...]
    container_id: str | None
    entries: list[procfs.MapsEntry]  # executable mappings as read from /proc
    mappings: tuple[Mapping, ...] = ()  # built from entries on first use (that reads ELF files)
    starts: list[int] = field(factory=list)
    anonymous: list[bool] = field(factory=list)
    built: bool = False
    leaf_frames: dict[int, Frame] = field(factory=dict)  # by exact address (the interrupted IP)
    return_frames: dict[int, Frame] = field(factory=dict)  # by return address
    perf_map: PerfMap | None = None
    refreshed_in_window: int = -1
    dead_windows: int = 0

    def mapping_index(self, address: int) -> int | None:
        index = bisect.bisect_right(self.starts, address) - 1
        if index >= 0 and address < self.mappings[index].end:
            return index
        return None

    def to_process(self) -> Process:
        return Process(
            pid=self.pid,
            name=self.name,
            executable=self.executable,
            command_line=self.command_line,
            container_id=self.container_id,
            mappings=self.mappings,
        )


class Symbolizer:
    """Turns raw addresses into Frames; thread-safe for ``note_process`` from a poll thread."""

    def __init__(
        self,
        kernel_mapping: Mapping | None = None,
        max_files: int = 512,
        logger: logging.Logger | None = None,
        proc: Path = procfs.PROC,
        debug_root: Path = DEBUG_ROOT,
    ) -> None:
        self.kernel_mapping = kernel_mapping
        self._logger = logger or logging.getLogger("antiprof.symbols")
        self._proc = proc
        self._debug_root = debug_root
        self._lock = threading.Lock()
        self._processes: dict[int, ProcessState] = {}
        self._elf_files: LruCache[tuple[int, int, str], ElfInfo | bool] = LruCache(max_files)
        self._build_ids: LruCache[tuple[int, int, str], str] = LruCache(16 * max_files)
        self._kernel_symbols: SymbolTable | None = None  # loaded on the first kernel frame
        self._kernel_frames: LruCache[tuple[int, bool], Frame] = LruCache(200_000)
        self._vdso: ElfInfo | bool | None = None
        self.window_index = 0

    # --- processes ----------------------------------------------------------------------

    def note_process(self, pid: int) -> None:
        """Read a newly seen process's /proc entries now, before it has a chance to exit."""
        with self._lock:
            if pid in self._processes:
                return
        state = self._read_process(pid)
        if state is not None:
            with self._lock:
                self._processes.setdefault(pid, state)

    def _read_process(self, pid: int, fallback_name: str = "") -> ProcessState | None:
        """Only /proc text here (fast, safe from the poll thread); ELF files are read later."""
        entries = sorted((e for e in procfs.read_maps(pid, self._proc) if e.executable), key=lambda e: e.start)
        if not entries and not procfs.alive(pid, self._proc):
            return None
        return ProcessState(
            pid=pid,
            name=procfs.read_comm(pid, self._proc) or fallback_name,
            executable=procfs.read_exe(pid, self._proc),
            command_line=procfs.read_cmdline(pid, self._proc),
            container_id=procfs.read_container_id(pid, self._proc),
            entries=entries,
        )

    def _build_mappings(self, state: ProcessState) -> None:
        """Mapping objects with build IDs, one per executable mapping; shared by every Frame in them."""
        mappings: list[Mapping] = []
        anonymous: list[bool] = []
        for entry in state.entries:
            is_anonymous = entry.anonymous and entry.path != VDSO_PATH
            path = ANON_PATH if is_anonymous and not entry.path.startswith("[") else entry.path
            build_id = None if is_anonymous else self._build_id_for(state.pid, entry.path, entry.device, entry.inode)
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

    def state(self, pid: int, fallback_name: str = "") -> ProcessState:
        """The process's state, read now if it was never seen; a placeholder when it is gone."""
        with self._lock:
            state = self._processes.get(pid)
        if state is None:
            state = self._read_process(pid, fallback_name) or ProcessState(
                pid=pid,
                name=fallback_name,
                executable=None,
                command_line=(),
                container_id=None,
                entries=[],
            )
            with self._lock:
                state = self._processes.setdefault(pid, state)
        if not state.name and fallback_name:
            state.name = fallback_name
        if not state.built:
            self._build_mappings(state)
        return state

    def process(self, pid: int, fallback_name: str = "") -> Process:
        return self.state(pid, fallback_name).to_process()

    def known_pids(self) -> list[int]:
        with self._lock:
            return list(self._processes)

    def end_window(self) -> list[int]:
        """Forget processes that have been gone for two windows; returns the PIDs forgotten.

        Two, not one: a process that exits between the buffer switch and the drain still has
        samples in the next window.
        """
        forgotten = []
        with self._lock:
            for pid, state in list(self._processes.items()):
                if procfs.alive(pid, self._proc):
                    state.dead_windows = 0
                    continue
                state.dead_windows += 1
                if state.dead_windows >= 2:
                    del self._processes[pid]
                    forgotten.append(pid)
        self.window_index += 1
        return forgotten

    # --- files --------------------------------------------------------------------------

    def _elf_for(self, pid: int, path: str, device: int, inode: int) -> ElfInfo | None:
        if path == VDSO_PATH:
            return self._vdso_elf()
        key = (device, inode, path if not inode else "")
        with self._lock:
            cached = self._elf_files.get(key)
        if cached is not None:
            return cached if isinstance(cached, ElfInfo) else None
        info: ElfInfo | None = None
        for candidate in (f"{self._proc}/{pid}/root{path}", path):
            try:
                info = read_elf(candidate, self._debug_root, name=path)
                break
            except (OSError, ELFError, ValueError) as exc:
                self._logger.debug("cannot read ELF %s: %s", candidate, exc)
        with self._lock:
            self._elf_files.put(key, info if info is not None else False)
        return info

    def _build_id_for(self, pid: int, path: str, device: int, inode: int) -> str | None:
        """Every mapping needs its build ID, but only mappings that samples hit need symbols."""
        if path == VDSO_PATH:
            vdso = self._vdso_elf()
            return vdso.build_id if vdso is not None else None
        key = (device, inode, path if not inode else "")
        with self._lock:
            known = self._build_ids.get(key)
            elf = self._elf_files.get(key)
        if known is not None:
            return known or None
        if isinstance(elf, ElfInfo):
            return elf.build_id
        build_id = None
        for candidate in (f"{self._proc}/{pid}/root{path}", path):
            try:
                build_id = read_build_id(candidate)
                break
            except (OSError, ELFError, ValueError) as exc:
                self._logger.debug("cannot read the build ID of %s: %s", candidate, exc)
        with self._lock:
            self._build_ids.put(key, build_id or "")
        return build_id

    def _vdso_elf(self) -> ElfInfo | None:
        """The vDSO is the same image in every process: read ours from memory once."""
        if self._vdso is None:
            self._vdso = False
            for entry in procfs.read_maps(os.getpid()):
                if entry.path == VDSO_PATH:
                    try:
                        with open("/proc/self/mem", "rb") as mem:
                            mem.seek(entry.start)
                            self._vdso = read_elf_bytes(mem.read(entry.end - entry.start), VDSO_PATH)
                    except (OSError, ELFError, ValueError) as exc:
                        self._logger.debug("cannot read the vDSO: %s", exc)
                    break
        return self._vdso if isinstance(self._vdso, ElfInfo) else None

    # --- frames -------------------------------------------------------------------------

    def kernel_frame(self, address: int, leaf: bool) -> Frame:
        key = (address, leaf)
        frame = self._kernel_frames.get(key)
        if frame is not None:
            return frame
        if self._kernel_symbols is None:
            self._kernel_symbols = read_kallsyms(self._proc / "kallsyms")
        found = self._kernel_symbols.lookup(address if leaf else address - 1)
        symbol, offset = (found[0], found[1] + (0 if leaf else 1)) if found else (None, 0)
        frame = Frame(address=address, kind=FrameKind.KERNEL, symbol=symbol, offset=offset, mapping=self.kernel_mapping)
        self._kernel_frames.put(key, frame)
        return frame

    def user_frame(self, state: ProcessState, address: int, leaf: bool) -> Frame:
        frames = state.leaf_frames if leaf else state.return_frames
        frame = frames.get(address)
        if frame is not None:
            return frame
        index = state.mapping_index(address)
        if index is None and state.refreshed_in_window != self.window_index and procfs.alive(state.pid, self._proc):
            self._refresh(state)
            index = state.mapping_index(address)
            frames = state.leaf_frames if leaf else state.return_frames
        frame = self._name_user_address(state, index, address, leaf)
        if len(frames) >= MAX_FRAMES_PER_PROCESS:
            frames.clear()
        frames[address] = frame
        return frame

    def _refresh(self, state: ProcessState) -> None:
        """Re-read the maps of a live process whose address fell outside them (dlopen, exec)."""
        state.refreshed_in_window = self.window_index
        fresh = self._read_process(state.pid, state.name)
        if fresh is not None and fresh.entries != state.entries:
            state.entries = fresh.entries
            state.name, state.executable, state.command_line = fresh.name, fresh.executable, fresh.command_line
            self._build_mappings(state)
            state.leaf_frames.clear()
            state.return_frames.clear()

    def _name_user_address(self, state: ProcessState, index: int | None, address: int, leaf: bool) -> Frame:
        lookup_address = address if leaf else address - 1
        mapping = state.mappings[index] if index is not None else None
        if index is None or state.anonymous[index]:
            found = self._perf_map(state).lookup(lookup_address)
            if found is not None:
                return Frame(address, FrameKind.JIT, found[0], found[1] + (address - lookup_address), mapping)
            return Frame(address, FrameKind.JIT if mapping else FrameKind.NATIVE, None, 0, mapping)
        assert mapping is not None
        elf = self._elf_for(state.pid, mapping.path, mapping.device, mapping.inode)
        if elf is not None:
            found = elf.lookup(lookup_address - mapping.start + mapping.file_offset)
            if found is not None:
                return Frame(address, FrameKind.NATIVE, found[0], found[1] + (address - lookup_address), mapping)
        else:  # not ELF: JIT code in a file-backed mapping (memfd, /dev/zero) may be in the perf map
            found = self._perf_map(state).lookup(lookup_address)
            if found is not None:
                return Frame(address, FrameKind.JIT, found[0], found[1] + (address - lookup_address), mapping)
        return Frame(address, FrameKind.NATIVE, None, 0, mapping)

    def _perf_map(self, state: ProcessState) -> PerfMap:
        if state.perf_map is None:
            state.perf_map = PerfMap(perf_map_path(state.pid))
        return state.perf_map

    def user_stack(self, state: ProcessState, addresses: tuple[int, ...]) -> tuple[Frame, ...]:
        """Frames for raw user addresses, leaf first (the first is the interrupted IP).

        The hot path of a drain: cached frames are fetched with one ``map`` in C, and only the
        misses go through the symbolizer.
        """
        if not addresses:
            return ()
        try:
            return (state.leaf_frames[addresses[0]], *map(state.return_frames.__getitem__, addresses[1:]))
        except KeyError:
            return tuple(self.user_frame(state, address, n == 0) for n, address in enumerate(addresses))
