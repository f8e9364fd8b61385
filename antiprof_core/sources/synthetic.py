"""Seeded synthetic windows: the whole pipeline runs, is tested and benchmarked without BPF.

Everything here is made up (names start with ``synthetic_``) but shaped like the real thing:
processes with an executable and a shared library, shared frames, kernel frames under some
stacks, plausible addresses and build IDs.
"""

from __future__ import annotations

import random
import time

from antiprof_core.model import (
    Counters,
    Frame,
    FrameKind,
    Host,
    Mapping,
    Process,
    ProfileWindow,
    Sample,
    SamplingMode,
)

_KERNEL_BASE = 0xFFFFFFFF81000000
_EXE_BASE = 0x5555_5555_0000
_LIB_BASE = 0x7F00_0000_0000
_FUNCTIONS_PER_MAPPING = 64
_FUNCTION_SIZE = 0x100


def synthetic_host() -> Host:
    kernel = Mapping(_KERNEL_BASE, _KERNEL_BASE + 0x100_0000, _KERNEL_BASE, "[kernel.kallsyms]", build_id="ab" * 20)
    return Host(
        hostname="synthetic-host",
        kernel_release="6.1.0-synthetic",
        cpu_count=4,
        online_cpus=4,
        arch="x86_64",
        cpu_description="Synthetic CPU",
        memory_kb=8 * 1024 * 1024,
        kernel=kernel,
    )


def _functions(rng: random.Random, mapping: Mapping, kind: FrameKind, prefix: str) -> list[Frame]:
    frames = []
    for i in range(_FUNCTIONS_PER_MAPPING):
        offset = rng.randrange(0x10, _FUNCTION_SIZE)
        address = mapping.start + i * _FUNCTION_SIZE + offset
        frames.append(Frame(address, kind, f"{prefix}_{i}", offset, mapping))
    return frames


def synthetic_window(
    processes: int = 20,
    stacks: int = 500,
    depth: int = 16,
    seed: int = 1,
    frequency_hz: int = 19,
    start_ns: int | None = None,
    duration_ns: int = 10_000_000_000,
    mode: SamplingMode = SamplingMode.AGGREGATE,
    host: Host | None = None,
) -> ProfileWindow:
    """A window of ``stacks`` distinct samples spread over ``processes`` processes, each ``depth`` frames deep.

    The same arguments give the same window, except for times when ``start_ns`` is None (now).
    """
    rng = random.Random(seed)
    host = host or synthetic_host()
    start = time.time_ns() - duration_ns if start_ns is None else start_ns
    kernel_frames = _functions(rng, host.kernel, FrameKind.KERNEL, "synthetic_kernel_fn") if host.kernel else []
    library = 0  # every process shares one library, as they share libc
    procs: dict[int, Process] = {}
    frame_pools: dict[int, list[Frame]] = {}
    for index in range(processes):
        pid = 1000 + index
        exe = Mapping(
            _EXE_BASE, _EXE_BASE + 0x10_0000, 0x1000, f"/usr/bin/synthetic_app_{index}", f"{index:040x}", 100 + index
        )
        lib = Mapping(
            _LIB_BASE,
            _LIB_BASE + 0x20_0000,
            0x2000,
            f"/usr/lib/libsynthetic_{library}.so",
            f"{0xABC + library:040x}",
            50,
        )
        procs[pid] = Process(pid, f"synthetic_{index}", exe.path, (exe.path, "--synthetic"), None, (exe, lib))
        frame_pools[pid] = _functions(rng, exe, FrameKind.NATIVE, f"synthetic_app_{index}_fn") + _functions(
            rng, lib, FrameKind.NATIVE, f"synthetic_lib_{library}_fn"
        )
    pids = list(procs)
    samples = []
    for index in range(stacks):
        pid = pids[index % len(pids)]
        pool = frame_pools[pid]
        kernel_depth = rng.randrange(0, min(8, depth)) if kernel_frames and index % 3 == 0 else 0
        stack = rng.sample(kernel_frames, kernel_depth) + [rng.choice(pool) for _ in range(depth - kernel_depth)]
        count = rng.randrange(1, 6)
        timestamps: tuple[int, ...] = ()
        if mode is SamplingMode.TRACE:
            timestamps = tuple(sorted(start + rng.randrange(duration_ns) for _ in range(count)))
        samples.append(
            Sample(
                pid=pid,
                tid=pid + (index // len(pids)) % 4,
                cpu=index % host.cpu_count,
                thread_name=procs[pid].name,
                stack=tuple(stack),
                count=count,
                timestamps=timestamps,
            )
        )
    seen = sum(sample.count for sample in samples)
    return ProfileWindow(
        start_ns=start,
        end_ns=start + duration_ns,
        frequency_hz=frequency_hz,
        host=host,
        samples=tuple(samples),
        processes=procs,
        counters=Counters(samples_seen=seen),
        mode=mode,
    )
