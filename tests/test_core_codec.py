import json

import attrs

from antiprof_core.codec import converter, window_from_dict, window_to_dict
from antiprof_core.model import Frame, FrameKind, ProfileWindow, SamplingMode
from antiprof_core.testing import synthetic_window


def test_round_trip_through_json_is_lossless() -> None:
    window = synthetic_window(processes=5, stacks=200, depth=12, seed=7)
    text = json.dumps(window_to_dict(window))
    assert window_from_dict(json.loads(text)) == window


def test_trace_mode_keeps_every_timestamp() -> None:
    window = synthetic_window(processes=2, stacks=50, mode=SamplingMode.TRACE)
    back = converter.structure(json.loads(json.dumps(converter.unstructure(window))), ProfileWindow)
    assert back == window
    assert all(len(s.timestamps) == s.count for s in back.samples)
    assert back.mode is SamplingMode.TRACE


def test_frames_and_mappings_are_stored_once() -> None:
    window = synthetic_window(processes=3, stacks=300, depth=16)
    data = window_to_dict(window)
    distinct_frames = {id(f) for s in window.samples for f in s.stack}
    assert len(data["frames"]) == len(distinct_frames) < sum(len(s.stack) for s in window.samples)
    # Each process's executable and library mapping, and the kernel's text: once each.
    assert len(data["mappings"]) == 3 * 2 + 1
    first = window.samples[0]
    assert [data["frames"][i]["symbol"] for i in data["samples"][0]["stack"]] == [f.symbol for f in first.stack]
    assert data["period_ns"] == 1_000_000_000 // window.frequency_hz


def _with_python_frames(window: ProfileWindow) -> ProfileWindow:
    """The first sample gets two CPython frames on top of its native ones, as the sampler will add them."""
    first = window.samples[0]
    python = (
        Frame(0x7F0012345678, FrameKind.CPYTHON, "Worker.heavy_math", 42, None, "/srv/app/work.py", 17, 12),
        Frame(0x7F0012340000, FrameKind.CPYTHON, "<module>", 8, None, "/srv/app/main.py", None),
    )
    return attrs.evolve(window, samples=(attrs.evolve(first, stack=python + first.stack), *window.samples[1:]))


def test_python_frames_keep_file_and_line_through_json() -> None:
    window = _with_python_frames(synthetic_window(processes=2, stacks=20, depth=6, seed=3))
    back = window_from_dict(json.loads(json.dumps(window_to_dict(window))))
    assert back == window
    top = back.samples[0].stack[0]
    assert (top.kind, top.symbol, top.file, top.line, top.start_line, top.offset) == (
        FrameKind.CPYTHON,
        "Worker.heavy_math",
        "/srv/app/work.py",
        17,
        12,
        42,
    )
    assert back.samples[0].stack[1].line is None and back.samples[0].stack[1].start_line is None
    assert FrameKind.CPYTHON.value == "cpython"  # OTel's profile.frame.type for CPython


def test_json_written_before_file_and_line_existed_still_decodes() -> None:
    window = synthetic_window(processes=2, stacks=20, depth=6, seed=4)
    data = window_to_dict(window)
    assert all(
        not {"file", "line", "start_line"} & set(f) for f in data["frames"]
    )  # native frames: same JSON as before
    back = window_from_dict(json.loads(json.dumps(data)))
    assert back == window
    assert all(f.file is None and f.line is None for f in back.frames())
