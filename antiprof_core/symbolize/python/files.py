"""Opening files other users control: never through a symlink, never a FIFO or device, size capped."""

from __future__ import annotations

import os
import stat

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: str, max_size: int) -> tuple[int, os.stat_result]:
    """An fd on ``path`` and its stat; OSError when it is a symlink, not a regular file, or too big."""
    fd = os.open(path, OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path}: not a regular file")
        if info.st_size > max_size:
            raise OSError(f"{path}: {info.st_size} bytes, more than the {max_size} allowed")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_small_file(path: str, max_size: int) -> bytes:
    """The whole of a small file (or /proc file, whose st_size is 0), at most ``max_size`` bytes."""
    fd, _ = open_regular(path, max_size)
    try:
        chunks: list[bytes] = []
        remaining = max_size
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
