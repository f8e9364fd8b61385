"""Where windows come from: the BPF sampler, seeded synthetic data, or a replayed antiprof-json file.

Each source is a ``SourceType`` registered through the ``antiprof_register_sources`` hook; the
core's own three are registered by this module, which the plugin loader always registers first.
This module imports the config only for types, so ``config`` can import it at run time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from attrs import frozen

from antiprof_core.hookspecs import hookimpl
from antiprof_core.model import Host, ProfileWindow
from antiprof_core.sources.synthetic import synthetic_window

if TYPE_CHECKING:
    from antiprof_core.config import Config, ReplayConfig, SamplerConfig, SyntheticConfig

OptionsT = TypeVar("OptionsT")


class SourceUnavailable(Exception):
    """The source cannot run here; the message says what is missing and how to fix it (one line)."""


class SourceExhausted(Exception):
    """A finite source (a replayed file) has no more windows: the agent stops as if its duration ended."""


class WindowSource(Protocol):
    """The agent calls ``collect`` once per window; it returns everything since the previous call."""

    def start(self) -> None: ...

    def collect(self) -> ProfileWindow: ...

    def close(self) -> None: ...


@frozen
class SourceContext:
    """What the agent hands a source factory besides the config."""

    host: Host
    logger: logging.Logger


@frozen
class SourceType(Generic[OptionsT]):
    """A kind of window source: ``[sampler] source = name`` selects it.

    ``factory(sampler, options, context)`` makes it. ``options`` is the ``[sampler.NAME]`` table
    structured into ``config_class`` (for the core's sources, the matching ``SamplerConfig``
    field), or None when ``config_class`` is None.
    """

    name: str
    factory: Callable[[SamplerConfig, OptionsT, SourceContext], WindowSource]
    config_class: type[OptionsT] | None = None
    description: str = ""
    validate: Callable[[OptionsT, str], None] | None = None  # like ConsumerType.validate, run by config check


SourceRegister = Callable[[SourceType[Any]], None]
"""The ``register`` argument of ``antiprof_register_sources``."""


@frozen
class AgentInfo:
    """What ``antiprof_startup`` is told about the agent that is starting."""

    config: Config
    host: Host
    version: str
    consumers: Sequence[str]  # config section names, in order


class SyntheticSource:
    """Seeded synthetic windows of the configured shape, stamped with real window times."""

    def __init__(self, config: SamplerConfig, shape: SyntheticConfig, host: Host) -> None:
        self._config = config
        self._shape = shape
        self._host = host
        self._window_start = 0
        self._windows = 0

    def start(self) -> None:
        self._window_start = time.time_ns()

    def collect(self) -> ProfileWindow:
        now = time.time_ns()
        shape = self._shape
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


def _bpf(config: SamplerConfig, options: None, context: SourceContext) -> WindowSource:
    from antiprof_core.sources.bpf import BpfSampler  # ctypes and mmap: imported only when used

    return BpfSampler(config, context.host, context.logger)


def _synthetic(config: SamplerConfig, options: SyntheticConfig, context: SourceContext) -> WindowSource:
    return SyntheticSource(config, options, context.host)


def _replay(config: SamplerConfig, options: ReplayConfig, context: SourceContext) -> WindowSource:
    from antiprof_core.sources.replay import ReplaySource

    return ReplaySource(options.path)


def _check_replay(options: ReplayConfig, section: str) -> None:
    if not options.path:
        raise ValueError(f"{section}.path: required when sampler.source = 'replay'")
    if not os.path.isfile(options.path):
        raise ValueError(f"{section}.path: {options.path}: no such file")


def _builtin_types() -> list[SourceType[Any]]:
    from antiprof_core.config import ReplayConfig, SyntheticConfig

    return [
        SourceType("bpf", _bpf, None, "eBPF sampling of every CPU (needs root, BCC and kernel headers)"),
        SourceType("synthetic", _synthetic, SyntheticConfig, "seeded made-up windows, for demos without BPF"),
        SourceType("replay", _replay, ReplayConfig, "the windows of an antiprof-json file, in order", _check_replay),
    ]


@hookimpl
def antiprof_register_sources(register: SourceRegister) -> None:
    for source_type in _builtin_types():
        register(source_type)


def builtin_sources() -> Mapping[str, SourceType[Any]]:
    """The core's own sources by name, for a config read without the plugin loader."""
    return {source_type.name: source_type for source_type in _builtin_types()}


def make_source(config: Config, host: Host, logger: logging.Logger) -> WindowSource:
    """The source ``config.sampler.source`` names, made by its registered factory."""
    return config.source.factory(config.sampler, config.source_options, SourceContext(host, logger))
