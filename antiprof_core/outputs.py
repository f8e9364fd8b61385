"""Creating output files and folders as root without being steered by other users.

The agent runs as root and writes where its config says, often under folders other users can
write to. So every sink creates its files through here: never through a symbolic link (a planted
link would make root write into any file), never into a hard-linked file, new files only with
``O_EXCL`` when the name must be new, folders 0700 (the parents it makes too), and whole-file
rewrites through a temporary name and ``rename`` so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
_BASE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputPathError(OSError):
    """An output path the agent refuses to write through; ``str()`` is one line naming it."""

    def __init__(self, code: int, path: Path | str, reason: str) -> None:
        super().__init__(code, reason, str(path))
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.filename}: {self.reason}"


def ensure_private_dir(path: Path | str) -> None:
    """Make ``path`` a folder, creating it and any missing parents with mode 0700.

    Existing folders are left as they are. A symbolic link on the way is followed only when the
    agent's own user (or root) owns it: an administrator's ``/var/lib/antiprof -> /data/...``
    works, a link another user planted in ``/tmp`` is refused.
    """
    target = Path(os.path.abspath(path))
    missing: list[Path] = []
    existing = target
    while not os.path.lexists(existing):
        missing.append(existing)
        existing = existing.parent
    _check_existing_folders(existing)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIRECTORY_MODE)
        except FileExistsError:  # made meanwhile by someone else: check it like any existing one
            _check_existing_folders(folder)
            continue
        os.chmod(folder, DIRECTORY_MODE, follow_symlinks=False)  # whatever the umask said


def _check_existing_folders(folder: Path) -> None:
    """``folder`` and its parents: trusted links only, and ``folder`` must be a directory."""
    for part in (folder, *folder.parents):
        info = os.lstat(part)
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (0, os.geteuid()):
            raise OutputPathError(
                errno.ELOOP, part, f"is a symbolic link owned by uid {info.st_uid}; refusing to write through it"
            )
    if not os.path.isdir(folder):
        raise OutputPathError(errno.ENOTDIR, folder, "is not a directory")


def open_output_fd(path: Path | str, *, exclusive: bool, append: bool = False, mode: int = FILE_MODE) -> int:
    """Open ``path`` for writing without following a symbolic link at it; returns the descriptor.

    ``exclusive``: the file must be new (``FileExistsError`` otherwise; ``OutputPathError`` for a
    symbolic link there). Else an existing file is
    reused only when it is a regular file with a single link; it is not truncated.
    """
    flags = _BASE_FLAGS | (os.O_EXCL if exclusive else 0) | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, mode)  # O_NONBLOCK: a FIFO planted here must not hang us
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and os.path.islink(path)):
            raise OutputPathError(errno.ELOOP, path, "is a symbolic link; refusing to write through it") from None
        if exc.errno == errno.ENXIO:
            raise OutputPathError(errno.ENXIO, path, "is a FIFO or socket, not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputPathError(errno.EINVAL, path, "is not a regular file")
        if info.st_nlink > 1:
            raise OutputPathError(
                errno.EMLINK, path, f"has {info.st_nlink} hard links; refusing to write into a shared file"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_output_file(path: Path | str, *, exclusive: bool, append: bool = False) -> BinaryIO:
    """``open_output_fd`` as an unbuffered binary file object."""
    return open(open_output_fd(path, exclusive=exclusive, append=append), "wb", buffering=0)


def refuse_symlink(path: Path | str) -> None:
    """Raise ``OutputPathError`` when ``path`` itself is a symbolic link."""
    if os.path.islink(path):
        raise OutputPathError(errno.ELOOP, path, "is a symbolic link; refusing to write through it")


def temporary_sibling(path: Path) -> Path:
    """A hidden, unguessable name next to ``path`` for writing before a rename."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``write`` until done, so a full disk surfaces as ENOSPC instead of a short file."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_replace(path: Path | str, data: bytes) -> None:
    """Make ``path`` hold exactly ``data``: written under a temporary name, then renamed over it.

    Readers see the old file or the new one, never a part. A symbolic link at ``path`` is refused
    (``rename`` would not follow it, but an operator who put one there expects it to be written
    through, which root must not do). On any error the temporary file is removed.
    """
    final = Path(path)
    refuse_symlink(final)
    temporary = temporary_sibling(final)
    fd = open_output_fd(temporary, exclusive=True)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def publish_new(temporary: Path, final: Path) -> None:
    """Give the finished file ``temporary`` the name ``final``, which must not exist yet.

    ``link`` then ``unlink`` rather than ``rename``, because ``rename`` would replace a file (or a
    symbolic link) that appeared at ``final`` meanwhile; raises ``FileExistsError`` instead.
    """
    os.link(temporary, final, follow_symlinks=False)
    os.unlink(temporary)
