"""ProfileWindow -> OTLP ``ExportProfilesServiceRequest``: pure, no network.

One ``ProfilesDictionary`` per request holds every string, function, mapping, location, stack and
attribute once; index 0 of every table is the zero value. Names follow the semantic conventions
of the OpenTelemetry eBPF profiler: a resource per process, ``thread.*`` and
``cpu.logical_number`` on samples, ``profile.frame.type`` on locations and
``process.executable.build_id.gnu`` on mappings.

A request larger than ``max_request_bytes`` is split by resource (process), keeping order; each
part has its own dictionary, so every part decodes on its own.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.profiles.v1development import profiles_pb2

from antiprof_core.model import Frame, FrameKind, Host, Mapping, Process, ProfileWindow, Sample, SamplingMode

SCOPE_NAME = "antiprof"
UNKNOWN_SERVICE = "unknown_service"

# Semantic-convention keys, as the OpenTelemetry eBPF profiler writes them.
PROCESS_PID = "process.pid"
PROCESS_EXECUTABLE_PATH = "process.executable.path"
PROCESS_EXECUTABLE_NAME = "process.executable.name"
CONTAINER_ID = "container.id"
HOST_NAME = "host.name"
HOST_ARCH = "host.arch"
K8S_NODE_NAME = "k8s.node.name"
K8S_CLUSTER_NAME = "k8s.cluster.name"
SERVICE_NAME = "service.name"
THREAD_ID = "thread.id"
THREAD_NAME = "thread.name"
CPU_LOGICAL_NUMBER = "cpu.logical_number"
BUILD_ID_GNU = "process.executable.build_id.gnu"
FRAME_TYPE = "profile.frame.type"

_REQUIRED_FIELDS: dict[Any, tuple[str, ...]] = {
    profiles_pb2.ProfilesDictionary: ("stack_table", "attribute_table", "string_table"),
    profiles_pb2.Sample: ("stack_index", "timestamps_unix_nano"),
}
for _message, _names in _REQUIRED_FIELDS.items():  # the development protos move between releases
    _missing = [name for name in _names if name not in _message.DESCRIPTOR.fields_by_name]
    if _missing:
        raise ImportError(
            f"opentelemetry-proto {importlib.metadata.version('opentelemetry-proto')} lacks "
            f"{_message.__name__}.{', '.join(_missing)}: install opentelemetry-proto>=1.45,<2"
        )


def _scope_version() -> str:
    try:
        return importlib.metadata.version("antiprof-otlp")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


SCOPE_VERSION = _scope_version()


@frozen
class TransformOptions:
    service_name: str = ""  # empty: each process's executable name
    max_request_bytes: int = 4 << 20  # 0: never split


class _Dictionary:
    """The request's tables, each with its zero value at index 0, deduplicated by value."""

    def __init__(self, host: Host, message: profiles_pb2.ProfilesDictionary) -> None:
        self.message = message  # filled in place: copying a finished dictionary costs as much as building it
        self._host = host
        message = self.message
        message.string_table.append("")
        for table in (
            message.mapping_table,
            message.location_table,
            message.function_table,
            message.link_table,
            message.attribute_table,
            message.stack_table,
        ):
            table.add()
        self._strings: dict[str, int] = {"": 0}
        self._attributes: dict[tuple[str, type, object], int] = {}
        self._functions: dict[str, int] = {}
        self._source_functions: dict[tuple[str, str, int], int] = {}  # (name, file, start line) of interpreted code
        self._mappings_by_id: dict[int, int] = {}  # id(mapping) -> index; the window keeps them alive
        self._mappings_by_model: dict[Mapping, int] = {}
        self._mappings: dict[tuple[int, int, int, int, int], int] = {}
        self._locations_by_frame: dict[int, int] = {}  # id(frame) -> index; frames outlive the transform
        self._locations: dict[tuple[int, ...], int] = {}
        self._stacks: dict[tuple[int, ...], int] = {}
        self._thread_attributes: dict[tuple[int, str, int], list[int]] = {}
        self._frame_types = {kind.value: self.attribute(FRAME_TYPE, kind.value) for kind in FrameKind}
        self._location_table = message.location_table
        self._function_table = message.function_table
        self._string_table = message.string_table

    def string(self, text: str) -> int:
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self._strings)
            self.message.string_table.append(text)
        return index

    def attribute(self, key: str, value: str | int) -> int:
        identity = (key, type(value), value)
        index = self._attributes.get(identity)
        if index is None:
            index = self._attributes[identity] = len(self._attributes) + 1
            entry = self.message.attribute_table.add(key_strindex=self.string(key))
            if isinstance(value, str):
                entry.value.string_value = value
            else:
                entry.value.int_value = value
        return index

    def function(self, name: str) -> int:
        index = self._functions.get(name)
        return self._new_function(name) if index is None else index

    def _new_function(self, name: str) -> int:
        index = self._functions[name] = len(self._functions) + len(self._source_functions) + 1
        strings = self._strings
        name_index = strings.get(name)
        if name_index is None:
            name_index = strings[name] = len(strings)
            self._string_table.append(name)
        self._function_table.add(name_strindex=name_index)
        return index

    def source_function(self, name: str, file: str, start_line: int = 0) -> int:
        """A function known by name, source file and first line (interpreted code), kept apart from
        a native function of the same name (Python's ``main`` is not the interpreter's C ``main``)
        and from another of its name in the same file (two lambdas)."""
        identity = (name, file, start_line)
        index = self._source_functions.get(identity)
        if index is None:
            index = self._source_functions[identity] = len(self._functions) + len(self._source_functions) + 1
            self._function_table.add(
                name_strindex=self.string(name), filename_strindex=self.string(file), start_line=start_line
            )
        return index

    def mapping(self, mapping: Mapping) -> int:
        index = self._mappings_by_id.get(id(mapping)) or self._mappings_by_model.get(mapping)
        if index is not None:
            self._mappings_by_id[id(mapping)] = index
            return index
        build_id = self.attribute(BUILD_ID_GNU, mapping.build_id) if mapping.build_id else 0
        identity = (mapping.start, mapping.end, mapping.file_offset, self.string(mapping.path), build_id)
        index = self._mappings.get(identity)
        if index is None:
            index = self._mappings[identity] = len(self._mappings) + 1
            self.message.mapping_table.add(
                memory_start=mapping.start,
                memory_limit=mapping.end,
                file_offset=mapping.file_offset,
                filename_strindex=identity[3],
                attribute_indices=[build_id] if build_id else [],
            )
        self._mappings_by_model[mapping] = self._mappings_by_id[id(mapping)] = index
        return index

    def location(self, frame: Frame) -> int:
        index = self._locations_by_frame.get(id(frame))
        return self._new_location(frame) if index is None else index

    def _new_location(self, frame: Frame) -> int:
        """A frame not seen by identity yet: find or add its location by value (the hot miss path)."""
        if frame.file is not None and frame.symbol:
            return self._source_location(frame)
        mapping = frame.mapping
        if mapping is None and frame.kind is FrameKind.KERNEL:
            mapping = self._host.kernel
        mapping_index = 0
        if mapping is not None:
            mapping_index = self._mappings_by_id.get(id(mapping)) or self.mapping(mapping)
        symbol = frame.symbol
        function_index = 0
        if symbol:
            function_index = self._functions.get(symbol) or self._new_function(symbol)
        frame_type = self._frame_types[frame.kind._value_]
        address = frame.address
        identity = (mapping_index, address, function_index, frame_type)
        locations = self._locations
        index = locations.get(identity)
        if index is None:
            index = locations[identity] = len(locations) + 1
            location = self._location_table.add(
                mapping_index=mapping_index, address=address, attribute_indices=(frame_type,)
            )
            if function_index:
                location.lines.add(function_index=function_index)
        self._locations_by_frame[id(frame)] = index
        return index

    def _source_location(self, frame: Frame) -> int:
        """An interpreted frame: no mapping and no machine address (the code object's address is
        neither), a line naming the function, its file and the line being run. One location per
        (function, line), so two lines of a function are two locations and a line is one location
        in every process that runs it."""
        assert frame.symbol is not None and frame.file is not None
        function_index = self.source_function(frame.symbol, frame.file, frame.start_line or 0)
        frame_type = self._frame_types[frame.kind._value_]
        line = frame.line or 0
        identity = (0, 0, function_index, frame_type, line)
        index = self._locations.get(identity)
        if index is None:
            index = self._locations[identity] = len(self._locations) + 1
            location = self._location_table.add(attribute_indices=(frame_type,))
            location.lines.add(function_index=function_index, line=line)
        self._locations_by_frame[id(frame)] = index
        return index

    def stack(self, frames: Sequence[Frame]) -> int:
        # The hot path: most frames were seen before, so look them all up at C speed first.
        identity = tuple(map(self._locations_by_frame.get, map(id, frames)))
        if None in identity:
            new = self._new_location  # a frame twice in one stack is found by value the second time
            identity = tuple([index or new(frame) for index, frame in zip(identity, frames, strict=True)])
        index = self._stacks.get(identity)  # type: ignore[arg-type]
        if index is None:
            index = self._stacks[identity] = len(self._stacks) + 1  # type: ignore[index]
            self.message.stack_table.add(location_indices=identity)
        return index

    def thread_attributes(self, sample: Sample) -> list[int]:
        identity = (sample.tid, sample.thread_name, sample.cpu)
        indices = self._thread_attributes.get(identity)
        if indices is None:
            indices = self._thread_attributes[identity] = [
                self.attribute(THREAD_ID, sample.tid),
                self.attribute(THREAD_NAME, sample.thread_name),
                self.attribute(CPU_LOGICAL_NUMBER, sample.cpu),
            ]
        return indices


def executable_name(process: Process | None) -> str:
    if process is None:
        return ""
    if process.executable:
        return os.path.basename(process.executable)
    return process.name


def resource_attributes(pid: int, process: Process | None, host: Host, options: TransformOptions) -> list[KeyValue]:
    """The process's resource, named as the OpenTelemetry eBPF profiler names it."""

    def text(key: str, value: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=value))

    attributes = [KeyValue(key=PROCESS_PID, value=AnyValue(int_value=pid))]
    name = executable_name(process)
    if process is not None and process.executable:
        attributes.append(text(PROCESS_EXECUTABLE_PATH, process.executable))
    if name:
        attributes.append(text(PROCESS_EXECUTABLE_NAME, name))
    if process is not None and process.container_id:
        attributes.append(text(CONTAINER_ID, process.container_id))
    attributes.append(text(HOST_NAME, host.hostname))
    if host.arch:
        attributes.append(text(HOST_ARCH, host.arch))
    in_kubernetes = bool(host.cluster_name) or bool(host.node_name and host.node_name != host.hostname)
    if in_kubernetes and host.node_name:
        attributes.append(text(K8S_NODE_NAME, host.node_name))
    if host.cluster_name:
        attributes.append(text(K8S_CLUSTER_NAME, host.cluster_name))
    attributes.append(text(SERVICE_NAME, options.service_name or name or UNKNOWN_SERVICE))
    return attributes


def samples_by_process(window: ProfileWindow) -> dict[int, list[Sample]]:
    """The window's samples grouped by pid, processes in order of first appearance."""
    groups: dict[int, list[Sample]] = {}
    for sample in window.samples:
        group = groups.get(sample.pid)
        if group is None:
            group = groups[sample.pid] = []
        group.append(sample)
    return groups


def build_request(
    window: ProfileWindow,
    groups: dict[int, list[Sample]],
    pids: Sequence[int],
    options: TransformOptions,
) -> ExportProfilesServiceRequest:
    """One request for the processes ``pids`` (keys of ``groups``), with its own dictionary."""
    request = ExportProfilesServiceRequest()
    dictionary = _Dictionary(window.host, request.dictionary)
    sample_type = profiles_pb2.ValueType(
        type_strindex=dictionary.string("samples"), unit_strindex=dictionary.string("count")
    )
    period_type = profiles_pb2.ValueType(
        type_strindex=dictionary.string("cpu"), unit_strindex=dictionary.string("nanoseconds")
    )
    scope = InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION)
    trace = window.mode is SamplingMode.TRACE
    stack = dictionary.stack
    thread_attributes = dictionary.thread_attributes
    for pid in pids:
        resource_profiles = request.resource_profiles.add()
        resource_profiles.resource.attributes.extend(
            resource_attributes(pid, window.processes.get(pid), window.host, options)
        )
        scope_profiles = resource_profiles.scope_profiles.add(scope=scope)
        profile = scope_profiles.profiles.add(
            sample_type=sample_type,
            period_type=period_type,
            period=window.period_ns,
            time_unix_nano=window.start_ns,
            duration_nano=max(0, window.end_ns - window.start_ns),
        )
        samples = profile.samples
        for sample in groups[pid]:
            if trace and sample.timestamps:
                samples.add(
                    stack_index=stack(sample.stack),
                    attribute_indices=thread_attributes(sample),
                    timestamps_unix_nano=sample.timestamps,
                )
            else:
                samples.add(
                    stack_index=stack(sample.stack),
                    attribute_indices=thread_attributes(sample),
                    values=(sample.count,),
                )
    return request


@frozen
class EncodedRequest:
    """A serialized request and what it carries, for queue accounting and logs."""

    payload: bytes
    processes: int
    samples: int  # sum of counts


def encode_window(
    window: ProfileWindow, options: TransformOptions, bytes_per_frame: float = 0.0
) -> list[EncodedRequest]:
    """The window as one or more serialized requests, in order, none over ``max_request_bytes`` if
    it can be helped: a request that is too big is cut by resource into as many parts as its size
    suggests, and again until each part fits or holds a single process.

    ``bytes_per_frame`` (request bytes over stack frames, as measured on an earlier window) lets a
    window that will clearly not fit be cut up front, instead of being encoded whole first.
    """
    groups = samples_by_process(window)
    if not groups:
        return []
    frames = {pid: sum(len(sample.stack) for sample in samples) for pid, samples in groups.items()}
    limit = options.max_request_bytes
    pending: list[list[int]] = [list(groups)]
    expected = bytes_per_frame * sum(frames.values())
    if limit and expected > limit and len(groups) > 1:
        parts = min(len(groups), -(-int(expected * 1.1) // limit))
        pending = split_evenly(pending[0], list(frames.values()), parts)
    out: list[EncodedRequest] = []
    while pending:
        pids = pending.pop(0)
        payload = build_request(window, groups, pids, options).SerializeToString()
        if limit and len(payload) > limit and len(pids) > 1:
            parts = min(len(pids), max(2, -(-len(payload) * 5 // (limit * 4))))  # 25% room for repeated strings
            pending[:0] = split_evenly(pids, [frames[pid] for pid in pids], parts)
            continue
        count = sum(sample.count for pid in pids for sample in groups[pid])
        out.append(EncodedRequest(payload=payload, processes=len(pids), samples=count))
    return out


def frame_count(window: ProfileWindow) -> int:
    return sum(len(sample.stack) for sample in window.samples)


def split_evenly(items: list[int], weights: list[int], parts: int) -> list[list[int]]:
    """``items`` cut into ``parts`` contiguous, non-empty runs of about equal total weight."""
    total = sum(weights) or 1
    runs: list[list[int]] = [[]]
    done = 0
    for position, (item, weight) in enumerate(zip(items, weights, strict=True)):
        left_items = len(items) - position
        left_runs = parts - len(runs)
        boundary = done >= total * len(runs) / parts
        if runs[-1] and left_runs > 0 and (boundary or left_items <= left_runs):
            runs.append([])
        runs[-1].append(item)
        done += weight
    return runs
