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

from pathlib import Path

from attrs import frozen

from antiprof_core.model import FrameKind, Mapping, ProfileWindow
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


@frozen
class PendingImage:
    """An image to write before the records that map it."""

    path: Path
    data: bytes


@frozen
class PythonPlan:
    """What one window adds: slots for its new functions and the image naming them (or nothing)."""

    slots: dict[tuple[str, str], int]  # new function -> slot address
    mapping: Mapping | None = None
    image: PendingImage | None = None


@frozen
class Translated:
    """A window's callchains with Python frames as slot addresses, and what they need mapped."""

    chains: list[list[int]]  # one per sample, leaf first, in the window's sample order
    images_by_pid: dict[int, list[Mapping]]  # the symbol images each process's Python frames fall in
    plan: PythonPlan


class PythonSymbols:
    """A stream's Python slots and the images that name them, written into ``images_dir``."""

    def __init__(self, images_dir: Path | None, arch: str = "x86_64") -> None:
        self.images_dir = images_dir
        self.arch = arch or "x86_64"
        self.slots: dict[tuple[str, str], tuple[int, int]] = {}  # function -> (address, image index)
        self.mappings: list[Mapping] = []  # image index -> its MMAP2 mapping
        self._next_address = REGION_START

    def translate(self, window: ProfileWindow) -> Translated:
        """Every sample's addresses, slots given to new functions (state unchanged until ``commit``).

        One pass over the frames: this is the per-sample cost of Python frames.
        """
        naming = self.images_dir is not None
        slots = self.slots
        new: dict[tuple[str, str], int] = {}
        pending = len(self.mappings)  # the index the new image will get
        next_address = self._next_address
        chains: list[list[int]] = []
        used: dict[int, set[int]] = {}
        unnamed, cpython, slot_size = UNNAMED_ADDRESS, _CPYTHON, SLOT_SIZE
        for sample in window.samples:
            chain: list[int] = []
            append = chain.append
            images: set[int] | None = None
            for frame in sample.stack:
                if frame.kind is not cpython:
                    append(frame.address)
                    continue
                name = frame.symbol
                if name is None or not naming:
                    append(unnamed)
                    continue
                key = (name, frame.file or "")
                found = slots.get(key)
                if found is not None:
                    address, image = found
                else:
                    address = new.get(key, -1)
                    if address < 0:
                        address = new[key] = next_address + slot_size * len(new)
                    image = pending
                append(address)
                if images is None:
                    images = used.setdefault(sample.pid, set())
                images.add(image)
            chains.append(chain)
        plan = self._plan(new)
        every = [*self.mappings, plan.mapping] if plan.mapping is not None else self.mappings
        by_pid = {pid: [every[index] for index in sorted(indices)] for pid, indices in used.items()}
        return Translated(chains, by_pid, plan)

    def _plan(self, new: dict[tuple[str, str], int]) -> PythonPlan:
        if not new or self.images_dir is None:
            return PythonPlan({})
        number = len(self.mappings) + 1
        path = self.images_dir / f"{IMAGE_PREFIX}{number}{IMAGE_SUFFIX}"
        start = self._next_address
        size = SLOT_SIZE * len(new)
        symbols = [
            ElfSymbol(symbol_name(name, file or None), address - start, SLOT_SIZE)
            for (name, file), address in new.items()
        ]
        image = symbol_image(symbols, size, self.arch)
        mapping = Mapping(start, start + size, TEXT_OFFSET, str(path), image.build_id.hex())
        return PythonPlan(new, mapping, PendingImage(path, image.data))

    def commit(self, plan: PythonPlan) -> None:
        if plan.mapping is None:
            return
        index = len(self.mappings)
        self.mappings.append(plan.mapping)
        self.slots.update((key, (address, index)) for key, address in plan.slots.items())
        self._next_address = plan.mapping.end
