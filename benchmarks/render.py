"""Renderers side by side: stack records per second on the same synthetic windows, in the same run.

    .venv/bin/python benchmarks/render.py [--stacks 50000] [--depth 32] [--rounds 5]

One function per renderer; each prints its rows and returns its best rate, so the ratios
compare figures measured minutes apart at most, on the same busy or idle machine:
1. the reference: the perf.data writer (encode only, and encode + write to the page cache);
2. pprof: build + serialize + gzip, and the sink's whole path (+ publish a file in /dev/shm);
   target: pprof >= 0.5x the perf.data writer's records/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from antiprof_core.model import ProfileWindow
from antiprof_core.sources.synthetic import synthetic_window

PPROF_TARGET_RATIO = 0.5


def best_rate(rounds: int, count: int, action: Callable[[], object]) -> tuple[float, float]:
    """(best, median) of count / seconds over ``rounds`` runs of ``action``."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        rates.append(count / (time.perf_counter() - started))
    return max(rates), statistics.median(rates)


def memory_directory(fallback: Path) -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else fallback


def row(label: str, rates: tuple[float, float]) -> None:
    print(f"| {label} | {rates[0]:,.0f} | {rates[1]:,.0f} |")


def perfdata_rates(window: ProfileWindow, rounds: int, directory: Path) -> float:
    """The reference: perf.data records/s in steady state (the file already holds a window)."""
    from antiprof_perfdata.encoder import RecordEncoder
    from antiprof_perfdata.writer import PerfDataFile

    records = len(window.samples)
    encoder = RecordEncoder()
    encoder.commit(encoder.encode(window))
    row("perf.data: encode", best_rate(rounds, records, lambda: encoder.encode(window)))
    with tempfile.TemporaryDirectory(dir=memory_directory(directory)) as temp:
        out = PerfDataFile(Path(temp) / "render.perf.data", window.host, window.frequency_hz)
        out.write(window)
        written = best_rate(rounds, records, lambda: out.write(window))
        out.close()
    row("perf.data: encode + write (/dev/shm)", written)
    return written[0]


def pprof_rates(window: ProfileWindow, rounds: int, directory: Path) -> float:
    """pprof: one gzip'd profile per window, as the sink writes it."""
    from antiprof_pprof.encoder import encode_profile
    from antiprof_pprof.files import ProfileFiles

    records = len(window.samples)
    row("pprof: build + serialize + gzip", best_rate(rounds, records, lambda: encode_profile([window])))
    with tempfile.TemporaryDirectory(dir=memory_directory(directory)) as temp:
        files = ProfileFiles(Path(temp) / "pprof", window.host.hostname, max_files=2, max_total_size=1 << 40)
        written = best_rate(rounds, records, lambda: files.write(window.start_ns, encode_profile([window])))
        size = sum(path.stat().st_size for path in (Path(temp) / "pprof").iterdir()) // 2
    row("pprof: encode + publish a file (/dev/shm)", written)
    print(f"pprof file for this window: {size:,} bytes ({size / window.sample_count:.1f} per sample)")
    return written[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=50_000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    window = synthetic_window(processes=50, stacks=args.stacks, depth=args.depth, seed=7)
    print(f"## Render rates: {len(window.samples):,} unique stacks, depth {args.depth}, {window.sample_count:,} samples")
    print("| renderer | best records/s | median records/s |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="antiprof-bench-") as temp:
        directory = Path(temp)
        reference = perfdata_rates(window, args.rounds, directory)
        pprof = pprof_rates(window, args.rounds, directory)
    ratio = pprof / reference
    verdict = "met" if ratio >= PPROF_TARGET_RATIO else "NOT met"
    print(f"ratio pprof / perf.data (encode + write, best): {ratio:.2f}x; target >= {PPROF_TARGET_RATIO}x: {verdict}")


if __name__ == "__main__":
    main()
