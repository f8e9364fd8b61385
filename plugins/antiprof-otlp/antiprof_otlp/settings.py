"""The effective connection settings: the config first, then the standard OTLP variables, then defaults.

Precedence follows the OTLP exporter specification: the signal-specific variable
(``OTEL_EXPORTER_OTLP_PROFILES_*``) beats the generic one (``OTEL_EXPORTER_OTLP_*``), and an
``http://`` endpoint means plaintext, ``https://`` TLS, whatever ``*_INSECURE`` says.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping as MappingABC
from pathlib import Path

from attrs import field, frozen

from antiprof_otlp.config import Compression, OtlpConfig

DEFAULT_ENDPOINT = "localhost:4317"
ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_PROFILES_ENDPOINT = "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT"
ENV_HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
ENV_PROFILES_HEADERS = "OTEL_EXPORTER_OTLP_PROFILES_HEADERS"
ENV_INSECURE = "OTEL_EXPORTER_OTLP_INSECURE"
ENV_PROFILES_INSECURE = "OTEL_EXPORTER_OTLP_PROFILES_INSECURE"


MAX_WAIT_SECONDS = 86_400.0  # a day: longer waits overflow nothing, but mean nothing either


class SettingsError(ValueError):
    """One line naming the config key or environment variable that is wrong."""


@frozen
class ExportSettings:
    target: str  # host:port, as grpc wants it
    insecure: bool
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # never printed: may hold secrets
    gzip: bool = True
    timeout: float = 10.0
    max_retry_delay: float = 300.0  # no wait between tries is longer, whatever a server's RetryInfo says

    @property
    def header_names(self) -> tuple[str, ...]:
        """Safe to log."""
        return tuple(name for name, _ in self.headers)


def resolve_settings(
    config: OtlpConfig, environ: MappingABC[str, str], section: str = "consumers.otlp"
) -> ExportSettings:
    """Merge config and environment; raises SettingsError naming the field or variable."""
    endpoint, endpoint_source = config.endpoint, f"{section}.endpoint"
    if not endpoint:
        for name in (ENV_PROFILES_ENDPOINT, ENV_ENDPOINT):
            if environ.get(name):
                endpoint, endpoint_source = environ[name], name
                break
        else:
            endpoint = DEFAULT_ENDPOINT
    target, scheme_insecure = parse_endpoint(endpoint, endpoint_source)

    insecure = config.insecure
    if insecure is None:
        insecure = scheme_insecure
    if insecure is None:
        for name in (ENV_PROFILES_INSECURE, ENV_INSECURE):
            if environ.get(name):
                insecure = parse_bool(environ[name], name)
                break
        else:
            insecure = False

    headers: dict[str, str] = {}
    for name in (ENV_HEADERS, ENV_PROFILES_HEADERS):  # later wins
        if environ.get(name):
            headers.update(parse_headers(environ[name], name))
    for key, value in config.headers.items():
        headers[key.lower()] = value
    for key, value in headers.items():
        check_header(key, value, f"{section}.headers")

    if bool(config.cert_file) != bool(config.key_file):
        raise SettingsError(f"{section}: cert_file and key_file go together (mTLS needs both)")
    if insecure and (config.ca_file or config.cert_file):
        raise SettingsError(f"{section}: ca_file/cert_file/key_file are for TLS but insecure = true")
    return ExportSettings(
        target=target,
        insecure=insecure,
        root_certificates=read_pem(config.ca_file, f"{section}.ca_file"),
        certificate_chain=read_pem(config.cert_file, f"{section}.cert_file"),
        private_key=read_pem(config.key_file, f"{section}.key_file"),
        headers=tuple(sorted(headers.items())),
        gzip=config.compression is Compression.GZIP,
        timeout=float(config.timeout),
        max_retry_delay=min(float(config.max_retry_delay), MAX_WAIT_SECONDS),
    )


def parse_endpoint(endpoint: str, source: str) -> tuple[str, bool | None]:
    """``host:port`` or ``http(s)://host:port[/]`` -> (grpc target, insecure from the scheme or None)."""
    text = endpoint.strip()
    scheme_insecure: bool | None = None
    if "://" in text:
        url = urllib.parse.urlsplit(text)
        if url.scheme not in ("http", "https"):
            raise SettingsError(
                f"{source}: unsupported scheme {url.scheme!r} in {endpoint!r} (use http:// or https://)"
            )
        if url.path not in ("", "/"):
            raise SettingsError(f"{source}: a gRPC endpoint has no path, got {endpoint!r}")
        scheme_insecure = url.scheme == "http"
        text = url.netloc
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{source}: expected host:port (e.g. 'otel-collector:4317'), got {endpoint!r}")
    return text, scheme_insecure


def parse_bool(text: str, source: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "false"):
        return value == "true"
    raise SettingsError(f"{source}: expected 'true' or 'false', got {text!r}")


def parse_headers(text: str, source: str) -> dict[str, str]:
    """The W3C-baggage-like list ``key1=value1,key2=value2`` with percent-encoded values."""
    headers = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise SettingsError(f"{source}: expected key=value pairs separated by commas, got an item without '='")
        headers[urllib.parse.unquote(key.strip()).lower()] = urllib.parse.unquote(value.strip())
    return headers


def check_header(key: str, value: str, source: str) -> None:
    """gRPC metadata keys are lowercase tokens; values printable ASCII. The value is never echoed."""
    if not key or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in key) or key.endswith("-bin"):
        raise SettingsError(f"{source}: invalid header name {key!r}")
    if not all(" " <= c <= "~" for c in value):
        raise SettingsError(f"{source}: header {key!r} has a value with characters gRPC cannot send")


def read_pem(path: str, source: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SettingsError(f"{source}: cannot read {path}: {error.strerror}") from None
    if b"-----BEGIN" not in data:
        raise SettingsError(f"{source}: {path} is not a PEM file")
    return data
