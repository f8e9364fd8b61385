"""Windows to folded stacks, and folded stacks to the flat preorder list of boxes a flame graph draws.

A frame is drawn as a ``Label`` (name, module, kind): the same function in the same file is one
box, whatever its address. For an interpreted (Python) frame the module is its source file and
the line is not part of the label, so one function sampled on several lines is one box; the
lines are counted on the side (``Lines``) for the details a person hovers. The process (its
command name) is the first frame under the root, so a host-wide graph splits by program first.
Labels are numbered once in a ``LabelTable`` so that paths are tuples of small ints: cheap to
hash, sort and keep for a whole span.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import os
from collections.abc import Hashable, Iterable, Iterator
from typing import TypeVar

from attrs import frozen

from antiprof_core.model import Frame, FrameKind, ProfileWindow

Label = tuple[str, str, str]  # (name, module, kind)
Stack = tuple[int, ...]  # label ids, root first (process, outermost caller, ..., leaf)
Folded = dict[Stack, int]  # samples per path
Lines = dict[tuple[int, int], int]  # (label id, source line) -> samples, for frames that have a line

PROCESS_KIND = "process"
ROOT_LABEL: Label = ("all", "", "root")


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Millions of small tuples make the cyclic GC rescan them over and over; none of them form cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def frame_label(frame: Frame) -> Label:
    """Unnamed frames keep their address, as perf does, so they still tell places apart."""
    module = os.path.basename(frame.mapping.path) if frame.mapping else (frame.file or "")
    name = frame.symbol if frame.symbol is not None else f"[unknown] {frame.address:#x}"
    return (name, module, frame.kind.value)


class LabelTable:
    """Numbers labels; id 0 is the root."""

    def __init__(self) -> None:
        self.labels: list[Label] = [ROOT_LABEL]
        self.ids: dict[Label, int] = {ROOT_LABEL: 0}

    def __len__(self) -> int:
        return len(self.labels)

    def id(self, label: Label) -> int:
        found = self.ids.get(label)
        if found is None:
            found = self.ids[label] = len(self.labels)
            self.labels.append(label)
        return found

    def compact(self, foldeds: list[Folded], lines: Iterable[Lines] = ()) -> list[Folded]:
        """Forget labels no path uses any more (a long-running agent sees processes come and go).

        ``lines`` are renumbered in place; their labels are on the paths, so none is forgotten.
        """
        old = self.labels
        self.labels, self.ids = [ROOT_LABEL], {ROOT_LABEL: 0}
        with no_gc():
            compacted = [{tuple(self.id(old[i]) for i in path): n for path, n in folded.items()} for folded in foldeds]
            for counts in lines:
                renumbered = {(self.id(old[label]), line): n for (label, line), n in counts.items()}
                counts.clear()
                counts.update(renumbered)
            return compacted


def fold_window(window: ProfileWindow, table: LabelTable, lines: Lines | None = None) -> Folded:
    """Root-first label paths of a window with their sample counts; the samples of each (label,
    source line) are added into ``lines`` when given (only frames with a line cost anything)."""
    folded: Folded = {}
    by_frame: dict[int, int] = {}  # id(frame) -> label id: frames are shared between a window's samples
    lined: dict[int, tuple[int, int]] = {}  # id(frame) -> (label id, line), for frames with a line
    by_pid: dict[int, int] = {}
    modules: dict[int, str] = {}  # id(mapping) -> file name
    lookup = by_frame.get
    with no_gc():
        for sample in window.samples:
            process = by_pid.get(sample.pid)
            if process is None:
                known = window.processes.get(sample.pid)
                name = known.name if known else sample.thread_name
                process = by_pid[sample.pid] = table.id((name, "", PROCESS_KIND))
            labels = list(map(lookup, map(id, reversed(sample.stack))))
            if None in labels:
                for position, frame in enumerate(reversed(sample.stack)):
                    if labels[position] is None:
                        label = labels[position] = by_frame[id(frame)] = table.id(_label(frame, modules))
                        if frame.line is not None:
                            lined[id(frame)] = (label, frame.line)
            if lined and lines is not None:
                for key in filter(None, map(lined.get, map(id, sample.stack))):
                    lines[key] = lines.get(key, 0) + sample.count
            path = (process, *labels)
            folded[path] = folded.get(path, 0) + sample.count  # type: ignore[index,arg-type]
    return folded


_KIND_NAMES = {kind: kind.value for kind in FrameKind}
_Key = TypeVar("_Key", bound=Hashable)


def _label(frame: Frame, modules: dict[int, str]) -> Label:
    """frame_label with the mapping's file name cached: a window has few mappings and many frames."""
    mapping = frame.mapping
    if mapping is None:
        module = frame.file or ""  # an interpreted frame's source file
    else:
        module = modules.get(id(mapping)) or modules.setdefault(id(mapping), os.path.basename(mapping.path))
    name = frame.symbol if frame.symbol is not None else f"[unknown] {frame.address:#x}"
    return (name, module, _KIND_NAMES[frame.kind])


def add_into(total: dict[_Key, int], folded: dict[_Key, int], sign: int = 1) -> None:
    """``total += sign * folded``, dropping paths that reach zero."""
    for path, count in folded.items():
        left = total.get(path, 0) + sign * count
        if left > 0:
            total[path] = left
        else:
            total.pop(path, None)


@frozen
class FlatTree:
    """Boxes in preorder (paths sorted by label id): ``labels[i]`` at ``depths[i]`` is ``values[i]`` samples wide.

    Box 0 is the root (depth 0); a box's parent is the nearest earlier box one level up.
    """

    labels: list[int]
    values: list[int]
    depths: list[int]

    @property
    def total(self) -> int:
        return self.values[0] if self.values else 0

    def at_least(self, min_value: int) -> FlatTree:
        """Only boxes at least ``min_value`` wide (whole paths from the root, as children are narrower)."""
        keep = [i for i, value in enumerate(self.values) if value >= min_value]
        return FlatTree([self.labels[i] for i in keep], [self.values[i] for i in keep], [self.depths[i] for i in keep])

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in self.values]
        open_at: list[int] = []  # open_at[d]: the latest box at depth d
        for i, depth in enumerate(self.depths):
            del open_at[depth:]
            if open_at:
                kids[open_at[-1]].append(i)
            open_at.append(i)
        return kids


def flatten(folded: Folded, max_boxes: int | None = None) -> FlatTree:
    """The boxes of a flame graph, in preorder: the ``max_boxes`` widest (ties: those nearer the root first).

    Paths are sorted once; a box is a run of paths sharing a prefix and its width is a difference
    of prefix sums. Boxes are opened level by level while a heap keeps the ``max_boxes`` widest
    widths seen so far: once it is full, a box no wider than the narrowest of those can never be
    drawn, nor can anything under it, so most of a huge, flat profile is never walked.
    """
    paths = sorted(folded)
    cum = list(itertools.accumulate((folded[path] for path in paths), initial=0))
    labels, values, depths, parents = [0], [cum[-1]], [0], [-1]  # box 0 is the root
    kids: list[list[int]] = [[]]
    budget = max_boxes if max_boxes is not None else -1
    widest: list[int] = []  # min-heap of the `budget` widest widths so far
    level = [(0, 0, len(paths))]  # (box, first path, past its last path) of the boxes to open now
    depth = 0
    with no_gc():
        while level:
            below = []
            for box, low, high in level:
                i = low
                while i < high and len(paths[i]) == depth:  # paths ending at this box: its self samples
                    i += 1
                while i < high:
                    label = paths[i][depth]
                    j = i + 1
                    while j < high and paths[j][depth] == label:
                        j += 1
                    value = cum[j] - cum[i]
                    if len(widest) < budget:
                        heapq.heappush(widest, value)
                    elif budget >= 0:
                        if value <= widest[0]:
                            i = j
                            continue  # as wide as the narrowest of `budget` boxes nearer the root: never drawn
                        heapq.heapreplace(widest, value)
                    child = len(labels)
                    labels.append(label)
                    values.append(value)
                    depths.append(depth + 1)
                    parents.append(box)
                    kids.append([])
                    kids[box].append(child)
                    below.append((child, i, j))
                    i = j
            floor = widest[0] if budget >= 0 and len(widest) == budget else 0
            level = [entry for entry in below if values[entry[0]] > floor or not floor]
            depth += 1
    keep = _widest(values, parents, budget, widest[0] if widest else 0)
    order: list[int] = []
    pending = [0]
    while pending:
        box = pending.pop()
        order.append(box)
        pending.extend(child for child in reversed(kids[box]) if keep[child])
    return FlatTree([labels[b] for b in order], [values[b] for b in order], [depths[b] for b in order])


def _widest(values: list[int], parents: list[int], budget: int, cut: int) -> list[bool]:
    """Which boxes (numbered root first, level by level) make the cut: wider than ``cut`` (the
    ``budget``-th widest), then ties in box order, so a parent always goes before its children."""
    if budget < 0 or len(values) <= budget:
        return [True] * len(values)
    room = budget - sum(1 for value in values if value > cut)
    keep = [False] * len(values)
    for box, value in enumerate(values):
        if value > cut:
            keep[box] = True
        elif value == cut and room > 0 and (box == 0 or keep[parents[box]]):
            keep[box] = True
            room -= 1
    return keep
