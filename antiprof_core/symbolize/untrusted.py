"""Opening files that other users control, as root, without being led anywhere else.

The agent reads perf maps and ELF files on behalf of processes owned by anyone. A path is
resolved inside the process's own root (``/proc/PID/root``) with ``openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)``, so no symlink is followed and ``..`` cannot
climb out; on kernels without openat2 (before 5.6) the same is done by hand, one component at
a time with ``O_NOFOLLOW`` and ``..`` refused. The final open is ``O_NONBLOCK`` (a FIFO must not
hang the agent), and the file must be a regular file owned by root or by the process's user and
no larger than the caller's cap, all checked on the open descriptor (no race with a rename).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Collection

_SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall tables were unified)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_IN_ROOT = 0x10
_FINAL_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIRECTORY_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class UnsafeFileError(OSError):
    """A file the agent refuses to read: a symlink, not a regular file, a stranger's, too large."""


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_openat2_missing = False


def _openat2(root_fd: int, path: str, follow_symlinks: bool) -> int:
    resolve = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | (0 if follow_symlinks else _RESOLVE_NO_SYMLINKS)
    how = _OpenHow(_FINAL_FLAGS & ~(os.O_NOFOLLOW if follow_symlinks else 0), 0, resolve)
    fd = _syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(root_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def _walk(root_fd: int, path: str) -> int:
    """openat2's guarantees by hand: each directory opened O_NOFOLLOW beneath the last, no ``..``."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeFileError(errno.EXDEV, "path leaves the process's root", path)
    directory = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory)  # a symlink here: ENOTDIR
            os.close(directory)
            directory = inner
        return os.open(parts[-1], _FINAL_FLAGS, dir_fd=directory)
    finally:
        os.close(directory)


def open_beneath(root_fd: int, path: str, follow_symlinks: bool = False) -> int:
    """An fd for ``path`` resolved inside the directory ``root_fd``, following no symlink.

    ``follow_symlinks`` is for root's own trees (the debug root, where distributions link
    build IDs to files): symlinks are followed but stay inside ``root_fd`` (openat2 only; the
    fallback walk refuses them).
    """
    global _openat2_missing
    if not _openat2_missing:
        try:
            return _openat2(root_fd, path, follow_symlinks)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp filters that predate openat2
                raise
            _openat2_missing = True
    return _walk(root_fd, path)


def check_file(fd: int, path: str, owners: Collection[int], max_bytes: int) -> os.stat_result:
    """The file's stat if the agent may read it; raises UnsafeFileError (the fd stays open)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(errno.EINVAL, "not a regular file", path)
    if info.st_uid not in owners:
        raise UnsafeFileError(errno.EPERM, f"owned by uid {info.st_uid}, not root or the process's user", path)
    if info.st_size > max_bytes:
        raise UnsafeFileError(errno.EFBIG, f"{info.st_size} bytes, more than the {max_bytes} allowed", path)
    return info


def open_untrusted(
    root: str, path: str, owners: Collection[int], max_bytes: int, follow_symlinks: bool = False
) -> tuple[int, os.stat_result]:
    """Open ``path`` as seen from the directory ``root`` (``/proc/PID/root``, ``/``), checked.

    Returns (fd, stat); the caller closes the fd. Raises OSError (UnsafeFileError for a refusal).
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_beneath(root_fd, path, follow_symlinks)
    finally:
        os.close(root_fd)
    try:
        return fd, check_file(fd, path, owners, max_bytes)
    except BaseException:
        os.close(fd)
        raise


def read_at_most(fd: int, offset: int, count: int) -> bytes:
    """Up to ``count`` bytes at ``offset``, in bounded chunks (short at end of file)."""
    chunks: list[bytes] = []
    remaining = count
    while remaining > 0:
        chunk = os.pread(fd, min(remaining, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class BoundedReader:
    """A read-only file object over an fd that never reads past the file or beyond a byte budget.

    pyelftools reads whatever sizes the file's headers claim; through this, a header claiming
    2^63 bytes costs at most what the file holds, and a file that makes the parser read more
    than ``budget`` bytes in total stops with UnsafeFileError.
    """

    def __init__(self, fd: int, size: int, budget: int, path: str, owns_fd: bool = False) -> None:
        self._fd = fd
        self._owns_fd = owns_fd
        self._size = size
        self._budget = budget
        self._path = path
        self._position = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def close(self) -> None:
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def tell(self) -> int:
        return self._position

    def read(self, count: int = -1) -> bytes:
        available = max(self._size - self._position, 0)
        count = available if count is None or count < 0 else min(count, available)
        if count > self._budget:
            raise UnsafeFileError(errno.EFBIG, "the parser read more than its budget", self._path)
        data = read_at_most(self._fd, self._position, count)
        self._budget -= len(data)
        self._position += len(data)
        return data
