"""The one error type reading another process's Python state may raise.

Everything read through /proc/PID/mem is hostile: a pointer may be stale, freed, or made up.
Callers catch this one type and count ``cause``; nothing else escapes the readers.
"""

from __future__ import annotations


class PythonReadError(Exception):
    """A read of the target's Python state failed; ``cause`` is a short counter key."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail
