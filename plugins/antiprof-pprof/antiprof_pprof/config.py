"""``[consumers.pprof]``: where profiles are written and whether the live endpoint listens."""

from __future__ import annotations

import ipaddress

from attrs import field, frozen

from antiprof_core.config import FieldValueError, between, positive
from antiprof_core.units import ByteSize

DEFAULT_OUTPUT_DIR = "/var/lib/antiprof/pprof"
LOOPBACK_NAMES = ("localhost",)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError with a message fit for the user."""
    host, colon, port_text = address.rpartition(":")
    if not colon or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:6060, got '{address}'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@frozen
class PprofConfig:
    output_dir: str = DEFAULT_OUTPUT_DIR  # "" writes no files (the endpoint alone)
    max_files: int = field(default=8640, validator=between(1, 10_000_000))  # a day of 10 s windows
    max_total_size: ByteSize = field(default=ByteSize(1 << 30), validator=positive)
    # host:port for GET /debug/pprof/profile?seconds=N; "" is off. Loopback only: it has no
    # authentication and a profile shows what every process on the host runs.
    http_address: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.output_dir and not self.http_address:
            raise FieldValueError("output_dir", "is empty and http_address is not set: the sink would do nothing")
        if self.http_address:
            try:
                host, _ = split_address(self.http_address)
            except ValueError as exc:
                raise FieldValueError("http_address", str(exc)) from None
            if not is_loopback(host):
                raise FieldValueError(
                    "http_address",
                    f"must be a loopback address (127.0.0.1, [::1] or localhost), got '{self.http_address}': "
                    "the endpoint has no authentication; reach it from elsewhere through ssh or kubectl port-forward",
                )
