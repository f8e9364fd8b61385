"""The ``otlp`` consumer: encodes each window on the router's thread, hands it to its own sender.

``consume`` never waits on the network: encoding is CPU work, and the queue in front of the
sender either takes the window or drops it and counts it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping as MappingABC

from antiprof_core.consumer import Consumer, ConsumerContext
from antiprof_core.model import ProfileWindow
from antiprof_otlp.config import OtlpConfig
from antiprof_otlp.delivery import Batch, DeliveryStats, Sender
from antiprof_otlp.retry import Backoff
from antiprof_otlp.settings import resolve_settings
from antiprof_otlp.transform import TransformOptions, encode_window, frame_count


class OtlpConsumer(Consumer):
    def __init__(self, config: OtlpConfig, context: ConsumerContext, environ: MappingABC[str, str] | None = None):
        self.name = context.name
        environ = os.environ if environ is None else environ
        self.settings = resolve_settings(config, environ, f"consumers.{context.name}")
        self._options = TransformOptions(config.service_name, int(config.max_request_bytes))
        self._logger = context.logger
        self._bytes_per_frame = 0.0  # from the last window: big windows are split before encoding
        self._sender = Sender(
            name=context.name,
            settings=self.settings,
            backoff=Backoff(float(config.retry_initial_backoff), float(config.retry_max_backoff)),
            max_windows=config.queue_windows,
            max_bytes=int(config.queue_bytes),
            logger=context.logger,
            registry=context.metrics,
        )

    def start(self) -> None:
        self._sender.start()
        self._logger.info(
            "otlp '%s': exporting profiles to %s (%s%s)",
            self.name,
            self.settings.target,
            "plaintext" if self.settings.insecure else "TLS",
            f", headers: {', '.join(self.settings.header_names)}" if self.settings.headers else "",
        )

    def consume(self, window: ProfileWindow) -> None:
        requests = encode_window(window, self._options, self._bytes_per_frame)
        frames = frame_count(window)
        if requests and frames:
            self._bytes_per_frame = sum(len(request.payload) for request in requests) / frames
        if requests:
            self._sender.offer(Batch(requests=tuple(requests), window_start_ns=window.start_ns))

    def flush(self, timeout: float) -> None:
        if not self._sender.flush(timeout):
            self._logger.warning("otlp '%s': flush ran out of time after %.1fs", self.name, timeout)

    def close(self) -> None:
        self._sender.close()

    def stats(self) -> DeliveryStats:
        return self._sender.stats()


def make_otlp_consumer(config: OtlpConfig, context: ConsumerContext) -> OtlpConsumer:
    return OtlpConsumer(config, context)
