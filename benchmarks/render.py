"""Renderers side by side: stack records per second on the same synthetic window, in the same run.

    .venv/bin/python benchmarks/render.py [--stacks 50000] [--depth 32] [--rounds 5]

One function per renderer returns its timed steps; the rounds run every step of every renderer in
turn, and each step is timed in CPU seconds of this process (user + system, so writes count), so
other work on a shared machine skews neither the rates nor the ratios much:
1. the reference: the perf.data writer (encode only, and encode + write to the page cache,
   steady state: the file already holds a window);
2. pprof: build + serialize + gzip, and the sink's whole path (+ publish a file in /dev/shm);
   target: pprof >= 0.5x the perf.data writer's records/s (encode + write).
3. HTML (bench_html): the flamegraph sink's whole path for one window (fold the stacks, build the
   boxes, render the page, write it), seconds and bytes for the 50k-stack window (targets: <= 2 s
   and <= 5 MB), with folded text and SVG beside it and perf.data's encoder on the same window.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from attrs import frozen
from prometheus_client import CollectorRegistry

from antiprof_core.consumer import ConsumerContext
from antiprof_core.model import ProfileWindow
from antiprof_core.sources.synthetic import synthetic_window

PPROF_TARGET_RATIO = 0.5
HTML_TARGET_SECONDS = 2.0
HTML_TARGET_BYTES = 5_000_000


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


def timed(rounds: int, action: Callable[[], object]) -> tuple[float, float]:
    """(best wall, best CPU) seconds of ``action`` over ``rounds`` runs.

    CPU time is printed too because this machine is often shared: wall time then counts the
    waits for a core, CPU time only the work.
    """
    wall, cpu = [], []
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        action()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(wall), min(cpu)


def bench_html(window: ProfileWindow, rounds: int) -> None:
    from antiprof_flamegraph.config import FlameGraphConfig, OutputFormat
    from antiprof_flamegraph.render import Heading, render_folded, render_html, render_svg
    from antiprof_flamegraph.sink import FlameGraphSink
    from antiprof_flamegraph.stacks import LabelTable, flatten, fold_window
    from antiprof_perfdata.encoder import RecordEncoder

    records = len(window.samples)
    print("## HTML flame graph (one core)")
    print(f"window: {records:,} unique stacks, depth {len(window.samples[0].stack)}, {window.sample_count:,} samples")
    heading = Heading("benchmark", window.start_ns, window.end_ns)
    table = LabelTable()
    folded = fold_window(window, table)
    tree = flatten(folded, 100_000)
    page = render_html(tree, table, heading)
    svg = render_svg(tree, table, heading)
    text = render_folded(folded, table)

    steps = {
        "fold stacks": lambda: fold_window(window, LabelTable()),
        "build boxes (max_nodes = 100000)": lambda: flatten(folded, 100_000),
        "render HTML": lambda: render_html(tree, table, heading),
        "render SVG": lambda: render_svg(tree, table, heading),
        "render folded": lambda: render_folded(folded, table),
    }
    print("| step | best wall s | best CPU s |")
    print("|---|---|---|")
    for name, step in steps.items():
        wall, cpu = timed(rounds, step)
        print(f"| {name} | {wall:.3f} | {cpu:.3f} |")

    with tempfile.TemporaryDirectory() as temp:
        counter = iter(range(1_000_000))

        def whole_sink() -> None:  # what the agent pays per window: fold, boxes, render, write
            config = FlameGraphConfig(output_dir=f"{temp}/{next(counter)}", formats=(OutputFormat.HTML,), latest="")
            context = ConsumerContext("bench", window.host, logging.getLogger("bench"), CollectorRegistry())
            FlameGraphSink(config, context).consume(window)

        sink_wall, sink_cpu = timed(rounds, whole_sink)
    encoder = RecordEncoder()
    encoder.commit(encoder.encode(window))
    perf_wall, perf_cpu = timed(rounds, lambda: encoder.encode(window))
    print(f"| sink: one window to an HTML file | {sink_wall:.3f} | {sink_cpu:.3f} |")
    print(f"| reference: perf.data encoder, same window | {perf_wall:.3f} | {perf_cpu:.3f} |")
    print()
    drawn = len(tree.values)
    print(f"boxes: {drawn:,} in the page (max_nodes = 100000)")
    print(
        f"sizes: HTML {len(page.encode()) / 1e6:.2f} MB, SVG {len(svg.encode()) / 1e6:.2f} MB, "
        f"folded {len(text.encode()) / 1e6:.2f} MB"
    )
    print(
        f"stack records per CPU second through the sink: {records / sink_cpu:,.0f} (perf.data encoder: "
        f"{records / perf_cpu:,.0f}; ratio {perf_cpu / sink_cpu:.2f}x)"
    )
    size = len(page.encode())
    print(
        f"target HTML <= {HTML_TARGET_SECONDS:g} s: {'met' if sink_wall <= HTML_TARGET_SECONDS else 'NOT met'} "
        f"({sink_wall:.2f} s wall, {sink_cpu:.2f} s CPU); <= {HTML_TARGET_BYTES / 1e6:g} MB: "
        f"{'met' if size <= HTML_TARGET_BYTES else 'NOT met'} ({size / 1e6:.2f} MB)"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=50_000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--html-processes", type=int, default=2000, help="processes in the HTML window")
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
    print()
    html_window = synthetic_window(processes=args.html_processes, stacks=args.stacks, depth=args.depth, seed=1)
    bench_html(html_window, min(args.rounds, 3))


if __name__ == "__main__":
    main()
