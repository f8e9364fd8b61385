"""The data every consumer receives: one immutable ``ProfileWindow`` per time window.

Raw addresses live next to names on purpose: perf.data wants raw IPs and mappings and lets
``perf`` symbolize, while OTLP and JSON want names, mappings and build IDs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from collections.abc import Mapping as MappingABC

from attrs import field, frozen


class FrameKind(enum.Enum):
    """Where a frame's code lives; the values are OTLP's ``profile.frame.type`` names."""

    KERNEL = "kernel"
    NATIVE = "native"
    JIT = "jit"
    CPYTHON = "cpython"  # a CPython function: ``symbol`` is its qualified name, with ``file`` and ``line``


class SamplingMode(enum.Enum):
    """``aggregate``: one count per distinct stack; ``trace``: every sample keeps its timestamp."""

    AGGREGATE = "aggregate"
    TRACE = "trace"


class Unwinder(enum.Enum):
    """How user stacks are walked: ``dwarf`` with the files' unwind tables (.eh_frame), ``frame-pointer``
    by following rbp, ``auto`` tables where a file has them and frame pointers elsewhere."""

    AUTO = "auto"
    FRAME_POINTER = "frame-pointer"
    DWARF = "dwarf"


@frozen
class Mapping:
    """An executable region of a process's address space (or the kernel's text)."""

    start: int
    end: int
    file_offset: int
    path: str
    build_id: str | None = None  # GNU build ID, lowercase hex
    inode: int = 0
    device: int = 0  # st_dev of the file, as os.makedev(major, minor)


@frozen
class Frame:
    """One stack frame. ``symbol`` is None when nothing could name the address.

    Interpreted frames (``FrameKind.CPYTHON``) have no machine address of their own: ``address``
    is the code object's address in the process, ``offset`` the instruction's byte offset in
    its bytecode, ``file`` and ``line`` say where in the source it was, and ``start_line`` where
    its function begins (which tells apart two functions of one name in one file, like lambdas).
    """

    address: int
    kind: FrameKind
    symbol: str | None = None
    offset: int = 0  # address minus the symbol's start
    mapping: Mapping | None = None
    file: str | None = None  # source file, for interpreted frames
    line: int | None = None  # source line of the instruction, when known
    start_line: int | None = None  # source line where the function begins, for interpreted frames


@frozen
class Sample:
    """A distinct stack of one thread on one CPU, seen ``count`` times in the window.

    ``stack`` is leaf first: kernel frames, then user frames. In trace mode ``timestamps``
    (Unix ns) holds one entry per occurrence, so ``len(timestamps) == count``.
    """

    pid: int
    tid: int
    cpu: int
    thread_name: str
    stack: tuple[Frame, ...]
    count: int = 1
    timestamps: tuple[int, ...] = ()


@frozen
class Process:
    pid: int
    name: str  # comm of the main thread
    executable: str | None = None
    command_line: tuple[str, ...] = ()
    container_id: str | None = None
    mappings: tuple[Mapping, ...] = ()


@frozen
class Host:
    """Facts about the machine, filled once at start-up; perf.data headers and OTLP resources use them."""

    hostname: str
    kernel_release: str
    cpu_count: int
    node_name: str = ""
    cluster_name: str = ""
    kernel_version: str = ""  # uname -v
    arch: str = ""
    cpu_description: str = ""
    memory_kb: int = 0
    online_cpus: int = 0
    kernel: Mapping | None = None  # [kernel.kallsyms]_text: start=_text, end=_etext, build ID from /sys/kernel/notes


@frozen
class Counters:
    """What the sampler saw and lost in this window; ``stack_errors`` is keyed like ``user_collision``."""

    samples_seen: int = 0
    samples_lost: int = 0
    stack_errors: MappingABC[str, int] = field(factory=dict)
    windows_dropped: int = 0  # running total of windows this consumer lost to a full queue
    unwind_tables: MappingABC[str, int] = field(factory=dict)  # the native unwinder's tables: loaded, evicted, refused
    # CPython frames: read, truncated, and stacks not read by cause (no thread state, bad read, unsupported)
    python: MappingABC[str, int] = field(factory=dict)


@frozen
class ProfileWindow:
    start_ns: int  # Unix ns
    end_ns: int
    frequency_hz: int
    host: Host
    samples: tuple[Sample, ...] = ()
    processes: MappingABC[int, Process] = field(factory=dict)  # by pid
    counters: Counters = field(factory=Counters)
    event: str = "cpu-clock"
    mode: SamplingMode = SamplingMode.AGGREGATE

    @property
    def period_ns(self) -> int:
        """Nanoseconds of CPU time that one sample stands for."""
        return 1_000_000_000 // self.frequency_hz

    @property
    def sample_count(self) -> int:
        return sum(sample.count for sample in self.samples)

    def frames(self) -> Iterator[Frame]:
        """Every frame of every sample, with repeats."""
        for sample in self.samples:
            yield from sample.stack
