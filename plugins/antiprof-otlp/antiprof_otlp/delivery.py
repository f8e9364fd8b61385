"""Getting encoded windows to the endpoint: a bounded queue and one sender thread.

The queue is bounded in windows and in bytes; a window that does not fit is dropped at once and
counted (the ones already queued are older and keep their order). The sender works on the oldest
window until each of its requests is delivered or refused for good: retryable codes are tried
again with backoff for as long as it takes, so an endpoint that is down for a while loses nothing
that fit in the queue. ``flush`` waits for the queue to empty; ``close`` gives up on the rest and
says how much that was.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from typing import Any, cast

import grpc
from attrs import frozen
from prometheus_client import CollectorRegistry, Counter, Gauge

from antiprof_core.consumer import labelled_family
from antiprof_otlp.channel import export_method, open_channel
from antiprof_otlp.retry import RETRYABLE, Backoff, server_retry_delay
from antiprof_otlp.settings import ExportSettings
from antiprof_otlp.transform import EncodedRequest


@frozen
class Batch:
    """One window's requests, queued and dropped together."""

    requests: tuple[EncodedRequest, ...]
    window_start_ns: int

    @property
    def size(self) -> int:
        return sum(len(request.payload) for request in self.requests)

    @property
    def samples(self) -> int:
        return sum(request.samples for request in self.requests)


class Outcome(enum.Enum):
    SENT = "sent"
    REFUSED = "refused"  # a code that is not worth retrying
    ABANDONED = "abandoned"  # shut down before it could be sent


@frozen
class DeliveryStats:
    """Counts since start; the same numbers are exported as Prometheus metrics."""

    windows_queued: int = 0
    windows_sent: int = 0  # every request of the window accepted
    windows_refused: int = 0  # at least one request refused for good
    windows_dropped_queue_full: int = 0
    windows_dropped_shutdown: int = 0
    requests_sent: int = 0
    requests_refused: int = 0
    retries: int = 0
    rejected_profiles: int = 0
    bytes_sent: int = 0
    retry_delays_capped: int = 0  # a server's RetryInfo was longer than max_retry_delay
    sender_restarts: int = 0  # the sender thread died and was started again


class _Metrics:
    """Families labelled by consumer name first, got or created by the core (two otlp sinks share them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return labelled_family(registry, Counter, name, doc, labels)

        self.windows = counter("antiprof_otlp_windows", "Windows by what became of them", "outcome")
        self.requests = counter("antiprof_otlp_requests", "Export calls by final outcome", "outcome")
        self.retries = counter("antiprof_otlp_retries", "Export calls tried again", "code")
        self.rejected_profiles = counter("antiprof_otlp_rejected_profiles", "partial_success.rejected_profiles")
        self.bytes_sent = counter("antiprof_otlp_sent_bytes", "Request bytes delivered, before compression")
        self.queue_bytes = labelled_family(registry, Gauge, "antiprof_otlp_queue_bytes", "Bytes waiting")

    @classmethod
    def of(cls, registry: CollectorRegistry) -> _Metrics:
        return cls(registry)


class Sender:
    def __init__(
        self,
        name: str,
        settings: ExportSettings,
        backoff: Backoff,
        max_windows: int,
        max_bytes: int,
        logger: logging.Logger,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self._settings = settings
        self._backoff = backoff
        self._max_windows = max_windows
        self._max_bytes = max_bytes
        self._logger = logger
        self._metrics = _Metrics.of(registry)
        self._queue: collections.deque[Batch] = collections.deque()
        self._queued_bytes = 0
        self._head_progress = 0  # requests of the head batch already done
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._wake = threading.Event()  # cuts a backoff wait short: set by flush and close
        self._deadline: float | None = None  # monotonic; set while flushing
        self._inflight: grpc.Future[Any] | None = None
        self._stats = {field.name: 0 for field in DeliveryStats.__attrs_attrs__}
        self._channel: grpc.Channel | None = None
        self._thread = threading.Thread(target=self._run, name=f"otlp-sender-{name}", daemon=True)
        self._dead = False  # the sender thread died; the next offer starts another

    # --- the consumer's side ---------------------------------------------------------------

    def start(self) -> None:
        self._channel = open_channel(self._settings, (self._backoff.initial, self._backoff.maximum))
        self._export = export_method(self._channel)
        self._thread.start()

    def offer(self, batch: Batch) -> bool:
        """Queue the batch, or drop it (counted, logged) when the queue is full. Never blocks."""
        size = batch.size
        with self._changed:
            full = len(self._queue) >= self._max_windows or self._queued_bytes + size > self._max_bytes
            if full or self._closing.is_set():
                self._count("windows_dropped_queue_full")
                self._metrics.windows.labels(self.name, "dropped_queue_full").inc()
                reason = (
                    f"it alone is {size} bytes, over queue_bytes = {self._max_bytes}"
                    if size > self._max_bytes
                    else f"the queue is full ({len(self._queue)} windows, {self._queued_bytes} bytes)"
                )
                self._logger.warning(
                    "otlp '%s': dropped the window starting at %d (%d samples): %s",
                    self.name,
                    batch.window_start_ns,
                    batch.samples,
                    reason,
                )
                return False
            self._queue.append(batch)
            self._queued_bytes += size
            self._count("windows_queued")
            self._revive()
            self._metrics.queue_bytes.labels(self.name).set(self._queued_bytes)
            self._changed.notify_all()
            return True

    def flush(self, timeout: float) -> bool:
        """Wait until every queued window is delivered or refused; False if time ran out."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._changed:
            self._revive()
            self._deadline = deadline
            self._wake.set()  # a long backoff must not eat the flush time: try again now
            try:
                while self._queue and not self._closing.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._changed.wait(left)
                return not self._queue
            finally:
                self._deadline = None

    def close(self) -> None:
        """Stop the sender, then count and report what was still queued."""
        self._closing.set()
        self._wake.set()
        with self._changed:
            self._changed.notify_all()
            inflight = self._inflight
        if inflight is not None:
            inflight.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        with self._changed:
            left = list(self._queue)
            partly_sent = self._head_progress
            self._queue.clear()
            self._queued_bytes = 0
            self._metrics.queue_bytes.labels(self.name).set(0)
            self._count("windows_dropped_shutdown", len(left))
        if left:
            samples = sum(batch.samples for batch in left) - sum(r.samples for r in left[0].requests[:partly_sent])
            self._metrics.windows.labels(self.name, "dropped_shutdown").inc(len(left))
            self._logger.error(
                "otlp '%s': shut down with %d window(s) (%d samples) not delivered to %s",
                self.name,
                len(left),
                samples,
                self._settings.target,
            )
        if self._channel is not None:
            self._channel.close()

    def stats(self) -> DeliveryStats:
        with self._changed:
            return DeliveryStats(**self._stats)

    # --- the sender thread -------------------------------------------------------------------

    def _count(self, name: str, amount: int = 1) -> None:
        """Callers hold ``self._changed``."""
        self._stats[name] += amount

    def _run(self) -> None:
        try:
            self._send_queued()
        except BaseException as error:  # a bug here must not pass silently: the queue would only grow
            self._logger.error(
                "otlp '%s': the sender thread died: %s: %s; it starts again with the next window",
                self.name,
                type(error).__name__,
                error,
            )
            self._logger.debug("otlp '%s': sender traceback", self.name, exc_info=True)
            with self._changed:
                self._dead = True

    def _revive(self) -> None:
        """Start a new sender thread when the last one died (callers hold ``self._changed``)."""
        if self._dead and not self._closing.is_set():
            self._dead = False
            self._count("sender_restarts")
            self._thread = threading.Thread(target=self._run, name=f"otlp-sender-{self.name}", daemon=True)
            self._thread.start()

    def _send_queued(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closing.is_set():
                    self._changed.wait()
                if self._closing.is_set():
                    return
                batch = self._queue[0]
                start = self._head_progress
            refused = False
            for index in range(start, len(batch.requests)):
                outcome = self._deliver(batch.requests[index])
                if outcome is Outcome.ABANDONED:
                    return
                refused = refused or outcome is Outcome.REFUSED
                with self._changed:
                    self._head_progress = index + 1
            with self._changed:
                self._queue.popleft()
                self._head_progress = 0
                self._queued_bytes -= batch.size
                self._count("windows_refused" if refused else "windows_sent")
                self._metrics.windows.labels(self.name, "refused" if refused else "sent").inc()
                self._metrics.queue_bytes.labels(self.name).set(self._queued_bytes)
                self._changed.notify_all()

    def _call_timeout(self) -> float:
        timeout = self._settings.timeout
        deadline = self._deadline
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), 0.05))
        return timeout

    def _deliver(self, request: EncodedRequest) -> Outcome:
        attempt = 0
        while not self._closing.is_set():
            try:
                future = self._export.future(
                    request.payload,
                    timeout=self._call_timeout(),
                    metadata=self._settings.headers or None,
                    # while flushing, wait for the connection (up to the deadline) rather than fail fast
                    wait_for_ready=self._deadline is not None,
                )
            except Exception as error:  # grpc raises here only for a call it cannot even start
                return self._refused(request, type(error).__name__, str(error))
            with self._changed:
                self._inflight = future
            if self._closing.is_set():
                future.cancel()
            try:
                response: Any = future.result()
            except grpc.FutureCancelledError:  # close() cancelled it
                return Outcome.ABANDONED
            except grpc.RpcError as rpc_error:
                call = cast(grpc.Call, rpc_error)  # what a failed call raises is also its Call
                code = call.code()
                if self._closing.is_set():
                    return Outcome.ABANDONED
                if code not in RETRYABLE:
                    return self._refused(request, code.name, call.details())
                server_delay = server_retry_delay(call.trailing_metadata())
                delay = self._capped(server_delay) if server_delay is not None else self._backoff.delay(attempt)
                delay = min(delay, self._settings.max_retry_delay)
                log = self._logger.warning if attempt == 0 else self._logger.debug
                log(
                    "otlp '%s': export to %s failed with %s (%s); retrying in %.2fs%s",
                    self.name,
                    self._settings.target,
                    code.name,
                    call.details(),
                    delay,
                    " as the server asked" if server_delay is not None else "",
                )
                attempt += 1
                with self._changed:
                    self._count("retries")
                self._metrics.retries.labels(self.name, code.name).inc()
                if server_delay is not None:  # the server said when: only shutting down cuts it short
                    if self._closing.wait(delay):
                        return Outcome.ABANDONED
                elif self._wake.wait(delay):
                    self._wake.clear()
                    if self._closing.is_set():
                        return Outcome.ABANDONED
                    attempt = 0  # woken by flush: try now and start the backoff over
                continue
            finally:
                with self._changed:
                    self._inflight = None
            self._accepted(request, response, attempt)
            return Outcome.SENT
        return Outcome.ABANDONED

    def _capped(self, asked: float) -> float:
        """The server's RetryInfo delay, but never past ``max_retry_delay`` (said once per request)."""
        cap = self._settings.max_retry_delay
        if asked <= cap:
            return asked
        self._logger.warning(
            "otlp '%s': %s asked to retry in %.6gs; waiting max_retry_delay = %gs instead",
            self.name,
            self._settings.target,
            asked,
            cap,
        )
        with self._changed:
            self._count("retry_delays_capped")
        return cap

    def _refused(self, request: EncodedRequest, code: str, details: str) -> Outcome:
        with self._changed:
            self._count("requests_refused")
        self._metrics.requests.labels(self.name, "refused").inc()
        self._logger.error(
            "otlp '%s': %s refused a request (%d samples) with %s: %s; dropped, not retried",
            self.name,
            self._settings.target,
            request.samples,
            code,
            details,
        )
        return Outcome.REFUSED

    def _accepted(self, request: EncodedRequest, response: Any, attempts: int) -> None:
        rejected = response.partial_success.rejected_profiles
        message = response.partial_success.error_message
        with self._changed:
            self._count("requests_sent")
            self._count("bytes_sent", len(request.payload))
            self._count("rejected_profiles", rejected)
        self._metrics.requests.labels(self.name, "sent").inc()
        self._metrics.bytes_sent.labels(self.name).inc(len(request.payload))
        if rejected:
            self._metrics.rejected_profiles.labels(self.name).inc(rejected)
            self._logger.error(
                "otlp '%s': %s rejected %d of %d profile(s): %s",
                self.name,
                self._settings.target,
                rejected,
                request.processes,
                message or "no reason given",
            )
        elif message:
            self._logger.warning("otlp '%s': %s accepted with a warning: %s", self.name, self._settings.target, message)
        if attempts:
            self._logger.info("otlp '%s': delivered to %s after %d retries", self.name, self._settings.target, attempts)
