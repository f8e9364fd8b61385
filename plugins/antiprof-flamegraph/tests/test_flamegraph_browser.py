"""The HTML flame graph in headless Chromium, on windows of a known shape: what a person sees and does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import antiprof_flamegraph
import pytest
from antiprof_flamegraph.testing import (
    Chromium,
    Page,
    centre,
    frames,
    known_window,
    named,
    require_chromium,
    widest_path,
)

from antiprof_core.testing import make_consumer, run_consumer

HOT = {
    ("main", "cycle", "work_heavy"): 60,
    ("main", "cycle", "work_light"): 30,
    ("main", "cycle", "work_heavy", "k:entry_SYSCALL_64", "k:do_syscall_64"): 6,
    ("lib:__libc_start_main", "main", "j:JS:*hot"): 4,
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    require_chromium()
    with Chromium() as chromium:
        yield chromium


def write_page(directory: Path, stacks: dict[tuple[str, ...], int], process_name: str = "app") -> Path:
    consumer = make_consumer(antiprof_flamegraph, "flamegraph", {"output_dir": str(directory), "per_window": False})
    run_consumer(consumer, [known_window(stacks, process_name=process_name)])
    return directory / "flamegraph.html"


@pytest.fixture
def page(browser: Chromium, tmp_path: Path) -> Iterator[Page]:
    opened = browser.open(write_page(tmp_path, HOT))
    yield opened
    assert opened.errors == []
    opened.close()


def test_the_hot_path_is_widest_and_frames_are_coloured_by_kind(page: Page, tmp_path: Path) -> None:
    shot = page.screenshot(tmp_path / "flamegraph.png")
    all_frames = frames(page)
    root = named(page, "all")
    graph_width = page.evaluate("document.getElementById('flamegraph').getBoundingClientRect().width")

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert abs(root["width"] - graph_width) < 1
    assert widest_path(all_frames) == ["all", "app", "main", "cycle", "work_heavy", "entry_SYSCALL_64", "do_syscall_64"]
    heavy, light = named(page, "work_heavy"), named(page, "work_light")
    assert abs(heavy["width"] / root["width"] - 0.66) < 0.005 and abs(light["width"] / root["width"] - 0.30) < 0.005
    kinds = {f["text"]: f["classes"].split()[1] for f in all_frames}
    assert (kinds["work_heavy"], kinds["do_syscall_64"], kinds["JS:*hot"]) == ("k-native", "k-kernel", "k-jit")
    colours = {f["text"]: f["colour"] for f in all_frames}
    assert len({colours["work_heavy"], colours["do_syscall_64"], colours["JS:*hot"], colours["app"]}) == 4


def test_clicking_a_frame_zooms_into_it_and_reset_zooms_out(page: Page) -> None:
    root_width = named(page, "all")["width"]

    page.click(*centre(named(page, "cycle")))

    cycle = page.wait_for(
        "[...document.querySelectorAll('.frame')].find(e => e.textContent === 'cycle' && "
        "Math.abs(e.getBoundingClientRect().width - document.getElementById('flamegraph')"
        ".getBoundingClientRect().width) < 1) ? 1 : 0"
    )
    assert cycle
    heavy, light = named(page, "work_heavy"), named(page, "work_light")
    assert abs(heavy["width"] / root_width - 66 / 96) < 0.005  # now a share of cycle's 96 samples
    assert abs(light["width"] / root_width - 30 / 96) < 0.005
    assert not [f for f in frames(page) if f["text"] == "JS:*hot"]  # outside the zoomed frame
    assert "ancestor" in named(page, "main")["classes"]
    assert page.evaluate("document.getElementById('reset').disabled") is False

    page.click(*centre(named(page, "work_heavy")))
    assert abs(named(page, "work_heavy")["width"] - root_width) < 1
    assert named(page, "work_heavy")["left"] == pytest.approx(named(page, "all")["left"], abs=0.5)

    reset = page.evaluate(
        "(() => { const r = document.getElementById('reset').getBoundingClientRect();"
        " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
    )
    page.click(*reset)
    assert abs(named(page, "work_heavy")["width"] / root_width - 0.66) < 0.005
    assert named(page, "JS:*hot")


def test_search_highlights_matches_and_reports_their_share(page: Page) -> None:
    page.evaluate("document.getElementById('search').focus()")
    page.type_text("work_")
    assert page.wait_for("document.getElementById('match').textContent") == "Matched: 96.00% (96 of 100 samples)"
    highlighted = sorted(f["text"] for f in frames(page) if "match" in f["classes"].split())
    assert highlighted == ["work_heavy", "work_light"]

    page.evaluate("document.getElementById('search').select()")
    page.type_text("syscall|JS")
    page.wait_for("document.getElementById('match').textContent.includes('10.00%')")
    assert page.evaluate("document.getElementById('match').textContent") == "Matched: 10.00% (10 of 100 samples)"


def test_a_frame_called_under_itself_is_counted_once(browser: Chromium, tmp_path: Path) -> None:
    opened = browser.open(write_page(tmp_path, {("main", "walk", "walk", "walk"): 30, ("main", "idle"): 70}))
    opened.evaluate("document.getElementById('search').focus()")
    opened.type_text("^walk$")
    assert opened.wait_for("document.getElementById('match').textContent") == "Matched: 30.00% (30 of 100 samples)"
    assert opened.errors == []


def test_hover_shows_name_module_kind_samples_and_share(page: Page) -> None:
    page.hover(*centre(named(page, "work_heavy")))
    details = page.wait_for(
        "document.getElementById('details').textContent.startsWith('work_heavy') && "
        "document.getElementById('details').textContent"
    )
    assert details == "work_heavy (app), native: 66 samples, 66.00% of all"

    page.hover(*centre(named(page, "__libc_start_main")))
    details = page.evaluate("document.getElementById('details').textContent")
    assert details == "__libc_start_main (libc.so.6), native: 4 samples, 4.00% of all"


def test_hostile_names_are_shown_as_text(browser: Chromium, tmp_path: Path) -> None:
    evil = '<img src=x onerror="document.title=\'owned\'"></script><script>document.title="owned"</script>'
    opened = browser.open(write_page(tmp_path, {("main", evil): 5}, process_name=evil))
    texts = [f["text"] for f in frames(opened)]
    assert texts.count(evil) == 2  # the process and the frame, verbatim
    assert opened.evaluate("document.title") != "owned" and opened.errors == []
    assert not opened.evaluate("document.querySelector('#flamegraph img')")


def test_the_span_file_opens_in_the_browser_without_network(browser: Chromium, tmp_path: Path) -> None:
    """Nothing on the page asks for anything: every resource it loaded is the page itself."""
    opened = browser.open(write_page(tmp_path, HOT))
    resources = opened.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []
