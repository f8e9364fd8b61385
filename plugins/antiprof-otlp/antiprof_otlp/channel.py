"""The gRPC channel (TLS unless asked otherwise) and the ``ProfilesService/Export`` method on it."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceResponse

from antiprof_otlp.settings import ExportSettings

_SERVICE = profiles_service_pb2.DESCRIPTOR.services_by_name["ProfilesService"]


def open_channel(settings: ExportSettings, retry_backoff: tuple[float, float]) -> grpc.Channel:
    """gRPC's own reconnect timer is kept short (at most 1 s at first, 5 s later) and no longer
    than our retry backoff, so an endpoint that comes back is used at the next retry."""
    initial_ms = max(min(int(retry_backoff[0] * 1000), 1000), 10)
    max_ms = max(min(int(retry_backoff[1] * 1000), 5000), initial_ms)
    options = [
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.min_reconnect_backoff_ms", initial_ms),
        ("grpc.max_reconnect_backoff_ms", max_ms),
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


def export_method(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable[bytes, Any]:
    """``ProfilesService/Export`` taking an already serialized request, so the bytes counted in
    the queue are the bytes sent and each window is encoded once. The method path comes from the
    official service descriptor."""
    method = _SERVICE.methods_by_name["Export"]
    return channel.unary_unary(
        f"/{_SERVICE.full_name}/{method.name}",
        request_serializer=bytes,
        response_deserializer=ExportProfilesServiceResponse.FromString,
    )
