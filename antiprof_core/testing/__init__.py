"""Helpers for plugin authors' tests: synthetic windows, a plugin manager without entry points,
and a harness that runs a consumer through its whole life.

    from antiprof_core.testing import synthetic_window, run_consumer
    consumer = run_consumer(MySink(config), [synthetic_window(stacks=100)])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pluggy
from prometheus_client import CollectorRegistry

from antiprof_core.config import structure_section
from antiprof_core.consumer import Consumer, ConsumerContext, ConsumerType
from antiprof_core.model import Host, ProfileWindow
from antiprof_core.plugins import (
    CORE_PLUGIN_NAME,
    LoadedPlugins,
    PluginInfo,
    collect,
    consumer_types,
    new_plugin_manager,
    register_plugin,
)
from antiprof_core.sources import builtin_sources
from antiprof_core.sources.synthetic import synthetic_host, synthetic_window

__all__ = [
    "antiprof_command",
    "builtin_sources",
    "load_test_plugins",
    "make_consumer",
    "plugin_manager",
    "require_bpf",
    "run_consumer",
    "small_tmpfs",
    "synthetic_context",
    "synthetic_host",
    "synthetic_window",
]


def plugin_manager(*plugins: object) -> pluggy.PluginManager:
    """A plugin manager with antiprof's hookspecs and only ``plugins`` registered (no entry points)."""
    manager = new_plugin_manager()
    for plugin in plugins:
        manager.register(plugin)
    manager.check_pending()
    return manager


def load_test_plugins(**plugins: object) -> LoadedPlugins:
    """What ``load_plugins`` gives when exactly these plugins (by entry-point name) are installed.

    Each is registered, validated and called on its own, as installed ones are: a broken plugin
    comes back with its ``error`` instead of raising, so a test can check what users would see.
    """
    import antiprof_core.sources

    manager = new_plugin_manager()
    manager.register(antiprof_core.sources, name=CORE_PLUGIN_NAME)
    infos = [PluginInfo(name=name, error=register_plugin(manager, plugin, name)) for name, plugin in plugins.items()]
    return collect(manager, infos)


def synthetic_context(name: str = "test", host: Host | None = None) -> ConsumerContext:
    return ConsumerContext(
        name=name,
        host=host or synthetic_host(),
        logger=logging.getLogger(f"antiprof.consumer.{name}"),
        metrics=CollectorRegistry(),
    )


def make_consumer(
    plugin: object, type_name: str, options: dict[str, Any] | None = None, name: str | None = None
) -> Consumer:
    """Build a consumer the way the agent does: the plugin's hook, its config class, its factory.

    ``options`` is the ``[consumers.NAME]`` table as TOML would give it; it is validated strictly.
    """
    types: dict[str, ConsumerType[Any]] = consumer_types(plugin_manager(plugin))
    consumer_type = types[type_name]
    section = f"consumers.{name or type_name}"
    config = structure_section(options or {}, consumer_type.config_class, section)
    if consumer_type.validate is not None:  # what `antiprof config check` runs
        consumer_type.validate(config, section)
    return consumer_type.factory(config, synthetic_context(name or type_name))


def run_consumer(consumer: Consumer, windows: Iterable[ProfileWindow], flush_timeout: float = 10.0) -> Consumer:
    """start, consume every window, flush and close, as the router would; returns the consumer."""
    consumer.start()
    try:
        for window in windows:
            consumer.consume(window)
        consumer.flush(flush_timeout)
    finally:
        consumer.close()
    return consumer


REQUIRE_BPF_ENV = "ANTIPROF_REQUIRE_BPF"


def require_bpf() -> None:
    """Skip the calling test when real eBPF cannot run here; under ANTIPROF_REQUIRE_BPF=1, fail instead.

    CI sets the variable, so a missing kernel header or capability can never pass as a skip.
    """
    import os

    import pytest

    from antiprof_core.sources.bpf import bpf_unavailable_reason

    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_BPF_ENV) == "1":
        pytest.fail(f"real eBPF is required ({REQUIRE_BPF_ENV}=1) but unavailable: {reason}")
    pytest.skip(f"real eBPF unavailable: {reason}")


def antiprof_command(*args: str) -> list[str]:
    """argv that runs the ``antiprof`` command of this Python environment, for subprocess tests.

    The installed console script when there is one (so its entry point is tested too), else ``-m``.
    """
    import sys

    script = Path(sys.executable).parent / "antiprof"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "antiprof_core.cli", *args]


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "256k") -> Iterator[Path]:
    """A real, tiny filesystem at ``directory`` for full-disk tests; unmounted afterwards (needs root).

    Skips the calling test when not root; a mock ENOSPC would not show how a sink really fails.
    """
    import os
    import subprocess

    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=False)
