"""``antiprof run`` as a subprocess that tests wait on: started, then attached, then stopped by the test.

BCC can take many seconds to compile the program on a busy host, so tests wait for the agent's
``--ready-file`` (written once perf events are attached) instead of sleeping a guessed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from antiprof_core.testing import antiprof_command

READY_TIMEOUT = 180.0
"""How long BCC may take to attach before a test gives up (minutes on a host with every CPU busy)."""


class AgentNotReady(AssertionError):
    """The agent exited or never attached; the message carries its stderr."""


class RunningAgent:
    """``with RunningAgent(config, tmp_path) as agent:`` returns once the agent is attached.

    ``env`` is the agent's whole environment (default: this process's). Leaving the block sends
    SIGTERM (the last window is delivered) and waits; ``stderr`` then holds everything the agent
    logged, and ``returncode`` its exit status.
    """

    def __init__(
        self,
        config: Path,
        directory: Path,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.ready_file = directory / "agent.ready"
        self._stderr_path = directory / "agent.stderr"
        self._command = antiprof_command("run", "-c", str(config), "--ready-file", str(self.ready_file), *args)
        self._env = dict(os.environ if env is None else env)
        self._ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.ready_after = 0.0  # seconds from start to attached

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace") if self._stderr_path.exists() else ""

    def __enter__(self) -> RunningAgent:
        self.ready_file.unlink(missing_ok=True)
        with self._stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(self._command, stderr=stderr, stdout=subprocess.DEVNULL, env=self._env)
        started = time.monotonic()
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise AgentNotReady(f"antiprof run exited {self.process.returncode} before attaching:\n{self.stderr}")
            if time.monotonic() - started > self._ready_timeout:
                self.stop()
                raise AgentNotReady(f"antiprof run did not attach within {self._ready_timeout:.0f}s:\n{self.stderr}")
            time.sleep(0.05)
        self.ready_after = time.monotonic() - started
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the last window to be delivered; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        return self.returncode

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def wait_until(condition: object, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition()`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def json_sink_samples(path: Path, pid: int | None = None) -> int:
    """Samples (of ``pid``, or all) in a JSON sink's file so far; a line still being written is skipped.

    Tests that check shares stop the agent on a sample count, not a clock: on a busy host a fixed
    duration may give too few samples for the tolerance.
    """
    if not path.exists():
        return 0
    total = 0
    for line in path.read_text().splitlines():
        try:
            samples = json.loads(line)["samples"]
        except ValueError:
            continue
        total += sum(sample["count"] for sample in samples if pid is None or sample["pid"] == pid)
    return total
