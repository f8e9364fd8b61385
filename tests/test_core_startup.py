"""Start-up overlaps what does not need the BPF program with its compile: sinks start meanwhile."""

from __future__ import annotations

import logging
import time

import pytest

from antiprof_core import Consumer
from antiprof_core.agent import Agent
from antiprof_core.config import build_config
from antiprof_core.model import ProfileWindow
from antiprof_core.plugins import load_plugins
from antiprof_core.testing import require_bpf

pytestmark = pytest.mark.bpf


class StartClock(Consumer):
    """Notes when the agent started it."""

    started_at = 0.0

    def start(self) -> None:
        StartClock.started_at = time.time()

    def consume(self, window: ProfileWindow) -> None:
        pass


class ReadyClock(logging.Handler):
    ready_at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if "attached and ready" in record.getMessage():
            ReadyClock.ready_at = record.created


def test_sinks_start_while_the_bpf_program_compiles() -> None:
    require_bpf()
    config = build_config({"sampler": {"frequency_hz": 19, "window": "1s"}}, load_plugins().catalog, {})
    logger = logging.getLogger("antiprof.test-startup")
    logger.setLevel(logging.INFO)
    logger.addHandler(ReadyClock())
    agent = Agent(config, logger, extra_consumers=[("clock", StartClock())])
    assert agent.run(duration=0.5) == 0
    assert 0 < StartClock.started_at < ReadyClock.ready_at
    assert ReadyClock.ready_at - StartClock.started_at > 0.5  # the compile ran after the sink had started
