"""Where windows come from: the BPF sampler, or seeded synthetic data."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from antiprof_core.config import SamplerConfig, SourceKind
from antiprof_core.model import Host, ProfileWindow
from antiprof_core.sources.synthetic import synthetic_window


class SourceUnavailable(Exception):
    """The source cannot run here; the message says what is missing and how to fix it (one line)."""


class WindowSource(Protocol):
    """The agent calls ``collect`` once per window; it returns everything since the previous call."""

    def start(self) -> None: ...

    def collect(self) -> ProfileWindow: ...

    def close(self) -> None: ...


class SyntheticSource:
    """Seeded synthetic windows of the configured shape, stamped with real window times."""

    def __init__(self, config: SamplerConfig, host: Host) -> None:
        self._config = config
        self._host = host
        self._window_start = 0
        self._windows = 0

    def start(self) -> None:
        self._window_start = time.time_ns()

    def collect(self) -> ProfileWindow:
        now = time.time_ns()
        shape = self._config.synthetic
        window = synthetic_window(
            processes=shape.processes,
            stacks=shape.stacks,
            depth=shape.depth,
            seed=shape.seed + self._windows,
            frequency_hz=self._config.frequency_hz,
            start_ns=self._window_start,
            duration_ns=max(now - self._window_start, 1),
            mode=self._config.mode,
            host=self._host,
        )
        self._window_start = now
        self._windows += 1
        return window

    def close(self) -> None:
        pass


def make_source(config: SamplerConfig, host: Host, logger: logging.Logger) -> WindowSource:
    if config.source is SourceKind.SYNTHETIC:
        return SyntheticSource(config, host)
    from antiprof_core.sources.bpf import BpfSampler  # ctypes and mmap: imported only when used

    return BpfSampler(config, host, logger)
