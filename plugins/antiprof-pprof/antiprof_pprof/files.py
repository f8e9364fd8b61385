"""One ``antiprof-<host>-<UTC start>.pb.gz`` per window in a private directory, oldest removed first.

The agent runs as root and the directory may sit where others can write, so the directory is
opened with O_NOFOLLOW and every file is made inside it (``dir_fd``) with O_CREAT|O_EXCL|O_NOFOLLOW.
A file appears under its final name only once complete (written aside, then hard-linked), so a
reader polling the directory never sees half a profile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from attrs import frozen

from antiprof_core.outputs import ensure_private_dir

SUFFIX = ".pb.gz"
FILE_MODE = 0o600
_MAX_SAME_SECOND = 1000
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STAMP = "%Y%m%dT%H%M%SZ"


def safe_host(hostname: str) -> str:
    return _UNSAFE.sub("_", hostname) or "unknown"


def file_name(hostname: str, start_ns: int, sequence: int = 0) -> str:
    """``sequence`` > 0 tells apart windows that start within the same second."""
    stamp = time.strftime(_STAMP, time.gmtime(start_ns // 1_000_000_000))
    extra = f"-{sequence}" if sequence else ""
    return f"antiprof-{safe_host(hostname)}-{stamp}{extra}{SUFFIX}"


@frozen
class OwnFile:
    name: str
    size: int
    order: tuple[str, int]  # (UTC stamp, sequence): oldest first


def _open_private_directory(path: Path) -> int:
    """An fd for ``path``, created 0700 with its parents if missing; refuses a symlink in its place."""
    ensure_private_dir(path)
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, "not a directory (a symlink is refused)", str(path)) from None
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ProfileFiles:
    """Publishes one gzip'd profile per call and keeps at most ``max_files`` / ``max_total_size`` of them."""

    def __init__(self, directory: Path, hostname: str, max_files: int, max_total_size: int) -> None:
        self.directory = directory
        self.hostname = hostname
        self.max_files = max_files
        self.max_total_size = max_total_size
        self._pattern = re.compile(
            rf"antiprof-{re.escape(safe_host(hostname))}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?{re.escape(SUFFIX)}"
        )
        self.removal_errors: list[str] = []

    def ensure_directory(self) -> None:
        os.close(_open_private_directory(self.directory))

    def write(self, start_ns: int, data: bytes) -> Path:
        """The path written; OSError (with the path as filename) when it could not be."""
        directory = _open_private_directory(self.directory)
        try:
            name = self._publish(directory, start_ns, data)
            self._apply_retention(directory, keep=name)
        finally:
            os.close(directory)
        return self.directory / name

    def _publish(self, directory: int, start_ns: int, data: bytes) -> str:
        aside = f".antiprof-pprof-{os.getpid()}-{secrets.token_hex(6)}.tmp"  # two sinks may share a directory
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(aside, flags, FILE_MODE, dir_fd=directory)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.directory / aside)) from None
        try:
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            for sequence in range(_MAX_SAME_SECOND):
                name = file_name(self.hostname, start_ns, sequence)
                try:
                    os.link(aside, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
                except FileExistsError:
                    continue
                return name
            raise OSError(errno.EEXIST, "too many files started in one second", str(self.directory))
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, exc.filename or str(self.directory / aside)) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(aside, dir_fd=directory)

    def own_files(self, directory: int) -> list[OwnFile]:
        """This host's profiles in the directory, oldest first; anything else is left alone."""
        found = []
        for entry in self._entries(directory):
            match = self._pattern.fullmatch(entry.name)
            if match is None:
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                found.append(OwnFile(entry.name, info.st_size, (match.group(1), int(match.group(2) or 0))))
        return sorted(found, key=lambda own: own.order)

    @staticmethod
    def _entries(directory: int) -> Iterator[os.DirEntry[str]]:
        with os.scandir(directory) as entries:
            yield from entries

    def _apply_retention(self, directory: int, keep: str) -> None:
        files = self.own_files(directory)
        total = sum(own.size for own in files)
        count = len(files)
        for old in files:
            if count <= self.max_files and total <= self.max_total_size:
                break
            if old.name == keep:
                continue
            try:
                os.unlink(old.name, dir_fd=directory)
            except OSError as exc:
                self.removal_errors.append(f"cannot remove old file {self.directory / old.name}: {exc.strerror}")
                continue
            count -= 1
            total -= old.size
