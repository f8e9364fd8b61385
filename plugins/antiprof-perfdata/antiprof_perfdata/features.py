"""Header feature payloads (HOSTNAME ... BUILD_ID), shared by file mode and pipe mode.

perf reads every feature the same way in both modes, so each payload is built once here; file
mode places them after the data section, pipe mode wraps each in a HEADER_FEATURE record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from antiprof_core.model import Host
from antiprof_perfdata import layout
from antiprof_perfdata.encoder import BuildId

EVENT_NAME = "cpu-clock"


def attr_bytes(frequency_hz: int) -> bytes:
    """The one cpu-clock attr, VER0 size: enough for every field we use and read by every perf."""
    return layout.ATTR.pack(
        layout.ATTR_TYPE_SOFTWARE,
        layout.ATTR_SIZE_VER0,
        layout.ATTR_CONFIG_CPU_CLOCK,
        frequency_hz,
        layout.SAMPLE_TYPE,
        0,
        layout.ATTR_FLAGS,
        0,
        0,
        0,
    )


def string(text: str) -> bytes:
    """u32 length, then the NUL-terminated text padded to 64 bytes, as perf writes strings."""
    raw = layout.padded(text, layout.NAME_ALIGN)
    return layout.U32.pack(len(raw)) + raw


def host_features(host: Host, command_line: Sequence[str], version: str) -> dict[int, bytes]:
    """The features that describe the machine and the recording process."""
    features = {
        layout.FEAT_HOSTNAME: string(host.hostname),
        layout.FEAT_OSRELEASE: string(host.kernel_release),
        layout.FEAT_VERSION: string(version),
        layout.FEAT_ARCH: string(host.arch or "unknown"),
        layout.FEAT_NRCPUS: layout.TWO_U32.pack(host.cpu_count, host.online_cpus or host.cpu_count),
        layout.FEAT_CPUDESC: string(host.cpu_description or "unknown"),
        layout.FEAT_CMDLINE: layout.U32.pack(len(command_line)) + b"".join(string(arg) for arg in command_line),
    }
    if host.memory_kb:
        features[layout.FEAT_TOTAL_MEM] = layout.U64.pack(host.memory_kb)
    return features


def event_desc(frequency_hz: int) -> bytes:
    """EVENT_DESC: one event, named cpu-clock, with no sample IDs."""
    attr = attr_bytes(frequency_hz)
    return layout.TWO_U32.pack(1, len(attr)) + attr + layout.U32.pack(0) + string(EVENT_NAME)


def sample_time(first_ns: int, last_ns: int) -> bytes:
    return layout.TWO_U64.pack(first_ns, last_ns)


def build_id_entry(entry: BuildId, record_type: int = 0) -> bytes:
    """One build-id entry; pid -1 means the host (any other pid invents a guest machine)."""
    name = layout.padded(entry.path, layout.NAME_ALIGN)
    misc = (layout.MISC_KERNEL if entry.kernel else layout.MISC_USER) | layout.MISC_BUILD_ID_SIZE
    head = layout.BUILD_ID_ENTRY.pack(
        record_type,
        misc,
        layout.BUILD_ID_ENTRY.size + len(name),
        -1,
        entry.build_id.ljust(20, b"\0"),
        len(entry.build_id),
    )
    return head + name


def build_id_table(entries: Iterable[BuildId]) -> bytes:
    return b"".join(build_id_entry(entry) for entry in entries)


def feature_section(features: dict[int, bytes], offset: int) -> tuple[bytes, tuple[int, int, int, int]]:
    """The block perf reads at data end: a {offset, size} per feature in bit order, then payloads.

    Returns the block and the 256-bit feature bitmap as four u64 words.
    """
    order = sorted(features)
    table_size = layout.FILE_SECTION.size * len(order)
    cursor = offset + table_size
    table = []
    for feature in order:
        size = len(features[feature])
        table.append(layout.FILE_SECTION.pack(cursor, size))
        cursor += size
    bitmap = [0, 0, 0, 0]
    for feature in order:
        bitmap[feature // 64] |= 1 << (feature % 64)
    block = b"".join(table) + b"".join(features[feature] for feature in order)
    return block, (bitmap[0], bitmap[1], bitmap[2], bitmap[3])
