"""Python frames as addresses perf can name: a slot per function in a synthetic text region.

A CPython frame's ``address`` is a code object, not code, so no file perf reads covers it. Each
distinct Python function (qualified name and source file) of a stream gets a 16-byte slot in a
region no real mapping can use: on x86-64 and arm64 user addresses stop below 2**57, so
``REGION_START`` (2**62) is never a process's own address. Each window that brings new functions
adds one image (``elfimage``) naming its new slots, mapped into every process that uses them with
an MMAP2 record; the image is written before the records that need it. Slots are shared by all
processes of a stream, keyed by name and file (not by code object address), so two processes
with the same code address each get their own function's name, and a function seen in many
processes costs one slot.

Symbol names follow CPython's own perf map (``python -X perf``): ``py::<qualname>:<file>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from attrs import frozen

from antiprof_core.model import Frame, FrameKind, Mapping, ProfileWindow
from antiprof_perfdata.elfimage import TEXT_OFFSET, ElfSymbol, symbol_image

REGION_START = 1 << 62
SLOT_SIZE = 16
UNNAMED_ADDRESS = REGION_START - SLOT_SIZE  # a Python frame with no name: perf shows [unknown], as for native code
IMAGE_PREFIX = "python-symbols-"
IMAGE_SUFFIX = ".so"
_CPYTHON = FrameKind.CPYTHON


def symbol_name(qualname: str, file: str | None) -> str:
    """``py::heavy_math:/tmp/x/prog.py``, as CPython names its functions for perf."""
    return f"py::{qualname}:{file or '<unknown>'}"


def function_key(frame: Frame) -> tuple[str, str] | None:
    return None if frame.symbol is None else (frame.symbol, frame.file or "")


@frozen
class PendingImage:
    """An image to write before the records that map it."""

    path: Path
    data: bytes


@frozen
class PythonPlan:
    """The slots one window adds, and the image naming them (None when it adds none)."""

    slots: dict[tuple[str, str], tuple[int, Mapping]]
    image: PendingImage | None


class PythonSymbols:
    """A stream's Python slots and the images that name them, written into ``images_dir``."""

    def __init__(self, images_dir: Path | None, arch: str = "x86_64") -> None:
        self.images_dir = images_dir
        self.arch = arch or "x86_64"
        self.slots: dict[tuple[str, str], tuple[int, Mapping]] = {}
        self.images = 0
        self._next_address = REGION_START

    def plan(self, window: ProfileWindow) -> PythonPlan:
        """Slots for the window's functions that have none yet (state unchanged until ``commit``)."""
        new_keys: dict[tuple[str, str], None] = {}
        known = self.slots
        for frame in _python_frames(window):
            key = function_key(frame)
            if key is not None and key not in known:
                new_keys[key] = None
        if not new_keys or self.images_dir is None:
            return PythonPlan({}, None)
        number = self.images + 1
        path = self.images_dir / f"{IMAGE_PREFIX}{number}{IMAGE_SUFFIX}"
        start = self._next_address
        size = SLOT_SIZE * len(new_keys)
        symbols = [
            ElfSymbol(symbol_name(name, file or None), index * SLOT_SIZE, SLOT_SIZE)
            for index, (name, file) in enumerate(new_keys)
        ]
        image = symbol_image(symbols, size, self.arch)
        mapping = Mapping(start, start + size, TEXT_OFFSET, str(path), image.build_id.hex())
        slots = {key: (start + index * SLOT_SIZE, mapping) for index, key in enumerate(new_keys)}
        return PythonPlan(slots, PendingImage(path, image.data))

    def commit(self, plan: PythonPlan) -> None:
        if plan.image is None:
            return
        self.slots.update(plan.slots)
        self.images += 1
        self._next_address = max(mapping.end for _, mapping in plan.slots.values())


def _python_frames(window: ProfileWindow) -> Iterable[Frame]:
    for sample in window.samples:
        for frame in sample.stack:
            if frame.kind is _CPYTHON:
                yield frame
