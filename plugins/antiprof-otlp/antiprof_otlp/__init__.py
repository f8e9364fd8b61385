"""antiprof-otlp: OTLP Profiles over gRPC with the official opentelemetry-proto messages."""

from __future__ import annotations

from antiprof_core import hookimpl
from antiprof_core.consumer import ConsumerType, Register
from antiprof_otlp.config import OtlpConfig
from antiprof_otlp.consumer import OtlpConsumer, make_otlp_consumer

__all__ = ["OtlpConfig", "OtlpConsumer", "antiprof_register_consumers"]


@hookimpl
def antiprof_register_consumers(register: Register) -> None:
    register(
        ConsumerType(
            name="otlp",
            config_class=OtlpConfig,
            factory=make_otlp_consumer,
            description="OTLP Profiles over gRPC (OpenTelemetry Collector and compatible backends)",
        )
    )
