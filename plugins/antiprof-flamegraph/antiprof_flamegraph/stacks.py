"""Windows to folded stacks, and folded stacks to the flat preorder list of boxes a flame graph draws.

A frame is drawn as a ``Label`` (name, module, kind): the same function in the same file is one
box, whatever its address. The process (its command name) is the first frame under the root, so
a host-wide graph splits by program first. Labels are numbered once in a ``LabelTable`` so that
paths are tuples of small ints: cheap to hash, sort and keep for a whole span.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator

from attrs import frozen

from antiprof_core.model import Frame, FrameKind, ProfileWindow

Label = tuple[str, str, str]  # (name, module, kind)
Stack = tuple[int, ...]  # label ids, root first (process, outermost caller, ..., leaf)
Folded = dict[Stack, int]  # samples per path

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
    module = os.path.basename(frame.mapping.path) if frame.mapping else ""
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

    def compact(self, foldeds: list[Folded]) -> list[Folded]:
        """Forget labels no path uses any more (a long-running agent sees processes come and go)."""
        old = self.labels
        self.labels, self.ids = [ROOT_LABEL], {ROOT_LABEL: 0}
        with no_gc():
            return [{tuple(self.id(old[i]) for i in path): n for path, n in folded.items()} for folded in foldeds]


def fold_window(window: ProfileWindow, table: LabelTable) -> Folded:
    """Root-first label paths of a window with their sample counts."""
    folded: Folded = {}
    by_frame: dict[int, int] = {}  # id(frame) -> label id: frames are shared between a window's samples
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
                        labels[position] = by_frame[id(frame)] = table.id(_label(frame, modules))
            path = (process, *labels)
            folded[path] = folded.get(path, 0) + sample.count  # type: ignore[index,arg-type]
    return folded


_KIND_NAMES = {kind: kind.value for kind in FrameKind}


def _label(frame: Frame, modules: dict[int, str]) -> Label:
    """frame_label with the mapping's file name cached: a window has few mappings and many frames."""
    mapping = frame.mapping
    if mapping is None:
        module = ""
    else:
        module = modules.get(id(mapping)) or modules.setdefault(id(mapping), os.path.basename(mapping.path))
    name = frame.symbol if frame.symbol is not None else f"[unknown] {frame.address:#x}"
    return (name, module, _KIND_NAMES[frame.kind])


def add_into(total: Folded, folded: Folded, sign: int = 1) -> None:
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

    def pruned(self, max_boxes: int) -> FlatTree:
        """At most ``max_boxes`` boxes: the narrowest go, their parents keep their width.

        A child is never wider than its parent, so keeping every box at or above one width
        keeps whole paths from the root.
        """
        if len(self.values) <= max_boxes:
            return self
        ranked = sorted(self.values, reverse=True)
        cut = ranked[max_boxes - 1]
        if ranked[max_boxes] == cut:
            cut += 1  # ties past the budget all go
        return self.at_least(cut)

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


def flatten(foldeds: Iterable[Folded]) -> FlatTree:
    """One walk over the sorted paths: a box opens where a path leaves the previous one's prefix."""
    merged: Folded = {}
    for folded in foldeds:
        if not merged:
            merged = dict(folded)
        else:
            add_into(merged, folded)
    labels, values, depths, parents = [0], [0], [0], [-1]
    with no_gc():
        stack = [0]  # box index per depth of the current path (root at 0)
        previous: Stack = ()
        for path in sorted(merged):
            common = 0
            limit = min(len(path), len(previous))
            while common < limit and path[common] == previous[common]:
                common += 1
            del stack[common + 1 :]
            for depth in range(common, len(path)):
                parents.append(stack[-1])
                stack.append(len(labels))
                labels.append(path[depth])
                values.append(0)
                depths.append(depth + 1)
            values[stack[-1]] += merged[path]  # self samples first; totals roll up below
            previous = path
        for box in range(len(values) - 1, 0, -1):
            values[parents[box]] += values[box]
    return FlatTree(labels, values, depths)
