"""Logging to stderr, as text for people or JSON lines for log collectors."""

from __future__ import annotations

import json
import logging
import sys
import time

from antiprof_core.terminal import terminal_safe


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


def configure_logging(log_format: str = "text", level: str = "info") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("antiprof")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return root
