"""The ``pprof`` consumer: a gzip'd profile file per window, and windows handed to the live endpoint.

A write that fails (full disk, permissions, a symlink where the directory should be) costs that
one window's file: the error names the path and the next window tries again. The endpoint is fed
before the file is written, so a full disk never starves a ``go tool pprof`` waiting on it.
"""

from __future__ import annotations

from pathlib import Path

from antiprof_core.consumer import Consumer, ConsumerContext
from antiprof_core.model import ProfileWindow
from antiprof_pprof.config import PprofConfig
from antiprof_pprof.encoder import encode_profile
from antiprof_pprof.endpoint import LiveWindows, ProfileEndpoint
from antiprof_pprof.files import ProfileFiles


class PprofWriteError(Exception):
    """One window's file could not be written; the message names the path."""


class PprofSink(Consumer):
    name = "pprof"

    def __init__(self, config: PprofConfig, context: ConsumerContext) -> None:
        self.config = config
        self.context = context
        self.files = (
            ProfileFiles(Path(config.output_dir), context.host.hostname, config.max_files, config.max_total_size)
            if config.output_dir
            else None
        )
        self.live = LiveWindows()
        self.endpoint = ProfileEndpoint(config.http_address, self.live, context.logger) if config.http_address else None
        self.files_written: list[Path] = []
        self.windows_failed = 0
        self._written_metric = context.counter(
            "antiprof_pprof_files_written", "pprof files written, one per window"
        ).labels()
        self._failed_metric = context.counter(
            "antiprof_pprof_files_failed", "Windows whose pprof file could not be written"
        ).labels()
        self._bytes_metric = context.counter("antiprof_pprof_bytes_written", "Bytes of gzip'd pprof written").labels()

    def start(self) -> None:
        if self.endpoint is not None:
            self.endpoint.start()
            self.context.logger.info("pprof: go tool pprof %s?seconds=30", self.endpoint.url)
        if self.files is not None:
            try:
                self.files.ensure_directory()
            except OSError as exc:  # not fatal: every window tries again
                self.context.logger.error("pprof: cannot use %s: %s", exc.filename, exc.strerror or exc)

    def consume(self, window: ProfileWindow) -> None:
        self.live.offer(window)
        if self.files is None or not window.samples:
            return
        data = encode_profile([window])
        try:
            path = self.files.write(window.start_ns, data)
        except OSError as exc:
            self.windows_failed += 1
            self._failed_metric.inc()
            raise PprofWriteError(
                f"cannot write {exc.filename or self.files.directory}: {exc.strerror or exc}; "
                "this window's file is lost, the next one will try again"
            ) from None
        finally:
            for problem in self.files.removal_errors:
                self.context.logger.warning("pprof: %s", problem)
            self.files.removal_errors.clear()
        self.files_written.append(path)
        self._written_metric.inc()
        self._bytes_metric.inc(len(data))

    def flush(self, timeout: float) -> None:
        """Nothing to do: every file is complete once consume returns."""

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
