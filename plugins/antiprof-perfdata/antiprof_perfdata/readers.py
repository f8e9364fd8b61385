"""What each tool people use shows for our perf.data: the function shares every reader must agree on.

Four readers, each as its users run it: ``perf report`` (which weighs ``period``), ``perf script``
folded by a line count (FlameGraph's ``stackcollapse-perf.pl`` way), the npm ``flamegraph``
command fed ``perf script`` (``perf script | flamegraph -t perf``), and speedscope's own
``perf script`` importer (weights from sample times, one profile per thread). A share is
inclusive: the part of all samples whose stack holds the function. Needs ``perf``, ``node`` and
the npm packages installed in ``tests/js`` by ``scripts/setup-system.sh``.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from antiprof_core.model import ProfileWindow
from antiprof_core.summary import HottestFunctions
from antiprof_perfdata.perftool import parse_script, run_perf

SPEEDSCOPE_IMPORTER = Path(__file__).with_name("speedscope_perf.js")
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")
_SVG_BOX = re.compile(
    r'data-funcname="(?P<name>[^"]*)">\s*<title>[^<]*?\((?P<samples>[\d,.]+) samples\)[^<]*</title>\s*'
    r'<rect [^>]*?\by="(?P<y>[\d.]+)"'
)
_REPORT_LINE = re.compile(r"^\s+(?P<children>[\d.]+)%\s+(?P<self>[\d.]+)%\s+\[[.k]\]\s+(?P<name>\S+)", re.MULTILINE)


class ReaderMissing(RuntimeError):
    """node or the npm packages are not installed."""


def _function(name: str) -> str:
    return _OFFSET.sub("", name.strip())


def table_shares(windows: Iterable[ProfileWindow], names: Iterable[str]) -> dict[str, float]:
    """antiprof's own table (``antiprof record``'s): each function's total samples over all samples."""
    table = HottestFunctions()
    for window in windows:
        table.consume(window)
    totals: Counter[str] = Counter()
    for cost in table.top(limit=1_000_000):
        totals[cost.function] += cost.total_samples
    return {name: totals[name] / (table.samples or 1) for name in names}


def report_shares(path: Path, buildid_dir: Path, names: Iterable[str]) -> dict[str, float]:
    """``perf report --children``: the Children column."""
    result = run_perf(["report", "-i", str(path), "--stdio", "--children", "--sort", "sym", "-g", "none"], buildid_dir)
    if result.returncode != 0:
        raise RuntimeError(f"perf report failed: {result.stderr.strip()}")
    shown = {m["name"]: float(m["children"]) / 100 for m in _REPORT_LINE.finditer(result.stdout)}
    return {name: shown.get(name, 0.0) for name in names}


def script_text(path: Path, buildid_dir: Path) -> str:
    result = run_perf(["script", "-i", str(path)], buildid_dir)
    if result.returncode != 0:
        raise RuntimeError(f"perf script failed: {result.stderr.strip()}")
    return result.stdout


def folded_line_shares(script: str, names: Iterable[str]) -> dict[str, float]:
    """``perf script`` folded the FlameGraph way: every sample counts 1, whatever its period."""
    samples = parse_script(script)
    return {
        name: sum(any(frame.symbol == name for frame in sample.frames) for sample in samples) / (len(samples) or 1)
        for name in names
    }


def node_modules() -> Path:
    """tests/js/node_modules of this checkout, where set-up installs the npm readers."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tests" / "js" / "node_modules"
        if candidate.is_dir():
            return candidate
    raise ReaderMissing("tests/js/node_modules not found: run scripts/setup-system.sh")


def _node(args: list[str], stdin: str, timeout: float = 120.0) -> str:
    node = shutil.which("node")
    if node is None:
        raise ReaderMissing("node is not installed: run scripts/setup-system.sh")
    done = subprocess.run([node, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"node {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def flamegraph_shares(script: str, names: Iterable[str]) -> dict[str, float]:
    """``perf script | flamegraph -t perf`` (npm flamegraph): each function's boxes' samples over the root's."""
    svg = _node([str(node_modules() / "flamegraph" / "bin" / "flamegraph.js"), "-t", "perf"], script)
    boxes = [
        (float(m["y"]), _function(html.unescape(m["name"])), float(m["samples"].replace(",", "")))
        for m in _SVG_BOX.finditer(svg)
    ]
    if not boxes:
        raise RuntimeError("flamegraph drew no boxes: it read no samples")
    bottom = max(y for y, _, _ in boxes)  # the root boxes (named after the process) hold every sample
    total = sum(samples for y, _, samples in boxes if y == bottom)
    held: dict[str, float] = defaultdict(float)
    for _, name, samples in boxes:
        held[name] += samples
    return {name: held.get(name, 0.0) / total for name in names}


def speedscope_shares(script: str, names: Iterable[str]) -> dict[str, float]:
    """speedscope's perf importer: each function's total weight over all weight, threads added up."""
    imported = json.loads(_node([str(SPEEDSCOPE_IMPORTER), str(node_modules())], script))
    total = sum(profile["total"] for profile in imported["profiles"])
    held: dict[str, float] = defaultdict(float)
    for profile in imported["profiles"]:
        for frame, weights in profile["frames"].items():
            held[_function(frame)] += weights["total"]
    return {name: held.get(name, 0.0) / (total or 1) for name in names}


def all_shares(path: Path, buildid_dir: Path, names: Iterable[str]) -> dict[str, dict[str, float]]:
    """Every reader's shares for ``names``: {reader: {function: share}}."""
    wanted = tuple(names)
    script = script_text(path, buildid_dir)
    return {
        "perf report": report_shares(path, buildid_dir, wanted),
        "perf script, lines": folded_line_shares(script, wanted),
        "npm flamegraph": flamegraph_shares(script, wanted),
        "speedscope": speedscope_shares(script, wanted),
    }
