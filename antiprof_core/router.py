"""Fan-out of windows to consumers: one thread and one bounded queue per consumer.

The sampler must never wait on a sink, so ``publish`` only appends to in-memory queues. When a
consumer falls behind, its own oldest window is dropped and counted; the others are unaffected.
A consumer that raises is logged with its name and counted, and it gets the next window anyway.
A consumer's thread that dies anyway (``SystemExit`` or any other ``BaseException`` from the sink,
or a bug here) is logged at once with its name, counted, and started again with the next window.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence

import attrs
from attrs import frozen
from prometheus_client import CollectorRegistry, Counter

from antiprof_core.consumer import Consumer
from antiprof_core.model import ProfileWindow

CLOSE_RESERVE_SECONDS = 1.0


@frozen
class ConsumerStats:
    name: str
    delivered: int
    dropped: int
    errors: int
    finished: bool  # flushed and closed within the shutdown deadline
    restarts: int = 0  # times its thread died and was started again


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.delivered = Counter(
            "antiprof_windows_delivered", "Windows a consumer processed", ["consumer"], registry=registry
        )
        self.dropped = Counter(
            "antiprof_windows_dropped",
            "Windows dropped because a consumer's queue was full",
            ["consumer"],
            registry=registry,
        )
        self.errors = Counter(
            "antiprof_consumer_errors", "Exceptions raised by a consumer", ["consumer"], registry=registry
        )
        self.restarts = Counter(
            "antiprof_consumer_restarts",
            "Times a consumer's thread died (e.g. SystemExit from the sink) and was started again",
            ["consumer"],
            registry=registry,
        )


class ConsumerWorker:
    """Owns one consumer: its queue, its thread, and its counts."""

    def __init__(self, name: str, consumer: Consumer, queue_size: int, logger: logging.Logger, metrics: _Metrics):
        self.name = name
        self.consumer = consumer
        self._queue: collections.deque[ProfileWindow] = collections.deque()
        self._queue_size = queue_size
        self._ready = threading.Condition()
        self._stopping = False
        self._logger = logger
        self._metrics = metrics
        self._thread = self._new_thread()
        self._dead = False  # the thread died and was not started again yet
        self._started = False  # the consumer's start() succeeded
        self._finishing = False  # flush or close is running: a death there is not worth a new thread
        self._launches = 0
        self.delivered = 0
        self.dropped = 0
        self.errors = 0
        self.restarts = 0
        self._deadline = 0.0  # time.monotonic() by which flush and close should be done
        self.finished = False

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name=f"consumer-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def publish(self, window: ProfileWindow) -> None:
        """Never blocks: a full queue loses its oldest window. A dead thread is started again."""
        with self._ready:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
                self._metrics.dropped.labels(self.name).inc()
            self._queue.append(window)
            self._revive()
            self._ready.notify()

    def stop(self, deadline: float) -> None:
        """Ask the thread to deliver what is queued, then flush and close by ``deadline`` (monotonic)."""
        with self._ready:
            self._stopping = True
            self._deadline = deadline
            self._revive()
            self._ready.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._dead

    def _revive(self) -> None:
        """Start a new thread when the last one died (callers hold ``self._ready``)."""
        if self._dead:
            self._dead = False
            self.restarts += 1
            self._metrics.restarts.labels(self.name).inc()
            self._thread = self._new_thread()
            self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def join(self, timeout: float) -> None:
        """Wait for the thread, and for any thread started in place of one that died meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            with self._ready:
                thread = self._thread
            thread.join(max(deadline - time.monotonic(), 0.0))
            with self._ready:
                if thread is self._thread or time.monotonic() >= deadline:
                    return

    def _next(self) -> ProfileWindow | None:
        with self._ready:
            while not self._queue and not self._stopping:
                self._ready.wait()
            if not self._queue:
                return None
            window = self._queue.popleft()
            drops = self.dropped
        if drops:  # tell the consumer how many windows it has lost so far (a running total)
            window = attrs.evolve(window, counters=attrs.evolve(window.counters, windows_dropped=drops))
        return window

    def _flush_budget(self) -> float:
        """Time left to the deadline, less a reserve so close() can still report what was lost."""
        remaining = max(self._deadline - time.monotonic(), 0.0)
        return remaining - min(CLOSE_RESERVE_SECONDS, remaining / 10)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # whatever it was: say so now, and come back for the next window
            self.errors += 1
            self._metrics.errors.labels(self.name).inc()
            finishing = self._finishing
            self._logger.error(
                "consumer '%s' thread died: %s: %s; %s",
                self.name,
                type(exc).__name__,
                exc,
                "it is not flushed or closed" if finishing else "it starts again with the next window",
            )
            self._logger.debug("consumer '%s' thread death traceback", self.name, exc_info=True)
            if not finishing:  # flush or close would only die the same way again
                with self._ready:
                    self._dead = True
                    if self._queue or self._stopping:
                        self._revive()

    def _serve(self) -> None:
        # A sink that cannot start (its directory or endpoint is not there yet) is tried again
        # before each window, so it recovers by itself; the windows it misses meanwhile count as errors.
        # A thread started again after a death tries only with a window in hand, so a sink that
        # dies in every start() costs a window each time instead of spinning.
        self._launches += 1
        if self._launches == 1:
            self._started = self._call("start", self.consumer.start)
        while (window := self._next()) is not None:
            if not self._started:
                self._started = self._call("start", self.consumer.start)
                if not self._started:
                    continue
            if self._call("consume", lambda w=window: self.consumer.consume(w)):
                self.delivered += 1
                self._metrics.delivered.labels(self.name).inc()
        self._finishing = True
        if self._started:
            self._call("flush", lambda: self.consumer.flush(self._flush_budget()))
            self._call("close", self.consumer.close)
        self.finished = True

    def _call(self, what: str, action: object) -> bool:
        try:
            action()  # type: ignore[operator]
        except Exception as exc:
            self.errors += 1
            self._metrics.errors.labels(self.name).inc()
            self._logger.error("consumer '%s' %s failed: %s: %s", self.name, what, type(exc).__name__, exc)
            self._logger.debug("consumer '%s' %s traceback", self.name, what, exc_info=True)
            return False
        return True

    def stats(self) -> ConsumerStats:
        return ConsumerStats(self.name, self.delivered, self.dropped, self.errors, self.finished, self.restarts)


class Router:
    def __init__(self, logger: logging.Logger, registry: CollectorRegistry | None = None) -> None:
        self._logger = logger
        self._metrics = _Metrics(registry or CollectorRegistry())
        self.workers: list[ConsumerWorker] = []
        self._started = False

    def add(self, name: str, consumer: Consumer, queue_size: int = 8) -> None:
        """Add a consumer; once the router has started (a config reload), its thread starts at once."""
        worker = ConsumerWorker(name, consumer, queue_size, self._logger, self._metrics)
        self.workers.append(worker)
        if self._started:
            worker.start()

    def start(self) -> None:
        self._started = True
        for worker in self.workers:
            worker.start()

    def remove(self, name: str, timeout: float) -> ConsumerStats:
        """Deliver what ``name`` has queued, flush and close it within ``timeout``; windows published
        after this call go to the other consumers only."""
        worker = next(w for w in self.workers if w.name == name)
        self.workers.remove(worker)
        worker.stop(time.monotonic() + timeout)
        worker.join(timeout)
        if not worker.finished:
            self._logger.error(
                "consumer '%s' did not flush and close within %.1fs; abandoned with %d window(s) queued",
                name,
                timeout,
                worker.queued,
            )
        return worker.stats()

    def publish(self, window: ProfileWindow) -> None:
        for worker in self.workers:
            worker.publish(window)

    def shutdown(self, timeout: float) -> Sequence[ConsumerStats]:
        """Deliver what is queued, then flush and close every consumer, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.stop(deadline)
        for worker in self.workers:
            worker.join(max(deadline - time.monotonic(), 0.0))
            if not worker.finished and worker.alive:  # a thread that died has said so already
                self._logger.error(
                    "consumer '%s' did not flush and close within %.1fs; abandoned with %d window(s) queued",
                    worker.name,
                    timeout,
                    worker.queued,
                )
        return [worker.stats() for worker in self.workers]
