"""Unwind tables on disk by build ID, so a restarted agent loads them instead of parsing.

One file per build ID: a versioned header, a BLAKE2b checksum of the rest, a small JSON
block (build ID, counts) and the two row buffers. The directory is created 0700 and opened
without following symlinks; files are written to a temporary name with O_NOFOLLOW|O_EXCL and
renamed into place, so a reader never sees half a file. A file that fails any check is
logged, removed and rebuilt by the caller: the cache can only ever cost a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import struct
from array import array
from pathlib import Path

from antiprof_core.sources.unwind.rows import ROW_SIZE
from antiprof_core.sources.unwind.table import UnwindTable

DEFAULT_CACHE_DIR = Path("/var/cache/antiprof/unwind")
FORMAT_VERSION = 1  # bump when rows or their meaning change: old files are then rebuilt
MAGIC = b"APUNWIND"
MAX_CACHE_FILE = 512 << 20

_HEADER = struct.Struct("<8sIII16s")  # magic, version, rows, meta length, checksum of the rest
_BUILD_ID = re.compile(r"[0-9a-f]{8,128}")
log = logging.getLogger(__name__)


class CacheUnavailable(Exception):
    """The cache directory cannot be used safely; the message says why (one line)."""


def encode_table(table: UnwindTable) -> bytes:
    meta = json.dumps({"build_id": table.build_id, "counts": dict(table.counts)}, sort_keys=True).encode()
    body = meta + table.pcs.tobytes() + table.rows
    checksum = hashlib.blake2b(body, digest_size=16).digest()
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(table.pcs), len(meta), checksum) + body


def decode_table(data: bytes) -> UnwindTable:
    """The table in ``data``; raises ValueError saying what is wrong with it."""
    if len(data) < _HEADER.size:
        raise ValueError("shorter than its header")
    magic, version, rows, meta_size, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not an antiprof unwind cache file")
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}, this agent writes {FORMAT_VERSION}")
    body = memoryview(data)[_HEADER.size :]
    if len(body) != meta_size + rows * (8 + ROW_SIZE):
        raise ValueError(f"{len(body)} bytes of body, the header promises {meta_size + rows * (8 + ROW_SIZE)}")
    if hashlib.blake2b(body, digest_size=16).digest() != checksum:
        raise ValueError("checksum mismatch")
    try:
        meta = json.loads(bytes(body[:meta_size]))
        build_id, counts = meta["build_id"], {str(k): int(v) for k, v in meta["counts"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"bad metadata ({error})") from None
    pcs = array("Q")
    pcs.frombytes(body[meta_size : meta_size + rows * 8])
    return UnwindTable(build_id, pcs, bytes(body[meta_size + rows * 8 :]), counts)


class TableCache:
    """Load and store tables by build ID under ``directory`` (created 0700 on first use)."""

    def __init__(self, directory: Path = DEFAULT_CACHE_DIR) -> None:
        self.directory = directory
        self._dir_fd: int | None = None

    def open_directory(self) -> int:
        """The directory's fd (created 0700 if missing); raises CacheUnavailable when it is not ours."""
        if self._dir_fd is not None:
            return self._dir_fd
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise CacheUnavailable(f"unwind cache {self.directory}: {error.strerror or error}") from None
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            os.close(fd)
            raise CacheUnavailable(f"unwind cache {self.directory}: owned by uid {info.st_uid}, not this agent")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        self._dir_fd = fd
        return fd

    @staticmethod
    def _name(build_id: str) -> str:
        if not _BUILD_ID.fullmatch(build_id):
            raise ValueError(f"not a build ID: {build_id!r}")
        return f"{build_id}.unwind"

    def load(self, build_id: str) -> UnwindTable | None:
        """The cached table, or None when there is none or it is unusable (then it is removed)."""
        directory = self.open_directory()
        name = self._name(build_id)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("unwind cache %s/%s unreadable (%s); rebuilding", self.directory, name, error.strerror)
            self._discard(name)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CACHE_FILE:
                raise ValueError("not a regular file of a sane size")
            data = _read_all(fd, info.st_size)
            table = decode_table(data)
            if table.build_id != build_id:
                raise ValueError(f"holds build ID {table.build_id}")
        except (OSError, ValueError) as error:
            log.warning("unwind cache %s/%s is corrupt (%s); rebuilding", self.directory, name, error)
            self._discard(name)
            return None
        finally:
            os.close(fd)
        return table

    def store(self, table: UnwindTable) -> None:
        """Write ``table`` atomically; tables without a build ID are not cached."""
        if not table.build_id:
            return
        directory = self.open_directory()
        name = self._name(table.build_id)
        temporary = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600, dir_fd=directory)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(encode_table(table))
            os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            self._discard(temporary)
            raise

    def _discard(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self.open_directory())

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
