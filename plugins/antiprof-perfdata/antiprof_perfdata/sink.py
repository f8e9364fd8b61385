"""The ``perfdata`` consumer: rotated, crash-safe perf.data files, or one pipe-format stream.

A write that fails (full disk, permissions, a vanished directory) costs that one window: the
error names the path, the window is counted as dropped, and the next window tries again, with a
new file (and a recreated directory) when the old one is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

from antiprof_core.consumer import Consumer, ConsumerContext
from antiprof_core.model import ProfileWindow
from antiprof_perfdata import naming
from antiprof_perfdata.config import STDOUT, OutputMode, PerfDataConfig
from antiprof_perfdata.writer import PerfDataFile, PerfDataPipe

DIRECTORY_MODE = 0o700
_MAX_SAME_SECOND = 1000


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
                self.context.logger.error("perfdata: cannot create %s: %s", self.directory, exc.strerror or exc)

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
                f"cannot write {where}: {exc.strerror or exc}; window dropped, the next one will try again"
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
            current = self._open_file(window)
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
        if not self.directory.is_dir():
            self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)

    def _open_file(self, window: ProfileWindow) -> PerfDataFile:
        self._ensure_directory()
        hostname = self.context.host.hostname
        for sequence in range(_MAX_SAME_SECOND):
            path = self.directory / naming.file_name(hostname, window.start_ns, sequence)
            try:
                opened = PerfDataFile(
                    path,
                    window.host,
                    window.frequency_hz,
                    self.command_line,
                    expand_counts=self.config.expand_counts,
                )
            except FileExistsError:
                continue
            break
        else:
            raise OSError(errno.EEXIST, "too many files started in one second", str(self.directory))
        self.current = opened
        self._file_start_ns = window.start_ns
        self.files_created.append(path)
        self._files_metric.inc()
        self._apply_retention()
        return opened

    def _apply_retention(self) -> None:
        """Keep the newest ``max_files`` of this sink's files (the current one included)."""
        files = naming.own_files(self.directory, self.context.host.hostname)
        for old in files[: max(len(files) - self.config.max_files, 0)]:
            if self.current is not None and old == self.current.path:
                continue
            try:
                old.unlink()
            except OSError as exc:
                self.context.logger.warning("perfdata: cannot remove old file %s: %s", old, exc.strerror or exc)

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
                expand_counts=self.config.expand_counts,
            )
        try:
            return self.pipe.write(window)
        except OSError as exc:
            self._close_pipe()  # a reader that comes back needs a fresh header
            if exc.filename is None:
                exc.filename = self.config.path
            raise

    def _open_pipe(self) -> BinaryIO:
        """stdout, or ``path``: a FIFO (no reader yet: ENXIO, dropped and retried) or a new regular file."""
        if self.config.path == STDOUT:
            return open(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.config.path, flags, 0o600)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
        return open(fd, "wb", buffering=0)

    def _close_pipe(self) -> None:
        stream, self._pipe_stream, self.pipe = self._pipe_stream, None, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
