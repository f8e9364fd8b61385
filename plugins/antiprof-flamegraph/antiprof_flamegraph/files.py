"""Writing output files safely as root into a directory others may reach.

Every file is written under a temporary name opened with O_CREAT|O_EXCL|O_NOFOLLOW (a planted
symlink or file makes the open fail instead of being followed or overwritten), then published in
one step: ``link`` for a new per-window file (fails if the name exists, never clobbers) or
``rename`` for the rolling file (replaces it atomically; readers see the old or the new page).
All of it goes through a directory descriptor opened with O_NOFOLLOW.

Folders are made by antiprof_core.outputs; publishing goes through the directory descriptor.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from antiprof_core.outputs import ensure_private_dir

FILE_MODE = 0o600


def open_directory(path: Path) -> int:
    """The output directory (created 0700 with its parents if missing) as an O_NOFOLLOW descriptor."""
    ensure_private_dir(path)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _write_temporary(directory_fd: int, name: str, content: bytes) -> str:
    temporary = f".{name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, FILE_MODE, dir_fd=directory_fd)
    try:
        with open(fd, "wb", closefd=True) as stream:
            stream.write(content)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory_fd)
        raise
    return temporary


def write_new(directory_fd: int, name: str, content: bytes) -> None:
    """Publish ``name`` whole; FileExistsError if something (a file, a symlink) already has that name."""
    temporary = _write_temporary(directory_fd, name, content)
    try:
        os.link(temporary, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd, follow_symlinks=False)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory_fd)


def replace(directory_fd: int, name: str, content: bytes) -> None:
    """Rewrite ``name`` atomically; a symlink in its place is replaced, never followed."""
    temporary = _write_temporary(directory_fd, name, content)
    try:
        os.rename(temporary, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory_fd)
        raise
