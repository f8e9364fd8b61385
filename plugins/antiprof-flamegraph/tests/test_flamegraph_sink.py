"""The flamegraph sink on synthetic windows: files, their content, retention, span, and hostile paths."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import antiprof_flamegraph
import pytest
from antiprof_flamegraph import FlameGraphConfig, FlameGraphWriteError
from antiprof_flamegraph.testing import known_window

from antiprof_core.config import ConfigError, structure_section
from antiprof_core.testing import make_consumer, run_consumer, synthetic_window

TEN_S = 10_000_000_000
HOT = {
    ("main", "cycle", "work_heavy"): 60,
    ("main", "cycle", "work_light"): 30,
    ("main", "cycle", "work_heavy", "k:entry_SYSCALL_64", "k:do_syscall_64"): 6,
    ("lib:__libc_start_main", "main", "j:JS:*hot"): 4,
}


def sink(directory: Path, **options: object) -> antiprof_flamegraph.FlameGraphSink:
    consumer = make_consumer(antiprof_flamegraph, "flamegraph", {"output_dir": str(directory), **options})
    assert isinstance(consumer, antiprof_flamegraph.FlameGraphSink)
    return consumer


def folded_lines(path: Path) -> dict[str, int]:
    lines = {}
    for line in path.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        lines[stack] = int(count)
    return lines


def test_each_window_gets_an_html_folded_and_svg_file_and_the_rolling_ones(tmp_path: Path) -> None:
    out = tmp_path / "fg"
    windows = [known_window(HOT, start_ns=1_764_000_000_000_000_000 + i * TEN_S) for i in range(2)]

    consumer = sink(out, formats=["html", "folded", "svg"])
    run_consumer(consumer, windows)

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "antiprof-synthetic-host-20251124T160000Z.folded",
        "antiprof-synthetic-host-20251124T160000Z.html",
        "antiprof-synthetic-host-20251124T160000Z.svg",
        "antiprof-synthetic-host-20251124T160010Z.folded",
        "antiprof-synthetic-host-20251124T160010Z.html",
        "antiprof-synthetic-host-20251124T160010Z.svg",
        "flamegraph.folded",
        "flamegraph.html",
        "flamegraph.svg",
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())
    assert sorted(consumer.files_written) == sorted(out.iterdir())
    per_window = folded_lines(out / "antiprof-synthetic-host-20251124T160000Z.folded")
    assert per_window == {
        "app;main;cycle;work_heavy": 60,
        "app;main;cycle;work_light": 30,
        "app;main;cycle;work_heavy;entry_SYSCALL_64_[k];do_syscall_64_[k]": 6,
        "app;__libc_start_main;main;JS:*hot_[j]": 4,
    }
    assert folded_lines(out / "flamegraph.folded") == {stack: 2 * n for stack, n in per_window.items()}


def test_the_html_page_is_self_contained_and_carries_every_sample(tmp_path: Path) -> None:
    run_consumer(sink(tmp_path, per_window=False), [known_window(HOT)])
    page = (tmp_path / "flamegraph.html").read_text()

    assert (
        "<script src" not in page
        and "<link" not in page
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert "default-src 'none'" in page  # a CSP that forbids any request
    data = re.search(r'<script type="application/json" id="flamegraph-data">(.*?)</script>', page, re.S)
    assert data is not None
    import json

    payload = json.loads(data.group(1))
    root_label, root_value, root_depth = payload["nodes"][:3]
    assert (payload["labels"][root_label][0], root_value, root_depth) == ("all", 100, 0)
    names = {label[0]: payload["kinds"][label[2]] for label in payload["labels"]}
    assert names["work_heavy"] == "native" and names["do_syscall_64"] == "kernel" and names["JS:*hot"] == "jit"
    assert "100 samples" in page  # the subtitle


def test_hostile_names_cannot_break_out_of_the_page(tmp_path: Path) -> None:
    evil = "</script><script>alert(1)</script><!--"
    run_consumer(
        sink(tmp_path, per_window=False, formats=["html", "svg"]),
        [known_window({("main", evil): 5}, process_name=evil)],
    )
    page = (tmp_path / "flamegraph.html").read_text()
    assert "<script>alert(1)" not in page and "<!--" not in page
    assert "<script>alert" not in (tmp_path / "flamegraph.svg").read_text()


def test_the_rolling_file_covers_the_last_span_only(tmp_path: Path) -> None:
    windows = [
        known_window({("main", f"step{i}"): 10}, start_ns=1_764_000_000_000_000_000 + i * TEN_S) for i in range(4)
    ]

    run_consumer(sink(tmp_path, formats=["folded"], per_window=False, span="20s"), windows)

    assert folded_lines(tmp_path / "flamegraph.folded") == {"app;main;step2": 10, "app;main;step3": 10}


def test_retention_keeps_the_newest_files_and_leaves_others_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.html").write_text("mine")
    (tmp_path / "antiprof-other-host-20200101T000000Z.html").write_text("another host's")
    windows = [known_window(HOT, start_ns=1_764_000_000_000_000_000 + i * TEN_S) for i in range(5)]

    run_consumer(sink(tmp_path, max_files=2, latest=""), windows)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "antiprof-other-host-20200101T000000Z.html",
        "antiprof-synthetic-host-20251124T160030Z.html",
        "antiprof-synthetic-host-20251124T160040Z.html",
        "notes.html",
    ]


def test_planted_symlinks_are_replaced_or_skipped_never_followed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / "flamegraph.html").symlink_to(victim)
    (out / "antiprof-synthetic-host-20251124T160000Z.html").symlink_to(victim)

    run_consumer(sink(out), [known_window(HOT)])

    assert victim.read_text() == "precious"
    assert not (out / "flamegraph.html").is_symlink() and "work_heavy" in (out / "flamegraph.html").read_text()
    assert (out / "antiprof-synthetic-host-20251124T160000Z.html").is_symlink()
    assert "work_heavy" in (out / "antiprof-synthetic-host-20251124T160000Z-1.html").read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_symlinked_output_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    consumer = sink(tmp_path / "link")
    consumer.start()
    with pytest.raises(FlameGraphWriteError, match=rf"cannot write {tmp_path / 'link'}"):
        consumer.consume(known_window(HOT))
    assert list(real.iterdir()) == []


def test_a_write_error_names_the_path_and_the_next_window_tries_again(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    consumer = sink(blocked / "fg")
    consumer.start()
    with pytest.raises(FlameGraphWriteError, match=rf"cannot write {blocked / 'fg'}: (is n|N)ot a directory"):
        consumer.consume(known_window(HOT))
    blocked.unlink()
    consumer.consume(known_window(HOT, start_ns=1_764_000_000_000_000_000 + TEN_S))
    assert (blocked / "fg" / "flamegraph.html").exists()


def test_big_windows_are_cut_to_max_nodes_keeping_the_widest(tmp_path: Path) -> None:
    window = synthetic_window(processes=50, stacks=5000, depth=20, seed=3)
    run_consumer(sink(tmp_path, per_window=False, max_nodes=500), [window])
    page = (tmp_path / "flamegraph.html").read_text()
    import json

    match = re.search(r'id="flamegraph-data">(.*?)</script>', page, re.S)
    assert match is not None, "no flamegraph-data script in the page"
    payload = json.loads(match.group(1))
    assert 50 < len(payload["nodes"]) // 3 <= 500
    assert payload["nodes"][1] == window.sample_count  # the root keeps every sample


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"formats": []}, 'consumers.fg.formats: list at least one of "html", "folded", "svg"'),
        ({"formats": ["png"]}, "consumers.fg.formats"),
        ({"latest": "../x"}, "consumers.fg.latest: must be a plain file name"),
        ({"per_window": False, "latest": ""}, "would write nothing"),
        ({"span": "0s"}, "consumers.fg.span: must be greater than 0"),
        ({"max_files": 0}, "consumers.fg.max_files: must be between 1 and 1000000"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        structure_section(options, FlameGraphConfig, "consumers.fg")
    assert any(message in line for line in error.value.lines()), error.value.lines()


def test_directory_is_created_0700_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run_consumer(sink(tmp_path / "a" / "b"), [known_window(HOT)])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_a_failed_rewrite_names_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "flamegraph.html").mkdir()  # something that cannot be replaced by a file
    consumer = sink(tmp_path, per_window=False)
    consumer.start()
    with pytest.raises(FlameGraphWriteError, match=rf"^cannot write {tmp_path / 'flamegraph.html'}: Is a directory$"):
        consumer.consume(known_window(HOT))
    assert [p.name for p in tmp_path.iterdir()] == ["flamegraph.html"]
