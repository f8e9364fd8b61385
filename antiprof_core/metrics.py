"""The agent's own Prometheus metrics and its health, served together on ``agent.metrics_address``.

``/metrics`` is Prometheus text; ``/readyz`` says whether the sampler is attached (so a DaemonSet's
readiness probe and a test know when workloads will be seen); ``/healthz`` says whether windows
are still coming out (a wedged agent is restarted by the liveness probe).
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from antiprof_core.model import Counters

STALE_WINDOWS = 3
"""/healthz fails when no window was published for this many window intervals."""


class SamplerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.windows = Counter("antiprof_windows", "Windows published to the sinks", registry=registry)
        self.samples_seen = Counter("antiprof_samples_seen", "Samples the BPF program saw", registry=registry)
        self.samples_lost = Counter("antiprof_samples_lost", "Samples lost in the kernel", registry=registry)
        self.stack_errors = Counter(
            "antiprof_stack_errors", "Stacks that could not be walked, by kind", ["kind"], registry=registry
        )
        self.unwind_tables = Counter(
            "antiprof_unwind_tables",
            "Native unwind tables loaded, evicted and refused, by kind",
            ["kind"],
            registry=registry,
        )

        self.python = Counter(
            "antiprof_python",
            "CPython frames read and truncated, and Python stacks not read, by kind",
            ["kind"],
            registry=registry,
        )

    def record(self, counters: Counters) -> None:
        self.windows.inc()
        self.samples_seen.inc(counters.samples_seen)
        self.samples_lost.inc(counters.samples_lost)
        for kind, count in counters.stack_errors.items():
            self.stack_errors.labels(kind).inc(count)
        for kind, count in counters.unwind_tables.items():
            self.unwind_tables.labels(kind).inc(count)
        for kind, count in counters.python.items():
            self.python.labels(kind).inc(count)


class Health:
    """Readiness (the source is attached) and liveness (windows keep coming), safe across threads."""

    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ready = False
        self._window_seconds = window_seconds
        self._last_window = clock()

    def set_ready(self, ready: bool, window_seconds: float | None = None) -> None:
        """Ready from the moment the source is attached; the next window is due one interval later."""
        with self._lock:
            self._ready = ready
            if window_seconds is not None:
                self._window_seconds = window_seconds
            self._last_window = self._clock()

    def window_published(self) -> None:
        with self._lock:
            self._last_window = self._clock()

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._ready

    def problem(self) -> str | None:
        """None when healthy, else why not. Starting up (not attached yet) counts as healthy."""
        with self._lock:
            if not self._ready:
                return None
            silent = self._clock() - self._last_window
            limit = STALE_WINDOWS * self._window_seconds
        if silent > limit:
            return f"no window for {silent:.0f}s (limit {STALE_WINDOWS} windows, {limit:g}s)"
        return None


class _QuietHandler(WSGIRequestHandler):
    """No access log: stderr is the agent's log, and probes every few seconds would flood it."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            problem = (None if health.ready else "not attached yet") if path == "/readyz" else health.problem()
            status = "200 OK" if problem is None else "503 Service Unavailable"
            body = ("ok" if problem is None else problem).encode() + b"\n"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
            return [body]
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    return app


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on ``host:port`` in a daemon thread until ``close()``."""

    def __init__(self, address: str, registry: CollectorRegistry, health: Health) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"agent.metrics_address: expected host:port, got '{address}'")
        host = host.strip("[]") or "0.0.0.0"
        try:
            self._server = make_server(
                host, int(port), _app(registry, health), server_class=_ThreadingServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise OSError(exc.errno, f"agent.metrics_address: cannot listen on {address}: {exc.strerror}") from None
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(address: str, registry: CollectorRegistry, health: Health | None = None) -> MetricsServer:
    """Serve on ``host:port``; raises ValueError or OSError with a message naming the address."""
    return MetricsServer(address, registry, health or Health(10.0))
