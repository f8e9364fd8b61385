"""Durations ("500ms", "10s", "1h30m") and byte sizes ("64KiB", "100MiB") as config values.

``format_*`` gives text that ``parse_*`` reads back to the same value, so ``antiprof config show``
prints a config that ``config check`` accepts.
"""

from __future__ import annotations

import math
import re

MAX_DURATION_SECONDS = 366 * 86400.0  # a year: longer is a typo, and would overflow timers and clocks
MAX_SIZE_BYTES = 1 << 60  # 1 EiB: more than any disk; keeps sizes within a C int64

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}
_FORMAT_UNITS = (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))


class Duration(float):
    """Seconds, written in config as a string with units."""

    def __str__(self) -> str:
        return format_duration(self)


class ByteSize(int):
    """Bytes, written in config as an integer or a string with units."""

    def __str__(self) -> str:
        return format_size(self)


def _quoted(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def parse_duration(text: str) -> Duration:
    """'1h30m' -> 5400.0. Raises ValueError with a message fit for the user."""
    cleaned = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(
            f"invalid duration {_quoted(text)}: use a number and a unit (ns, us, ms, s, m, h, d), e.g. '10s' or '1h30m'"
        )
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"invalid duration {_quoted(text)}: longer than the maximum, 366d")
    return Duration(seconds)


def _decimal(number: float) -> str:
    """A plain decimal (never an exponent, which the parser rejects), to nanosecond-ish precision."""
    text = f"{number:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def format_duration(seconds: float) -> str:
    seconds = float(seconds)  # a Duration's own __str__ must not be called again from here
    if seconds <= 0:
        return "0s"
    for unit, scale in _FORMAT_UNITS:  # a whole number of some unit: "90s" is "1m30s" read back
        count = seconds / scale
        if count >= 1 and abs(count - round(count)) < 1e-9 * count:
            return f"{round(count)}{unit}"
    for unit, scale in _FORMAT_UNITS:
        if seconds >= scale:
            return f"{_decimal(seconds / scale)}{unit}"
    return f"{_decimal(seconds / 1e-9)}ns"


def parse_size(text: str) -> ByteSize:
    """'100MiB' -> 104857600. Raises ValueError with a message fit for the user."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid size {_quoted(text)}: use a number and a unit (B, KiB, MiB, GiB, kB, MB, GB), e.g. '100MiB'"
        )
    number, unit = match.groups()
    size = float(number) * _SIZE_UNITS[unit]
    if not math.isfinite(size) or size > MAX_SIZE_BYTES:
        raise ValueError(f"invalid size {_quoted(text)}: larger than the maximum, 1048576TiB")
    return ByteSize(int(size))


def format_size(size: int) -> str:
    size = int(size)  # a ByteSize's own __str__ must not be called again from here
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _SIZE_UNITS[unit]
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"
