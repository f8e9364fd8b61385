"""The ``perfdata`` consumer: rotated, crash-safe perf.data files, or one pipe-format stream.

A write that fails (full disk, permissions, a vanished directory) costs that one window: the
error names the path, the window is counted as dropped, and the next window tries again, with a
new file (and a recreated directory) when the old one is gone. A new file is written under a
hidden temporary name and appears under its real name only with its first window in it; one
that fails is removed, so every ``*.perf.data`` of this sink is one ``perf`` reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO

from antiprof_core.consumer import Consumer, ConsumerContext
from antiprof_core.model import ProfileWindow
from antiprof_core.outputs import OutputPathError, ensure_private_dir, temporary_sibling
from antiprof_perfdata import naming
from antiprof_perfdata.config import STDOUT, OutputMode, PerfDataConfig
from antiprof_perfdata.writer import ImageWriteError, PerfDataFile, PerfDataPipe, images_dir_for, is_readable

_MAX_SAME_SECOND = 1000
STALE_TEMPORARY_SECONDS = 60.0  # a temporary file lives for one window's write; older ones are a killed agent's


class PerfDataWriteError(Exception):
    """One window could not be written; the message names the path."""


class PerfDataSink(Consumer):
    def __init__(self, config: PerfDataConfig, context: ConsumerContext) -> None:
        self.config = config
        self.context = context
        self.directory = Path(config.output_dir)
        self.command_line = tuple(sys.argv) or ("antiprof",)
        self.current: PerfDataFile | None = None
        self.pipe: PerfDataPipe | None = None
        self._pipe_stream: BinaryIO | None = None
        self._file_start_ns = 0
        self.files_created: list[Path] = []
        self.windows_written = 0
        self.windows_dropped = 0
        self._windows_metric = context.counter(
            "antiprof_perfdata_windows_written", "Windows written to perf.data"
        ).labels()
        self._dropped_metric = context.counter(
            "antiprof_perfdata_windows_failed", "Windows lost to a write error (disk full, permissions)"
        ).labels()
        self._bytes_metric = context.counter(
            "antiprof_perfdata_bytes_written", "Record bytes written to perf.data"
        ).labels()
        self._files_metric = context.counter("antiprof_perfdata_files_created", "perf.data files started").labels()

    def start(self) -> None:
        if self.config.mode is OutputMode.FILE:
            try:
                self._ensure_directory()
            except OSError as exc:  # not fatal: every window tries again
                self.context.logger.error("perfdata: cannot create %s: %s", self.directory, _reason(exc))
                return
            self._remove_stale_temporaries()

    def consume(self, window: ProfileWindow) -> None:
        path: Path | str = self.config.path if self.config.mode is OutputMode.PIPE else self.directory
        try:
            if self.config.mode is OutputMode.PIPE:
                written = self._write_pipe(window)
            else:
                path = self.current.path if self.current is not None else self.directory
                written = self._write_file(window)
        except OSError as exc:
            self.windows_dropped += 1
            self._dropped_metric.inc()
            where = exc.filename or path
            raise PerfDataWriteError(
                f"cannot write {where}: {_reason(exc)}; window dropped, the next one will try again"
            ) from None
        self.windows_written += 1
        self._windows_metric.inc()
        self._bytes_metric.inc(written)

    def flush(self, timeout: float) -> None:
        """Nothing to do: every window is published (files) or flushed (pipes) as it is written."""

    def close(self) -> None:
        self._close_file()
        self._close_pipe()

    # --- file mode ---------------------------------------------------------------------------

    def _write_file(self, window: ProfileWindow) -> int:
        current = self.current
        if current is None and not window.samples:
            return 0  # a file with no samples is one perf report refuses: wait for one with samples
        if current is not None and self._should_rotate(current, window):
            self._close_file()
            current = None
        encoded = None
        if current is not None:
            encoded = current.encode(window)
            if current.size_after(encoded) > self.config.max_file_size:
                self._close_file()
                current = encoded = None
        if current is None:
            return self._start_file(window)
        return current.write(encoded if encoded is not None else window)

    def _should_rotate(self, current: PerfDataFile, window: ProfileWindow) -> bool:
        if not self._still_there(current):
            self.context.logger.warning("perfdata: %s was removed; starting a new file", current.path)
            return True
        if window.start_ns - self._file_start_ns >= self.config.rotate_every * 1e9:
            return True
        return window.frequency_hz != current.frequency_hz

    @staticmethod
    def _still_there(current: PerfDataFile) -> bool:
        try:
            on_disk = os.stat(current.path, follow_symlinks=False)
        except OSError:
            return False
        mine = os.fstat(current.fileno())
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def _ensure_directory(self) -> None:
        ensure_private_dir(self.directory)

    def _start_file(self, window: ProfileWindow) -> int:
        """Write ``window`` into a new file, then give it its name; on failure leave nothing behind.

        The name is chosen first, because the records name the symbol images folder that goes
        with it (``X.perf.data.python``); a name another writer takes meanwhile (the file or the
        folder) means writing the window again under the next one.
        """
        self._ensure_directory()
        hostname = self.context.host.hostname
        for sequence in range(_MAX_SAME_SECOND):
            final = self.directory / naming.file_name(hostname, window.start_ns, sequence)
            if os.path.lexists(final) or os.path.lexists(images_dir_for(final)):
                continue
            written = self._try_start(window, final)
            if written is None:
                continue
            self._file_start_ns = window.start_ns
            self.files_created.append(final)
            self._files_metric.inc()
            self._apply_retention()
            return written
        raise OSError(errno.EEXIST, "too many files started in one second", str(self.directory))

    def _try_start(self, window: ProfileWindow, final: Path) -> int | None:
        """The window's bytes written, published as ``final``; None when that name was taken meanwhile."""
        temporary = temporary_sibling(final)
        images_dir = images_dir_for(final)
        try:
            opened = PerfDataFile(
                temporary,
                window.host,
                window.frequency_hz,
                self.command_line,
                compact=self.config.compact,
                images_dir=images_dir,
            )
        except OSError as exc:
            if exc.filename in (None, str(temporary)) and not isinstance(exc, OutputPathError):
                exc.filename = str(final)
            raise
        try:
            written = opened.write(window)
            opened.publish_as(final)
        except BaseException as exc:
            opened.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            opened.images.discard()
            if isinstance(exc, FileExistsError) and not isinstance(exc, OutputPathError):
                return None  # the folder (mkdir) or the name (link) went to another writer
            if isinstance(exc, OSError) and exc.filename in (None, str(temporary)):
                exc.filename = str(final)
            raise
        self.current = opened
        return written

    def _apply_retention(self) -> None:
        """Keep the newest ``max_files`` of this sink's files (the current one included).

        Files ``perf`` could not read (left by an older version) go first, so a readable file is
        never deleted while an unreadable one is kept.
        """
        files = naming.own_files(self.directory, self.context.host.hostname)
        excess = len(files) - self.config.max_files
        if excess <= 0:
            return
        current = self.current.path if self.current is not None else None
        candidates = [old for old in files if old != current]
        doomed = [old for old in candidates if not is_readable(old)]
        doomed += [old for old in candidates if old not in doomed]
        for old in doomed[:excess]:
            try:
                old.unlink()
            except OSError as exc:
                self.context.logger.warning("perfdata: cannot remove old file %s: %s", old, _reason(exc))
                continue
            self._remove_images(images_dir_for(old))
        self._remove_orphan_images()

    def _remove_images(self, images_dir: Path) -> None:
        """A removed file's symbol images go with it (never through a symbolic link)."""
        if not os.path.lexists(images_dir):
            return
        try:
            shutil.rmtree(images_dir)
        except OSError as exc:
            self.context.logger.warning("perfdata: cannot remove %s: %s", images_dir, _reason(exc))

    def _remove_orphan_images(self) -> None:
        """Image folders whose file is gone (deleted by hand, or a killed agent's), once a minute old.

        The age keeps a folder another writer is filling for a file it has not published yet.
        """
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        for folder in naming.own_image_dirs(self.directory, self.context.host.hostname):
            perf_data = folder.with_name(folder.name.removesuffix(naming.IMAGES_SUFFIX))
            with contextlib.suppress(OSError):
                if not os.path.lexists(perf_data) and os.lstat(folder).st_mtime < cutoff:
                    self._remove_images(folder)

    def _remove_stale_temporaries(self) -> None:
        """Temporary files a killed agent left (never a name ``perf`` users look at, but they take space)."""
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        for stale in naming.own_temporaries(self.directory, self.context.host.hostname):
            with contextlib.suppress(OSError):
                if os.lstat(stale).st_mtime < cutoff:
                    os.unlink(stale)
        self._remove_orphan_images()

    def _close_file(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None

    # --- pipe mode ---------------------------------------------------------------------------

    def _write_pipe(self, window: ProfileWindow) -> int:
        if self.pipe is None:
            self._pipe_stream = self._open_pipe()
            self.pipe = PerfDataPipe(
                self._pipe_stream,
                window.host,
                window.frequency_hz,
                self.command_line,
                compact=self.config.compact,
                images_dir=self._pipe_images_dir(window.start_ns),
            )
        try:
            return self.pipe.write(window)
        except ImageWriteError:
            raise  # nothing was sent: the stream goes on with the next window
        except OSError as exc:
            self._close_pipe()  # a reader that comes back needs a fresh header
            if exc.filename is None:
                exc.filename = self.config.path
            raise

    def _pipe_images_dir(self, start_ns: int) -> Path | None:
        """A new stream's symbol images folder in ``output_dir`` (made when first needed); old streams'
        folders beyond ``max_files`` are removed."""
        hostname = self.context.host.hostname
        existing = naming.own_pipe_image_dirs(self.directory, hostname) if self.directory.is_dir() else []
        for old in existing[: max(0, len(existing) + 1 - self.config.max_files)]:
            self._remove_images(old)
        for sequence in range(_MAX_SAME_SECOND):
            candidate = self.directory / naming.pipe_images_name(hostname, start_ns, sequence)
            if not os.path.lexists(candidate):
                return candidate
        return None

    def _open_pipe(self) -> BinaryIO:
        """stdout, or ``path``: a FIFO (no reader yet: ENXIO, dropped and retried) or a new regular file."""
        if self.config.path == STDOUT:
            return open(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        path = self.config.path
        flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputPathError(errno.ELOOP, path, "is a symbolic link; refusing to write through it") from None
            raise
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                if info.st_nlink > 1:
                    reason = f"has {info.st_nlink} hard links; refusing to truncate it"
                    raise OutputPathError(errno.EMLINK, path, reason)
                os.ftruncate(fd, 0)
            elif not stat.S_ISFIFO(info.st_mode):
                raise OutputPathError(errno.EINVAL, path, "is neither a FIFO nor a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return open(fd, "wb", buffering=0)

    def _close_pipe(self) -> None:
        stream, self._pipe_stream, self.pipe = self._pipe_stream, None, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _reason(exc: OSError) -> str:
    """The reason alone: the path is said once, by the caller."""
    return exc.reason if isinstance(exc, OutputPathError) else str(exc.strerror or exc)
