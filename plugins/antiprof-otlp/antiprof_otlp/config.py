"""``[consumers.otlp]``: where to send, how to authenticate, how hard to try.

Empty strings and ``insecure`` left out mean "not set": the standard ``OTEL_EXPORTER_OTLP_*``
variables fill those (see ``settings``), then the built-in defaults.
"""

from __future__ import annotations

import enum

from attrs import field, frozen

from antiprof_core.config import between, positive
from antiprof_core.units import ByteSize, Duration


class Compression(enum.Enum):
    GZIP = "gzip"
    NONE = "none"


@frozen
class OtlpConfig:
    endpoint: str = ""  # "host:port" or "http(s)://host:port"; empty: $OTEL_EXPORTER_OTLP_*ENDPOINT or localhost:4317
    insecure: bool | None = None  # None: from the endpoint's scheme or $OTEL_EXPORTER_OTLP_INSECURE, else TLS
    ca_file: str = ""  # PEM roots; empty: the system's
    cert_file: str = ""  # PEM client certificate for mTLS (with key_file)
    key_file: str = ""
    headers: dict[str, str] = field(factory=dict)  # values may use ${VAR}; merged over $OTEL_EXPORTER_OTLP_HEADERS
    compression: Compression = Compression.GZIP
    timeout: Duration = field(default=Duration(10.0), validator=positive)  # per Export call
    service_name: str = ""  # empty: each process's executable name
    max_request_bytes: ByteSize = field(default=ByteSize(4 << 20), validator=between(0, 1 << 31))  # 0: never split
    queue_windows: int = field(default=64, validator=between(1, 100_000))
    queue_bytes: ByteSize = field(default=ByteSize(64 << 20), validator=positive)
    retry_initial_backoff: Duration = field(default=Duration(0.5), validator=positive)
    retry_max_backoff: Duration = field(default=Duration(30.0), validator=positive)
    max_retry_delay: Duration = field(default=Duration(300.0), validator=positive)  # caps RetryInfo and backoff
