"""antiprof-json: each ProfileWindow as one line of JSON, to a file or stdout."""

from __future__ import annotations

import os
import sys

import orjson
from attrs import frozen

from antiprof_core import Consumer, ConsumerContext, ConsumerType, ProfileWindow, hookimpl
from antiprof_core.codec import window_to_dict
from antiprof_core.consumer import Register
from antiprof_core.outputs import OutputPathError, ensure_private_dir, open_output_fd

STDOUT = "-"


@frozen
class JsonConfig:
    path: str = STDOUT  # a file (appended to, created 0600, missing folders 0700; never a symlink) or "-" for stdout


class JsonLinesConsumer(Consumer):
    """Appends one line per window and writes it through at once (no user-space buffer)."""

    def __init__(self, config: JsonConfig, context: ConsumerContext) -> None:
        self.path = config.path
        self._fd: int | None = None
        self.windows_written = 0

    def start(self) -> None:
        self._open()

    def _open(self) -> int:
        if self._fd is None:
            if self.path == STDOUT:
                self._fd = sys.stdout.fileno()
            else:
                ensure_private_dir(os.path.dirname(self.path) or ".")
                self._fd = open_output_fd(self.path, exclusive=False, append=True)
        return self._fd

    def consume(self, window: ProfileWindow) -> None:
        line = orjson.dumps(window_to_dict(window), option=orjson.OPT_APPEND_NEWLINE)
        try:
            self._write(line)
        except OutputPathError:
            raise
        except OSError as exc:
            raise OSError(exc.errno, f"{self.path}: cannot write window: {exc.strerror or exc}") from None
        self.windows_written += 1

    def _write(self, line: bytes) -> None:
        fd = self._open()
        offset = None if self.path == STDOUT else os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            if offset is not None:  # full disk: cut the partial line so the file stays valid JSON lines
                self._close_file(truncate_to=offset)
            raise

    def _close_file(self, truncate_to: int | None = None) -> None:
        fd, self._fd = self._fd, None
        if fd is None or self.path == STDOUT:
            return
        try:
            if truncate_to is not None:
                os.ftruncate(fd, truncate_to)
        except OSError:
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        self._close_file()


def _make(config: JsonConfig, context: ConsumerContext) -> Consumer:
    return JsonLinesConsumer(config, context)


@hookimpl
def antiprof_register_consumers(register: Register) -> None:
    register(ConsumerType("json", JsonConfig, _make, "JSON lines, one ProfileWindow per line"))
