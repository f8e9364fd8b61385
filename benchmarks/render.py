"""Renderers side by side: stack records per second on the same synthetic window, in the same run.

    .venv/bin/python benchmarks/render.py [--stacks 50000] [--depth 32] [--rounds 5]

One function per renderer returns its timed steps; the rounds run every step of every renderer in
turn, and each step is timed in CPU seconds of this process (user + system, so writes count), so
other work on a shared machine skews neither the rates nor the ratios much:
1. the reference: the perf.data writer (encode only, and encode + write to the page cache,
   steady state: the file already holds a window);
2. pprof: build + serialize + gzip, and the sink's whole path (+ publish a file in /dev/shm);
   target: pprof >= 0.5x the perf.data writer's records/s (encode + write).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from attrs import frozen

from antiprof_core.model import ProfileWindow
from antiprof_core.sources.synthetic import synthetic_window

PPROF_TARGET_RATIO = 0.5


@frozen
class Step:
    label: str
    action: Callable[[], object]


def memory_directory(stack: contextlib.ExitStack, fallback: Path) -> Path:
    place = Path("/dev/shm") if Path("/dev/shm").is_dir() else fallback
    return Path(stack.enter_context(tempfile.TemporaryDirectory(dir=place, prefix="antiprof-render-")))


def perfdata_steps(window: ProfileWindow, stack: contextlib.ExitStack, directory: Path) -> list[Step]:
    """The reference: perf.data records in steady state (the file already holds a window)."""
    from antiprof_perfdata.encoder import RecordEncoder
    from antiprof_perfdata.writer import PerfDataFile

    encoder = RecordEncoder()
    encoder.commit(encoder.encode(window))
    out = PerfDataFile(memory_directory(stack, directory) / "render.perf.data", window.host, window.frequency_hz)
    stack.callback(out.close)
    out.write(window)
    return [
        Step("perf.data: encode", lambda: encoder.encode(window)),
        Step("perf.data: encode + write (/dev/shm)", lambda: out.write(window)),
    ]


def pprof_steps(window: ProfileWindow, stack: contextlib.ExitStack, directory: Path) -> list[Step]:
    """pprof: one gzip'd profile per window, as the sink writes it."""
    from antiprof_pprof.encoder import encode_profile
    from antiprof_pprof.files import ProfileFiles

    output = memory_directory(stack, directory) / "pprof"
    files = ProfileFiles(output, window.host.hostname, max_files=2, max_total_size=1 << 40)
    size = len(encode_profile([window]))
    print(f"pprof file for this window: {size:,} bytes ({size / window.sample_count:.1f} per sample)")
    def publish() -> None:
        files.write(window.start_ns, encode_profile([window]))

    return [
        Step("pprof: build + serialize + gzip", lambda: encode_profile([window])),
        Step("pprof: encode + publish a file (/dev/shm)", publish),
    ]


def measure(steps: list[Step], rounds: int, records: int) -> dict[str, tuple[float, float]]:
    """(best, median) records per CPU second for each step, the steps interleaved round by round."""
    rates: dict[str, list[float]] = {step.label: [] for step in steps}
    for _ in range(rounds):
        for step in steps:
            started = time.process_time()
            step.action()
            rates[step.label].append(records / max(time.process_time() - started, 1e-9))
    return {label: (max(found), statistics.median(found)) for label, found in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=50_000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    window = synthetic_window(processes=50, stacks=args.stacks, depth=args.depth, seed=7)
    stacks, samples = len(window.samples), window.sample_count
    print(f"## Render rates: {stacks:,} unique stacks, depth {args.depth}, {samples:,} samples")
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="antiprof-bench-")))
        steps = perfdata_steps(window, stack, directory) + pprof_steps(window, stack, directory)
        rates = measure(steps, args.rounds, len(window.samples))
    print("| renderer | best records per CPU second | median |")
    print("|---|---|---|")
    for label, (best, median) in rates.items():
        print(f"| {label} | {best:,.0f} | {median:,.0f} |")
    reference = rates["perf.data: encode + write (/dev/shm)"]
    pprof = rates["pprof: encode + publish a file (/dev/shm)"]
    best_ratio, median_ratio = pprof[0] / reference[0], pprof[1] / reference[1]
    verdict = "met" if best_ratio >= PPROF_TARGET_RATIO else "NOT met"
    print(
        f"ratio pprof / perf.data (encode + write): best {best_ratio:.2f}x, median {median_ratio:.2f}x; "
        f"target >= {PPROF_TARGET_RATIO}x: {verdict}"
    )


if __name__ == "__main__":
    main()
