"""File names ``antiprof-<host>-<UTC start>.<format>`` and finding this sink's own files again."""

from __future__ import annotations

import os
import re
import stat
import time

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STAMP = "%Y%m%dT%H%M%SZ"


def safe_host(hostname: str) -> str:
    return _UNSAFE.sub("_", hostname) or "unknown"


def window_file_name(hostname: str, start_ns: int, suffix: str, sequence: int = 0) -> str:
    """``sequence`` > 0 tells apart windows started within the same second."""
    stamp = time.strftime(_STAMP, time.gmtime(start_ns // 1_000_000_000))
    extra = f"-{sequence}" if sequence else ""
    return f"antiprof-{safe_host(hostname)}-{stamp}{extra}{suffix}"


def own_files(directory_fd: int, hostname: str, suffix: str) -> list[str]:
    """This host's per-window files of one format, oldest first; symlinks and anything else are left alone."""
    pattern = re.compile(rf"antiprof-{re.escape(safe_host(hostname))}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?{re.escape(suffix)}")
    found = []
    for name in os.listdir(directory_fd):
        match = pattern.fullmatch(name)
        if not match:
            continue
        try:
            is_file = stat.S_ISREG(os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode)
        except OSError:
            continue
        if is_file:
            found.append((match.group(1), int(match.group(2) or 0), name))
    return [name for _, _, name in sorted(found)]
