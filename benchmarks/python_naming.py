"""User-space cost of Python frames: detection, the reference walk, and naming with warm caches.

Runs the two-thread test program (``main -> heavy_math``, ``light_strings``) under each CPython
3.11+ present, stops it, and times, per interpreter: ``detect`` (cold: ELF symbols, version,
offsets), one reference walk of a thread over /proc/PID/mem, naming a frame cold (code object,
strings, line table read) and warm (cache hit: one read of the code object's type and
fingerprint fields, the line memoised per offset). The reference in the same run is one 8-byte
pread of /proc/PID/mem, the floor of any read. ``--long`` runs ten times more rounds.

The BPF half (cost per sample with and without the in-kernel walk, and py-spy side by side)
belongs to the sampler work of issue 12 and is not measured here.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from antiprof_core.symbolize.python import CodeNamer, ProcessMemory, PythonProcess, PythonWalker, detect
from antiprof_core.testing.python_workloads import cpython_interpreters, running_two_threads

ROUNDS = 2_000
FRAMES_PER_WINDOW = 5_000  # distinct Python frames a busy host's window might hold


def per_call_us(rounds: int, action: Callable[[], object]) -> float:
    """Best of three batches, in microseconds per call (CPU time: steady on a shared machine)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(rounds):
            action()
        best = min(best, time.process_time() - start)
    return best / rounds * 1e6


def measure(path: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as directory, running_two_threads(path, Path(directory)) as program:
        program.stop()
        detect_us = per_call_us(max(rounds // 100, 3), lambda: detect(program.pid))
        found = detect(program.pid)
        assert isinstance(found, PythonProcess), found
        with ProcessMemory(program.pid) as memory:
            walker = PythonWalker(found, memory)
            stack = walker.walk(program.main_tid)
            raw = stack.frames[0]
            pread_us = per_call_us(rounds, lambda: memory.u64(found.runtime_address))
            walk_us = per_call_us(rounds, lambda: walker.walk(program.main_tid))

            def cold() -> object:
                return CodeNamer(found, memory).name(raw)

            cold_us = per_call_us(rounds // 4, cold)
            namer = CodeNamer(found, memory)
            namer.name(raw)
            warm_us = per_call_us(rounds, lambda: namer.name(raw))
        program.resume()
    version = ".".join(map(str, found.version))
    print(
        f"CPython {version:7} detect {detect_us / 1000:6.1f} ms | walk ({len(stack.frames)} frames) {walk_us:6.1f} us"
        f" | name cold {cold_us:6.1f} us, warm {warm_us:5.1f} us = {warm_us / pread_us:4.1f} x one pread"
        f" ({pread_us:.1f} us) | {FRAMES_PER_WINDOW} warm frames per window:"
        f" {warm_us * FRAMES_PER_WINDOW / 1000:.0f} ms"
    )


def main() -> None:
    rounds = ROUNDS * (10 if "--long" in sys.argv else 1)
    interpreters = [i for i in cpython_interpreters() if i.version >= (3, 11)]
    if not interpreters:
        print("no CPython 3.11+ on this machine")
        return
    for interpreter in interpreters:
        measure(interpreter.path, rounds)


if __name__ == "__main__":
    main()
