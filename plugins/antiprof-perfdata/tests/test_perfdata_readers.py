"""Every tool people read perf.data with shows antiprof's own shares: perf report, perf script
folded by lines, npm flamegraph and speedscope's importer (synthetic windows over a real ELF)."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
from antiprof_perfdata import layout, readers
from antiprof_perfdata.timeline import sample_times
from antiprof_perfdata.writer import write_perf_data

from antiprof_core.host import read_host
from antiprof_core.model import Host, ProfileWindow, Sample, SamplingMode
from antiprof_core.testing import synthetic_window

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import ElfWindows

STACKS = {
    ("work_heavy", "cycle", "main"): 180,
    ("work_light", "cycle", "main"): 90,
    ("cycle", "main"): 30,
}
NAMES = ("work_heavy", "work_light", "cycle")
START = 1_700_000_000_000_000_000
ONE_POINT = 0.01


@pytest.fixture(scope="module")
def host() -> Host:
    return read_host()


def as_trace(window: ProfileWindow, seed: int = 1) -> ProfileWindow:
    """The same samples taken one by one at the sampling period, stacks in a seeded random order."""
    order = [index for index, sample in enumerate(window.samples) for _ in range(sample.count)]
    random.Random(seed).shuffle(order)
    times: dict[int, list[int]] = {index: [] for index in range(len(window.samples))}
    for position, index in enumerate(order):
        times[index].append(window.start_ns + position * window.period_ns)
    samples = tuple(attrs.evolve(s, timestamps=tuple(times[i])) for i, s in enumerate(window.samples))
    end_ns = window.start_ns + len(order) * window.period_ns  # a busy thread: no gap to the next window
    return attrs.evolve(window, samples=samples, mode=SamplingMode.TRACE, end_ns=end_ns)


def assert_every_reader_agrees(path: Path, buildid_dir: Path, windows: list[ProfileWindow]) -> None:
    table = readers.table_shares(windows, NAMES)
    assert table["work_heavy"] == pytest.approx(0.6)
    for reader, shares in readers.all_shares(path, buildid_dir, NAMES).items():
        for name in NAMES:
            assert shares[name] == pytest.approx(table[name], abs=ONE_POINT), (reader, name, shares, table)


def test_every_reader_shows_the_tables_shares_in_aggregate_mode(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host
) -> None:
    windows = [elf_windows.window(STACKS, host, start_ns=START + n * 1_000_000_000) for n in range(2)]
    path = write_perf_data(tmp_path / "a.perf.data", windows)
    assert_every_reader_agrees(path, buildid_dir, windows)


def test_every_reader_shows_the_tables_shares_in_trace_mode(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host
) -> None:
    first = as_trace(elf_windows.window(STACKS, host, start_ns=START), seed=1)
    windows = [first, as_trace(elf_windows.window(STACKS, host, start_ns=first.end_ns), seed=2)]
    path = write_perf_data(tmp_path / "t.perf.data", windows)
    assert_every_reader_agrees(path, buildid_dir, windows)


def test_compact_form_is_right_in_perf_report_only(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host
) -> None:
    """The documented caveat of ``compact = true``: line-counting readers see one line per stack."""
    window = elf_windows.window(STACKS, host)
    path = write_perf_data(tmp_path / "c.perf.data", [window], compact=True)
    script = readers.script_text(path, buildid_dir)
    assert readers.report_shares(path, buildid_dir, NAMES)["work_heavy"] == pytest.approx(0.6, abs=0.001)
    assert readers.folded_line_shares(script, NAMES)["work_heavy"] == pytest.approx(1 / 3)


def test_aggregated_samples_are_spread_evenly_over_the_window_per_thread() -> None:
    window = synthetic_window(processes=3, stacks=60, seed=4, start_ns=START)
    events = sample_times(window)

    assert len(events) == window.sample_count
    assert [time for time, _ in events] == sorted(time for time, _ in events)
    by_thread: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for time, index in events:
        sample = window.samples[index]
        by_thread.setdefault((sample.pid, sample.tid), []).append((time, index))
    length = window.end_ns - window.start_ns
    for thread_events in by_thread.values():
        times = [time for time, _ in thread_events]
        gap = length / len(times)
        assert window.start_ns < times[0] <= window.start_ns + gap
        assert window.end_ns - gap <= times[-1] < window.end_ns
        assert all(abs((later - earlier) - gap) <= 1 for earlier, later in itertools.pairwise(times))


def test_stacks_are_interleaved_in_proportion_over_the_window(elf_windows: ElfWindows, host: Host) -> None:
    window = elf_windows.window(STACKS, host)
    events = sample_times(window)
    leaf = {index: sample.stack[0].symbol for index, sample in enumerate(window.samples)}
    for tenth in range(10):  # each tenth of the window holds a tenth of every stack's samples
        part = Counter(leaf[index] for _, index in events[tenth * 30 : (tenth + 1) * 30])
        assert part == {"work_heavy": 18, "work_light": 9, "cycle": 3}


def test_compact_samples_are_one_per_stack_and_time_ordered() -> None:
    window = synthetic_window(processes=2, stacks=25, seed=2, start_ns=START)
    events = sample_times(window, expand=False)
    assert sorted(index for _, index in events) == list(range(len(window.samples)))
    assert [time for time, _ in events] == sorted(time for time, _ in events)
    assert all(window.start_ns <= time < window.end_ns for time, _ in events)


def test_trace_samples_keep_their_own_times_in_order() -> None:
    window = synthetic_window(processes=2, stacks=30, seed=3, mode=SamplingMode.TRACE, start_ns=START)
    events = sample_times(window)
    assert [time for time, _ in events] == sorted(t for sample in window.samples for t in sample.timestamps)


def test_each_window_ends_a_round(tmp_path: Path, elf_windows: ElfWindows, host: Host) -> None:
    """PERF_RECORD_FINISHED_ROUND after every window, so perf sorts and frees a window at a time."""
    windows = [elf_windows.window(STACKS, host, start_ns=START + n * 1_000_000_000) for n in range(3)]
    path = write_perf_data(tmp_path / "r.perf.data", windows)
    data = path.read_bytes()
    header = layout.FILE_HEADER.unpack_from(data)
    offset, end = header[5], header[5] + header[6]
    kinds = []
    while offset < end:
        kind, _, size = layout.RECORD_HEADER.unpack_from(data, offset)
        kinds.append(kind)
        offset += size
    assert kinds.count(layout.RECORD_FINISHED_ROUND) == 3
    assert kinds[-1] == layout.RECORD_FINISHED_ROUND
    assert kinds.count(layout.RECORD_SAMPLE) == 3 * sum(STACKS.values())


def test_an_empty_stack_still_counts(elf_windows: ElfWindows, host: Host) -> None:
    window = elf_windows.window(STACKS, host)
    empty = Sample(window.samples[0].pid, window.samples[0].tid, 0, "two_functions", (), 5)
    events = sample_times(attrs.evolve(window, samples=(*window.samples, empty)))
    assert len(events) == sum(STACKS.values()) + 5


def test_a_trace_sample_stamped_before_its_window_keeps_its_time() -> None:
    window = synthetic_window(processes=1, stacks=3, seed=5, mode=SamplingMode.TRACE, start_ns=START)
    early = attrs.evolve(window.samples[0], timestamps=(START - 5_000, *window.samples[0].timestamps[1:]))
    window = attrs.evolve(window, samples=(early, *window.samples[1:]))
    events = sample_times(window)
    assert events[0] == (START - 5_000, 0)
    assert [time for time, _ in events] == sorted(t for sample in window.samples for t in sample.timestamps)
