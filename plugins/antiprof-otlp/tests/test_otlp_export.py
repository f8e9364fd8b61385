"""The otlp consumer against a real grpcio server on the official ProfilesService stubs."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import antiprof_otlp
import attrs
import grpc
import pytest
from antiprof_otlp.config import OtlpConfig
from antiprof_otlp.consumer import OtlpConsumer
from antiprof_otlp.reading import decoded_samples, index_problems
from antiprof_otlp.testing import ProfilesReceiver, Reply, make_certificates, serve
from antiprof_otlp.transform import TransformOptions, encode_window
from prometheus_client import CollectorRegistry

from antiprof_core.config import PluginCatalog, build_config, structure_section
from antiprof_core.model import ProfileWindow
from antiprof_core.plugins import consumer_types
from antiprof_core.testing import make_consumer, plugin_manager, run_consumer, synthetic_context, synthetic_window

FAST_RETRY = {"retry_initial_backoff": "20ms", "retry_max_backoff": "100ms", "timeout": "2s"}


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_PROFILES_HEADERS",
        "OTEL_EXPORTER_OTLP_INSECURE",
        "OTEL_EXPORTER_OTLP_PROFILES_INSECURE",
    ):
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


def windows(count: int, **shape: Any) -> list[ProfileWindow]:
    shape = {"processes": 3, "stacks": 60, "depth": 8, **shape}
    return [synthetic_window(seed=i, start_ns=(1_700_000_000 + 10 * i) * 10**9, **shape) for i in range(count)]


def free_port() -> int:
    """A port nothing listens on (for 'endpoint down'); gRPC servers reuse addresses, so it can be bound later."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def window_starts(receiver: ProfilesReceiver) -> list[int]:
    return [r.resource_profiles[0].scope_profiles[0].profiles[0].time_unix_nano for r in receiver.requests]


def test_delivered_request_decodes_to_the_window() -> None:
    receiver = ProfilesReceiver()
    sent = windows(2, processes=5, stacks=200, depth=16)
    with serve(receiver) as port:
        exporter = run_otlp(consumer(port), sent)
    assert len(receiver.requests) == 2
    for request, window in zip(receiver.requests, sent, strict=True):
        assert index_problems(request) == []
        decoded = decoded_samples(request)
        assert sum(d.count for d in decoded) == window.sample_count
        first = window.samples[0]
        match = next(
            d
            for d in decoded
            if d.resource["process.pid"] == first.pid
            and d.attributes["thread.id"] == first.tid
            and [f.address for f in d.frames] == [f.address for f in first.stack]
        )
        assert [f.function for f in match.frames] == [f.symbol for f in first.stack]
        assert match.attributes == {
            "thread.id": first.tid,
            "thread.name": first.thread_name,
            "cpu.logical_number": first.cpu,
        }
        assert {f.build_id for f in match.frames if f.mapping_path.startswith("/usr/bin/")} == {
            window.processes[first.pid].mappings[0].build_id
        }
    stats = exporter.stats()
    assert (stats.windows_sent, stats.requests_sent, stats.retries, stats.windows_dropped_queue_full) == (2, 2, 0, 0)
    assert window_starts(receiver) == [w.start_ns for w in sent]


class CountingRelay:
    """A TCP relay in front of the receiver that counts the bytes the client sends: the wire size."""

    def __init__(self, target_port: int) -> None:
        self.client_bytes = 0
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(65536):
                if count:
                    self.client_bytes += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self._listener.close()


def test_gzip_shrinks_the_bytes_on_the_wire_and_both_forms_arrive() -> None:
    receiver = ProfilesReceiver()
    window = synthetic_window(processes=5, stacks=400, depth=24)
    request_size = len(encode_window(window, TransformOptions())[0].payload)
    wire = {}
    with serve(receiver) as port:
        for compression in ("gzip", "none"):
            relay = CountingRelay(port)
            run_consumer(consumer(relay.port, compression=compression), [window])
            relay.close()
            wire[compression] = relay.client_bytes
    assert len(receiver.requests) == 2 and receiver.requests[0] == receiver.requests[1]
    assert wire["none"] > request_size
    assert wire["gzip"] < request_size * 0.6, (wire, request_size)


def test_tls_with_a_certificate_made_here(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    receiver = ProfilesReceiver()
    with serve(receiver, tls=certificates.server_tls()) as port:
        exporter = make_consumer(
            antiprof_otlp, "otlp", {"endpoint": f"localhost:{port}", "ca_file": str(certificates.ca), **FAST_RETRY}
        )
        run_consumer(exporter, windows(1))
    assert len(receiver.requests) == 1


def test_mutual_tls_needs_the_client_certificate(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    receiver = ProfilesReceiver()
    with serve(receiver, tls=certificates.server_tls(mutual=True)) as port:
        options = {"endpoint": f"127.0.0.1:{port}", "ca_file": str(certificates.ca), **FAST_RETRY}
        anonymous = make_consumer(antiprof_otlp, "otlp", options)
        assert isinstance(anonymous, OtlpConsumer)
        run_consumer(anonymous, windows(1), flush_timeout=0.5)
        assert receiver.requests == []
        assert anonymous.stats().windows_dropped_shutdown == 1
        with_certificate = make_consumer(
            antiprof_otlp,
            "otlp",
            {**options, "cert_file": str(certificates.client_cert), "key_file": str(certificates.client_key)},
        )
        run_consumer(with_certificate, windows(1))
    assert len(receiver.requests) == 1


def test_tls_by_default_refuses_a_server_certificate_the_system_does_not_trust(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    receiver = ProfilesReceiver()
    with serve(receiver, tls=certificates.server_tls()) as port:
        # TLS is the default, but the system roots do not trust the test CA: nothing is sent
        exporter = make_consumer(antiprof_otlp, "otlp", {"endpoint": f"127.0.0.1:{port}", **FAST_RETRY})
        run_consumer(exporter, windows(1), flush_timeout=0.5)
    assert receiver.requests == []


def test_auth_header_from_an_environment_variable_arrives_and_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    types = consumer_types(plugin_manager(antiprof_otlp))
    receiver = ProfilesReceiver()
    caplog.set_level(logging.DEBUG)
    with serve(receiver) as port:
        data = {
            "consumers": {
                "collector": {
                    "type": "otlp",
                    "endpoint": f"127.0.0.1:{port}",
                    "insecure": True,
                    "headers": {"authorization": "Bearer ${OTLP_TOKEN}", "x-scope-orgid": "team-a"},
                    **FAST_RETRY,
                }
            }
        }
        config = build_config(data, PluginCatalog(types=types), {"OTLP_TOKEN": "s3cr3t-token"})
        (active,) = config.consumers
        exporter = active.type.factory(active.config, synthetic_context("collector"))
        run_consumer(exporter, windows(1))
    (call,) = receiver.calls
    assert call.metadata["authorization"] == "Bearer s3cr3t-token"
    assert call.metadata["x-scope-orgid"] == "team-a"
    assert "s3cr3t-token" not in caplog.text
    assert "headers: authorization, x-scope-orgid" in caplog.text


def test_missing_header_variable_is_a_config_error() -> None:
    types = consumer_types(plugin_manager(antiprof_otlp))
    data = {"consumers": {"otlp": {"headers": {"authorization": "Bearer ${OTLP_TOKEN}"}}}}
    with pytest.raises(Exception) as caught:
        build_config(data, PluginCatalog(types=types), {})
    assert "consumers.otlp.headers.authorization: environment variable 'OTLP_TOKEN' is not set" in str(caught.value)


def test_endpoint_down_at_start_then_up_delivers_every_window_once_in_order() -> None:
    port = free_port()
    receiver = ProfilesReceiver()
    exporter = consumer(port)
    sent = windows(5)
    exporter.start()
    try:
        for window in sent:
            exporter.consume(window)
        time.sleep(0.3)  # a few failed attempts against nothing
        assert exporter.stats().retries >= 1
        with serve(receiver, port=port):
            exporter.flush(10.0)
    finally:
        exporter.close()
    assert window_starts(receiver) == [w.start_ns for w in sent]
    assert len(receiver.calls) == 5  # each accepted once, nothing resent
    assert exporter.stats().windows_sent == 5


def test_endpoint_going_away_for_a_while_loses_nothing() -> None:
    port = free_port()
    receiver = ProfilesReceiver()
    exporter = consumer(port)
    sent = windows(6)
    exporter.start()
    try:
        with serve(receiver, port=port):
            for window in sent[:3]:
                exporter.consume(window)
            exporter.flush(10.0)
        for window in sent[3:]:
            exporter.consume(window)
        time.sleep(0.3)
        with serve(receiver, port=port):
            exporter.flush(10.0)
    finally:
        exporter.close()
    assert window_starts(receiver) == [w.start_ns for w in sent]


def test_unavailable_twice_then_ok_is_delivered_once() -> None:
    receiver = ProfilesReceiver([Reply(grpc.StatusCode.UNAVAILABLE), Reply(grpc.StatusCode.UNAVAILABLE)])
    with serve(receiver) as port:
        exporter = run_otlp(consumer(port), windows(1))
    assert [c.code for c in receiver.calls] == [grpc.StatusCode.UNAVAILABLE] * 2 + [grpc.StatusCode.OK]
    assert len(receiver.requests) == 1
    stats = exporter.stats()
    assert (stats.retries, stats.windows_sent, stats.requests_refused) == (2, 1, 0)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED],
)
def test_other_retryable_codes_are_retried(code: grpc.StatusCode) -> None:
    receiver = ProfilesReceiver([Reply(code)])
    with serve(receiver) as port:
        exporter = run_otlp(consumer(port), windows(1))
    assert len(receiver.requests) == 1 and exporter.stats().retries == 1


def test_server_retry_info_delay_is_honoured() -> None:
    receiver = ProfilesReceiver([Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.6)])
    with serve(receiver) as port:
        run_consumer(consumer(port), windows(1))
    first, second = receiver.calls
    assert 0.55 <= second.received_at - first.received_at < 3.0  # our own backoff would be ~20ms


def test_invalid_argument_is_dropped_counted_and_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    receiver = ProfilesReceiver([Reply(grpc.StatusCode.INVALID_ARGUMENT, message="bad profile")])
    metrics = CollectorRegistry()
    with serve(receiver) as port:
        context = attrs.evolve(synthetic_context("otlp"), metrics=metrics)
        options = {"endpoint": f"127.0.0.1:{port}", "insecure": True, **FAST_RETRY}
        exporter = OtlpConsumer(structure_section(options, OtlpConfig, "consumers.otlp"), context)
        run_consumer(exporter, windows(2))
    assert [c.code for c in receiver.calls] == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK]
    stats = exporter.stats()
    assert (stats.requests_refused, stats.windows_refused, stats.windows_sent, stats.retries) == (1, 1, 1, 0)
    assert metrics.get_sample_value("antiprof_otlp_requests_total", {"consumer": "otlp", "outcome": "refused"}) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "INVALID_ARGUMENT: bad profile; dropped, not retried" in errors[0]


def test_partial_success_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    receiver = ProfilesReceiver([Reply(rejected_profiles=2, message="profiles too old")])
    with serve(receiver) as port:
        exporter = run_otlp(consumer(port), windows(1))
    assert exporter.stats().rejected_profiles == 2
    assert "rejected 2 of 3 profile(s): profiles too old" in caplog.text


def test_queue_overflow_drops_exactly_what_does_not_fit() -> None:
    port = free_port()
    receiver = ProfilesReceiver()
    exporter = consumer(port, queue_windows=3)
    sent = windows(10)
    exporter.start()
    try:
        for window in sent:
            exporter.consume(window)
        assert exporter.stats().windows_dropped_queue_full == 7
        with serve(receiver, port=port):
            exporter.flush(10.0)
    finally:
        exporter.close()
    assert window_starts(receiver) == [w.start_ns for w in sent[:3]]
    stats = exporter.stats()
    assert (stats.windows_queued, stats.windows_sent, stats.windows_dropped_shutdown) == (3, 3, 0)


def test_queue_bytes_bound_the_queue_too() -> None:
    port = free_port()
    sent = windows(5)
    one = len(encode_window(sent[0], TransformOptions())[0].payload)
    exporter = consumer(port, queue_bytes=int(one * 2.5))
    exporter.start()
    try:
        for window in sent:
            exporter.consume(window)
    finally:
        exporter.close()
    stats = exporter.stats()
    assert (stats.windows_queued, stats.windows_dropped_queue_full, stats.windows_dropped_shutdown) == (2, 3, 2)


def test_shutdown_reports_what_could_not_be_delivered(caplog: pytest.LogCaptureFixture) -> None:
    exporter = consumer(free_port())
    run_consumer(exporter, windows(2), flush_timeout=0.3)
    assert exporter.stats().windows_dropped_shutdown == 2
    assert "shut down with 2 window(s) (" in caplog.text and "not delivered to 127.0.0.1:" in caplog.text


def test_consume_never_waits_on_a_slow_server() -> None:
    receiver = ProfilesReceiver(default=Reply(delay=0.3))
    sent = windows(4)
    with serve(receiver) as port:
        exporter = consumer(port)
        exporter.start()
        started = time.monotonic()
        for window in sent:
            exporter.consume(window)
        consumed = time.monotonic() - started
        exporter.flush(10.0)
        exporter.close()
    assert consumed < 0.25  # one call alone takes 0.3 s
    assert window_starts(receiver) == [w.start_ns for w in sent]


def test_oversized_window_is_split_by_resource_and_arrives_in_order() -> None:
    receiver = ProfilesReceiver()
    window = synthetic_window(processes=30, stacks=600, depth=16, seed=5)
    with serve(receiver) as port:
        exporter = run_otlp(consumer(port, max_request_bytes="16KiB"), [window])
    assert len(receiver.requests) > 1
    assert all(call.size <= 16 * 1024 for call in receiver.calls)
    pids = [
        kv.value.int_value
        for r in receiver.requests
        for rp in r.resource_profiles
        for kv in rp.resource.attributes
        if kv.key == "process.pid"
    ]
    assert pids == list(dict.fromkeys(s.pid for s in window.samples))
    assert sum(d.count for r in receiver.requests for d in decoded_samples(r)) == window.sample_count
    assert exporter.stats().windows_sent == 1


def test_flush_does_not_wait_out_a_long_backoff() -> None:
    port = free_port()
    receiver = ProfilesReceiver()
    exporter = consumer(port, retry_initial_backoff="20s", retry_max_backoff="60s")
    exporter.start()
    try:
        exporter.consume(windows(1)[0])
        time.sleep(0.3)  # failed once; now waiting 10-20 s before the next try
        assert exporter.stats().retries == 1
        with serve(receiver, port=port):
            started = time.monotonic()
            exporter.flush(5.0)
            flushed_in = time.monotonic() - started
    finally:
        exporter.close()
    assert len(receiver.requests) == 1
    assert flushed_in < 4.0
