"""File names ``antiprof-<host>-<UTC start>.perf.data`` and recognising this sink's own files."""

from __future__ import annotations

import re
import time
from pathlib import Path

SUFFIX = ".perf.data"
IMAGES_SUFFIX = ".python"  # X.perf.data.python/: the symbol images naming X's Python frames
PIPE_IMAGES_SUFFIX = ".pipe.python"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STAMP = "%Y%m%dT%H%M%SZ"


def safe_host(hostname: str) -> str:
    return _UNSAFE.sub("_", hostname) or "unknown"


def file_name(hostname: str, start_ns: int, sequence: int = 0) -> str:
    """``sequence`` > 0 tells apart files started within the same second."""
    stamp = time.strftime(_STAMP, time.gmtime(start_ns // 1_000_000_000))
    extra = f"-{sequence}" if sequence else ""
    return f"antiprof-{safe_host(hostname)}-{stamp}{extra}{SUFFIX}"


def own_files(directory: Path, hostname: str) -> list[Path]:
    """This host's antiprof files in ``directory``, oldest first; anything else is left alone."""
    pattern = re.compile(rf"antiprof-{re.escape(safe_host(hostname))}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?{re.escape(SUFFIX)}")
    found = []
    for entry in directory.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file() and not entry.is_symlink():
            found.append((match.group(1), int(match.group(2) or 0), entry))
    return [entry for _, _, entry in sorted(found)]


def own_temporaries(directory: Path, hostname: str) -> list[Path]:
    """This host's hidden temporary files (``.<file name>.<hex>.tmp``) in ``directory``."""
    stem = rf"antiprof-{re.escape(safe_host(hostname))}-\d{{8}}T\d{{6}}Z(?:-\d+)?{re.escape(SUFFIX)}"
    pattern = re.compile(rf"\.{stem}\.[0-9a-f]+\.tmp")
    return sorted(entry for entry in directory.iterdir() if pattern.fullmatch(entry.name))


def own_image_dirs(directory: Path, hostname: str) -> list[Path]:
    """This host's ``<file name>.python`` folders in ``directory`` (real folders, not links)."""
    stem = rf"antiprof-{re.escape(safe_host(hostname))}-\d{{8}}T\d{{6}}Z(?:-\d+)?{re.escape(SUFFIX)}"
    pattern = re.compile(rf"{stem}{re.escape(IMAGES_SUFFIX)}")
    return sorted(e for e in directory.iterdir() if pattern.fullmatch(e.name) and e.is_dir() and not e.is_symlink())


def pipe_images_name(hostname: str, start_ns: int, sequence: int = 0) -> str:
    """A pipe stream's symbol images folder: ``antiprof-<host>-<UTC start>[-N].pipe.python``."""
    return file_name(hostname, start_ns, sequence).removesuffix(SUFFIX) + PIPE_IMAGES_SUFFIX


def own_pipe_image_dirs(directory: Path, hostname: str) -> list[Path]:
    """This host's pipe-stream image folders in ``directory``, oldest first."""
    pattern = re.compile(
        rf"antiprof-{re.escape(safe_host(hostname))}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?{re.escape(PIPE_IMAGES_SUFFIX)}"
    )
    found = []
    for entry in directory.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found.append((match.group(1), int(match.group(2) or 0), entry))
    return [entry for _, _, entry in sorted(found)]
