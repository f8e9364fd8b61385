"""ProfileWindow <-> plain JSON-able dicts, losslessly.

Frames and mappings are shared by many samples, so the plain form keeps them once, in
window-level tables, and samples refer to frames by index. That keeps JSON small and the
conversion fast (one dict per distinct frame, not one per frame per sample).
"""

from __future__ import annotations

from typing import Any

import cattrs

from antiprof_core.model import (
    Counters,
    Frame,
    FrameKind,
    Host,
    Mapping,
    Process,
    ProfileWindow,
    Sample,
    SamplingMode,
)

SCHEMA_VERSION = 1

_leaf = cattrs.Converter()


class _Numbering(dict[int, int]):
    """id(obj) -> position in order of first appearance; ``__missing__`` numbers a new one."""

    __slots__ = ()

    def __missing__(self, key: int) -> int:
        number = self[key] = len(self)
        return number


class _Table:
    """Numbers shared objects (frames, mappings) by identity, in order of first appearance.

    ``map`` over ids runs in C and never hashes attrs instances field by field, which is what
    makes a 50k-stack window cheap; equal objects that are not the same object get two entries,
    which costs a little size and nothing in meaning.
    """

    def __init__(self) -> None:
        self._numbering = _Numbering()
        self._number = self._numbering.__getitem__
        self._by_number: dict[int, Any] = {}

    def number(self, item: Any) -> int:
        number = self._number(id(item))
        self._by_number.setdefault(number, item)
        return number

    def numbers(self, items: tuple[Any, ...]) -> list[int]:
        known = len(self._numbering)
        numbers = list(map(self._number, map(id, items)))
        if len(self._numbering) != known:  # new objects: keep them (in C, via zip)
            self._by_number.update(zip(numbers, items, strict=True))
        return numbers

    @property
    def items(self) -> list[Any]:
        return [self._by_number[number] for number in range(len(self._numbering))]


_KIND_NAMES = {kind: kind.value for kind in FrameKind}


def window_to_dict(window: ProfileWindow) -> dict[str, Any]:
    mappings = _Table()
    frames = _Table()
    samples = [
        {
            "pid": s.pid,
            "tid": s.tid,
            "cpu": s.cpu,
            "thread_name": s.thread_name,
            "count": s.count,
            "stack": frames.numbers(s.stack),
            **({"timestamps": list(s.timestamps)} if s.timestamps else {}),
        }
        for s in window.samples
    ]
    frame_dicts = [
        {
            "address": f.address,
            "kind": _KIND_NAMES[f.kind],
            "symbol": f.symbol,
            "offset": f.offset,
            "mapping": None if f.mapping is None else mappings.number(f.mapping),
            **({"file": f.file} if f.file is not None else {}),
            **({"line": f.line} if f.line is not None else {}),
            **({"start_line": f.start_line} if f.start_line is not None else {}),
        }
        for f in frames.items
    ]
    processes = [
        {
            "pid": p.pid,
            "name": p.name,
            "executable": p.executable,
            "command_line": list(p.command_line),
            "container_id": p.container_id,
            "mappings": mappings.numbers(p.mappings),
        }
        for p in window.processes.values()
    ]
    return {
        "schema": SCHEMA_VERSION,
        "start_ns": window.start_ns,
        "end_ns": window.end_ns,
        "event": window.event,
        "mode": window.mode.value,
        "frequency_hz": window.frequency_hz,
        "period_ns": window.period_ns,
        "host": _leaf.unstructure(window.host),
        "counters": _leaf.unstructure(window.counters),
        "processes": processes,
        "mappings": [_leaf.unstructure(m) for m in mappings.items],
        "frames": frame_dicts,
        "samples": samples,
    }


def window_from_dict(data: dict[str, Any]) -> ProfileWindow:
    mappings = [_leaf.structure(m, Mapping) for m in data["mappings"]]
    frames = [
        Frame(
            address=f["address"],
            kind=FrameKind(f["kind"]),
            symbol=f["symbol"],
            offset=f["offset"],
            mapping=None if f["mapping"] is None else mappings[f["mapping"]],
            file=f.get("file"),  # absent in windows written before interpreted frames existed
            line=f.get("line"),
            start_line=f.get("start_line"),
        )
        for f in data["frames"]
    ]
    samples = tuple(
        Sample(
            pid=s["pid"],
            tid=s["tid"],
            cpu=s["cpu"],
            thread_name=s["thread_name"],
            stack=tuple(frames[i] for i in s["stack"]),
            count=s["count"],
            timestamps=tuple(s.get("timestamps", ())),
        )
        for s in data["samples"]
    )
    processes = {
        p["pid"]: Process(
            pid=p["pid"],
            name=p["name"],
            executable=p["executable"],
            command_line=tuple(p["command_line"]),
            container_id=p["container_id"],
            mappings=tuple(mappings[i] for i in p["mappings"]),
        )
        for p in data["processes"]
    }
    return ProfileWindow(
        start_ns=data["start_ns"],
        end_ns=data["end_ns"],
        frequency_hz=data["frequency_hz"],
        host=_leaf.structure(data["host"], Host),
        samples=samples,
        processes=processes,
        counters=_leaf.structure(data["counters"], Counters),
        event=data["event"],
        mode=SamplingMode(data["mode"]),
    )


converter = cattrs.Converter()
"""``converter.unstructure(window)`` / ``converter.structure(data, ProfileWindow)`` use the table form."""
converter.register_unstructure_hook(ProfileWindow, window_to_dict)
converter.register_structure_hook(ProfileWindow, lambda data, _: window_from_dict(data))
