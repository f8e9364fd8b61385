"""The one cache of ELF files, shared by every process that maps them.

A file is known by its identity (device, inode), not by a PID or a path, so a new process of a
binary already seen costs nothing here. Entries are held compactly (``symtab.SymbolTable``) and
the cache keeps a total byte budget, evicting the least recently used. A file is read in two
steps: its build ID when a process that maps it is first seen (every mapping needs one), and
its symbols only when a sample lands in it.

Every open goes through ``ProcessView``: the path as the process sees it, resolved in its root
with no symlink followed, regular files owned by root or the process's user only.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, cast

from attrs import frozen

from antiprof_core.symbolize.elf import DEBUG_ROOT, PARSE_BUDGET_BYTES, ElfFileError, ElfInfo, read_elf_fd
from antiprof_core.symbolize.untrusted import BoundedReader, UnsafeFileError, open_untrusted

ELF_MAX_BYTES = 4 << 30  # larger "binaries" are refused before parsing
DEBUG_FILE_MAX_BYTES = 4 << 30
FAILURE_BYTES = 200  # what a remembered failure costs in the budget
MAX_LOGGED_ERRORS = 1000


@frozen
class FileKey:
    """A mapped file's identity; ``path`` counts only for files without an inode."""

    device: int
    inode: int
    path: str = ""

    @classmethod
    def of(cls, device: int, inode: int, path: str) -> FileKey:
        return cls(device, inode, "" if inode else path)


@frozen
class ProcessView:
    """How one process sees the filesystem: its root, and whose files it may make the agent read."""

    pid: int
    root: str  # /proc/PID/root, or "/" for the agent's own view
    owners: frozenset[int]

    @classmethod
    def of(cls, pid: int, uid: int | None, proc: Path) -> ProcessView:
        """Read while the process is alive: a process that shares the agent's mount namespace and
        root is opened through ``/`` (still there after it exits, when its samples are named);
        any other (containers, chroots) through ``/proc/PID/root``."""
        owners = frozenset({0} if uid is None or uid < 0 else {0, uid})
        return cls(pid, "/" if _shares_our_root(pid, proc) else f"{proc}/{pid}/root", owners)

    def open(self, path: str, max_bytes: int, inode: int = 0) -> tuple[int, os.stat_result]:
        """(fd, stat) of ``path`` in this process's view; raises OSError.

        When the process is gone (its root cannot be opened), the agent's own view is tried,
        and accepted only if it is the very inode the process mapped.
        """
        if not inode or os.path.isdir(self.root):
            return open_untrusted(self.root, path, self.owners, max_bytes)
        fd, info = open_untrusted("/", path, self.owners, max_bytes)
        if info.st_ino != inode:
            os.close(fd)
            raise UnsafeFileError(errno.ESTALE, "not the file the process mapped", path)
        return fd, info


def _shares_our_root(pid: int, proc: Path) -> bool:
    try:
        same_namespace = os.stat(f"{proc}/{pid}/ns/mnt").st_ino == os.stat(f"{proc}/self/ns/mnt").st_ino
        return same_namespace and os.readlink(f"{proc}/{pid}/root") == "/"
    except OSError:
        return False


@frozen
class _Entry:
    info: ElfInfo | None  # None: the file could not be read (remembered, not retried)
    complete: bool  # symbols read, not only the build ID
    nbytes: int


class FileCache:
    """ELF files by identity, within ``budget_bytes``; thread-safe."""

    def __init__(
        self,
        budget_bytes: int = 32 << 20,
        debug_root: Path = DEBUG_ROOT,
        logger: logging.Logger | None = None,
    ) -> None:
        self.budget_bytes = budget_bytes
        self._debug_root = debug_root
        self._logger = logger or logging.getLogger("antiprof.symbols")
        self._lock = threading.Lock()
        self._entries: OrderedDict[FileKey, _Entry] = OrderedDict()
        self.bytes = 0
        self.evictions = 0
        self.errors = 0  # files that could not be read or parsed, each counted and logged once
        self.reads = 0
        self._logged: set[FileKey] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def build_id(self, view: ProcessView, path: str, key: FileKey) -> str | None:
        entry = self._get(key) or self._read(view, path, key, symbols=False)
        return entry.info.build_id if entry.info is not None else None

    def elf(self, view: ProcessView, path: str, key: FileKey) -> ElfInfo | None:
        entry = self._get(key)
        if entry is None or (not entry.complete and entry.info is not None):
            entry = self._read(view, path, key, symbols=True)
        return entry.info

    def cached(self, key: FileKey) -> ElfInfo | bool | None:
        """Without reading: the file if its symbols are held, None if it is known unreadable, else False."""
        entry = self._get(key)
        if entry is None or (entry.info is not None and not entry.complete):
            return False
        return entry.info

    def _get(self, key: FileKey) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def _read(self, view: ProcessView, path: str, key: FileKey, symbols: bool) -> _Entry:
        self.reads += 1
        info: ElfInfo | None = None
        try:
            fd, stat = view.open(path, ELF_MAX_BYTES, key.inode)
            try:
                info = read_elf_fd(fd, stat.st_size, path, symbols, self._debug_opener(view))
            finally:
                os.close(fd)
        except (OSError, ElfFileError) as exc:
            self._failed(key, path, exc)
        entry = _Entry(info, symbols, info.nbytes if info is not None else FAILURE_BYTES)
        self._put(key, entry)
        return entry

    def _debug_opener(self, view: ProcessView) -> Any:
        def open_debug(kind: str, candidate: str) -> BinaryIO | None:
            try:
                if kind == "debug":
                    fd, stat = open_untrusted(
                        str(self._debug_root), candidate, {0}, DEBUG_FILE_MAX_BYTES, follow_symlinks=True
                    )
                else:
                    fd, stat = view.open(candidate, DEBUG_FILE_MAX_BYTES)
            except OSError:
                return None
            # pyelftools reads through the file-object protocol BoundedReader implements
            return cast(BinaryIO, BoundedReader(fd, stat.st_size, PARSE_BUDGET_BYTES, candidate, owns_fd=True))

        return open_debug

    def _failed(self, key: FileKey, path: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError) or (isinstance(exc, OSError) and exc.errno == errno.ENOENT):
            self._logger.debug("cannot open %s: %s", path, exc)
            return
        with self._lock:  # a file evicted and read again is not counted or logged again
            first = key not in self._logged
            if first:
                self.errors += 1
                if len(self._logged) < MAX_LOGGED_ERRORS:
                    self._logged.add(key)
        if first:
            self._logger.warning("cannot read ELF file %s: %s", path, _one_line(exc))

    def _put(self, key: FileKey, entry: _Entry) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._entries[key] = entry
            self.bytes += entry.nbytes
            while self.bytes > self.budget_bytes and len(self._entries) > 1:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ElfFileError):
        return str(exc).split(": ", 1)[-1]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
