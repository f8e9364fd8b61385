"""Renderers on the 50k-stack synthetic window: HTML flame graph, next to the perf.data writer.

    .venv/bin/python benchmarks/render.py [--stacks 50000] [--depth 32] [--processes 2000] [--rounds 3]

HTML (bench_html): the flamegraph sink's whole path for one window (fold the stacks, build the
boxes, render the page, write it), seconds and bytes for the 50k-stack window (targets: <= 2 s and
<= 5 MB), with folded text and SVG beside it and perf.data's encoder on the same window as the
reference, all measured in this run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from antiprof_core.consumer import ConsumerContext
from antiprof_core.model import ProfileWindow
from antiprof_core.sources.synthetic import synthetic_window

HTML_TARGET_SECONDS = 2.0
HTML_TARGET_BYTES = 5_000_000


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
    parser.add_argument("--processes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    window = synthetic_window(processes=args.processes, stacks=args.stacks, depth=args.depth, seed=1)
    bench_html(window, args.rounds)


if __name__ == "__main__":
    main()
