"""The agent's life: build consumers and the source, publish one window per interval, shut down cleanly.

A reload (SIGHUP) happens in the publishing thread between two windows, so no window is published
while sinks or the sampler are being swapped: a sink whose section changed gets every window up to
the reload, is flushed and closed, and its replacement gets every window after it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import pluggy
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from antiprof_core import __version__
from antiprof_core.config import ActiveConsumer, Config, ConfigError
from antiprof_core.consumer import Consumer, ConsumerContext
from antiprof_core.heap import fix_mmap_threshold
from antiprof_core.host import read_host
from antiprof_core.metrics import Health, MetricsServer, SamplerMetrics, serve
from antiprof_core.model import Host
from antiprof_core.plugins import call_quietly
from antiprof_core.router import ConsumerStats, Router
from antiprof_core.sources import AgentInfo, SourceExhausted, SourceUnavailable, WindowSource, make_source

EXIT_OK = 0
EXIT_FAILURE = 1


class AgentError(Exception):
    """A fatal start-up or run-time failure; the message is one line for the user."""


ConfigLoader = Callable[[], Config]
"""Re-reads the config for a reload; raises ConfigError with one line per problem."""

READY_MESSAGE = "sampling at %d Hz, %s windows, to %s: attached and ready"
"""Logged once the sampler is attached (and again after a sampler restart); tests may wait for "attached and ready"."""

# Agent fields whose new value needs a restart (the host identity and the listening socket are fixed).
_RESTART_ONLY = ("node_name", "cluster_name", "metrics_address")


class Agent:
    """Runs until ``stop()`` (signals call it) or until ``duration`` seconds have passed."""

    def __init__(
        self,
        config: Config,
        logger: logging.Logger | None = None,
        extra_consumers: Sequence[tuple[str, Consumer]] = (),
        host: Host | None = None,
        plugins: pluggy.PluginManager | None = None,
        ready_file: Path | None = None,
    ) -> None:
        self.config = config
        self.logger = logger or logging.getLogger("antiprof")
        self.metrics = CollectorRegistry()
        self.host = host or read_host(config.agent.node_name, config.agent.cluster_name)
        self.router = Router(self.logger, self.metrics)
        self.sampler_metrics = SamplerMetrics(self.metrics)
        self.health = Health(float(config.sampler.window))
        self._extra = extra_consumers
        self._plugins = plugins  # for antiprof_startup / antiprof_shutdown
        self._symbolizer_metrics: Collector | None = None
        self._ready_file = ready_file
        self._wake = threading.Event()
        self._stopping = False
        self._reload_loader: ConfigLoader | None = None
        self._metrics_server: MetricsServer | None = None
        self.stats: Sequence[ConsumerStats] = ()
        self.reloads = 0  # reloads applied (a rejected config does not count)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def request_reload(self, loader: ConfigLoader) -> None:
        """Re-read the config between two windows (safe to call from a signal handler)."""
        self._reload_loader = loader
        self._wake.set()

    def _build_consumer(self, active: ActiveConsumer) -> Consumer:
        context = ConsumerContext(
            name=active.name,
            host=self.host,
            logger=self.logger.getChild(f"consumer.{active.name}"),
            metrics=self.metrics,
        )
        try:
            return active.type.factory(active.config, context)
        except Exception as exc:
            raise AgentError(f"consumers.{active.name}: cannot create '{active.type.name}' consumer: {exc}") from exc

    def _build_consumers(self) -> None:
        for active in self.config.consumers:
            self.router.add(active.name, self._build_consumer(active), active.queue_size)
        for name, consumer in self._extra:
            self.router.add(name, consumer, self.config.agent.queue_size)

    def run(self, duration: float | None = None) -> int:
        """Returns the exit code; raises AgentError for a fatal start-up problem."""
        fix_mmap_threshold()  # large freed buffers (ELF sections) go back to the kernel, not the heap
        self._build_consumers()
        if self.config.agent.metrics_address:
            try:
                self._metrics_server = serve(self.config.agent.metrics_address, self.metrics, self.health)
            except (ValueError, OSError) as exc:
                message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise AgentError(message) from exc
        try:
            return self._run(duration)
        finally:
            if self._metrics_server is not None:
                self._metrics_server.close()

    def _run(self, duration: float | None) -> int:
        if not self.router.workers:
            self.logger.warning("no consumers are configured: windows are sampled and discarded")
        self.router.start()  # sinks start (connect, open folders) while the BPF program compiles
        try:
            source = self._start_source()
        except AgentError:
            self.router.shutdown(self.config.agent.shutdown_timeout)
            raise
        self._announce_ready()
        names = [w.name for w in self.router.workers]
        self._notify("antiprof_startup", agent_info=AgentInfo(self.config, self.host, __version__, names))
        code = self._publish_windows(source, duration)
        self._set_ready(False)
        self.stats = self.router.shutdown(self.config.agent.shutdown_timeout)
        self._notify("antiprof_shutdown")
        for stats in self.stats:
            self.logger.info(
                "consumer '%s': %d windows consumed, %d dropped (queue full), %d errors",
                stats.name,
                stats.delivered,
                stats.dropped,
                stats.errors,
            )
        return code

    def _start_source(self) -> WindowSource:
        source = make_source(self.config, self.host, self.logger.getChild("sampler"))
        self._configure_symbolizer(source)
        try:
            source.start()  # returns once perf events are attached: samples from here on are seen
        except SourceUnavailable as exc:
            raise AgentError(str(exc)) from exc
        return source

    def _announce_ready(self) -> None:
        self._set_ready(True)
        self.logger.info(
            READY_MESSAGE,
            self.config.sampler.frequency_hz,
            self.config.sampler.window,
            ", ".join(w.name for w in self.router.workers) or "nowhere",
        )

    def _set_ready(self, ready: bool) -> None:
        self.health.set_ready(ready, float(self.config.sampler.window))
        if self._ready_file is None:
            return
        try:
            if ready:  # the file says "attached": written once sampling has started, removed when it ends
                fd = os.open(self._ready_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "w") as handle:
                    handle.write(f"{os.getpid()}\n")
            else:
                self._ready_file.unlink(missing_ok=True)
        except OSError as exc:
            self.logger.error("--ready-file %s: %s", self._ready_file, exc.strerror or exc)

    def _publish_windows(self, source: WindowSource, duration: float | None) -> int:
        interval = float(self.config.sampler.window)
        started = time.monotonic()
        end = started + duration if duration is not None else None
        next_boundary = started + interval
        code = EXIT_OK
        try:
            while True:
                wake = next_boundary if end is None else min(next_boundary, end)
                self._wake.wait(max(wake - time.monotonic(), 0.0))
                self._wake.clear()
                if self._stopping:
                    break
                loader, self._reload_loader = self._reload_loader, None
                if loader is not None:
                    restarted = self._reload(loader, source)
                    if restarted is not None:
                        source = restarted
                        interval = float(self.config.sampler.window)
                        next_boundary = time.monotonic() + interval
                    continue
                if end is not None and time.monotonic() >= end:
                    break
                if time.monotonic() < next_boundary:
                    continue
                self._publish(source)
                next_boundary += interval
            self._publish(source)  # the last, partial window
        except SourceExhausted as exc:
            self.logger.info("source finished: %s", exc)
        except Exception as exc:
            self.logger.error("sampler failed: %s: %s", type(exc).__name__, exc)
            self.logger.debug("sampler traceback", exc_info=True)
            code = EXIT_FAILURE
        finally:
            try:
                source.close()
            except Exception as exc:
                self.logger.error("sampler failed to close: %s", exc)
        return code

    def _notify(self, hook_name: str, **kwargs: object) -> None:
        if self._plugins is not None:
            call_quietly(self._plugins, hook_name, self.logger, **kwargs)

    def _configure_symbolizer(self, source: WindowSource) -> None:
        """The ``[symbolizer]`` section and its metrics, for sources that name frames."""
        from antiprof_core.symbolize import Symbolizer
        from antiprof_core.symbolize.metrics import register_symbolizer_metrics

        if self._symbolizer_metrics is not None:  # a restarted sampler brings a new symbolizer
            self.metrics.unregister(self._symbolizer_metrics)
            self._symbolizer_metrics = None
        symbolizer = getattr(source, "symbolizer", None)
        if isinstance(symbolizer, Symbolizer):
            symbolizer.set_cache_budget(self.config.symbolizer.cache_mb << 20)
            self._symbolizer_metrics = register_symbolizer_metrics(self.metrics, symbolizer)

    def _publish(self, source: WindowSource) -> None:
        window = source.collect()
        self.router.publish(window)
        self.sampler_metrics.record(window.counters)
        self.health.window_published()

    def _reload(self, loader: ConfigLoader, source: WindowSource) -> WindowSource | None:
        """Apply a re-read config; returns the new source if the sampler was restarted.

        An invalid config is logged and the running one kept. A sink that cannot be created from
        its new section is logged and left out; the others are applied.
        """
        try:
            new = loader()
        except ConfigError as error:
            for line in error.lines():
                self.logger.error("reload rejected, keeping the running config: %s", line)
            return None
        old = self.config
        for name in _RESTART_ONLY:
            if getattr(new.agent, name) != getattr(old.agent, name):
                self.logger.warning("reload: agent.%s changed; it takes effect when the agent restarts", name)
        old_consumers = {c.name: c for c in old.consumers}
        new_consumers = {c.name: c for c in new.consumers}
        timeout = float(new.agent.shutdown_timeout)
        for name, active in old_consumers.items():
            if new_consumers.get(name) != active:
                stats = self.router.remove(name, timeout)
                action = "removed" if name not in new_consumers else "restarting with its new section"
                self.logger.info("reload: consumer '%s' %s after %d windows", name, action, stats.delivered)
        kept: list[ActiveConsumer] = []
        for name, active in new_consumers.items():
            if old_consumers.get(name) == active:
                kept.append(active)
                continue
            try:
                self.router.add(name, self._build_consumer(active), active.queue_size)
                kept.append(active)
                self.logger.info("reload: consumer '%s' started", name)
            except AgentError as exc:
                self.logger.error("reload: %s; it stays off", exc)
        restarted = None
        if _sampler_changed(new, old):
            self._publish(source)  # the old sampler's last, partial window: nothing is lost
            source.close()
            self._set_ready(False)
            self.logger.info("reload: [sampler] changed; restarting the sampler")
        kept_agent = {name: getattr(old.agent, name) for name in _RESTART_ONLY}
        self.config = attrs.evolve(new, agent=attrs.evolve(new.agent, **kept_agent), consumers=tuple(kept))
        if _sampler_changed(new, old):
            try:
                restarted = self._start_source()
            except AgentError as exc:  # e.g. a new pid filter BPF cannot load: nothing left to sample with
                raise RuntimeError(f"sampler restart failed: {exc}") from exc
            self._announce_ready()
        self.reloads += 1
        self.logger.info("reload: config %s applied", new.path or "(built-in defaults)")
        return restarted


def _sampler_changed(new: Config, old: Config) -> bool:
    """The source restarts for a new [sampler] (its own tables included) or [symbolizer] section."""
    return (new.sampler, new.source_options, new.symbolizer) != (old.sampler, old.source_options, old.symbolizer)
