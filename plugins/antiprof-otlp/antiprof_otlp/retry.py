"""When to try an Export again and how long to wait: exponential backoff with jitter, or the
server's own ``google.rpc.RetryInfo`` delay from the ``grpc-status-details-bin`` trailer."""

from __future__ import annotations

import random
from collections.abc import Iterable

import grpc
from attrs import frozen
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@frozen
class Backoff:
    """Attempt n (from 0) waits a random time in [d/2, d], d = min(initial * 2**n, maximum)."""

    initial: float
    maximum: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.initial * (2 ** min(attempt, 62)), self.maximum)
        return (rng or random).uniform(ceiling / 2, ceiling)


def server_retry_delay(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The RetryInfo delay in seconds the server put in the call's trailers, if any."""
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
                delay: float = max(0.0, info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
                return delay
    return None
