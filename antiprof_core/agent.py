"""The agent's life: build consumers and the source, publish one window per interval, shut down cleanly."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pluggy
from prometheus_client import CollectorRegistry

from antiprof_core import __version__
from antiprof_core.config import Config
from antiprof_core.consumer import Consumer, ConsumerContext
from antiprof_core.host import read_host
from antiprof_core.metrics import SamplerMetrics, serve
from antiprof_core.model import Host
from antiprof_core.plugins import call_quietly
from antiprof_core.router import ConsumerStats, Router
from antiprof_core.sources import AgentInfo, SourceExhausted, SourceUnavailable, WindowSource, make_source

EXIT_OK = 0
EXIT_FAILURE = 1


class AgentError(Exception):
    """A fatal start-up or run-time failure; the message is one line for the user."""


class Agent:
    """Runs until ``stop()`` (signals call it) or until ``duration`` seconds have passed."""

    def __init__(
        self,
        config: Config,
        logger: logging.Logger | None = None,
        extra_consumers: Sequence[tuple[str, Consumer]] = (),
        host: Host | None = None,
        plugins: pluggy.PluginManager | None = None,
    ) -> None:
        self.config = config
        self.logger = logger or logging.getLogger("antiprof")
        self.metrics = CollectorRegistry()
        self.host = host or read_host(config.agent.node_name, config.agent.cluster_name)
        self.router = Router(self.logger, self.metrics)
        self.sampler_metrics = SamplerMetrics(self.metrics)
        self._extra = extra_consumers
        self._plugins = plugins  # for antiprof_startup / antiprof_shutdown
        self._stop = threading.Event()
        self.stats: Sequence[ConsumerStats] = ()

    def stop(self) -> None:
        self._stop.set()

    def _build_consumers(self) -> None:
        for active in self.config.consumers:
            context = ConsumerContext(
                name=active.name,
                host=self.host,
                logger=self.logger.getChild(f"consumer.{active.name}"),
                metrics=self.metrics,
            )
            try:
                consumer = active.type.factory(active.config, context)
            except Exception as exc:
                raise AgentError(
                    f"consumers.{active.name}: cannot create '{active.type.name}' consumer: {exc}"
                ) from exc
            self.router.add(active.name, consumer, active.queue_size)
        for name, consumer in self._extra:
            self.router.add(name, consumer, self.config.agent.queue_size)

    def run(self, duration: float | None = None) -> int:
        """Returns the exit code; raises AgentError for a fatal start-up problem."""
        self._build_consumers()
        if self.config.agent.metrics_address:
            try:
                serve(self.config.agent.metrics_address, self.metrics)
            except (ValueError, OSError) as exc:
                message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise AgentError(message) from exc
        if not self.router.workers:
            self.logger.warning("no consumers are configured: windows are sampled and discarded")
        source = make_source(self.config, self.host, self.logger.getChild("sampler"))
        try:
            source.start()
        except SourceUnavailable as exc:
            raise AgentError(str(exc)) from exc
        self.router.start()
        self.logger.info(
            "sampling at %d Hz, %s windows, to %s",
            self.config.sampler.frequency_hz,
            self.config.sampler.window,
            ", ".join(w.name for w in self.router.workers) or "nowhere",
        )
        names = [w.name for w in self.router.workers]
        self._notify("antiprof_startup", agent_info=AgentInfo(self.config, self.host, __version__, names))
        code = self._publish_windows(source, duration)
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

    def _publish_windows(self, source: WindowSource, duration: float | None) -> int:
        interval = float(self.config.sampler.window)
        started = time.monotonic()
        end = started + duration if duration is not None else None
        next_boundary = started + interval
        code = EXIT_OK
        try:
            while True:
                wake = next_boundary if end is None else min(next_boundary, end)
                if self._stop.wait(max(wake - time.monotonic(), 0.0)):
                    break
                if end is not None and time.monotonic() >= end:
                    break
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

    def _publish(self, source: WindowSource) -> None:
        window = source.collect()
        self.router.publish(window)
        self.sampler_metrics.record(window.counters)
