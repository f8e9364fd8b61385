"""Headless Chromium driven over the DevTools protocol, for tests that look at a page as a person would.

    with Chromium() as browser:
        page = browser.open(path)
        page.evaluate("document.title")
        page.click(x, y); page.type_text("work"); page.screenshot(png_path)

Chromium is Debian's (scripts/setup-system.sh installs it), started with a fresh profile, no
network services, and a DevTools port chosen by the kernel (read from DevToolsActivePort).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import websocket

from antiprof_core.model import Frame, FrameKind, Mapping, Process, ProfileWindow, Sample
from antiprof_core.sources.synthetic import synthetic_host

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab, spoken to through its own DevTools websocket."""

    def __init__(self, url: str, timeout: float) -> None:
        self.timeout = timeout
        self._socket = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self._ids = itertools.count(1)
        self.console: list[str] = []
        self.errors: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self._socket.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._note_event(message)
        raise BrowserError(f"{method}: no answer in {self.timeout} s")

    def _note_event(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            self.errors.append(str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in message["params"]["args"]))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-able), awaiting it if it is a promise."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Polls until the expression is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after waiting: {expression}")
            time.sleep(0.05)

    def click(self, x: float, y: float) -> None:
        """A real mouse click (moved, pressed, released) at page coordinates."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def hover(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def type_text(self, text: str) -> None:
        """Typed into the focused element, as an input method would (fires input events)."""
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._socket.close()


class Chromium:
    """A headless Chromium for the length of a ``with`` block; its profile directory is thrown away."""

    def __init__(self, width: int = 1280, height: int = 800, timeout: float = 60.0) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Chromium:
        binary = chromium_path()
        if binary is None:
            raise BrowserError("chromium is not installed (scripts/setup-system.sh installs it)")
        # A helper that escaped the group could still hold the profile: a leftover directory in
        # /tmp is no reason to fail a test about the page.
        self._profile = tempfile.TemporaryDirectory(prefix="antiprof-chromium-", ignore_cleanup_errors=True)
        profile = Path(self._profile.name)
        self._process = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its renderer, GPU and crashpad children go with it at exit
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (active.exists() and active.read_text().count("\n") >= 1):
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise BrowserError(f"chromium exited with {self._process.returncode}: {stderr.strip()[-500:]}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium wrote no {active} in {self.timeout} s")
            time.sleep(0.05)
        self.port = int(active.read_text().splitlines()[0])
        return self

    def _endpoint(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            return json.loads(answer.read())

    def open(self, path: Path) -> Page:
        """A new tab showing ``path``, loaded, with its script errors collected in ``page.errors``."""
        target = self._endpoint("/json/new?about:blank", method="PUT")
        page = Page(target["webSocketDebuggerUrl"], self.timeout)
        page.call("Runtime.enable")
        page.call("Page.enable")
        size = {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False}
        page.call("Emulation.setDeviceMetricsOverride", **size)
        page.call("Page.navigate", url=path.resolve().as_uri())
        page.wait_for("document.readyState === 'complete'")
        return page

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._stop_process_group(self._process)
        if self._profile is not None:
            self._profile.cleanup()

    def _stop_process_group(self, process: subprocess.Popen[bytes]) -> None:
        """Ends Chromium and every child it started.

        Chromium's helpers can outlive the browser process for a moment and keep writing into the
        profile directory, which then cannot be removed: so the whole group is stopped and waited for.
        """
        group = process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for signal_after_wait in (signal.SIGKILL, None):
            deadline = time.monotonic() + 10
            while _group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.05)
            if signal_after_wait is not None and _group_alive(group):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal_after_wait)
        if process.stderr:
            process.stderr.close()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


# --- reading the drawn flame graph ---------------------------------------------------------------

FRAMES_JS = """
[...document.querySelectorAll('#flamegraph .frame')].map(e => {
  const r = e.getBoundingClientRect();
  return {text: e.textContent, left: r.left, width: r.width, top: r.top, classes: e.className,
          colour: getComputedStyle(e).backgroundColor};
})
"""
ROW = 18


def require_chromium() -> None:
    """Skip the calling test without Chromium; under CI (or ANTIPROF_REQUIRE_BPF=1), fail instead."""
    import os

    import pytest

    if chromium_path() is None:
        if os.environ.get("ANTIPROF_REQUIRE_BPF") == "1" or os.environ.get("CI"):
            pytest.fail("chromium is not installed: scripts/setup-system.sh installs it")
        pytest.skip("chromium is not installed (scripts/setup-system.sh installs it)")


def frames(page: Page) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate(FRAMES_JS)
    return found


def named(page: Page, name: str) -> dict[str, Any]:
    [frame] = [f for f in frames(page) if f["text"] == name]
    return frame


def children(all_frames: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    """Frames one row below ``parent`` and inside its horizontal extent: its callees."""
    return [
        f
        for f in all_frames
        if abs(f["top"] - parent["top"] - ROW) < 1
        and f["left"] >= parent["left"] - 0.5
        and f["left"] + f["width"] <= parent["left"] + parent["width"] + 0.5
    ]


def widest_path(all_frames: list[dict[str, Any]]) -> list[str]:
    """From the root down, always into the widest callee: where the time goes."""
    [node] = [f for f in all_frames if f["text"] == "all"]
    path = [node["text"]]
    while kids := children(all_frames, node):
        node = max(kids, key=lambda f: f["width"])
        path.append(node["text"])
    return path


def centre(frame: dict[str, Any]) -> tuple[float, float]:
    return frame["left"] + frame["width"] / 2, frame["top"] + ROW / 2 - 1


# --- windows of a known shape -------------------------------------------------------------------

APP = Mapping(0x400000, 0x500000, 0, "/usr/bin/app", "aa" * 20)
LIBC = Mapping(0x7F0000000000, 0x7F0000200000, 0, "/usr/lib/x86_64-linux-gnu/libc.so.6", "bb" * 20)
KERNEL_TEXT = Mapping(0xFFFFFFFF81000000, 0xFFFFFFFF82000000, 0, "[kernel.kallsyms]")
JIT_AREA = Mapping(0x7E0000000000, 0x7E0000100000, 0, "//anon")


def known_window(
    stacks: dict[tuple[str, ...], int],
    start_ns: int = 1_764_000_000_000_000_000,
    duration_ns: int = 10_000_000_000,
    process_name: str = "app",
) -> ProfileWindow:
    """A window whose stacks are given root first by name; the kind follows the name's prefix:
    ``k:`` kernel, ``j:`` JIT, ``lib:`` native in libc, else native in /usr/bin/app."""
    frames: dict[str, Frame] = {}

    def frame(text: str) -> Frame:
        if text not in frames:
            address = 0x1000 * (len(frames) + 1)
            if text.startswith("k:"):
                frames[text] = Frame(KERNEL_TEXT.start + address, FrameKind.KERNEL, text[2:], 0, KERNEL_TEXT)
            elif text.startswith("j:"):
                frames[text] = Frame(JIT_AREA.start + address, FrameKind.JIT, text[2:], 0, JIT_AREA)
            elif text.startswith("lib:"):
                frames[text] = Frame(LIBC.start + address, FrameKind.NATIVE, text[4:], 0, LIBC)
            else:
                frames[text] = Frame(APP.start + address, FrameKind.NATIVE, text, 0, APP)
        return frames[text]

    samples = tuple(
        Sample(pid=42, tid=42, cpu=0, thread_name=process_name, stack=tuple(frame(n) for n in reversed(path)), count=n)
        for path, n in stacks.items()
    )
    process = Process(42, process_name, "/usr/bin/app", ("/usr/bin/app",), None, (APP, LIBC))
    return ProfileWindow(start_ns, start_ns + duration_ns, 99, synthetic_host(), samples, {42: process})
