"""A real OTLP profiles receiver for tests, on the official ``ProfilesServiceServicer``: grpcio
server on 127.0.0.1, optional TLS and mTLS, scripted failures (any status code, a RetryInfo
delay, partial success), and everything it was sent kept decoded.

    receiver = ProfilesReceiver([Reply(grpc.StatusCode.UNAVAILABLE)])
    with serve(receiver) as port:
        ...  # export to 127.0.0.1:port with insecure = true
    receiver.wait_for(1)
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from attrs import frozen
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2, profiles_service_pb2_grpc

from antiprof_otlp.retry import STATUS_DETAILS_KEY


@frozen
class Reply:
    """What the receiver does with one call: OK (optionally partial success) or a status code."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    retry_delay: float | None = None  # seconds, sent as google.rpc.RetryInfo
    rejected_profiles: int = 0
    delay: float = 0.0  # seconds to sit on the call before answering


@frozen
class Call:
    metadata: dict[str, str]
    code: grpc.StatusCode
    size: int  # serialized request bytes
    received_at: float  # time.monotonic()


class ProfilesReceiver(profiles_service_pb2_grpc.ProfilesServiceServicer):
    def __init__(self, script: Iterable[Reply] = (), default: Reply | None = None) -> None:
        self._script = collections.deque(script)
        self._default = default or Reply()  # once the script has run out
        self._changed = threading.Condition()
        self.requests: list[profiles_service_pb2.ExportProfilesServiceRequest] = []  # accepted, in order
        self.calls: list[Call] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # the servicer's method name
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        with self._changed:
            reply = self._script.popleft() if self._script else self._default
            self.calls.append(Call(metadata, reply.code, request.ByteSize(), time.monotonic()))
            if reply.code is grpc.StatusCode.OK:
                self.requests.append(request)
            self._changed.notify_all()
        if reply.delay:
            time.sleep(reply.delay)
        if reply.code is not grpc.StatusCode.OK:
            if reply.retry_delay is not None:
                context.set_trailing_metadata(((STATUS_DETAILS_KEY, retry_status(reply).SerializeToString()),))
            context.abort(reply.code, reply.message or reply.code.name.lower())
        response = profiles_service_pb2.ExportProfilesServiceResponse()
        if reply.rejected_profiles or reply.message:
            response.partial_success.rejected_profiles = reply.rejected_profiles
            response.partial_success.error_message = reply.message
        return response

    def wait_for(self, accepted: int, timeout: float = 10.0) -> bool:
        """Wait until ``accepted`` requests have been accepted."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= accepted, timeout)

    def wait_for_calls(self, calls: int, timeout: float = 10.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.calls) >= calls, timeout)


def retry_status(reply: Reply) -> status_pb2.Status:
    delay = reply.retry_delay or 0.0
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(delay), nanos=round((delay % 1) * 1e9))
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=reply.code.value[0], message=reply.message, details=[detail])


@frozen
class ServerTls:
    key: bytes
    certificate: bytes
    client_ca: bytes | None = None  # set: clients must present a certificate signed by it


@contextlib.contextmanager
def serve(receiver: ProfilesReceiver, port: int = 0, tls: ServerTls | None = None) -> Iterator[int]:
    """Run a grpcio server with ``receiver`` on 127.0.0.1; yields the port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", -1)])
    profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(receiver, server)
    address = f"127.0.0.1:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.certificate)],
            root_certificates=tls.client_ca,
            require_client_auth=tls.client_ca is not None,
        )
        bound = server.add_secure_port(address, credentials)
    if not bound:
        raise RuntimeError(f"cannot bind {address}")
    server.start()
    try:
        yield bound
    finally:
        server.stop(grace=None).wait()


@frozen
class Certificates:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_tls(self, mutual: bool = False) -> ServerTls:
        return ServerTls(
            key=self.server_key.read_bytes(),
            certificate=self.server_cert.read_bytes(),
            client_ca=self.ca.read_bytes() if mutual else None,
        )


def make_certificates(directory: Path) -> Certificates:
    """Fresh keys and certificates (needs ``cryptography``, a test dependency)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.write_bytes(pem)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("antiprof test CA"))
        .issuer_name(name("antiprof test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = leaf("antiprof agent", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    paths = Certificates(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, paths.server_key)
    write_key(client_key, paths.client_key)
    return paths
