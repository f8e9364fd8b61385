"""The perf.data binary layout: constants and precompiled ``struct.Struct``s, native little-endian.

Numbers follow the kernel's uapi ``perf_event.h`` and perf's ``util/header.h``; the facts perf 6.1
relies on are in ``/work/shared/perfdata-format.md``.
"""

from __future__ import annotations

import struct
from functools import cache

MAGIC = b"PERFILE2"

# perf_event_header.type
RECORD_MMAP = 1
RECORD_COMM = 3
RECORD_SAMPLE = 9
RECORD_MMAP2 = 10
RECORD_HEADER_ATTR = 64
RECORD_HEADER_BUILD_ID = 67
RECORD_FINISHED_ROUND = 68
RECORD_HEADER_FEATURE = 80

# perf_event_header.misc
MISC_KERNEL = 1
MISC_USER = 2
MISC_MMAP_BUILD_ID = 1 << 14
MISC_BUILD_ID_SIZE = 1 << 15

# perf_event_attr
ATTR_TYPE_SOFTWARE = 1
ATTR_CONFIG_CPU_CLOCK = 0
ATTR_SIZE_VER0 = 64
SAMPLE_IP = 1 << 0
SAMPLE_TID = 1 << 1
SAMPLE_TIME = 1 << 2
SAMPLE_CALLCHAIN = 1 << 5
SAMPLE_CPU = 1 << 7
SAMPLE_PERIOD = 1 << 8
SAMPLE_TYPE = SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_CPU | SAMPLE_PERIOD | SAMPLE_CALLCHAIN
ATTR_FLAGS = (
    (1 << 0)  # disabled
    | (1 << 1)  # inherit
    | (1 << 8)  # mmap
    | (1 << 9)  # comm
    | (1 << 10)  # freq
    | (1 << 13)  # task
    | (1 << 20)  # exclude_guest
    | (1 << 23)  # mmap2
    | (1 << 24)  # comm_exec
)

# Callchain context markers (as u64).
CONTEXT_KERNEL = (1 << 64) - 128
CONTEXT_USER = (1 << 64) - 512

# Header feature bits (perf's util/header.h).
FEAT_BUILD_ID = 2
FEAT_HOSTNAME = 3
FEAT_OSRELEASE = 4
FEAT_VERSION = 5
FEAT_ARCH = 6
FEAT_NRCPUS = 7
FEAT_CPUDESC = 8
FEAT_TOTAL_MEM = 10
FEAT_CMDLINE = 11
FEAT_EVENT_DESC = 12
FEAT_SAMPLE_TIME = 21

NAME_ALIGN = 64  # strings in feature sections and build-id file names
PROT_READ_EXEC = 0x1 | 0x4
MAP_PRIVATE = 0x2
BUILD_ID_MAX = 20

FILE_HEADER = struct.Struct("<8sQQ QQ QQ QQ 4Q")  # magic, size, attr_size, attrs, data, event_types, features
PIPE_HEADER = struct.Struct("<8sQ")
ATTR = struct.Struct("<IIQQQQQIIQ")  # perf_event_attr, VER0 (64 bytes)
FILE_SECTION = struct.Struct("<QQ")
RECORD_HEADER = struct.Struct("<IHH")
FINISHED_ROUND = RECORD_HEADER.pack(RECORD_FINISHED_ROUND, 0, RECORD_HEADER.size)
MMAP = struct.Struct("<IHH iiQQQ")  # header, pid, tid, start, len, pgoff; then the name
MMAP2_INODE = struct.Struct("<IHH iiQQQ IIQQ II")  # ... maj, min, ino, ino_generation, prot, flags
MMAP2_BUILD_ID = struct.Struct("<IHH iiQQQ BBH20s II")  # ... build-id size, reserved, id, prot, flags
COMM = struct.Struct("<IHH ii")  # header, pid, tid; then the name
BUILD_ID_ENTRY = struct.Struct("<IHH i20sBxxx")  # header, pid, id, size; then the file name
FEATURE_RECORD = struct.Struct("<IHHQ")  # pipe mode: header, feature id; then the payload
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
TWO_U32 = struct.Struct("<II")
TWO_U64 = struct.Struct("<QQ")

SAMPLE_FIXED_WORDS = 6  # ip, pid|tid, time, cpu|res, period, nr


@cache
def sample_struct(chain_length: int) -> struct.Struct:
    """A SAMPLE record with a callchain of ``chain_length`` entries (markers included)."""
    return struct.Struct(f"<IHHQiiQIIQQ{chain_length}Q")


def padded(text: str, align: int = 8) -> bytes:
    """NUL-terminated UTF-8, zero-padded to a multiple of ``align``."""
    raw = text.encode("utf-8", "surrogateescape") + b"\0"
    return raw + b"\0" * (-len(raw) % align)
