"""Router and JSON sink throughput on synthetic windows (50k unique stacks, depth 32, 2k processes).

Prints windows/s, samples/s and the router's own cost per window (the time `publish` takes, which
is all the sampler ever waits for), for a small and a large window, so the ratio shows the cost
does not grow with window size. Targets: router cost < 1 ms per window; JSON >= 200k samples/s.

    .venv/bin/python benchmarks/router.py
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time

import antiprof_json

from antiprof_core.consumer import Consumer
from antiprof_core.model import ProfileWindow
from antiprof_core.router import Router
from antiprof_core.testing import make_consumer, synthetic_window

PUBLISHED = 200


class NullConsumer(Consumer):
    def __init__(self) -> None:
        self.samples = 0

    def consume(self, window: ProfileWindow) -> None:
        self.samples += len(window.samples)


def router_cost(window: ProfileWindow, consumers: int) -> tuple[float, float]:
    """(median publish time in ms, windows/s delivered to every consumer)."""
    router = Router(logging.getLogger("bench"))
    nulls = [NullConsumer() for _ in range(consumers)]
    for index, null in enumerate(nulls):
        router.add(f"null{index}", null, queue_size=PUBLISHED)
    router.start()
    costs = []
    started = time.perf_counter()
    for _ in range(PUBLISHED):
        before = time.perf_counter_ns()
        router.publish(window)
        costs.append(time.perf_counter_ns() - before)
    router.shutdown(timeout=60)
    elapsed = time.perf_counter() - started
    assert all(n.samples == PUBLISHED * len(window.samples) for n in nulls)
    return statistics.median(costs) / 1e6, PUBLISHED / elapsed


def json_throughput(window: ProfileWindow, repeats: int = 3) -> tuple[float, float, float]:
    """(samples/s, stack records/s, bytes per window) of the JSON sink writing to a file, CPU time of one core."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "w.jsonl")
        consumer = make_consumer(antiprof_json, "json", {"path": path})
        consumer.start()
        consumer.consume(window)  # warm-up
        started = time.process_time()
        for _ in range(repeats):
            consumer.consume(window)
        cpu = time.process_time() - started
        consumer.close()
        size = os.path.getsize(path) / (repeats + 1)
    return window.sample_count * repeats / cpu, len(window.samples) * repeats / cpu, size


def main() -> None:
    small = synthetic_window(processes=20, stacks=500, depth=32)
    large = synthetic_window(processes=2000, stacks=50_000, depth=32)
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().release}; {PUBLISHED} windows published per run")
    print(f"{'consumers':>9} {'window':>14} {'publish ms':>11} {'windows/s':>10} {'samples/s':>12}")
    for consumers in (1, 4, 16):
        small_cost, _ = router_cost(small, consumers)
        large_cost, rate = router_cost(large, consumers)
        print(f"{consumers:>9} {'500 stacks':>14} {small_cost:>11.4f}")
        print(f"{consumers:>9} {'50k stacks':>14} {large_cost:>11.4f} {rate:>10.0f} {rate * large.sample_count:>12.0f}")
        print(f"{'':>9} {'large/small':>14} {large_cost / small_cost:>11.2f}   (1.0 = independent of window size)")
    samples_rate, stacks_rate, size = json_throughput(large)
    print(
        f"JSON sink, 50k stacks x depth 32: {samples_rate:,.0f} samples/s ({stacks_rate:,.0f} stack records/s), "
        f"{size / 1e6:.1f} MB per window, {size / large.sample_count:.0f} bytes per sample; "
        f"target 200,000 samples/s: {samples_rate / 200_000:.2f}x"
    )


if __name__ == "__main__":
    main()
