import json

from antiprof_core.codec import converter, window_from_dict, window_to_dict
from antiprof_core.model import ProfileWindow, SamplingMode
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
