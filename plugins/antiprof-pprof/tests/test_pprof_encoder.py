"""Windows to pprof, read back by go tool pprof and the npm pprof-format decoder."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest

from antiprof_core.model import Frame, FrameKind, Mapping, Process, ProfileWindow, Sample
from antiprof_core.sources.synthetic import synthetic_host, synthetic_window
from antiprof_core.summary import HottestFunctions
from antiprof_pprof import build_profile, encode_profile, profile_pb2

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import GoPprof, Readers

START = 1_700_000_000_000_000_000
APP = Mapping(0x5555_0000_0000, 0x5555_0010_0000, 0x1000, "/opt/app/bin/server", "1f" * 20, 77)
LIBC = Mapping(0x7F00_0000_0000, 0x7F00_0020_0000, 0x2000, "/usr/lib/x86_64-linux-gnu/libc.so.6", "c0" * 20, 78)
_HOST_KERNEL = synthetic_host().kernel
assert _HOST_KERNEL is not None
KERNEL: Mapping = _HOST_KERNEL
assert KERNEL is not None


def frame(name: str | None, address: int, mapping: Mapping | None = APP, kind: FrameKind = FrameKind.NATIVE) -> Frame:
    return Frame(address, kind, name, 4 if name else 0, mapping)


HANDLE = frame("handle_request", APP.start + 0x1200)
PARSE = frame("parse_header", APP.start + 0x2200)
MAIN = frame("main", APP.start + 0x100)
MEMCPY = frame(None, LIBC.start + 0x9_9990, LIBC)  # an address nothing could name
SYSCALL = frame("entry_SYSCALL_64", KERNEL.start + 0x40, KERNEL, FrameKind.KERNEL)


def window(start_ns: int = START, container: str | None = "c0ffee" * 10) -> ProfileWindow:
    process = Process(4242, "server", APP.path, (APP.path, "--port=80"), container, (APP, LIBC))
    samples = (
        Sample(4242, 4242, 0, "server", (PARSE, HANDLE, MAIN), 6),
        Sample(4242, 4243, 1, "worker-1", (HANDLE, MAIN), 3),
        Sample(4242, 4243, 0, "worker-1", (MEMCPY, PARSE, HANDLE, MAIN), 2),
        Sample(4242, 4243, 1, "worker-1", (SYSCALL, HANDLE, MAIN), 1),
        Sample(4242, 4243, 1, "worker-1", (), 5),  # no stack at all: nothing to attribute, left out
    )
    return ProfileWindow(start_ns, start_ns + 1_000_000_000, 100, synthetic_host(), samples, {4242: process})


def write(path: Path, *windows: ProfileWindow) -> Path:
    path.write_bytes(encode_profile(windows))
    return path


def test_the_profile_says_what_it_measures_and_when() -> None:
    profile = profile_pb2.Profile.FromString(gzip.decompress(encode_profile([window()])))
    text = profile.string_table

    assert text[0] == ""
    assert [(text[t.type], text[t.unit]) for t in profile.sample_type] == [("samples", "count"), ("cpu", "nanoseconds")]
    assert (text[profile.period_type.type], text[profile.period_type.unit]) == ("cpu", "nanoseconds")
    assert profile.period == 10_000_000  # 100 Hz
    assert (profile.time_nanos, profile.duration_nanos) == (START, 1_000_000_000)
    assert [list(s.value) for s in profile.sample] == [[6, 60_000_000], [3, 30_000_000], [2, 20_000_000],
                                                       [1, 10_000_000]]  # fmt: skip


def test_pprof_format_reads_stacks_labels_mappings_and_functions(tmp_path: Path, readers: type[Readers]) -> None:
    [decoded] = readers.decode(write(tmp_path / "one.pb.gz", window()))

    assert decoded["sampleTypes"] == [["samples", "count"], ["cpu", "nanoseconds"]]
    assert decoded["periodType"] == ["cpu", "nanoseconds"] and decoded["period"] == 10_000_000
    assert decoded["timeNanos"] == str(START) and decoded["durationNanos"] == "1000000000"
    first, second, third, fourth = decoded["samples"]
    assert first == {
        "stack": ["parse_header", "handle_request", "main"],
        "values": [6, 60_000_000],
        "labels": {"pid": 4242, "tid": 4242, "thread": "server", "process": "server", "container_id": "c0ffee" * 10},
    }
    assert second["labels"]["tid"] == 4243 and second["labels"]["thread"] == "worker-1"
    assert third["stack"] == [hex(MEMCPY.address), "parse_header", "handle_request", "main"]
    assert fourth["stack"] == ["entry_SYSCALL_64", "handle_request", "main"]
    mappings = {m["file"]: m for m in decoded["mappings"]}
    assert decoded["mappings"][0]["file"] == APP.path  # the main binary first
    assert mappings[APP.path] | {"id": 0} == {
        "id": 0, "start": str(APP.start), "limit": str(APP.end), "offset": str(APP.file_offset), "file": APP.path,
        "buildId": APP.build_id, "hasFunctions": True,
    }  # fmt: skip
    assert mappings[LIBC.path]["hasFunctions"] is False  # go tool pprof may symbolize it from the file
    assert mappings["[kernel.kallsyms]"]["buildId"] == KERNEL.build_id
    assert {"name": "handle_request", "systemName": "handle_request"} in decoded["functions"]
    assert len(decoded["functions"]) == 4  # each function once, however many stacks hold it


def test_container_label_only_when_the_process_has_one(tmp_path: Path, readers: type[Readers]) -> None:
    [decoded] = readers.decode(write(tmp_path / "bare.pb.gz", window(container=None)))

    assert all(set(s["labels"]) == {"pid", "tid", "thread", "process"} for s in decoded["samples"])


def test_go_tool_pprof_reads_the_names_the_labels_and_the_header(tmp_path: Path, go_pprof: GoPprof) -> None:
    path = write(tmp_path / "one.pb.gz", window())

    top = go_pprof.top(str(path))
    raw = go_pprof.run("-raw", str(path))
    tags = go_pprof.run("-tags", str(path))

    assert top["parse_header"].flat_percent == pytest.approx(100 * 6 / 12, abs=0.01)
    assert top["handle_request"].cum_percent == pytest.approx(100.0)
    assert top["entry_SYSCALL_64"].flat_percent == pytest.approx(100 * 1 / 12, abs=0.01)
    assert raw.returncode == 0 and "PeriodType: cpu nanoseconds" in raw.stdout and "Period: 10000000" in raw.stdout
    mappings = raw.stdout.split("Mappings\n", 1)[1].splitlines()
    assert f"0x{APP.start:x}/0x{APP.end:x}/0x{APP.file_offset:x} {APP.path} {APP.build_id} [FN]" in mappings[0]
    assert tags.returncode == 0, tags.stderr
    for expected in ("thread: Total 12", "worker-1", "process: Total 12", "container_id: Total 12", "pid: Total 12"):
        assert expected in tags.stdout, tags.stdout


def test_shares_equal_antiprof_table_in_both_readers(tmp_path: Path, go_pprof: GoPprof, readers: type[Readers]) -> None:
    windows = [synthetic_window(stacks=400, depth=12, seed=seed, start_ns=START + seed * 10**10) for seed in (1, 2)]
    table = HottestFunctions()
    for each in windows:
        table.consume(each)
    expected = readers.table_shares(table)
    path = write(tmp_path / "two.pb.gz", *windows)

    from_go = go_pprof.top(str(path))
    from_js = readers.decoded_shares(readers.decode(path))

    assert set(from_go) == set(expected) == set(from_js)
    for name, (own, total) in expected.items():
        assert abs(from_go[name].flat_percent - own) <= 0.01 and abs(from_go[name].cum_percent - total) <= 0.01, name
        assert from_js[name] == pytest.approx((own, total)), name


def test_windows_merge_into_one_profile_spanning_them() -> None:
    later = START + 5_000_000_000
    profile = build_profile([window(), window(start_ns=later)])

    assert (profile.time_nanos, profile.duration_nanos) == (START, 6_000_000_000)
    assert sum(s.value[0] for s in profile.sample) == 2 * 12
    assert len(profile.location) == 5  # shared, not repeated per window
    assert len(profile.mapping) == 3


def test_an_empty_window_is_a_valid_empty_profile(tmp_path: Path, go_pprof: GoPprof) -> None:
    empty = attrs.evolve(window(), samples=())
    path = write(tmp_path / "empty.pb.gz", empty)

    raw = go_pprof.run("-raw", str(path))

    assert raw.returncode == 0, raw.stderr
    assert build_profile([empty]).sample == []


def renamed(prefix: str) -> ProfileWindow:
    """window()'s shape with fresh frame objects named after ``prefix``."""
    frames = {f: attrs.evolve(f, symbol=f"{prefix}_{f.symbol}") for f in (PARSE, HANDLE, MAIN, SYSCALL)}
    base = window()
    samples = tuple(attrs.evolve(s, stack=tuple(frames.get(f, f) for f in s.stack)) for s in base.samples)
    return attrs.evolve(base, samples=samples)


def test_a_merging_builder_adds_up_equal_stacks_and_keeps_no_window() -> None:
    import gc
    import weakref

    from antiprof_pprof import ProfileBuilder

    builder = ProfileBuilder(merge_samples=True)
    first = renamed("old")
    builder.add(first)
    gone = weakref.ref(first)
    del first
    gc.collect()
    for _ in range(2):  # new frame objects, possibly at the dead ones' addresses
        builder.add(renamed("new"))
    profile = builder.build()

    assert gone() is None
    names = {f.id: profile.string_table[f.name] for f in profile.function}
    by_location = {loc.id: names.get(loc.line[0].function_id) if loc.line else None for loc in profile.location}
    stacks = {tuple(by_location[i] for i in s.location_id): list(s.value) for s in profile.sample}
    assert stacks[("new_parse_header", "new_handle_request", "new_main")] == [12, 120_000_000]
    assert stacks[("old_parse_header", "old_handle_request", "old_main")] == [6, 60_000_000]
    assert len(profile.sample) == 8  # 4 distinct (stack, thread) per name prefix
    assert builder.windows == 3
