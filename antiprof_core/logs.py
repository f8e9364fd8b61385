"""Logging to stderr, as text for people or JSON lines for log collectors.

With JSON, every line on stderr must be JSON, including what C libraries (gRPC's core, BCC) and
Python itself write straight to file descriptor 2: those lines are caught on a pipe and re-logged
as JSON records. gRPC's core is silenced by default; ``ANTIPROF_GRPC_LOG`` turns it back on.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import TextIO

from antiprof_core.terminal import terminal_safe

GRPC_LOG_ENV = "ANTIPROF_GRPC_LOG"
"""``error``, ``info`` or ``debug``: let gRPC's C core log at that level (GRPC_TRACE is then kept)."""

_GRPC_LEVELS = ("error", "info", "debug")
# gRPC core's own line format: "E1127 04:35:20.123456  1234 file.cc:12] message".
_GRPC_LINE = re.compile(r"^([EWID])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ?(.*)$")
_GRPC_LEVEL_NAMES = {"E": logging.ERROR, "W": logging.WARNING, "I": logging.INFO, "D": logging.DEBUG}


def quiet_grpc(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set gRPC core's verbosity before grpc is first imported (it reads the environment once)."""
    level = environ.get(GRPC_LOG_ENV, "").strip().lower()
    if level in _GRPC_LEVELS:
        environ["GRPC_VERBOSITY"] = level.upper()
    else:
        environ["GRPC_VERBOSITY"] = "NONE"
        environ.pop("GRPC_TRACE", None)


class TextFormatter(logging.Formatter):
    """Messages with control characters escaped: they carry process names and paths to a terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = terminal_safe(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _StderrRelay:
    """Turns file descriptor 2 into a pipe whose lines are logged as records; our handler writes to
    a duplicate of the real stderr. Undone at exit, after the last line is relayed."""

    def __init__(self, root: logging.Logger) -> None:
        sys.stderr.flush()
        self.real_stderr_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._reader = os.fdopen(read_fd, "rb")
        self._grpc = root.getChild("grpc")
        self._other = root.getChild("stderr")
        self._thread = threading.Thread(target=self._relay, name="stderr-relay", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _relay(self) -> None:
        for raw in self._reader:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line.strip():
                continue
            match = _GRPC_LINE.match(line)
            if match:
                self._grpc.log(_GRPC_LEVEL_NAMES[match.group(1)], "%s", match.group(2))
            else:
                self._other.warning("%s", line)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(self.real_stderr_fd, 2)  # the pipe's last writer closes: the relay reads to EOF
        self._thread.join(timeout=2)


_relay: _StderrRelay | None = None


def configure_logging(log_format: str = "text", level: str = "info") -> logging.Logger:
    global _relay
    quiet_grpc()
    root = logging.getLogger("antiprof")
    stream: TextIO = sys.stderr
    if log_format == "json":
        if _relay is None:
            _relay = _StderrRelay(root)
        stream = os.fdopen(os.dup(_relay.real_stderr_fd), "w", buffering=1)
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("antiprof")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return root
