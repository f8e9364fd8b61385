"""The ``replay`` source: the windows an ``antiprof-json`` sink wrote, fed again to any sinks.

Each ``collect`` returns the file's next line decoded by the same codec the JSON sink encodes
with, so a window keeps its own times, host, processes and counters: replaying a JSON file
through the perfdata or OTLP sink gives what those sinks would have written at the time.
When the file ends, ``collect`` raises ``SourceExhausted`` and the agent stops.
"""

from __future__ import annotations

import json
import os
from typing import BinaryIO

from antiprof_core.codec import window_from_dict
from antiprof_core.model import ProfileWindow
from antiprof_core.sources import SourceExhausted, SourceUnavailable

MAX_LINE_BYTES = 1 << 30  # one window; the JSON sink's largest are tens of MiB


class ReplayError(Exception):
    """A line of the file is not an antiprof-json window; the message names the file and line."""


class ReplaySource:
    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._line = 0

    def start(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceUnavailable(f"sampler.replay.path: cannot open {self.path}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "rb")

    def collect(self) -> ProfileWindow:
        if self._file is None:
            raise SourceExhausted(self.path)
        while True:
            line = self._file.readline(MAX_LINE_BYTES + 1)
            self._line += 1
            if not line:
                raise SourceExhausted(f"{self.path}: every window replayed ({self._line - 1} lines)")
            if len(line) > MAX_LINE_BYTES:
                raise ReplayError(f"{self.path}:{self._line}: a line longer than {MAX_LINE_BYTES} bytes")
            if line.strip():
                break
        try:
            return window_from_dict(json.loads(line))
        except Exception as exc:  # json, KeyError, cattrs' groups: the line is not a window
            raise ReplayError(f"{self.path}:{self._line}: not an antiprof-json window: {exc}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
