"""The contract with bpf/profile.bpf.c: its -D options, its map sizes, and the bytes of its records.

Pure data and arithmetic: nothing here loads or reads BPF.
"""

from __future__ import annotations

import functools
import importlib.resources
import struct
from collections.abc import Mapping
from pathlib import Path

from antiprof_core.config import SamplerConfig
from antiprof_core.model import SamplingMode, Unwinder

TASK_COMM_LEN = 16
# Order of the per-CPU counter slots; keep in sync with `enum counter` in bpf/profile.bpf.c.
COUNTER_NAMES = (
    "samples_seen",
    "samples_lost",
    "user_not_present",
    "user_collision",
    "user_map_full",
    "user_other",
    "kernel_not_present",
    "kernel_collision",
    "kernel_map_full",
    "kernel_other",
    "counts_map_full",
    "unwind_fallback",
    "unwind_no_table",
    "unwind_no_row",
    "unwind_unsupported",
    "unwind_bad_read",
    "unwind_depth",
    "python_frames_read",
    "python_truncated",
    "python_no_thread",
    "python_bad_read",
)
PYTHON_COUNTER_NAMES = tuple(name for name in COUNTER_NAMES if name.startswith("python_"))
STACK_ERROR_NAMES = tuple(name for name in COUNTER_NAMES[2:] if name not in PYTHON_COUNTER_NAMES)
MIN_STACKS = 4096
HEADROOM = 2  # entries per possible stack of a window: room for a drain that comes late
MAX_DEFAULT_STACKS = 65536
MAX_PIDS = 8192
PROGRAM_FUNCTION = "on_sample"
UNWIND_FUNCTION = "unwind_frames"  # the native unwinder's tail-called program
UNWIND_PROGRAMS = "unwind_programs"  # its program array
EXEC_FUNCTION = "on_exec"  # run at every exec: the process's code is not what was read
UNWIND_MAPS = ("unwind_rows", "unwind_mappings", "unwind_processes")
MAPPINGS_PER_PROCESS = 32  # unwind_mappings entries per unwind_processes entry, on average
PYTHON_PROCESSES_MAP = "python_processes"
PYTHON_PROCESSES = 4096  # CPython processes whose frames are read at once
TAIL_CALLS = 33  # the kernel's limit of program runs per sample (MAX_TAIL_CALL_CNT + 1)

# struct sample_key: tgid, tid, cpu, (pad), user stack hash, kernel stack hash, Python stack hash, comm
SAMPLE_KEY = struct.Struct(f"=IIIxxxxQQQ{TASK_COMM_LEN}s")
# struct sample_event: ktime_ns, set, (pad), then the key
SAMPLE_EVENT = struct.Struct(f"=QIxxxxIIIxxxxQQQ{TASK_COMM_LEN}s")
_DEPTH = struct.Struct("=I")  # struct stack_value starts with its depth
RawKey = tuple[int, int, int, int, int, int, bytes]  # tgid, tid, cpu, user, kernel and Python stacks, comm


def stack_value_size(config: SamplerConfig) -> int:
    """struct stack_value: a u32 depth, a u32 pad, then max_stack_depth addresses."""
    return 8 + 8 * config.max_stack_depth


def python_frames(config: SamplerConfig) -> bool:
    """Whether the program reads CPython's interpreter frames (``sampler.python_frames``)."""
    return config.user_stacks and config.python_frames


def native_unwinder(config: SamplerConfig) -> bool:
    """Whether the program walks user stacks with unwind tables (``auto`` and ``dwarf``)."""
    return config.user_stacks and config.unwinder is not Unwinder.FRAME_POINTER


def map_names(config: SamplerConfig) -> tuple[str, ...]:
    """The maps the agent reads, as the program declares them for this config.

    With the native unwinder, the program array too: the kernel empties a program array once no
    process holds it open, so the agent keeps its descriptor.
    """
    names = ["active_set", "counters", "stacks0", "stacks1", "known_tgids", "new_tgids"]
    names += ["sample_events"] if config.mode is SamplingMode.TRACE else ["counts0", "counts1"]
    if config.pids:
        names.append("pid_filter")
    if native_unwinder(config):
        names += [*UNWIND_MAPS, UNWIND_PROGRAMS]
    if python_frames(config):
        names.append(PYTHON_PROCESSES_MAP)
    return tuple(names)


def tail_calls(config: SamplerConfig) -> dict[str, list[str]]:
    """Program arrays and the functions the compiler child loads into them, in order."""
    return {UNWIND_PROGRAMS: [UNWIND_FUNCTION]} if native_unwinder(config) else {}


def raw_tracepoints(config: SamplerConfig) -> dict[str, str]:
    """Tracepoints the compiler child attaches: an exec makes the program forget the process."""
    return {"sched_process_exec": EXEC_FUNCTION}


def frames_per_call(config: SamplerConfig) -> int:
    """Frames one run of the unwinder walks: enough that the tail-call limit covers max_stack_depth."""
    return max(1, -(-config.max_stack_depth // (TAIL_CALLS - 1)))


def unwind_kernel_bytes(config: SamplerConfig) -> int:
    """Kernel memory of the unwinder's maps: 16 bytes a row, 32 a mapping, about 80 a process."""
    processes = config.unwind_processes
    return 16 * config.unwind_table_rows + 32 * MAPPINGS_PER_PROCESS * processes + 80 * processes


def _next_power_of_two(value: int) -> int:
    return 1 << max(value - 1, 1).bit_length()


def stack_map_size(config: SamplerConfig, cpus: int) -> int:
    """Entries per stacks map (and per counts map): ``max_stacks``, or room for two stacks (user
    and kernel) of every possible sample of a window, twice over, as a power of two between 4096
    and 65536.

    Each entry of a stacks map is preallocated at 8 x (max_stack_depth + 1) bytes plus about 50
    bytes of hash-table overhead, and there are two sets: 4096 entries at the default depth cost
    about 9 MiB of kernel memory, 65536 about 140 MiB.
    """
    if config.max_stacks:
        return _next_power_of_two(config.max_stacks)
    samples = int(config.frequency_hz * cpus * float(config.window))
    return min(max(_next_power_of_two(HEADROOM * 2 * samples), MIN_STACKS), MAX_DEFAULT_STACKS)


def kernel_memory_bytes(config: SamplerConfig, entries: int) -> int:
    """An estimate of the kernel memory both map sets hold (stacks and counts maps)."""
    stack_entry = stack_value_size(config) + 8 + 56  # value, key, struct htab_elem
    count_entry = SAMPLE_KEY.size + 8 + 56
    return 2 * entries * (stack_entry + count_entry)


def cflags(config: SamplerConfig, max_stacks: int, cpus: int) -> list[str]:
    samples_per_second = config.frequency_hz * cpus
    ring_pages = _next_power_of_two(max(samples_per_second * 80 * 2 // 4096, 16))
    return [
        f"-DMAX_STACK_DEPTH={config.max_stack_depth}",
        f"-DMAX_STACKS={max_stacks}",
        f"-DMAX_COUNTS={max_stacks}",
        f"-DMAX_PIDS={MAX_PIDS}",
        f"-DRINGBUF_PAGES={ring_pages}",
        f"-DFILTER_PIDS={int(bool(config.pids))}",
        f"-DKERNEL_STACKS={int(config.kernel_stacks)}",
        f"-DUSER_STACKS={int(config.user_stacks)}",
        f"-DINCLUDE_IDLE={int(config.include_idle)}",
        f"-DTRACE_MODE={int(config.mode is SamplingMode.TRACE)}",
        f"-DDWARF_UNWINDER={int(native_unwinder(config))}",
        f"-DUNWIND_FP_FALLBACK={int(config.unwinder is Unwinder.AUTO)}",
        f"-DUNWIND_ROWS={config.unwind_table_rows}",
        f"-DUNWIND_MAPPINGS={MAPPINGS_PER_PROCESS * config.unwind_processes}",
        f"-DUNWIND_PROCESSES={config.unwind_processes}",
        f"-DFRAMES_PER_CALL={frames_per_call(config)}",
        f"-DPYTHON_FRAMES={int(python_frames(config))}",
        f"-DMAX_PYTHON_DEPTH={min(config.max_python_depth, config.max_stack_depth)}",
        f"-DPYTHON_PROCESSES={PYTHON_PROCESSES}",
        "-Wno-macro-redefined",
    ]


def bpf_source() -> str:
    return (importlib.resources.files("antiprof_core.bpf") / "profile.bpf.c").read_text()


def online_cpus(path: Path = Path("/sys/devices/system/cpu/online")) -> list[int]:
    """The CPUs online now (``0-3,5``), whatever this process's affinity; or those of another list."""
    try:
        text = path.read_text().strip()
    except OSError:
        return []
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def decode_counts(keys: bytes | memoryview, values: bytes | memoryview) -> list[tuple[RawKey, int]]:
    """One batch of the counts map: every sample key with its count."""
    counts = memoryview(values).cast("B").cast("Q").tolist()
    return list(zip(SAMPLE_KEY.iter_unpack(keys), counts, strict=True))


@functools.cache
def _addresses(depth: int) -> struct.Struct:
    return struct.Struct(f"={depth}Q")


def decode_stacks(
    keys: bytes | memoryview,
    values: bytes | memoryview,
    max_stack_depth: int,
    into: dict[int, tuple[int, ...]],
    known: Mapping[int, tuple[int, ...]],
) -> None:
    """One batch of a stacks map into ``into``: stack hash -> addresses, leaf first.

    A hash names its addresses (it is computed from them), so a stack in ``known`` (the last
    window's) is taken from there: no new int objects for the stacks a steady host repeats.
    """
    hashes = memoryview(keys).cast("B").cast("Q").tolist()
    stride = 8 + 8 * max_stack_depth
    depth_of = _DEPTH.unpack_from
    for index, stack_hash in enumerate(hashes):
        addresses = known.get(stack_hash)
        if addresses is None:
            offset = index * stride
            depth = min(depth_of(values, offset)[0], max_stack_depth)
            addresses = _addresses(depth).unpack_from(values, offset + 8)
        into[stack_hash] = addresses


def decode_event(record: bytes) -> tuple[int, int, RawKey]:
    """A trace-mode sample from the ring buffer: (set, ktime ns, key)."""
    ktime, set_index, *key = SAMPLE_EVENT.unpack_from(record)
    return set_index, ktime, (key[0], key[1], key[2], key[3], key[4], key[5], key[6])
