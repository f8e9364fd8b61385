"""CPython frames in the flame graph: one box per function named by its qualified name, the file and
the sampled lines in the details, a colour of their own; folded text keeps the bare name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import antiprof_flamegraph
import attrs
import pytest
from antiprof_flamegraph.stacks import LabelTable, Lines, fold_window
from antiprof_flamegraph.testing import Chromium, centre, frames, require_chromium

from antiprof_core.testing import make_consumer, run_consumer
from antiprof_core.testing.python_windows import SYNTHETIC_PYTHON_FILE, synthetic_python_window

FILE = SYNTHETIC_PYTHON_FILE
INTERPRETER = "python3;_start;__libc_start_main;main;Py_BytesMain;Py_RunMain;run_mod;PyEval_EvalCode;<module>;main"


def write(directory: Path, formats: list[str]) -> Path:
    options = {"output_dir": str(directory), "per_window": False, "formats": formats}
    run_consumer(make_consumer(antiprof_flamegraph, "flamegraph", options), [synthetic_python_window()])
    return directory


def test_folded_keeps_one_bare_name_per_function_and_the_svg_names_file_and_lines(tmp_path: Path) -> None:
    written = write(tmp_path, ["folded", "svg"])
    assert (written / "flamegraph.folded").read_text() == "".join(
        f"{INTERPRETER};{tail}\n"
        for tail in (
            "[unknown]_0x7f2000009000 1",  # a code object that could not be read
            "hash_block;_hashlib_HASH_update;_sha256_update 10",
            "heavy_math 60",  # lines 12 and 13 of one function: one frame
            "light_strings 30",
        )
    )
    svg = (written / "flamegraph.svg").read_text()
    assert f"<title>heavy_math ({FILE}:12, 13): 60 samples, 59.41%</title>" in svg  # most sampled line first
    assert f"<title>&lt;module&gt; ({FILE}:35): 101 samples, 100.00%</title>" in svg
    assert "<title>main (python3.11): 101 samples, 100.00%</title>" in svg  # the interpreter's C main
    assert f"<title>main ({FILE}:30, 31, 32): 101 samples, 100.00%</title>" in svg  # Python's, not merged with it


def test_the_span_forgets_the_lines_of_windows_it_no_longer_covers(tmp_path: Path) -> None:
    first = synthetic_python_window(start_ns=1_700_000_000 * 10**9)
    later = synthetic_python_window(start_ns=1_700_000_100 * 10**9)
    later = attrs.evolve(later, samples=later.samples[1:])  # heavy_math only on line 13 now
    options = {"output_dir": str(tmp_path), "per_window": False, "formats": ["svg"], "span": "30s"}
    run_consumer(make_consumer(antiprof_flamegraph, "flamegraph", options), [first, later])
    assert f"<title>heavy_math ({FILE}:13): 20 samples, 32.79%</title>" in (tmp_path / "flamegraph.svg").read_text()


def test_lines_are_counted_per_window_and_survive_compaction() -> None:
    table = LabelTable()
    for i in range(50):  # labels of processes since exited
        table.id((f"gone_{i}", "", "native"))
    lines: Lines = {}
    folded = fold_window(synthetic_python_window(), table, lines)
    heavy = table.ids[("heavy_math", FILE, "cpython")]
    assert (lines[(heavy, 12)], lines[(heavy, 13)]) == (40, 20)
    assert sum(n for (label, _), n in lines.items() if label == heavy) == 60
    before = {(table.labels[label], line): n for (label, line), n in lines.items()}
    [renumbered] = table.compact([folded], [lines])
    assert not [name for name, _, _ in table.labels if name.startswith("gone_")]
    assert table.ids[("heavy_math", FILE, "cpython")] != heavy  # renumbered
    assert {(table.labels[label], line): n for (label, line), n in lines.items()} == before
    assert sum(renumbered.values()) == 101


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    require_chromium()
    with Chromium() as chromium:
        yield chromium


def test_hovering_a_python_frame_shows_its_file_and_lines_in_its_own_colour(browser: Chromium, tmp_path: Path) -> None:
    page = browser.open(write(tmp_path, ["html"]) / "flamegraph.html")
    all_frames = frames(page)
    [heavy] = [f for f in all_frames if f["text"] == "heavy_math"]
    mains = sorted((f["top"], f["classes"].split()[1]) for f in all_frames if f["text"] == "main")
    assert [kind for _, kind in mains] == ["k-native", "k-cpython"]  # C main above, Python main below it
    assert heavy["classes"].split()[1] == "k-cpython"
    [sha] = [f for f in all_frames if f["text"] == "_sha256_update"]
    assert sha["classes"].split()[1] == "k-native" and sha["colour"] != heavy["colour"]
    page.hover(*centre(heavy))
    details = page.wait_for(
        "document.getElementById('details').textContent.startsWith('heavy_math') && "
        "document.getElementById('details').textContent"
    )
    assert details == f"heavy_math ({FILE}:12, 13), Python: 60 samples, 59.41% of all"
    legend = page.evaluate("[...document.querySelectorAll('#legend li')].map(e => e.textContent)")
    assert "Python" in legend
    assert page.errors == []
    page.close()
