"""Filling the in-kernel unwinder's maps: how long rows take to write, and how soon a process is walked.

Rows: python3.11's table turned into ``struct unwind_row`` bytes and written into a real BPF
array, by BPF_MAP_UPDATE_BATCH (what the agent does) against one BPF_MAP_UPDATE_ELEM per row
from Python (the reference, in the same run). Readiness: from ``note_process`` of a running
python3.11 to its ``unwind_processes`` entry being written, with an empty table cache (the worker
parses every file) and with a warm one (tables loaded by build ID). Needs root (BPF maps).

    .venv/bin/python benchmarks/unwind_maps.py            # full (make bench), under a minute
    .venv/bin/python benchmarks/unwind_maps.py --quick    # one round each
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from antiprof_core.config import SamplerConfig
from antiprof_core.sources.bpf import syscalls
from antiprof_core.sources.bpf.maps import ArrayMap, MapInfo, create_map
from antiprof_core.sources.unwind import build_table
from antiprof_core.sources.unwind.kernelmaps import NativeUnwindMaps
from antiprof_core.sources.unwind.layout import UNWIND_MAPPING, UNWIND_PROCESS, UNWIND_ROW, kernel_rows
from antiprof_core.sources.unwind.worker import UnwindTableBuilder

PYTHON = "/usr/bin/python3.11"


def make_maps() -> dict[str, MapInfo]:
    return {
        "unwind_rows": create_map("unwind_rows", syscalls.MAP_TYPE_ARRAY, 4, UNWIND_ROW.size, 1 << 20),
        "unwind_mappings": create_map("unwind_mappings", syscalls.MAP_TYPE_ARRAY, 4, UNWIND_MAPPING.size, 32 * 4096),
        "unwind_processes": create_map("unwind_processes", syscalls.MAP_TYPE_HASH, 4, UNWIND_PROCESS.size, 4096),
    }


def close_maps(maps: dict[str, MapInfo]) -> None:
    import os

    for info in maps.values():
        os.close(info.fd)


def bench_rows(rounds: int) -> None:
    table = build_table(PYTHON)
    maps = make_maps()
    rows = ArrayMap(maps["unwind_rows"])
    convert, batched, single = [], [], []
    data = b""
    for _ in range(rounds):
        started = time.perf_counter()
        _, data = kernel_rows(table, 1 << 20)
        convert.append(time.perf_counter() - started)
        started = time.perf_counter()
        rows.write_range(0, data)
        batched.append(time.perf_counter() - started)
    started = time.perf_counter()
    for index in range(len(table.pcs)):  # the reference: one update per row
        rows.write(index, data[16 * index : 16 * index + 16])
    single.append(time.perf_counter() - started)
    close_maps(maps)
    batch_ms = 1000 * statistics.median(batched)
    single_ms = 1000 * statistics.median(single)
    print(f"python3.11: {len(table.pcs)} rows, {len(data) / 1024:.0f} KiB of struct unwind_row")
    print(f"  to kernel layout      {1000 * statistics.median(convert):7.1f} ms")
    print(f"  batch write           {batch_ms:7.1f} ms")
    print(f"  one update per row    {single_ms:7.1f} ms   (batch is {single_ms / batch_ms:.1f}x faster)")


def bench_ready(rounds: int) -> None:
    process = subprocess.Popen(
        [PYTHON, "-c", "import time; print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    cache = Path(tempfile.mkdtemp(prefix="antiprof-bench-")) / "unwind"
    logger = logging.getLogger("bench")
    try:
        for label, cold in (("empty table cache", True), ("warm table cache", False)):
            times = []
            summary = ""
            for _ in range(rounds):
                if cold:
                    for old in cache.glob("*") if cache.exists() else []:
                        old.unlink()
                maps = make_maps()
                unwind = NativeUnwindMaps(maps, SamplerConfig(), logger, UnwindTableBuilder(cache, process=True))
                time.sleep(1.0)  # the worker process is up (the agent starts it with the sampler)
                started = time.perf_counter()
                unwind.note_process(process.pid)
                if not unwind.wait_idle(120):
                    raise SystemExit("the unwind maps were not filled within 120 s")
                times.append(time.perf_counter() - started)
                summary = unwind.summary()
                unwind.close()
                close_maps(maps)
            print(f"python3.11 noted -> entry written, {label}: {1000 * statistics.median(times):.0f} ms")
        print(f"  {summary}")
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of each figure")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    with open("/proc/loadavg") as loadavg:
        print(f"load average {loadavg.read().split()[0]} on this host")
    bench_rows(rounds)
    bench_ready(rounds)


if __name__ == "__main__":
    main()
