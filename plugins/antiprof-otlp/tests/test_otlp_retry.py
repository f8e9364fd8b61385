"""Retry delays are capped and the sender thread survives anything, against a real grpcio server."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import antiprof_otlp
import grpc
import pytest
from antiprof_otlp.config import OtlpConfig
from antiprof_otlp.consumer import OtlpConsumer
from antiprof_otlp.delivery import Outcome
from antiprof_otlp.testing import ProfilesReceiver, Reply, serve
from antiprof_otlp.transform import EncodedRequest

from antiprof_core.config import ConfigError
from antiprof_core.model import ProfileWindow
from antiprof_core.testing import make_consumer, run_consumer, synthetic_window

FAST_RETRY = {"retry_initial_backoff": "20ms", "retry_max_backoff": "100ms", "timeout": "2s"}


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", "OTEL_EXPORTER_OTLP_INSECURE"):
        monkeypatch.delenv(name, raising=False)


def consumer(port: int, **options: Any) -> OtlpConsumer:
    made = make_consumer(
        antiprof_otlp, "otlp", {"endpoint": f"127.0.0.1:{port}", "insecure": True, **FAST_RETRY, **options}
    )
    assert isinstance(made, OtlpConsumer)
    return made


def run_otlp(exporter: OtlpConsumer, windows: list[ProfileWindow]) -> OtlpConsumer:
    """run_consumer, keeping the OTLP consumer's type for its stats()."""
    run_consumer(exporter, windows)
    return exporter


def windows(count: int) -> list[ProfileWindow]:
    return [
        synthetic_window(processes=2, stacks=20, depth=6, seed=i, start_ns=(1_700_000_000 + 10 * i) * 10**9)
        for i in range(count)
    ]


def window_starts(receiver: ProfilesReceiver) -> list[int]:
    return [r.resource_profiles[0].scope_profiles[0].profiles[0].time_unix_nano for r in receiver.requests]


def test_max_retry_delay_defaults_to_five_minutes_and_must_be_positive() -> None:
    assert float(OtlpConfig().max_retry_delay) == 300.0
    with pytest.raises(ConfigError) as error:
        make_consumer(antiprof_otlp, "otlp", {"max_retry_delay": "0s"})
    assert error.value.problems[0].startswith("consumers.otlp.max_retry_delay:")


def test_retry_info_of_1e11_seconds_is_clamped_logged_and_every_window_arrives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Today's failure: OverflowError killed the sender, 0 of 10 windows delivered."""
    caplog.set_level(logging.WARNING)
    receiver = ProfilesReceiver([Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=1e11)] * 2)
    sent = windows(10)
    with serve(receiver) as port:
        exporter = run_otlp(consumer(port, max_retry_delay="300ms"), sent)
    assert window_starts(receiver) == [w.start_ns for w in sent]
    first, second, third = receiver.calls[:3]
    assert 0.28 <= second.received_at - first.received_at < 3.0
    assert 0.28 <= third.received_at - second.received_at < 3.0
    stats = exporter.stats()
    assert (stats.windows_sent, stats.retry_delays_capped, stats.sender_restarts) == (10, 2, 0)
    assert f"otlp 'otlp': 127.0.0.1:{port} asked to retry in 1e+11s; waiting max_retry_delay = 0.3s instead" in (
        caplog.text
    )
    assert "died" not in caplog.text


def test_an_hour_of_retry_info_waits_only_max_retry_delay() -> None:
    receiver = ProfilesReceiver([Reply(grpc.StatusCode.UNAVAILABLE, retry_delay=3600)])
    with serve(receiver) as port:
        exporter = consumer(port, max_retry_delay="1s")
        exporter.start()
        try:
            started = time.monotonic()
            exporter.consume(windows(1)[0])
            assert receiver.wait_for(1, timeout=10)
            delivered_in = time.monotonic() - started
        finally:
            exporter.close()
    assert 0.9 <= delivered_in < 5.0


def test_retry_info_under_the_cap_is_honoured_as_is() -> None:
    receiver = ProfilesReceiver([Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.5)])
    with serve(receiver) as port:
        exporter = run_otlp(consumer(port, max_retry_delay="10s"), windows(1))
    first, second = receiver.calls
    assert 0.45 <= second.received_at - first.received_at < 3.0
    assert exporter.stats().retry_delays_capped == 0


def test_backoff_is_capped_too() -> None:
    """A retry_max_backoff longer than max_retry_delay never waits past the cap."""
    receiver = ProfilesReceiver([Reply(grpc.StatusCode.UNAVAILABLE)] * 3)
    with serve(receiver) as port:
        options = {"retry_initial_backoff": "1h", "retry_max_backoff": "10h", "max_retry_delay": "200ms"}
        exporter = consumer(port, **options)
        exporter.start()
        try:
            exporter.consume(windows(1)[0])
            assert receiver.wait_for(1, timeout=10)
        finally:
            exporter.close()
    gaps = [b.received_at - a.received_at for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert len(gaps) == 3 and all(gap < 2.0 for gap in gaps)


class Deaths(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.logged = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "sender thread died" in record.getMessage():
            self.lines.append(record.getMessage())
            self.logged.set()


def test_a_sender_thread_that_dies_is_logged_at_once_and_started_again_with_the_next_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = ProfilesReceiver()
    deaths = Deaths()
    logger = logging.getLogger("antiprof")
    logger.addHandler(deaths)
    sent = windows(3)
    try:
        with serve(receiver) as port:
            exporter = consumer(port)
            sender = exporter._sender
            real_deliver = sender._deliver
            calls = 0

            def dies_once(request: EncodedRequest) -> Outcome:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise SystemExit("sender bug")  # any BaseException: the thread must not vanish silently
                return real_deliver(request)

            monkeypatch.setattr(sender, "_deliver", dies_once)
            exporter.start()
            exporter.consume(sent[0])
            assert deaths.logged.wait(5), "the death was not logged"
            assert deaths.lines == [
                "otlp 'otlp': the sender thread died: SystemExit: sender bug; it starts again with the next window"
            ]
            for window in sent[1:]:
                exporter.consume(window)
            exporter.flush(10)
            exporter.close()
    finally:
        logger.removeHandler(deaths)
    assert window_starts(receiver) == [w.start_ns for w in sent]  # the head window was not lost
    assert exporter.stats().sender_restarts == 1
