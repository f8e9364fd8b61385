"""Text from other processes (names, command lines, paths) made safe to print on a terminal.

A process chooses its own name and path, so an unprivileged user could otherwise put escape
sequences (clear the screen, set the window title, hide text) on an operator's terminal through
``antiprof record`` or the logs. Only what reaches a terminal is escaped: JSON, OTLP and
perf.data keep the exact bytes.
"""

from __future__ import annotations

_UNSAFE = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]  # C0 controls, DEL, C1 controls (CSI is 0x9b)
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # reorder what is shown
_ESCAPES = {code: f"\\x{code:02x}" for code in _UNSAFE} | {code: f"\\u{code:04x}" for code in _BIDI}


def terminal_safe(text: str) -> str:
    """``text`` with every control character written as a visible escape, e.g. ESC as ``\\x1b``."""
    return text.translate(_ESCAPES)
