"""The symbolizer's figures as Prometheus metrics, read from it at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from antiprof_core.symbolize.symbolizer import Symbolizer

_GAUGES = {
    "cache_bytes": "Bytes held by the symbolizer's caches (symbol tables, kernel frames and table, names)",
    "cache_budget_bytes": "The symbolizer.cache_mb budget (symbol tables, kernel frames, names), in bytes",
    "cache_files": "ELF files held in the symbolizer's cache",
    "kernel_frames": "Kernel frames held for reuse across windows",
    "names": "Function names held by (file, offset) for reuse across processes",
    "processes": "Processes the symbolizer knows",
}
_COUNTERS = {
    "cache_evictions": "Files evicted from the symbolizer's cache to stay within its budget",
    "file_errors": "Files that could not be read or parsed (each logged once)",
    "file_reads": "ELF files read (build ID or symbols)",
    "late_frames": "Frames delivered with raw addresses because naming ran past the next window's end",
}


class SymbolizerCollector(Collector):
    def __init__(self, symbolizer: Symbolizer) -> None:
        self._symbolizer = symbolizer

    def collect(self) -> Iterator[Metric]:
        stats = self._symbolizer.stats()
        for name, text in _GAUGES.items():
            yield GaugeMetricFamily(f"antiprof_symbolizer_{name}", text, value=stats[name])
        for name, text in _COUNTERS.items():
            yield CounterMetricFamily(f"antiprof_symbolizer_{name}", text, value=stats[name])


def register_symbolizer_metrics(registry: CollectorRegistry, symbolizer: Symbolizer) -> SymbolizerCollector:
    """Registers and returns the collector (unregister it when its symbolizer is replaced)."""
    collector = SymbolizerCollector(symbolizer)
    registry.register(collector)
    return collector
