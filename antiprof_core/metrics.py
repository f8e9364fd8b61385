"""The agent's own Prometheus metrics: what the sampler saw and lost, served on request."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server

from antiprof_core.model import Counters


class SamplerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.windows = Counter("antiprof_windows", "Windows published to the sinks", registry=registry)
        self.samples_seen = Counter("antiprof_samples_seen", "Samples the BPF program saw", registry=registry)
        self.samples_lost = Counter(
            "antiprof_samples_lost", "Samples lost in the kernel", registry=registry
        )
        self.stack_errors = Counter(
            "antiprof_stack_errors", "Stacks that could not be walked, by kind", ["kind"], registry=registry
        )

    def record(self, counters: Counters) -> None:
        self.windows.inc()
        self.samples_seen.inc(counters.samples_seen)
        self.samples_lost.inc(counters.samples_lost)
        for kind, count in counters.stack_errors.items():
            self.stack_errors.labels(kind).inc(count)


def serve(address: str, registry: CollectorRegistry) -> None:
    """Serve /metrics on ``host:port``; raises ValueError or OSError with a message naming the address."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"agent.metrics_address: expected host:port, got '{address}'")
    try:
        start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    except OSError as exc:
        raise OSError(exc.errno, f"agent.metrics_address: cannot listen on {address}: {exc.strerror}") from None
