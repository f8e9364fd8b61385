"""The router's promises: a slow or broken consumer never delays, loses or corrupts a healthy one's windows."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from antiprof_core.consumer import Consumer
from antiprof_core.model import ProfileWindow
from antiprof_core.router import Router
from antiprof_core.testing import synthetic_window

WINDOWS = [synthetic_window(processes=1, stacks=3, depth=2, seed=i, start_ns=i * 10**9) for i in range(20)]


class Recording(Consumer):
    def __init__(self) -> None:
        self.windows: list[ProfileWindow] = []
        self.received_at: list[float] = []
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def consume(self, window: ProfileWindow) -> None:
        self.windows.append(window)
        self.received_at.append(time.monotonic())

    def flush(self, timeout: float) -> None:
        self.calls.append("flush")

    def close(self) -> None:
        self.calls.append("close")


class Raising(Recording):
    def consume(self, window: ProfileWindow) -> None:
        raise RuntimeError("sink exploded")


class Sleeping(Recording):
    def consume(self, window: ProfileWindow) -> None:
        time.sleep(0.2)
        super().consume(window)


class Blocked(Recording):
    """Blocks in consume until released, and says when it first got there."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def consume(self, window: ProfileWindow) -> None:
        self.entered.set()
        self.release.wait(10)
        super().consume(window)


def test_raising_and_sleeping_consumers_do_not_delay_or_lose_a_healthy_ones_windows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router(logging.getLogger("antiprof.test"))
    healthy, raising, sleeping = Recording(), Raising(), Sleeping()
    router.add("healthy", healthy, queue_size=len(WINDOWS))
    router.add("raising", raising, queue_size=len(WINDOWS))
    router.add("sleeping", sleeping, queue_size=len(WINDOWS))
    router.start()
    published_at = time.monotonic()
    for window in WINDOWS:
        router.publish(window)
    deadline = time.monotonic() + 5
    while len(healthy.windows) < len(WINDOWS) and time.monotonic() < deadline:
        time.sleep(0.01)
    # All 20 arrived while the sleeper (0.2 s a window) had done at most a few.
    assert [w.start_ns for w in healthy.windows] == [w.start_ns for w in WINDOWS]
    assert healthy.received_at[-1] - published_at < 1.0
    assert len(sleeping.windows) < 10
    stats = {s.name: s for s in router.shutdown(timeout=10)}
    assert stats["healthy"].delivered == 20 and stats["healthy"].errors == 0
    assert stats["raising"].errors == 20 and stats["raising"].delivered == 0
    assert stats["sleeping"].delivered == 20 and stats["sleeping"].dropped == 0
    assert all(s.finished for s in stats.values())
    assert healthy.calls == raising.calls == sleeping.calls == ["start", "flush", "close"]
    assert "consumer 'raising' consume failed: RuntimeError: sink exploded" in caplog.text


def test_a_full_queue_drops_the_oldest_window_and_counts_exactly() -> None:
    router = Router(logging.getLogger("antiprof.test"))
    blocked, healthy = Blocked(), Recording()
    router.add("blocked", blocked, queue_size=4)
    router.add("healthy", healthy, queue_size=len(WINDOWS))
    router.start()
    router.publish(WINDOWS[0])
    assert blocked.entered.wait(5)  # window 0 is in consume(); the queue is empty
    for window in WINDOWS[1:]:
        router.publish(window)  # never blocks, though the consumer does
    blocked.release.set()
    stats = {s.name: s for s in router.shutdown(timeout=10)}
    # 19 more windows into a queue of 4: the 15 oldest are dropped, the newest 4 delivered.
    assert stats["blocked"].dropped == 15
    assert [w.start_ns for w in blocked.windows] == [w.start_ns for w in (WINDOWS[0], *WINDOWS[16:])]
    # The consumer is told what it lost, in the next window it gets.
    assert [w.counters.windows_dropped for w in blocked.windows] == [0, 15, 15, 15, 15]
    assert stats["healthy"].dropped == 0 and len(healthy.windows) == 20


def test_shutdown_delivers_queued_windows_then_abandons_a_hung_flush_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class HungFlush(Recording):
        def flush(self, timeout: float) -> None:
            time.sleep(30)

    router = Router(logging.getLogger("antiprof.test"))
    hung, healthy = HungFlush(), Recording()
    router.add("hung", hung)
    router.add("healthy", healthy)
    router.start()
    for window in WINDOWS[:3]:
        router.publish(window)
    started = time.monotonic()
    stats = {s.name: s for s in router.shutdown(timeout=0.5)}
    assert time.monotonic() - started < 2.0
    assert len(hung.windows) == 3 and len(healthy.windows) == 3
    assert not stats["hung"].finished and stats["healthy"].finished
    assert healthy.calls == ["start", "flush", "close"]
    assert "consumer 'hung' did not flush and close within 0.5s" in caplog.text


def test_a_consumer_that_fails_to_start_is_retried_before_each_window() -> None:
    class LateStart(Recording):
        def __init__(self) -> None:
            super().__init__()
            self.attempts = 0

        def start(self) -> None:
            self.attempts += 1
            if self.attempts < 3:
                raise FileNotFoundError("/mnt/not-yet-mounted")
            super().start()

    router = Router(logging.getLogger("antiprof.test"))
    late = LateStart()
    router.add("late", late, queue_size=len(WINDOWS))
    router.start()
    for window in WINDOWS[:5]:
        router.publish(window)
    [stats] = router.shutdown(timeout=10)
    # start at launch fails, before window 0 fails, before window 1 works: windows 1-4 delivered.
    assert late.attempts == 3
    assert [w.start_ns for w in late.windows] == [w.start_ns for w in WINDOWS[1:5]]
    assert (stats.delivered, stats.errors, stats.finished) == (4, 2, True)
    assert late.calls == ["start", "flush", "close"]


def test_flush_leaves_time_for_close_to_report() -> None:
    class SlowFlush(Recording):
        def flush(self, timeout: float) -> None:
            self.flush_timeout = timeout
            time.sleep(timeout)
            super().flush(timeout)

    router = Router(logging.getLogger("antiprof.test"))
    slow = SlowFlush()
    router.add("slow", slow)
    router.start()
    [stats] = router.shutdown(timeout=2.0)
    assert 1.0 <= slow.flush_timeout <= 1.81  # 2 s less the reserve for close()
    assert slow.calls == ["start", "flush", "close"] and stats.finished


class Deaths(logging.Handler):
    """Collects the router's "thread died" lines as they are logged, from any thread."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.logged = threading.Semaphore(0)

    def emit(self, record: logging.LogRecord) -> None:
        if "thread died" in record.getMessage():
            self.lines.append(record.getMessage())
            self.logged.release()


@pytest.fixture
def deaths() -> Iterator[tuple[logging.Logger, Deaths]]:
    logger = logging.getLogger("antiprof.test.deaths")
    handler = Deaths()
    logger.addHandler(handler)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


class ExitsOnSecond(Recording):
    """A sink that calls sys.exit() in its second window (a third-party plugin could)."""

    def consume(self, window: ProfileWindow) -> None:
        if len(self.windows) == 1 and not getattr(self, "exited", False):
            self.exited = True
            sys.exit("plugin gave up")
        super().consume(window)


def test_a_thread_killed_by_systemexit_is_logged_at_once_counted_and_restarted(
    deaths: tuple[logging.Logger, Deaths],
) -> None:
    logger, handler = deaths
    registry = CollectorRegistry()
    router = Router(logger, registry)
    exiting, healthy = ExitsOnSecond(), Recording()
    router.add("exiting", exiting, queue_size=len(WINDOWS))
    router.add("healthy", healthy, queue_size=len(WINDOWS))
    router.start()
    router.publish(WINDOWS[0])
    router.publish(WINDOWS[1])
    assert handler.logged.acquire(timeout=5), "the death was not logged"  # before any other window
    assert handler.lines == [
        "consumer 'exiting' thread died: SystemExit: plugin gave up; it starts again with the next window"
    ]
    for window in WINDOWS[2:5]:
        router.publish(window)
    stats = {s.name: s for s in router.shutdown(timeout=10)}
    assert [w.start_ns for w in exiting.windows] == [w.start_ns for w in (WINDOWS[0], *WINDOWS[2:5])]
    assert (stats["exiting"].delivered, stats["exiting"].errors, stats["exiting"].restarts) == (4, 1, 1)
    assert stats["exiting"].finished and exiting.calls == ["start", "flush", "close"]  # started once, closed once
    assert len(healthy.windows) == 5 and stats["healthy"].restarts == 0
    assert registry.get_sample_value("antiprof_consumer_restarts_total", {"consumer": "exiting"}) == 1
    assert registry.get_sample_value("antiprof_consumer_errors_total", {"consumer": "exiting"}) == 1


def test_a_thread_that_dies_in_start_starts_the_sink_again_with_the_next_window(
    deaths: tuple[logging.Logger, Deaths],
) -> None:
    class Interrupted(BaseException):
        pass

    class DiesInStart(Recording):
        def start(self) -> None:
            if not self.calls:
                self.calls.append("died")
                raise Interrupted("start was interrupted")
            super().start()

    logger, handler = deaths
    router = Router(logger)
    sink = DiesInStart()
    router.add("fragile", sink, queue_size=len(WINDOWS))
    router.start()
    assert handler.logged.acquire(timeout=5)
    assert handler.lines == [
        "consumer 'fragile' thread died: Interrupted: start was interrupted; it starts again with the next window"
    ]
    for window in WINDOWS[:3]:
        router.publish(window)
    [stats] = router.shutdown(timeout=10)
    assert [w.start_ns for w in sink.windows] == [w.start_ns for w in WINDOWS[:3]]
    assert sink.calls == ["died", "start", "flush", "close"]
    assert (stats.delivered, stats.restarts, stats.finished) == (3, 1, True)


def test_a_sink_that_exits_in_every_window_never_stops_the_others(deaths: tuple[logging.Logger, Deaths]) -> None:
    class AlwaysExits(Recording):
        def consume(self, window: ProfileWindow) -> None:
            raise SystemExit(3)

    logger, handler = deaths
    router = Router(logger)
    exiting, healthy = AlwaysExits(), Recording()
    router.add("exiting", exiting, queue_size=len(WINDOWS))
    router.add("healthy", healthy, queue_size=len(WINDOWS))
    router.start()
    for window in WINDOWS[:6]:
        router.publish(window)
    stats = {s.name: s for s in router.shutdown(timeout=10)}
    assert stats["exiting"].errors == 6 and stats["exiting"].delivered == 0
    assert stats["exiting"].finished and exiting.calls == ["start", "flush", "close"]
    assert len(handler.lines) == 6
    assert len(healthy.windows) == 6 and stats["healthy"].errors == 0


def test_a_thread_that_dies_while_shutting_down_is_not_started_again(deaths: tuple[logging.Logger, Deaths]) -> None:
    class ExitsInFlush(Recording):
        def flush(self, timeout: float) -> None:
            raise SystemExit("flush gave up")

    logger, handler = deaths
    router = Router(logger)
    sink = ExitsInFlush()
    router.add("exiting", sink)
    router.start()
    router.publish(WINDOWS[0])
    [stats] = router.shutdown(timeout=5)
    assert handler.lines == ["consumer 'exiting' thread died: SystemExit: flush gave up; it is not flushed or closed"]
    assert (stats.delivered, stats.errors, stats.restarts, stats.finished) == (1, 1, 0, False)
