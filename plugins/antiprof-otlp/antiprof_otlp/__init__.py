"""antiprof-otlp: OTLP Profiles over gRPC with the official opentelemetry-proto messages."""

from __future__ import annotations

import os

from antiprof_core import ConsumerType, Register, hookimpl
from antiprof_otlp.config import OtlpConfig
from antiprof_otlp.consumer import OtlpConsumer, make_otlp_consumer
from antiprof_otlp.settings import resolve_settings

__all__ = ["OtlpConfig", "OtlpConsumer", "antiprof_register_consumers"]


def validate_otlp_config(config: OtlpConfig, section: str) -> None:
    """What the consumer's constructor checks (endpoint, headers, TLS files), for ``antiprof config check``."""
    resolve_settings(config, os.environ, section)


@hookimpl
def antiprof_register_consumers(register: Register) -> None:
    register(
        ConsumerType(
            name="otlp",
            config_class=OtlpConfig,
            factory=make_otlp_consumer,
            description="OTLP Profiles over gRPC (OpenTelemetry Collector and compatible backends)",
            validate=validate_otlp_config,
        )
    )
