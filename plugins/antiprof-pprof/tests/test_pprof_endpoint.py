"""The live endpoint, fed synthetic windows as the router would, read by go tool pprof and urllib."""

from __future__ import annotations

import gzip
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import antiprof_pprof
from antiprof_core.sources.synthetic import synthetic_window
from antiprof_core.summary import HottestFunctions
from antiprof_core.testing import make_consumer
from antiprof_pprof import PprofSink, profile_pb2
from antiprof_pprof.endpoint import DEFAULT_SECONDS, parse_seconds

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import GoPprof, Readers

WINDOW_NS = 250_000_000


class Feeder:
    """Delivers a window every WINDOW_NS, each the same stacks (so any subset has the same shares)."""

    def __init__(self, consumer: PprofSink) -> None:
        self.consumer = consumer
        self.stop = threading.Event()
        self.delivered = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(WINDOW_NS / 1e9):
            self.consumer.consume(synthetic_window(stacks=60, depth=8, seed=5, duration_ns=WINDOW_NS))
            self.delivered += 1


@pytest.fixture
def live() -> Iterator[tuple[PprofSink, Feeder]]:
    consumer = make_consumer(antiprof_pprof, "pprof", {"output_dir": "", "http_address": "127.0.0.1:0"})
    assert isinstance(consumer, PprofSink)
    consumer.start()
    feeder = Feeder(consumer)
    feeder.thread.start()
    try:
        yield consumer, feeder
    finally:
        feeder.stop.set()
        feeder.thread.join()
        consumer.close()


def url(consumer: PprofSink, query: str = "") -> str:
    assert consumer.endpoint is not None
    return consumer.endpoint.url + query


def test_go_tool_pprof_profiles_the_running_agent(
    live: tuple[PprofSink, Feeder], go_pprof: GoPprof, readers: type[Readers]
) -> None:
    consumer, _ = live
    table = HottestFunctions()
    table.consume(synthetic_window(stacks=60, depth=8, seed=5, duration_ns=WINDOW_NS))
    expected = readers.table_shares(table)

    started = time.monotonic()
    done = go_pprof.run("-top", "-sample_index=samples", "-nodecount=100000", "-nodefraction=0", url(consumer,
                        "?seconds=2"))  # fmt: skip
    waited = time.monotonic() - started

    assert done.returncode == 0, done.stderr
    assert f"Fetching profile over HTTP from {url(consumer, '?seconds=2')}" in done.stderr
    assert "Saved profile in " in done.stderr
    assert waited >= 2
    top = readers.parse_top(done.stdout)
    assert set(top) == set(expected)
    for name, (own, total) in expected.items():
        assert abs(top[name].flat_percent - own) <= 0.01 and abs(top[name].cum_percent - total) <= 0.01, name


def test_answers_like_go_net_http_pprof(live: tuple[PprofSink, Feeder]) -> None:
    consumer, _ = live
    before = time.time_ns()

    with urllib.request.urlopen(url(consumer, "?seconds=1"), timeout=30) as response:
        body = response.read()
        headers = response.headers

    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == 'attachment; filename="profile"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    profile = profile_pb2.Profile.FromString(gzip.decompress(body))
    one_window = synthetic_window(stacks=60, depth=8, seed=5, duration_ns=WINDOW_NS).sample_count
    windows = sum(s.value[0] for s in profile.sample) // one_window
    assert sum(s.value[0] for s in profile.sample) == windows * one_window
    assert 4 <= windows <= 6  # 1 s of 250 ms windows, and the one in progress when it ended
    assert profile.time_nanos >= before - WINDOW_NS
    assert profile.duration_nanos >= 1_000_000_000


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "3601", ""])
def test_bad_seconds_is_a_400_with_the_reason(live: tuple[PprofSink, Feeder], bad: str) -> None:
    consumer, _ = live

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url(consumer, f"?seconds={bad}"), timeout=30)

    assert refused.value.code == 400
    assert refused.value.headers["Content-Type"] == "text/plain; charset=utf-8"
    reason = refused.value.read().decode()
    assert reason.startswith("bad seconds ") and reason.endswith("want a whole number of seconds from 1 to 3600\n")


def test_other_paths_are_404_naming_the_one_served(live: tuple[PprofSink, Feeder]) -> None:
    consumer, _ = live
    base = url(consumer).removesuffix("/debug/pprof/profile")

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(base + "/debug/pprof/heap", timeout=30)

    assert missing.value.code == 404
    assert missing.value.read().decode() == "not found: antiprof serves /debug/pprof/profile?seconds=N only\n"


def test_no_seconds_means_go_default_of_30() -> None:
    assert parse_seconds(None) == (DEFAULT_SECONDS, "") == (30, "")
    assert parse_seconds(["7"]) == (7, "")


def test_stopping_the_agent_answers_a_waiting_request_at_once(live: tuple[PprofSink, Feeder]) -> None:
    consumer, feeder = live
    answer: list[bytes] = []
    request = threading.Thread(
        target=lambda: answer.append(urllib.request.urlopen(url(consumer, "?seconds=60"), timeout=60).read())
    )
    request.start()
    time.sleep(1)
    feeder.stop.set()
    feeder.thread.join()

    started = time.monotonic()
    consumer.close()
    request.join(timeout=10)

    assert time.monotonic() - started < 5 and not request.is_alive()
    profile = profile_pb2.Profile.FromString(gzip.decompress(answer[0]))
    assert profile.sample  # what arrived before the stop


def test_a_fifth_concurrent_request_is_503(live: tuple[PprofSink, Feeder]) -> None:
    consumer, _ = live
    answers: list[tuple[int, bytes]] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(url(consumer, "?seconds=5"), timeout=60) as response:
                answers.append((response.status, b""))
        except urllib.error.HTTPError as refused:
            answers.append((refused.code, refused.read()))

    asking = [threading.Thread(target=ask) for _ in range(5)]
    for thread in asking:
        thread.start()
    for thread in asking:
        thread.join()

    assert sorted(answers) == [(200, b"")] * 4 + [(503, b"4 profiles are already being collected\n")]


@pytest.mark.parametrize("host", ["[::1]", "localhost"])
def test_ipv6_loopback_and_localhost_serve_too(host: str) -> None:
    consumer = make_consumer(antiprof_pprof, "pprof", {"output_dir": "", "http_address": f"{host}:0"})
    assert isinstance(consumer, PprofSink) and consumer.endpoint is not None
    consumer.start()
    feeder = Feeder(consumer)
    feeder.thread.start()
    try:
        with urllib.request.urlopen(consumer.endpoint.url + "?seconds=1", timeout=30) as response:
            body = response.read()
    finally:
        feeder.stop.set()
        feeder.thread.join()
        consumer.close()

    assert consumer.endpoint.url.startswith("http://[::1]:" if host == "[::1]" else "http://127.0.0.1:")
    assert profile_pb2.Profile.FromString(gzip.decompress(body)).sample
