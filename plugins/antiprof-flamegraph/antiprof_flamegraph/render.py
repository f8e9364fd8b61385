"""The three pictures of one tree: interactive HTML, collapsed-stack text, and static SVG."""

from __future__ import annotations

import html
import json
import math
import re
import time
import zlib
from importlib import resources

from attrs import frozen

from antiprof_flamegraph.stacks import FlatTree, Folded, LabelTable, Lines

KINDS = ("root", "process", "kernel", "native", "jit", "cpython")
MAX_LINES_SHOWN = 8  # source lines listed per interpreted frame, the most sampled first


@frozen
class Heading:
    """What the picture covers, shown above it."""

    title: str
    start_ns: int
    end_ns: int
    windows: int = 1


def _asset(name: str) -> str:
    return resources.files("antiprof_flamegraph").joinpath("assets", name).read_text(encoding="utf-8")


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns // 1_000_000_000))


def subtitle(heading: Heading, samples: int) -> str:
    windows = f", {heading.windows} windows" if heading.windows != 1 else ""
    return f"{_when(heading.start_ns)} to {_when(heading.end_ns)}: {samples:,} samples{windows}"


# --- HTML -----------------------------------------------------------------------------------


def source_lines(lines: Lines | None) -> dict[int, list[int]]:
    """Label id -> its sampled source lines, the most sampled first (at most ``MAX_LINES_SHOWN``)."""
    by_label: dict[int, list[tuple[int, int]]] = {}
    for (label, line), samples in (lines or {}).items():
        by_label.setdefault(label, []).append((-samples, line))
    return {label: [line for _, line in sorted(found)[:MAX_LINES_SHOWN]] for label, found in by_label.items()}


def where(module: str, lines: list[int] | None) -> str:
    """``(libc.so.6)``, or ``(/srv/app/work.py:12, 14)`` for an interpreted function sampled on two lines."""
    if not module:
        return ""
    return f" ({module}:{', '.join(map(str, lines))})" if lines else f" ({module})"


def tree_payload(tree: FlatTree, table: LabelTable, lines: Lines | None = None) -> dict[str, object]:
    """The boxes as flat arrays the page rebuilds: a label table and preorder (label, value, depth) triples.

    A label is [name, module, kind], plus its source lines when it has some.
    """
    kinds = {kind: i for i, kind in enumerate(KINDS)}
    lines_of = source_lines(lines)
    local: dict[int, int] = {}
    labels: list[list[object]] = []
    nodes: list[int] = []
    for label_id, value, depth in zip(tree.labels, tree.values, tree.depths, strict=True):
        index = local.get(label_id)
        if index is None:
            name, module, kind = table.labels[label_id]
            index = local[label_id] = len(labels)
            entry: list[object] = [name, module, kinds.setdefault(kind, len(kinds))]
            if label_id in lines_of:
                entry.append(lines_of[label_id])
            labels.append(entry)
        nodes += (index, value, depth)
    return {"kinds": list(kinds), "labels": labels, "nodes": nodes}


def _script_json(value: object) -> str:
    """JSON safe inside <script type="application/json">: no '</script>' or '<!--' can appear."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_SLOT = re.compile(r"/\*@(\w+)@\*/|\{\{(\w+)\}\}")


def render_html(tree: FlatTree, table: LabelTable, heading: Heading, lines: Lines | None = None) -> str:
    """One self-contained page: no request leaves it (scripts, styles and data are inline).

    Every box of ``tree`` is in it: cut big trees with ``flatten(folded, max_boxes)`` first.
    """
    slots = {
        "STYLE": _asset("flamegraph.css"),
        "SCRIPT": _asset("flamegraph.js"),
        "DATA": _script_json(tree_payload(tree, table, lines)),
        "TITLE": html.escape(heading.title),
        "SUBTITLE": html.escape(subtitle(heading, tree.total)),
    }
    # One pass: text that came in through a slot (names in DATA) is never searched for slots again.
    return _SLOT.sub(lambda m: slots[m.group(1) or m.group(2)], _asset("flamegraph.html"))


# --- folded ---------------------------------------------------------------------------------

# FlameGraph's colour hints; it has none for Python (its "_[i]" means inlined), so Python names stay bare.
_KIND_SUFFIX = {"kernel": "_[k]", "jit": "_[j]"}
_UNSAFE_IN_FOLDED = re.compile(r"[;\r\n\t]")


def _folded_name(name: str, kind: str) -> str:
    return _UNSAFE_IN_FOLDED.sub("_", name).replace(" ", "_") + _KIND_SUFFIX.get(kind, "")


def render_folded(folded: Folded, table: LabelTable) -> str:
    """``process;outer;...;leaf COUNT`` per line, sorted: the input of flamegraph.pl, speedscope, inferno."""
    names: dict[int, str] = {}
    merged: dict[str, int] = {}
    for path, count in folded.items():
        parts = []
        for label_id in path:
            part = names.get(label_id)
            if part is None:
                name, _module, kind = table.labels[label_id]
                part = names[label_id] = _folded_name(name, kind)
            parts.append(part)
        line = ";".join(parts)
        merged[line] = merged.get(line, 0) + count  # two labels may fold to one name
    return "".join(f"{line} {count}\n" for line, count in sorted(merged.items()))


# --- SVG ------------------------------------------------------------------------------------

SVG_WIDTH = 1200
_ROW = 17
_TOP = 44
_MIN_PIXELS = 0.3
_CHAR_PIXELS = 6.6

# Hue ranges per kind, shared with flamegraph.js so both pictures read the same.
_PALETTE = {
    "root": (0, 0, 62),
    "process": (210, 8, 72),
    "kernel": (28, 85, 58),
    "native": (4, 72, 62),
    "jit": (110, 55, 52),
    "cpython": (190, 65, 55),
}


def frame_colour(name: str, kind: str) -> str:
    """A stable colour per name, in its kind's hue band (the same function as colour() in the page)."""
    hue, saturation, lightness = _PALETTE.get(kind, (270, 30, 65))
    spread = zlib.crc32(name.encode("utf-8", "replace")) % 1000 / 1000
    if saturation > 20:
        hue += round(spread * 24) - 12
        lightness += round(spread * 12) - 6
    return f"hsl({hue % 360},{saturation}%,{lightness}%)"


def _fit(name: str, pixels: float) -> str:
    chars = int((pixels - 6) / _CHAR_PIXELS)
    if chars < 3:
        return ""
    return name if len(name) <= chars else name[: chars - 2] + ".."


def render_svg(tree: FlatTree, table: LabelTable, heading: Heading, lines: Lines | None = None) -> str:
    """A static icicle (root on top, widest first), frames narrower than a third of a pixel left out."""
    total = tree.total or 1
    scale = SVG_WIDTH / total
    tree = tree.at_least(math.ceil(_MIN_PIXELS / scale))
    kids = tree.children()
    lines_of = source_lines(lines)
    parts: list[str] = []
    depth_seen = 0
    pending: list[tuple[int, float]] = [(0, 0.0)] if tree.values else []
    while pending:
        box, x = pending.pop()
        value, depth = tree.values[box], tree.depths[box]
        width = value * scale
        depth_seen = max(depth_seen, depth)
        name, module, kind = table.labels[tree.labels[box]]
        place = where(module, lines_of.get(tree.labels[box]))
        tip = html.escape(f"{name}{place}: {value:,} samples, {100 * value / total:.2f}%")
        y = _TOP + depth * _ROW
        text = html.escape(_fit(name, width))
        parts.append(
            f'<g><title>{tip}</title><rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{_ROW - 1}" '
            f'fill="{frame_colour(name, kind)}" rx="2"/>'
            + (f'<text x="{x + 3:.2f}" y="{y + 12}">{text}</text>' if text else "")
            + "</g>"
        )
        child_x = x
        for child in sorted(kids[box], key=lambda c: -tree.values[c]):
            child_width = tree.values[child] * scale
            if child_width >= _MIN_PIXELS:
                pending.append((child, child_x))
            child_x += child_width
    height = _TOP + (depth_seen + 1) * _ROW + 8
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
        f'viewBox="0 0 {SVG_WIDTH} {height}" font-family="Verdana, sans-serif" font-size="11">'
        '<rect width="100%" height="100%" fill="#fafafa"/>'
        f'<text x="6" y="18" font-size="15" font-weight="bold">{html.escape(heading.title)}</text>'
        f'<text x="6" y="35" fill="#555">{html.escape(subtitle(heading, tree.total))}</text>'
    )
    return head + "".join(parts) + "</svg>\n"
