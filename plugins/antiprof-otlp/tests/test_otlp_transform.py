"""The pure transform: what a receiver decodes must be the window, with every index in range."""

from __future__ import annotations

import attrs
import pytest
from antiprof_otlp.reading import decoded_samples, index_problems
from antiprof_otlp.transform import SCOPE_NAME, TransformOptions, encode_window, frame_count
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest

from antiprof_core.model import Frame, FrameKind, Mapping, Process, ProfileWindow, Sample, SamplingMode
from antiprof_core.testing import synthetic_window


def decode(payload: bytes) -> ExportProfilesServiceRequest:
    return ExportProfilesServiceRequest.FromString(payload)


def only_request(window: ProfileWindow, options: TransformOptions | None = None) -> ExportProfilesServiceRequest:
    encoded = encode_window(window, options or TransformOptions())
    assert len(encoded) == 1
    return decode(encoded[0].payload)


def test_decoded_samples_are_the_window_frame_by_frame() -> None:
    window = synthetic_window(processes=7, stacks=300, depth=12, seed=3)
    request = only_request(window)
    assert index_problems(request) == []
    decoded = decoded_samples(request)
    assert sum(sample.count for sample in decoded) == window.sample_count
    expected = sorted(
        (s.pid, s.tid, s.cpu, s.thread_name, tuple((f.symbol, f.address, f.kind.value) for f in s.stack), s.count)
        for s in window.samples
    )
    got = sorted(
        (
            d.resource["process.pid"],
            d.attributes["thread.id"],
            d.attributes["cpu.logical_number"],
            d.attributes["thread.name"],
            tuple((f.function, f.address, f.frame_type) for f in d.frames),
            d.count,
        )
        for d in decoded
    )
    assert got == expected


def test_dictionary_zero_values_and_deduplication() -> None:
    window = synthetic_window(processes=4, stacks=200, depth=10)
    table = only_request(window).dictionary
    assert table.string_table[0] == ""
    for name in ("mapping_table", "location_table", "function_table", "link_table", "attribute_table", "stack_table"):
        assert getattr(table, name)[0].ByteSize() == 0, name
    assert len(set(table.string_table)) == len(table.string_table)
    assert len({f.SerializeToString() for f in table.function_table}) == len(table.function_table)
    assert len({m.SerializeToString() for m in table.mapping_table}) == len(table.mapping_table)
    assert len({loc.SerializeToString() for loc in table.location_table}) == len(table.location_table)
    assert len({tuple(s.location_indices) for s in table.stack_table}) == len(table.stack_table)
    assert len({a.SerializeToString() for a in table.attribute_table}) == len(table.attribute_table)
    # the shared library and the kernel appear once although every process maps them
    paths = [table.string_table[m.filename_strindex] for m in table.mapping_table[1:]]
    assert paths.count("/usr/lib/libsynthetic_0.so") == 1
    assert paths.count("[kernel.kallsyms]") == 1
    symbols = {f.symbol for f in window.frames()}
    assert len(table.function_table) == len(symbols) + 1


def test_equal_frames_that_are_different_objects_share_one_location() -> None:
    window = synthetic_window(processes=1, stacks=1, depth=3)
    sample = window.samples[0]
    copy = attrs.evolve(sample, stack=tuple(attrs.evolve(f) for f in sample.stack), tid=sample.tid + 1)
    table = only_request(attrs.evolve(window, samples=(sample, copy))).dictionary
    assert len(table.location_table) == len({f.address for f in sample.stack}) + 1
    assert len(table.stack_table) == 2


def test_profile_types_times_resource_and_scope() -> None:
    window = synthetic_window(processes=3, stacks=30, frequency_hz=99, start_ns=1_700_000_000_000_000_000)
    host = attrs.evolve(window.host, node_name="node-7", cluster_name="prod-eu")
    processes = dict(window.processes)
    processes[1001] = attrs.evolve(processes[1001], container_id="c0ffee" * 10)
    request = only_request(attrs.evolve(window, host=host, processes=processes))
    strings = request.dictionary.string_table
    assert len(request.resource_profiles) == 3
    by_pid = {}
    for resource_profiles in request.resource_profiles:
        attributes = {kv.key: kv.value for kv in resource_profiles.resource.attributes}
        by_pid[attributes["process.pid"].int_value] = attributes
        (scope_profiles,) = resource_profiles.scope_profiles
        assert scope_profiles.scope.name == SCOPE_NAME and scope_profiles.scope.version
        (profile,) = scope_profiles.profiles
        assert (strings[profile.sample_type.type_strindex], strings[profile.sample_type.unit_strindex]) == (
            "samples",
            "count",
        )
        assert (strings[profile.period_type.type_strindex], strings[profile.period_type.unit_strindex]) == (
            "cpu",
            "nanoseconds",
        )
        assert profile.period == 1_000_000_000 // 99
        assert profile.time_unix_nano == window.start_ns
        assert profile.duration_nano == window.end_ns - window.start_ns
    first = by_pid[1000]
    assert first["process.executable.path"].string_value == "/usr/bin/synthetic_app_0"
    assert first["process.executable.name"].string_value == "synthetic_app_0"
    assert first["service.name"].string_value == "synthetic_app_0"
    assert first["host.name"].string_value == "synthetic-host"
    assert first["k8s.node.name"].string_value == "node-7"
    assert first["k8s.cluster.name"].string_value == "prod-eu"
    assert "container.id" not in first
    assert by_pid[1001]["container.id"].string_value == "c0ffee" * 10


def test_no_kubernetes_attributes_unless_configured_and_service_name_override() -> None:
    window = synthetic_window(processes=1, stacks=5)
    request = only_request(window, TransformOptions(service_name="checkout"))
    attributes = {kv.key: kv.value for kv in request.resource_profiles[0].resource.attributes}
    assert "k8s.node.name" not in attributes and "k8s.cluster.name" not in attributes
    assert attributes["service.name"].string_value == "checkout"


def test_mappings_carry_gnu_build_ids_and_frame_types() -> None:
    window = synthetic_window(processes=3, stacks=60, depth=12)
    decoded = decoded_samples(only_request(window))
    frames = {(f.mapping_path, f.build_id, f.frame_type) for d in decoded for f in d.frames}
    assert ("/usr/bin/synthetic_app_2", f"{2:040x}", "native") in frames
    assert ("/usr/lib/libsynthetic_0.so", f"{0xABC:040x}", "native") in frames
    assert ("[kernel.kallsyms]", "ab" * 20, "kernel") in frames


def test_unknown_symbols_jit_frames_and_unknown_processes() -> None:
    jit_map = Mapping(0x7000_0000, 0x7001_0000, 0, "/tmp/perf-4242.map")
    stack = (
        Frame(0x7000_0010, FrameKind.JIT, "LazyCompile:work", 0x10, jit_map),
        Frame(0x4000_1234, FrameKind.NATIVE),  # nothing could name it, no mapping either
    )
    window = attrs.evolve(
        synthetic_window(processes=1, stacks=1),
        samples=(Sample(pid=4242, tid=4243, cpu=1, thread_name="node", stack=stack, count=7),),
        processes={},
    )
    request = only_request(window)
    assert index_problems(request) == []
    (decoded,) = decoded_samples(request)
    assert decoded.count == 7
    assert [(f.function, f.frame_type, f.mapping_path) for f in decoded.frames] == [
        ("LazyCompile:work", "jit", "/tmp/perf-4242.map"),
        ("", "native", ""),
    ]
    assert decoded.resource["process.pid"] == 4242
    assert decoded.resource["service.name"] == "unknown_service"


def test_trace_mode_keeps_every_timestamp() -> None:
    window = synthetic_window(processes=2, stacks=40, mode=SamplingMode.TRACE, start_ns=10**18)
    request = only_request(window)
    decoded = decoded_samples(request)
    for d in decoded:
        assert d.count == len(d.timestamps)
        assert all(window.start_ns <= t < window.end_ns for t in d.timestamps)
    assert sorted(t for d in decoded for t in d.timestamps) == sorted(t for s in window.samples for t in s.timestamps)
    assert all(
        not sample.values
        for rp in request.resource_profiles
        for sp in rp.scope_profiles
        for p in sp.profiles
        for sample in p.samples
    )


def test_empty_window_sends_nothing() -> None:
    assert encode_window(attrs.evolve(synthetic_window(), samples=()), TransformOptions()) == []


@pytest.mark.parametrize("limit", [20_000, 60_000])
def test_oversized_window_is_split_by_resource_in_order(limit: int) -> None:
    window = synthetic_window(processes=40, stacks=800, depth=16)
    whole = only_request(window, TransformOptions(max_request_bytes=0))
    assert whole.ByteSize() > limit
    parts = encode_window(window, TransformOptions(max_request_bytes=limit))
    assert len(parts) > 1
    assert all(len(part.payload) <= limit for part in parts)
    pids = []
    for part in parts:
        request = decode(part.payload)
        assert index_problems(request) == []
        assert sum(d.count for d in decoded_samples(request)) == part.samples
        pids += [
            next(kv.value.int_value for kv in rp.resource.attributes if kv.key == "process.pid")
            for rp in request.resource_profiles
        ]
    assert pids == list(dict.fromkeys(s.pid for s in window.samples))  # each process once, in order
    assert sum(part.samples for part in parts) == window.sample_count


def test_size_learned_from_an_earlier_window_splits_up_front_with_the_same_result() -> None:
    window = synthetic_window(processes=40, stacks=800, depth=16)
    options = TransformOptions(max_request_bytes=30_000)
    learned = encode_window(window, options)
    bytes_per_frame = sum(len(part.payload) for part in learned) / frame_count(window)
    parts = encode_window(window, options, bytes_per_frame)
    assert len(parts) > 1 and all(len(part.payload) <= 30_000 for part in parts)
    decoded = [d for part in parts for d in decoded_samples(decode(part.payload))]
    pids = list(dict.fromkeys(d.resource["process.pid"] for d in decoded))
    assert pids == list(dict.fromkeys(s.pid for s in window.samples))
    assert sum(d.count for d in decoded) == window.sample_count
    # a wildly wrong estimate still ends with parts that fit
    assert all(len(p.payload) <= 30_000 for p in encode_window(window, options, bytes_per_frame / 10))


def test_single_process_larger_than_the_limit_is_sent_whole() -> None:
    window = synthetic_window(processes=1, stacks=100, depth=16)
    parts = encode_window(window, TransformOptions(max_request_bytes=1000))
    assert len(parts) == 1 and len(parts[0].payload) > 1000


def test_process_without_mappings_but_kernel_frame_uses_host_kernel() -> None:
    window = synthetic_window(processes=1, stacks=1)
    assert window.host.kernel is not None
    frame = Frame(window.host.kernel.start + 0x40, FrameKind.KERNEL, "do_syscall_64", 0x40)
    window = attrs.evolve(
        window,
        samples=(Sample(pid=1, tid=1, cpu=0, thread_name="init", stack=(frame,)),),
        processes={1: Process(pid=1, name="init")},
    )
    (decoded,) = decoded_samples(only_request(window))
    assert decoded.frames[0].mapping_path == "[kernel.kallsyms]"
    assert decoded.resource["process.executable.name"] == "init"
