"""ProfileWindows to one pprof ``Profile``: deduplicated mappings, locations and functions, labelled samples.

The protobuf runtime does all wire encoding; this module only decides what goes in the message.
Frames and mappings are shared objects in a window (the symbolizer caches them), so each distinct
object is looked up by value once and every other reference by identity. Identities are forgotten after
each window, so a builder that outlives its windows (the live endpoint's) never confuses a new
object with a dead one, and keeps no window alive.
"""

from __future__ import annotations

import collections
import gzip
import operator
from collections.abc import Iterable

from antiprof_core.model import Frame, Mapping, ProfileWindow
from antiprof_pprof import profile_pb2

SAMPLE_TYPES = (("samples", "count"), ("cpu", "nanoseconds"))
PERIOD_TYPE = ("cpu", "nanoseconds")
GZIP_LEVEL = 1  # what Go's runtime/pprof uses: profiles are small, speed matters more than bytes

_LabelKey = tuple[int, int, str]  # pid, tid, thread name
_THREAD = operator.attrgetter("pid", "tid", "thread_name")


class ProfileBuilder:
    """Adds windows one by one, then builds a single Profile whose values are their sums.

    ``merge_samples`` adds equal (stack, thread) samples into one, so a profile of many windows
    grows with distinct stacks, not with time; a single window has no such repeats worth the lookup.
    """

    def __init__(self, merge_samples: bool = False) -> None:
        self.merge_samples = merge_samples
        self._strings: dict[str, int] = {"": 0}
        self._mapping_ids_by_object: dict[int, int] = {}
        self._mapping_ids: dict[Mapping, int] = {}
        self._mappings: list[Mapping] = []
        self._mapping_unnamed: list[bool] = []  # per mapping: a location in it has no function
        self._location_ids_by_frame: dict[int, int] = {}  # this window's frame objects, by id()
        self._location_ids: dict[tuple[object, ...], int] = {}
        self._locations: list[tuple[int, int, int, int]] = []  # mapping id, address, function id (0: none), line
        # a name, or (name, file, start line) of interpreted code
        self._function_ids: dict[str | tuple[str, str, int], int] = {}
        self._profile = profile_pb2.Profile()
        self._labels: dict[_LabelKey, bytes] = {}
        self._merged: dict[tuple[tuple[int, ...], _LabelKey], profile_pb2.Sample] = {}
        self._executables: dict[int, str] = {}
        self._stacks_by_pid: collections.Counter[int] = collections.Counter()
        self.windows = 0
        self._start_ns = 0
        self._end_ns = 0
        self._period_ns = 0
        self._description = ""
        self._seen = 0
        self._lost = 0

    def add(self, window: ProfileWindow) -> None:
        """Appends the window's samples (pprof readers add up equal stacks themselves)."""
        self._note(window)
        period = window.period_ns
        samples = [sample for sample in window.samples if sample.stack]
        threads = list(map(_THREAD, samples))
        labels = self._labels
        for thread in set(threads).difference(labels):
            labels[thread] = self._make_labels(window, *thread)
        location_of = self._location_ids_by_frame
        known = location_of.__getitem__
        merged = self._merged if self.merge_samples else None
        add_sample = self._profile.sample.add
        for sample, thread in zip(samples, threads, strict=True):
            stack = sample.stack
            try:
                ids = tuple(map(known, map(id, stack)))
            except KeyError:  # a frame object not met yet in this window
                ids = tuple(location_of.get(id(frame)) or self._new_location(frame) for frame in stack)
            count = sample.count
            if merged is not None:
                same = merged.get((ids, thread))
                if same is not None:
                    same.value[0] += count
                    same.value[1] += count * period
                    continue
            # The labels were serialized by protobuf once per thread; merging them is the runtime's own parse.
            added = add_sample(location_id=ids, value=(count, count * period))
            added.MergeFromString(labels[thread])
            if merged is not None:
                merged[(ids, thread)] = added
        location_of.clear()
        self._mapping_ids_by_object.clear()

    def _note(self, window: ProfileWindow) -> None:
        """What the profile keeps of a window besides its samples."""
        if not self.windows:
            self._start_ns, self._end_ns = window.start_ns, window.end_ns
            self._description = f"host {window.host.hostname}, event {window.event} at {window.frequency_hz} Hz"
        self.windows += 1
        self._start_ns = min(self._start_ns, window.start_ns)
        self._end_ns = max(self._end_ns, window.end_ns)
        self._period_ns = window.period_ns
        self._seen += window.counters.samples_seen
        self._lost += window.counters.samples_lost
        self._stacks_by_pid.update(sample.pid for sample in window.samples)
        for pid, process in window.processes.items():
            if process.executable:
                self._executables[pid] = process.executable

    def _make_labels(self, window: ProfileWindow, pid: int, tid: int, thread: str) -> bytes:
        """A Sample holding only this thread's labels, serialized."""
        string = self._string
        labels = [
            profile_pb2.Label(key=string("pid"), num=pid),
            profile_pb2.Label(key=string("tid"), num=tid),
            profile_pb2.Label(key=string("thread"), str=string(thread)),
        ]
        process = window.processes.get(pid)
        if process is not None:
            labels.append(profile_pb2.Label(key=string("process"), str=string(process.name)))
            if process.container_id:
                labels.append(profile_pb2.Label(key=string("container_id"), str=string(process.container_id)))
        return profile_pb2.Sample(label=labels).SerializeToString()

    def _new_location(self, frame: Frame) -> int:
        if frame.file is not None and frame.symbol:
            return self._new_source_location(frame)
        mapping_id = self._mapping_id(frame.mapping) if frame.mapping is not None else 0
        key = (mapping_id, frame.address, frame.symbol)
        location_id = self._location_ids.get(key)
        if location_id is None:
            function_id = self._function_id(frame.symbol) if frame.symbol else 0
            self._locations.append((mapping_id, frame.address, function_id, 0))
            location_id = self._location_ids[key] = len(self._locations)
            if mapping_id and not function_id:
                self._mapping_unnamed[mapping_id - 1] = True
        self._location_ids_by_frame[id(frame)] = location_id
        return location_id

    def _new_source_location(self, frame: Frame) -> int:
        """An interpreted frame: no mapping, no address (bytecode has none), the function with its
        file and the line being run. One location per (function, line): pprof's ``-lines`` tells the
        lines apart, its default view adds them up per function."""
        assert frame.symbol is not None and frame.file is not None
        line = frame.line or 0
        start_line = frame.start_line or 0
        key = (0, 0, frame.symbol, frame.file, start_line, line)
        location_id = self._location_ids.get(key)
        if location_id is None:
            function_id = self._function_id((frame.symbol, frame.file, start_line))
            self._locations.append((0, 0, function_id, line))
            location_id = self._location_ids[key] = len(self._locations)
        self._location_ids_by_frame[id(frame)] = location_id
        return location_id

    def _mapping_id(self, mapping: Mapping) -> int:
        found = self._mapping_ids_by_object.get(id(mapping))
        if found is None:
            found = self._mapping_ids.get(mapping)
            if found is None:
                self._mappings.append(mapping)
                self._mapping_unnamed.append(False)
                found = self._mapping_ids[mapping] = len(self._mappings)
            self._mapping_ids_by_object[id(mapping)] = found
        return found

    def _function_id(self, key: str | tuple[str, str, int]) -> int:
        found = self._function_ids.get(key)
        if found is None:
            found = self._function_ids[key] = len(self._function_ids) + 1
            for text in (key,) if isinstance(key, str) else key[:2]:
                self._string(text)
        return found

    def _string(self, text: str) -> int:
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self._strings)
        return index

    def build(self) -> profile_pb2.Profile:
        """The finished Profile; the builder is spent afterwards."""
        string = self._string
        pb = profile_pb2
        profile = self._profile
        profile.sample_type.extend(pb.ValueType(type=string(kind), unit=string(unit)) for kind, unit in SAMPLE_TYPES)
        profile.period_type.CopyFrom(pb.ValueType(type=string(PERIOD_TYPE[0]), unit=string(PERIOD_TYPE[1])))
        profile.location.extend(
            pb.Location(
                id=index, mapping_id=mapping_id, address=address, line=[pb.Line(function_id=function_id, line=line)]
            )
            if function_id
            else pb.Location(id=index, mapping_id=mapping_id, address=address)
            for index, (mapping_id, address, function_id, line) in enumerate(self._locations, start=1)
        )
        profile.function.extend(map(self._function_message, self._function_ids.items()))
        profile.mapping.extend(self._mapping_messages())
        if self.windows:
            profile.time_nanos = self._start_ns
            profile.duration_nanos = max(self._end_ns - self._start_ns, 0)
            profile.period = self._period_ns
            profile.comment.extend(
                string(line)
                for line in (
                    f"antiprof: {self._description}",
                    f"antiprof: {self.windows} window(s), {self._seen} samples seen, {self._lost} lost",
                )
            )
        profile.string_table.extend(self._strings)  # last: the steps above add strings
        return profile

    def _function_message(self, item: tuple[str | tuple[str, str, int], int]) -> profile_pb2.Function:
        """Native: system_name = name. Interpreted: no system name, which also keeps go pprof from
        "demangling" a name equal to it: it would strip ``<module>`` as if it were a C++ template."""
        key, function_id = item
        strings = self._strings
        if isinstance(key, str):
            return profile_pb2.Function(id=function_id, name=strings[key], system_name=strings[key])
        name, file, start_line = key
        return profile_pb2.Function(id=function_id, name=strings[name], filename=strings[file], start_line=start_line)

    def _mapping_messages(self) -> list[profile_pb2.Mapping]:
        """The executable of the process with the most stacks first: tools take mapping[0] for the main binary."""
        string = self._string
        messages = [
            profile_pb2.Mapping(
                id=index,
                memory_start=mapping.start,
                memory_limit=mapping.end,
                file_offset=mapping.file_offset,
                filename=string(mapping.path),
                build_id=string(mapping.build_id or ""),
                has_functions=not unnamed,
            )
            for index, (mapping, unnamed) in enumerate(zip(self._mappings, self._mapping_unnamed, strict=True), 1)
        ]
        if self._stacks_by_pid:
            [(busiest, _)] = self._stacks_by_pid.most_common(1)
            main = self._executables.get(busiest)
            if main is not None:
                messages.sort(key=lambda message: self._mappings[message.id - 1].path != main)
        return messages


def build_profile(windows: Iterable[ProfileWindow], merge_samples: bool = False) -> profile_pb2.Profile:
    builder = ProfileBuilder(merge_samples)
    for window in windows:
        builder.add(window)
    return builder.build()


def gzip_profile(profile: profile_pb2.Profile) -> bytes:
    """The gzip'd serialized Profile, as pprof tools read it from a file or an HTTP response."""
    return gzip.compress(profile.SerializeToString(), compresslevel=GZIP_LEVEL, mtime=0)


def encode_profile(windows: Iterable[ProfileWindow]) -> bytes:
    return gzip_profile(build_profile(windows))
