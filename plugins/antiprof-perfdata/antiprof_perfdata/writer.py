"""Writing perf.data: a crash-safe file (``PerfDataFile``) or a pipe-format stream (``PerfDataPipe``).

No BPF here: anything that holds a ``ProfileWindow`` can write one. A file is written under a
temporary name until its first window is in, and only then linked to its real name
(``publish_as``), so no reader ever finds a file without samples. From then on it is valid after
every window: appending first clears the header's feature bitmap (the features at the old data
end are about to be overwritten), then writes the records and the new feature block, and only
then publishes the new data size and bitmap in one 104-byte ``pwrite``. A SIGKILL or a full disk
at any moment leaves either the previous window's state or the new one, which ``perf`` reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from antiprof_core import distribution_version
from antiprof_core.model import Host, ProfileWindow
from antiprof_core.outputs import (
    OutputPathError,
    atomic_replace,
    ensure_private_dir,
    open_output_fd,
    publish_new,
    temporary_sibling,
)
from antiprof_perfdata import features, layout
from antiprof_perfdata.encoder import EncodedWindow, RecordEncoder
from antiprof_perfdata.pythonsyms import PendingImage, PythonSymbols

ATTRS_OFFSET = layout.FILE_HEADER.size
ATTR_ENTRY_SIZE = layout.ATTR_SIZE_VER0 + layout.FILE_SECTION.size
DATA_OFFSET = ATTRS_OFFSET + ATTR_ENTRY_SIZE
DEFAULT_VERSION = f"antiprof-perfdata {distribution_version('antiprof-perfdata')}"  # perf.data's FEAT_VERSION


class PerfDataFile:
    """A perf.data file being written, one window at a time, readable after each ``write``."""

    def __init__(
        self,
        path: Path,
        host: Host,
        frequency_hz: int,
        command_line: Sequence[str] = (),
        version: str = DEFAULT_VERSION,
        compact: bool = False,
        images_dir: Path | None = None,
    ) -> None:
        """Create ``path`` (0600, O_EXCL, O_NOFOLLOW: never an existing file or a symlink).

        ``path`` is meant to be a temporary name: see ``publish_as``. ``images_dir`` is where the
        symbol images naming Python frames go (``images_dir_for`` the final name); it must not
        exist before the first window that needs it, so two writers never share one. None: Python
        frames stay unnamed.
        """
        self.path = path
        self.frequency_hz = frequency_hz
        self.images = ImageWriter(images_dir)
        self.encoder = RecordEncoder(compact, PythonSymbols(images_dir, host.arch))
        self._host_features = features.host_features(host, command_line, version)
        self._event_desc = features.event_desc(frequency_hz)
        self._data_size = 0
        self._fd = open_output_fd(path, exclusive=True)
        try:
            attrs = features.attr_bytes(frequency_hz) + layout.FILE_SECTION.pack(0, 0)
            os.pwrite(self._fd, self._header(0, (0, 0, 0, 0)) + attrs, 0)
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        """Bytes on disk once the current state is published (records and features)."""
        return DATA_OFFSET + self._data_size + len(self._features_block()[0])

    def size_after(self, encoded: EncodedWindow) -> int:
        """Bytes on disk once ``encoded`` is written: its records and its new build IDs added."""
        new_ids = sum(len(features.build_id_entry(entry)) for entry in encoded.build_ids)
        return self.size + len(encoded.data) + new_ids

    @property
    def windows(self) -> int:
        return self.encoder.windows

    def encode(self, window: ProfileWindow) -> EncodedWindow:
        """The records ``window`` would add to this file (to check its size before writing)."""
        return self.encoder.encode(window)

    def write(self, window: ProfileWindow | EncodedWindow) -> int:
        """Append one window and publish it; returns the bytes of records added.

        On an OSError nothing is published: the file still reads as before and the same window
        (or the next) can be written again.
        """
        encoded = window if isinstance(window, EncodedWindow) else self.encoder.encode(window)
        written_images = self.images.write(encoded.images, first=self.encoder.windows == 0)
        if self._data_size:
            os.pwrite(self._fd, self._header(self._data_size, (0, 0, 0, 0)), 0)
        end = DATA_OFFSET + self._data_size
        try:
            _pwrite_all(self._fd, encoded.data, end)
            self.encoder.commit(encoded)
        except OSError:
            self._publish()  # put the old features back; they fit where they were
            self.images.remove(written_images)
            raise
        self._data_size += len(encoded.data)
        self._publish()
        return len(encoded.data)

    def publish_as(self, final: Path) -> None:
        """Give the file its real name (``FileExistsError`` if taken); call after a first ``write``."""
        publish_new(self.path, final)
        self.path = final

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        return self._fd

    def _publish(self) -> None:
        """Write the feature block at data end, then the header that points at it."""
        end = DATA_OFFSET + self._data_size
        block, bitmap = self._features_block()
        if self._data_size == 0:
            return
        _pwrite_all(self._fd, block, end)
        os.ftruncate(self._fd, end + len(block))
        os.pwrite(self._fd, self._header(self._data_size, bitmap), 0)

    def _features_block(self) -> tuple[bytes, tuple[int, int, int, int]]:
        payloads = dict(self._host_features)
        payloads[layout.FEAT_EVENT_DESC] = self._event_desc
        encoder = self.encoder
        if encoder.first_ns is not None and encoder.last_ns is not None:
            payloads[layout.FEAT_SAMPLE_TIME] = features.sample_time(encoder.first_ns, encoder.last_ns)
        payloads[layout.FEAT_BUILD_ID] = features.build_id_table(encoder.build_ids.values())
        return features.feature_section(payloads, DATA_OFFSET + self._data_size)

    def _header(self, data_size: int, bitmap: tuple[int, int, int, int]) -> bytes:
        return layout.FILE_HEADER.pack(
            layout.MAGIC,
            layout.FILE_HEADER.size,
            ATTR_ENTRY_SIZE,
            ATTRS_OFFSET,
            ATTR_ENTRY_SIZE,
            DATA_OFFSET,
            data_size,
            0,
            0,
            *bitmap,
        )

    def __enter__(self) -> PerfDataFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def images_dir_for(path: Path) -> Path:
    """Where a perf.data file's symbol images live: ``X.perf.data`` -> ``X.perf.data.python/``."""
    return path.with_name(path.name + ".python")


class ImageWriteError(OSError):
    """A symbol image (or its folder) could not be written; ``filename`` names it, never a temporary name."""


class ImageWriter:
    """Writes symbol images into one folder (0700, files 0600, never through a symbolic link)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.created_directory = False

    def write(self, images: Sequence[PendingImage], first: bool) -> list[Path]:
        """Write ``images``; on an error remove those already written and raise ``ImageWriteError``.

        ``first``: the stream's first window, whose writer must create the folder itself
        (``FileExistsError`` if another writer has it), so a name two writers race for is never
        shared.
        """
        if not images or self.directory is None:
            return []
        directory = self.directory
        try:
            if first and not self.created_directory:
                ensure_private_dir(directory.parent)
                os.mkdir(directory, 0o700)
                os.chmod(directory, 0o700, follow_symlinks=False)
                self.created_directory = True
            else:
                ensure_private_dir(directory)
        except FileExistsError:
            raise
        except OSError as exc:
            raise _image_error(exc, directory) from None
        written: list[Path] = []
        for image in images:
            try:
                atomic_replace(image.path, image.data)  # a name no published record uses yet
            except OSError as exc:
                self.remove(written)
                raise _image_error(exc, image.path) from None
            written.append(image.path)
        return written

    def remove(self, paths: Sequence[Path]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def discard(self) -> None:
        """Remove the folder this writer created, with everything in it (a file that was never published)."""
        if self.created_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.created_directory = False


def _image_error(exc: OSError, path: Path) -> ImageWriteError:
    reason = exc.reason if isinstance(exc, OutputPathError) else str(exc.strerror or exc)
    where = exc.filename if isinstance(exc, OutputPathError) and exc.filename else str(path)
    return ImageWriteError(exc.errno or errno.EIO, reason, where)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until done: a short write is retried, so a full disk surfaces as ENOSPC."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class PerfDataPipe:
    """A pipe-format stream (``perf script -i -`` reads it): header, attr and features up front."""

    def __init__(
        self,
        stream: BinaryIO,
        host: Host,
        frequency_hz: int,
        command_line: Sequence[str] = (),
        version: str = DEFAULT_VERSION,
        compact: bool = False,
        images_dir: Path | None = None,
    ) -> None:
        """``images_dir``: where symbol images for Python frames go, each written before the
        records that map it, so a live reader finds it (see ``PerfDataFile``)."""
        self.stream = stream
        self.images = ImageWriter(images_dir)
        self.encoder = RecordEncoder(compact, PythonSymbols(images_dir, host.arch))
        attr = features.attr_bytes(frequency_hz)
        parts = [
            layout.PIPE_HEADER.pack(layout.MAGIC, layout.PIPE_HEADER.size),
            layout.RECORD_HEADER.pack(layout.RECORD_HEADER_ATTR, 0, layout.RECORD_HEADER.size + len(attr)) + attr,
        ]
        for feature, payload in sorted(features.host_features(host, command_line, version).items()):
            size = layout.FEATURE_RECORD.size + len(payload)
            parts.append(layout.FEATURE_RECORD.pack(layout.RECORD_HEADER_FEATURE, 0, size, feature) + payload)
        self._pending = b"".join(parts)  # sent with the first window, so a failed start loses nothing

    @property
    def windows(self) -> int:
        return self.encoder.windows

    def write(self, window: ProfileWindow) -> int:
        """Send one window (build IDs first, then its records); returns the bytes sent."""
        encoded = self.encoder.encode(window)
        self.images.write(encoded.images, first=self.encoder.windows == 0)
        ids = b"".join(features.build_id_entry(entry, layout.RECORD_HEADER_BUILD_ID) for entry in encoded.build_ids)
        data = self._pending + ids + encoded.data
        self.stream.write(data)
        self.stream.flush()
        self._pending = b""
        self.encoder.commit(encoded)
        return len(data)


def write_perf_data(
    path: Path,
    windows: Sequence[ProfileWindow],
    command_line: Sequence[str] = (),
    compact: bool = False,
) -> Path:
    """Write ``windows`` (at least one; all from one host and frequency) to a new file at ``path``.

    The file appears at ``path`` only once complete; an existing file there is never replaced.
    Python frames are named by symbol images in ``images_dir_for(path)``, created when needed.
    """
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "File exists", str(path))
    first = windows[0]
    temporary = temporary_sibling(path)
    images_dir = images_dir_for(path)
    with PerfDataFile(
        temporary, first.host, first.frequency_hz, command_line, compact=compact, images_dir=images_dir
    ) as out:
        try:
            for window in windows:
                out.write(window)
            out.publish_as(path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            out.images.discard()
            raise
    return path


def is_readable(path: Path) -> bool:
    """Whether ``path`` is a perf.data file with samples that ``perf`` opens (header and sizes only).

    Not a full check: enough to tell a published file from an empty or header-only one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        head = os.pread(fd, layout.FILE_HEADER.size, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode) or len(head) < layout.FILE_HEADER.size:
        return False
    fields = layout.FILE_HEADER.unpack(head)
    magic, data_offset, data_size = fields[0], fields[5], fields[6]
    return bool(magic == layout.MAGIC and data_size > 0 and info.st_size >= data_offset + data_size)
