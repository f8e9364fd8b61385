"""A process's executable file mappings as the unwinder needs them: which file, and its load bias.
The vDSO is one of them too, though no file holds it (``vdso``).

The agent runs as root and the paths in ``/proc/PID/maps`` are the process's to choose, so a file
is opened the symbolizer's way (``ProcessView``: resolved inside the process's root, no symlink
followed, regular files of root or the process's user only, O_NONBLOCK so a FIFO cannot hang us)
and must be the very inode that is mapped. Its build ID and PT_LOAD segments (``elfheaders``) are
read once per file (device, inode), not once per process: a fork storm of one binary reads it once.

The table worker is a separate process that opens files by path. The path it is given is the
process's path under its root, checked component by component to hold no symlink; the table that
comes back is used only if its build ID is the one read here through the safe descriptor.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from pathlib import Path

from attrs import frozen

from antiprof_core.sources.unwind.elfheaders import ElfHeaderError, read_headers
from antiprof_core.sources.unwind.vdso import VDSO_WORKER_PATH, is_64_bit_vdso, own_vdso_headers
from antiprof_core.symbolize import procfs
from antiprof_core.symbolize.elf import LoadSegment
from antiprof_core.symbolize.files import ELF_MAX_BYTES, ProcessView

MAX_REMEMBERED_FILES = 8192


@frozen
class FileIdentity:
    """A mapped file, known by build ID or, without one, by (device, inode, mtime)."""

    key: str
    build_id: str | None
    segments: tuple[LoadSegment, ...]


@frozen
class FileMapping:
    """One executable mapping of a file: runtime ``[start, end)``, and ``pc - load_bias`` = the file's address."""

    start: int
    end: int
    load_bias: int
    file: FileIdentity
    worker_path: str  # where the table worker may open it (no symlink on the way, at the time of the check)
    name: str  # the path as the process sees it (debug files are looked for beside it)


def load_bias(start: int, end: int, offset: int, segments: tuple[LoadSegment, ...]) -> int | None:
    """``pc - file address`` for pcs in a mapping of file bytes ``[offset, offset + end - start)``.

    The segment is the one that covers most of the mapping (the text segment for an r-x mapping);
    ``ElfInfo.file_address`` gives the same answer for every pc in it.
    """
    best: LoadSegment | None = None
    best_overlap = 0
    for segment in segments:
        overlap = min(offset + end - start, segment.file_offset + segment.file_size) - max(offset, segment.file_offset)
        if overlap > best_overlap:
            best, best_overlap = segment, overlap
    if best is None:
        return None
    return start - offset + best.file_offset - best.vaddr


class ProcessFiles:
    """``mappings(pid)``: the executable file mappings of a live process, each file read once."""

    def __init__(self, proc: Path = procfs.PROC) -> None:
        self._proc = proc
        self._vdso: FileIdentity | bool | None = None  # ours, read once (False: there is none)
        # by (device, inode); a refusal also by who asked (another process's user may own the file)
        self._files: OrderedDict[tuple[int, ...], FileIdentity | None] = OrderedDict()
        self.unreadable = 0  # mappings left out: a file refused or not an ELF file

    def mappings(self, pid: int) -> list[FileMapping]:
        """Sorted by start, the vDSO among them; empty when the process is gone."""
        entries = procfs.read_maps(pid, self._proc, executable_only=True)
        vdso = self._vdso_mapping(pid, [entry for entry in entries if entry.path == VDSO_WORKER_PATH])
        entries = [entry for entry in entries if entry.inode and entry.path.startswith("/")]
        if not entries:
            return [vdso] if vdso else []
        status = procfs.read_status(pid, self._proc)
        view = ProcessView.of(pid, status.uid if status else None, self._proc)
        mappings = []
        for entry in sorted(entries, key=lambda entry: entry.start):
            identity = self._identity(view, entry)
            if identity is None:
                self.unreadable += 1
                continue
            bias = load_bias(entry.start, entry.end, entry.offset, identity.segments)
            if bias is None:
                self.unreadable += 1
                continue
            worker_path = _worker_path(view.root, entry.path, entry.inode)
            if worker_path is None:
                self.unreadable += 1
                continue
            mappings.append(FileMapping(entry.start, entry.end, bias, identity, worker_path, entry.path))
        if vdso is not None:
            mappings.append(vdso)
            mappings.sort(key=lambda mapping: mapping.start)
        return mappings

    def _vdso_mapping(self, pid: int, entries: list[procfs.MapsEntry]) -> FileMapping | None:
        """The process's vDSO, with our own vDSO's identity: the same image in every 64-bit process."""
        if len(entries) != 1:
            return None
        if self._vdso is None:
            headers = own_vdso_headers()
            key = f"build-id:{headers.build_id}" if headers and headers.build_id else "vdso"
            self._vdso = FileIdentity(key, headers.build_id, headers.segments) if headers else False
        [entry] = entries
        if not isinstance(self._vdso, FileIdentity) or not is_64_bit_vdso(pid, entry.start, self._proc):
            return None
        bias = load_bias(entry.start, entry.end, entry.offset, self._vdso.segments)
        if bias is None:
            return None
        return FileMapping(entry.start, entry.end, bias, self._vdso, VDSO_WORKER_PATH, VDSO_WORKER_PATH)

    def _identity(self, view: ProcessView, entry: procfs.MapsEntry) -> FileIdentity | None:
        key: tuple[int, ...] = (entry.device, entry.inode)
        refused_key = (*key, *sorted(view.owners), hash(view.root))
        for known in (key, refused_key):
            if known in self._files:
                self._files.move_to_end(known)
                return self._files[known]
        identity = _read_identity(view, entry)
        self._files[key if identity is not None else refused_key] = identity
        if len(self._files) > MAX_REMEMBERED_FILES:
            self._files.popitem(last=False)
        return identity


def _read_identity(view: ProcessView, entry: procfs.MapsEntry) -> FileIdentity | None:
    try:
        fd, info = view.open(entry.path, ELF_MAX_BYTES, entry.inode)
    except OSError:
        return None
    try:
        if info.st_ino != entry.inode:  # replaced since it was mapped: not the file the pcs are in
            return None
        elf = read_headers(fd, info.st_size, entry.path)
    except (OSError, ElfHeaderError):
        return None
    finally:
        os.close(fd)
    key = f"build-id:{elf.build_id}" if elf.build_id else f"file:{info.st_dev}:{info.st_ino}:{info.st_mtime_ns}"
    return FileIdentity(key, elf.build_id, elf.segments)


def _worker_path(root: str, path: str, inode: int) -> str | None:
    """``root + path`` if no component below ``root`` is a symlink and it ends at ``inode``; else None."""
    parts = [part for part in path.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        return None
    current = "" if root == "/" else root.rstrip("/")
    try:
        for part in parts:
            current = f"{current}/{part}"
            info = os.lstat(current)
            if stat.S_ISLNK(info.st_mode):
                return None
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_ino != inode:
        return None
    return current
