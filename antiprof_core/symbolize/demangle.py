"""Readable C++ and Rust names, through libstdc++'s own demangler (``cxxfilt``).

Rust's legacy mangling is the C++ scheme plus a ``::h<16 hex>`` hash, which is dropped as
``rustfilt`` does. Rust's v0 scheme (``_R``) is not understood by libstdc++ and stays raw.
Names come from files other users control: very long ones are left raw, and any failure of
the demangler leaves the name as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_MANGLED_LENGTH = 1024
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")


def _load() -> Callable[[str], str] | None:
    try:
        import cxxfilt

        demangler = cxxfilt.Demangler(cxxfilt.find_any_library("c"), cxxfilt.find_any_library("stdc++", "c++"))
        method: Callable[[str], str] = demangler.demangle
        return method
    except Exception:  # no libstdc++ on this host: names stay mangled
        return None


_demangle = _load()


def demangle(name: str) -> str:
    """The readable form of a mangled name; any other name unchanged."""
    if not name.startswith("_Z") or _demangle is None or len(name) > MAX_MANGLED_LENGTH:
        return name
    try:
        readable = _demangle(name)
    except Exception:
        return name
    return _RUST_HASH.sub("", readable) if readable else name
