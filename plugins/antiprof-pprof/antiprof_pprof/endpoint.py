"""``GET /debug/pprof/profile?seconds=N`` as Go's net/http/pprof answers it, from the agent's windows.

A request waits N seconds, folds every window that arrives meanwhile (and the one in progress
when the N seconds end, so the profile covers them) into one profile as it comes, and
answers with Go's Content-Type and Content-Disposition, so ``go tool pprof URL`` works as
against a Go program. The sampler runs anyway: a request costs an encode, not a profiler start.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from antiprof_core.model import ProfileWindow
from antiprof_pprof.config import split_address
from antiprof_pprof.encoder import ProfileBuilder, gzip_profile

PROFILE_PATH = "/debug/pprof/profile"
DEFAULT_SECONDS = 30  # Go's default when the parameter is absent
MAX_SECONDS = 3600
MAX_CONCURRENT = 4
_DEFAULT_WINDOW_NS = 10_000_000_000  # the sampler's default window, until one has been seen
_GRACE_NS = 2_000_000_000  # delivery delay allowed after a window ends


class _Collection:
    def __init__(self, start_ns: int, end_ns: int) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.builder = ProfileBuilder(merge_samples=True)  # holds no window: a long request costs stacks, not time
        self.complete = False  # a window reaching end_ns has arrived


class LiveWindows:
    """Hands each window the consumer receives to the requests waiting at that moment."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._collections: list[_Collection] = []
        self._window_ns = _DEFAULT_WINDOW_NS
        self._closed = False

    def offer(self, window: ProfileWindow) -> None:
        with self._changed:
            self._window_ns = max(window.end_ns - window.start_ns, 1)
            for collection in self._collections:
                if window.end_ns > collection.start_ns:
                    collection.builder.add(window)
                    collection.complete = collection.complete or window.end_ns >= collection.end_ns
            self._changed.notify_all()

    def collect(self, seconds: int) -> ProfileBuilder:
        """The windows covering the next ``seconds``, folded; fewer if the agent stops meanwhile."""
        now_ns = time.time_ns()
        collection = _Collection(now_ns, now_ns + seconds * 1_000_000_000)
        started = time.monotonic()
        with self._changed:
            self._collections.append(collection)
            try:
                while not self._closed:
                    waited = time.monotonic() - started
                    if waited >= seconds and collection.complete:
                        break
                    limit = seconds + (self._window_ns + _GRACE_NS) / 1e9
                    if waited >= limit:
                        break  # no window reached the end (a stalled sampler): answer with what came
                    self._changed.wait(seconds - waited if waited < seconds else limit - waited)
            finally:
                self._collections.remove(collection)
        return collection.builder

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "antiprof-pprof"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != PROFILE_PATH:
            self._text(HTTPStatus.NOT_FOUND, f"not found: antiprof serves {PROFILE_PATH}?seconds=N only\n")
            return
        seconds, problem = parse_seconds(parse_qs(url.query, keep_blank_values=True).get("seconds"))
        if problem:
            self._text(HTTPStatus.BAD_REQUEST, problem + "\n")
            return
        if not self.server.slots.acquire(blocking=False):
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, f"{MAX_CONCURRENT} profiles are already being collected\n")
            return
        try:
            builder = self.server.live.collect(seconds)
            body = gzip_profile(builder.build())
        finally:
            self.server.slots.release()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Disposition", 'attachment; filename="profile"')
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        served = (seconds, builder.windows, len(body), self.client_address[0])
        self.server.logger.info("pprof: served %d s (%d windows, %d bytes) to %s", *served)

    def _text(self, status: HTTPStatus, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.logger.debug("pprof http: " + format, *args)


def parse_seconds(values: list[str] | None) -> tuple[int, str]:
    """(seconds, "") or (0, the reason it is refused)."""
    if not values:
        return DEFAULT_SECONDS, ""
    text = values[-1]
    if not text.isascii() or not text.isdigit():
        return 0, f"bad seconds {text!r}: want a whole number of seconds from 1 to {MAX_SECONDS}"
    seconds = int(text)
    if not 1 <= seconds <= MAX_SECONDS:
        return 0, f"bad seconds {seconds}: want a whole number of seconds from 1 to {MAX_SECONDS}"
    return seconds, ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a request still waiting at shutdown must not hold the agent

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, live: LiveWindows,
                 logger: logging.Logger) -> None:  # fmt: skip
        self.address_family = family
        self.live = live
        self.logger = logger
        self.slots = threading.Semaphore(MAX_CONCURRENT)
        super().__init__(address, _Handler)


class ProfileEndpoint:
    """Binds at construction (a taken port is a start-up error), serves from ``start`` until ``close``."""

    def __init__(self, address: str, live: LiveWindows, logger: logging.Logger) -> None:
        host, port = split_address(address)
        host = "127.0.0.1" if host == "localhost" else host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = _Server((host, port), family, live, logger)
        except OSError as exc:
            raise OSError(exc.errno, f"http_address: cannot listen on {address}: {exc.strerror}") from None
        self._live = live
        self._thread: threading.Thread | None = None
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{shown}:{self._server.server_port}{PROFILE_PATH}"  # the real port when 0 was asked

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="antiprof-pprof-http", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._live.close()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
