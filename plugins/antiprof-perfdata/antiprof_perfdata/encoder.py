"""ProfileWindow -> perf.data records, remembering what a stream already told perf.

A COMM per thread and an MMAP2 per executable mapping are written once per stream (a file or a
pipe), before the first sample that needs them. ``encode`` does not change the state; ``commit``
does, once the bytes are safely written, so a failed write can simply be retried.
"""

from __future__ import annotations

from attrs import field, frozen

from antiprof_core.model import FrameKind, Mapping, ProfileWindow, SamplingMode
from antiprof_perfdata import layout, timeline
from antiprof_perfdata.pythonsyms import PendingImage, PythonPlan, PythonSymbols, Translated

_KERNEL = FrameKind.KERNEL
_CPYTHON = FrameKind.CPYTHON
KERNEL_MAP_SUFFIX = "_text"  # names the relocation symbol, as perf record writes it
_TIME_AT = 24  # SAMPLE: header 8, ip 8, pid|tid 8, then time
_U64_PACK = layout.U64.pack


@frozen
class BuildId:
    """One entry of the BUILD_ID table."""

    path: str
    build_id: bytes
    kernel: bool = False


@frozen
class EncodedWindow:
    """One window's records and the stream state they assume once written."""

    data: bytes
    samples: int  # SAMPLE records
    first_ns: int
    last_ns: int
    comms: dict[tuple[int, int], str] = field(factory=dict)
    mappings: frozenset[tuple[int, Mapping]] = frozenset()
    build_ids: tuple[BuildId, ...] = ()
    kernel_mapped: bool = False
    python: PythonPlan | None = None

    @property
    def images(self) -> tuple[PendingImage, ...]:
        """Symbol images to write before ``data`` (their MMAP2 records are in it)."""
        return () if self.python is None or self.python.image is None else (self.python.image,)


def build_id_bytes(hex_id: str | None) -> bytes | None:
    """Hex build ID -> bytes; None for a missing or unusable (over 20 bytes) one."""
    if not hex_id:
        return None
    try:
        raw = bytes.fromhex(hex_id)
    except ValueError:
        return None
    return raw if 0 < len(raw) <= layout.BUILD_ID_MAX else None


def kernel_mmap_record(kernel: Mapping) -> bytes:
    name = layout.padded(kernel.path + KERNEL_MAP_SUFFIX)
    size = layout.MMAP.size + len(name)
    return (
        layout.MMAP.pack(
            layout.RECORD_MMAP,
            layout.MISC_KERNEL,
            size,
            -1,
            0,
            kernel.start,
            kernel.end - kernel.start,
            kernel.file_offset,
        )
        + name
    )


def comm_record(pid: int, tid: int, name: str) -> bytes:
    raw = layout.padded(name[:15])
    return layout.COMM.pack(layout.RECORD_COMM, 0, layout.COMM.size + len(raw), pid, tid) + raw


def mmap2_record(pid: int, mapping: Mapping) -> bytes:
    name = layout.padded(mapping.path)
    length = mapping.end - mapping.start
    build_id = build_id_bytes(mapping.build_id)
    if build_id is not None:
        head = layout.MMAP2_BUILD_ID.pack(
            layout.RECORD_MMAP2, layout.MISC_USER | layout.MISC_MMAP_BUILD_ID, layout.MMAP2_BUILD_ID.size + len(name),
            pid, pid, mapping.start, length, mapping.file_offset,
            len(build_id), 0, 0, build_id, layout.PROT_READ_EXEC, layout.MAP_PRIVATE,
        )  # fmt: skip
    else:
        major, minor = mapping.device >> 8 & 0xFFF, (mapping.device & 0xFF) | (mapping.device >> 12 & 0xFFF00)
        head = layout.MMAP2_INODE.pack(
            layout.RECORD_MMAP2, layout.MISC_USER, layout.MMAP2_INODE.size + len(name),
            pid, pid, mapping.start, length, mapping.file_offset,
            major, minor, mapping.inode, 0, layout.PROT_READ_EXEC, layout.MAP_PRIVATE,
        )  # fmt: skip
    return head + name


class RecordEncoder:
    """Encodes windows for one stream: one SAMPLE per counted sample, at the sampling period.

    ``compact``: one SAMPLE per distinct stack with ``period = count x sampling period`` instead;
    ``perf report`` weighs it right, tools that count lines or time (FlameGraph, speedscope) do not.
    """

    def __init__(self, compact: bool = False, python: PythonSymbols | None = None) -> None:
        self.compact = compact
        self.python = python
        self.comms: dict[tuple[int, int], str] = {}
        self.mappings: set[tuple[int, Mapping]] = set()
        self.build_ids: dict[tuple[str, bytes], BuildId] = {}
        self.kernel_mapped = False
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.windows = 0
        self.samples = 0

    def encode(self, window: ProfileWindow) -> EncodedWindow:
        chunks: list[bytes] = []
        new_build_ids: dict[tuple[str, bytes], BuildId] = {}
        kernel = window.host.kernel
        kernel_mapped = self.kernel_mapped
        if kernel is not None and not kernel_mapped:
            chunks.append(kernel_mmap_record(kernel))
            kernel_mapped = True
            kernel_id = build_id_bytes(kernel.build_id)
            if kernel_id is not None and (kernel.path, kernel_id) not in self.build_ids:
                new_build_ids[(kernel.path, kernel_id)] = BuildId(kernel.path, kernel_id, kernel=True)
        translated = self.python.translate(window) if self.python is not None and _has_python(window) else None
        comms, mappings = self._describe_threads(window, chunks, new_build_ids, translated)
        records = self._samples(window, chunks, translated)
        first = window.start_ns
        last = window.end_ns
        if window.mode is SamplingMode.TRACE:
            times = [t for sample in window.samples for t in sample.timestamps]
            if times:
                first, last = min(first, *times), max(last, *times)
        chunks.append(layout.FINISHED_ROUND)
        return EncodedWindow(
            data=b"".join(chunks),
            samples=records,
            first_ns=first,
            last_ns=last,
            comms=comms,
            mappings=frozenset(mappings),
            build_ids=tuple(new_build_ids.values()),
            kernel_mapped=kernel_mapped,
            python=translated.plan if translated is not None else None,
        )

    def commit(self, encoded: EncodedWindow) -> None:
        """Record that ``encoded`` reached the stream."""
        self.comms.update(encoded.comms)
        self.mappings |= encoded.mappings
        for entry in encoded.build_ids:
            self.build_ids[(entry.path, entry.build_id)] = entry
        self.kernel_mapped = encoded.kernel_mapped
        if encoded.python is not None and self.python is not None:
            self.python.commit(encoded.python)
        self.first_ns = encoded.first_ns if self.first_ns is None else min(self.first_ns, encoded.first_ns)
        self.last_ns = encoded.last_ns if self.last_ns is None else max(self.last_ns, encoded.last_ns)
        self.windows += 1
        self.samples += encoded.samples

    def _describe_threads(
        self,
        window: ProfileWindow,
        chunks: list[bytes],
        build_ids: dict[tuple[str, bytes], BuildId],
        translated: Translated | None,
    ) -> tuple[dict[tuple[int, int], str], set[tuple[int, Mapping]]]:
        """COMM and MMAP2 records for threads and mappings this stream has not described yet."""
        comms: dict[tuple[int, int], str] = {}
        mappings: set[tuple[int, Mapping]] = set()
        known_comms = self.comms
        seen_pids = {sample.pid for sample in window.samples}
        for pid in seen_pids:  # the main thread first: perf names a process after it
            process = window.processes.get(pid)
            if process is not None and (pid, pid) not in known_comms:
                comms[(pid, pid)] = process.name
                chunks.append(comm_record(pid, pid, process.name))
        for sample in window.samples:
            key = (sample.pid, sample.tid)
            name = sample.thread_name
            if known_comms.get(key) != name and comms.get(key) != name:
                comms[key] = name
                chunks.append(comm_record(sample.pid, sample.tid, name))
        needed: dict[int, list[Mapping]] = {}
        for pid in seen_pids:
            process = window.processes.get(pid)
            if process is not None:
                needed[pid] = list(process.mappings)
        if translated is not None:
            for pid, images in translated.images_by_pid.items():
                needed.setdefault(pid, []).extend(images)
        for pid, pid_mappings in needed.items():
            for mapping in pid_mappings:
                key_map = (pid, mapping)
                if key_map in self.mappings or key_map in mappings:
                    continue
                mappings.add(key_map)
                chunks.append(mmap2_record(pid, mapping))
                raw_id = build_id_bytes(mapping.build_id)
                if raw_id is not None and (mapping.path, raw_id) not in self.build_ids:
                    build_ids[(mapping.path, raw_id)] = BuildId(mapping.path, raw_id)
        return comms, mappings

    def _samples(self, window: ProfileWindow, chunks: list[bytes], translated: Translated | None) -> int:
        """SAMPLE records in time order, leaf first with kernel and user context markers; returns how many.

        Each distinct stack is packed once, split around its time field, and repeated with the
        times ``timeline.sample_times`` gives it.
        """
        compact = self.compact
        period = window.period_ns
        trace = window.mode is SamplingMode.TRACE
        sample_struct = layout.sample_struct
        kernel_marker, user_marker = layout.CONTEXT_KERNEL, layout.CONTEXT_USER
        misc_kernel, misc_user = layout.MISC_KERNEL, layout.MISC_USER
        record_type = layout.RECORD_SAMPLE
        base_size = 8 * (1 + layout.SAMPLE_FIXED_WORDS)
        heads: list[bytes] = []
        tails: list[bytes] = []
        translated_chains = translated.chains if translated is not None else None
        for position, sample in enumerate(window.samples):
            stack = sample.stack
            # Python frames as their slots; either way a list of its own, changed below
            chain = [frame.address for frame in stack] if translated_chains is None else translated_chains[position]
            depth = len(chain)
            if depth and stack[0].kind is _KERNEL:
                ip, misc = chain[0], misc_kernel
                kernel_depth = 1
                while kernel_depth < depth and stack[kernel_depth].kind is _KERNEL:
                    kernel_depth += 1
                if kernel_depth < depth:
                    chain.insert(kernel_depth, user_marker)
                chain.insert(0, kernel_marker)
            elif depth:
                ip, misc = chain[0], misc_user
                chain.insert(0, user_marker)
            else:
                ip, misc = 0, misc_user
            nr = len(chain)
            weight = period * sample.count if compact and not (trace and sample.timestamps) else period
            record = sample_struct(nr).pack(
                record_type, misc, base_size + 8 * nr, ip, sample.pid, sample.tid, 0, sample.cpu, 0, weight, nr, *chain
            )
            heads.append(record[:_TIME_AT])
            tails.append(record[_TIME_AT + 8 :])
        events = timeline.sample_times(window, expand=not compact)
        append, pack_time = chunks.append, _U64_PACK
        for time, index in events:
            append(heads[index])
            append(pack_time(time))
            append(tails[index])
        return len(events)


def _has_python(window: ProfileWindow) -> bool:
    return any(frame.kind is _CPYTHON for sample in window.samples for frame in sample.stack)
