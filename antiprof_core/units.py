"""Durations ("500ms", "10s", "1h30m") and byte sizes ("64KiB", "100MiB") as config values."""

from __future__ import annotations

import re

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


class Duration(float):
    """Seconds, written in config as a string with units."""

    def __str__(self) -> str:
        return format_duration(self)


class ByteSize(int):
    """Bytes, written in config as an integer or a string with units."""

    def __str__(self) -> str:
        return format_size(self)


def parse_duration(text: str) -> Duration:
    """'1h30m' -> 5400.0. Raises ValueError with a message fit for the user."""
    cleaned = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit (ns, us, ms, s, m, h, d), e.g. '10s' or '1h30m'"
        )
    return Duration(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


def format_duration(seconds: float) -> str:
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        count = seconds / scale
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds}s" if seconds else "0s"


def parse_size(text: str) -> ByteSize:
    """'100MiB' -> 104857600. Raises ValueError with a message fit for the user."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid size {text!r}: use a number and a unit (B, KiB, MiB, GiB, kB, MB, GB), e.g. '100MiB'"
        )
    number, unit = match.groups()
    return ByteSize(int(float(number) * _SIZE_UNITS[unit]))


def format_size(size: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _SIZE_UNITS[unit]
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"
