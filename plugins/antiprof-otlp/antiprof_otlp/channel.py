"""The gRPC channel and the official ``ProfilesService`` stub, with TLS unless asked otherwise."""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2_grpc import ProfilesServiceStub

from antiprof_otlp.settings import ExportSettings


class PreEncoded:
    """An already serialized ``ExportProfilesServiceRequest``: the stub's serializer calls this
    method, so the bytes counted in the queue are exactly the bytes sent, encoded once."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def SerializeToString(self) -> bytes:  # the protobuf method name the stub calls
        return self.payload


def open_channel(settings: ExportSettings, reconnect_backoff: tuple[float, float]) -> grpc.Channel:
    """``reconnect_backoff`` (initial, max seconds) keeps gRPC's own reconnect timer in step with
    our retries, so an endpoint that comes back is used within one retry interval."""
    initial_ms = max(int(reconnect_backoff[0] * 1000), 10)
    options = [
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.min_reconnect_backoff_ms", initial_ms),
        ("grpc.max_reconnect_backoff_ms", max(int(reconnect_backoff[1] * 1000), initial_ms)),
        ("grpc.max_send_message_length", -1),
        ("grpc.primary_user_agent", "antiprof-otlp"),
    ]
    compression = grpc.Compression.Gzip if settings.gzip else grpc.Compression.NoCompression
    if settings.insecure:
        return grpc.insecure_channel(settings.target, options=options, compression=compression)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.root_certificates,
        private_key=settings.private_key,
        certificate_chain=settings.certificate_chain,
    )
    return grpc.secure_channel(settings.target, credentials, options=options, compression=compression)


def profiles_stub(channel: grpc.Channel) -> ProfilesServiceStub:
    return ProfilesServiceStub(channel)
