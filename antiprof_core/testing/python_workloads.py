"""Real CPython interpreters and a Python program with a known shape, for Python-frame tests.

The program runs ``main -> heavy_math`` on its main thread and ``light_strings`` on a second
thread, both in endless loops; the loops' line numbers are exported so tests can check that a
walk names the line being run. Interpreters are Debian's ``/usr/bin/python3.11`` and every
CPython under pyenv (``pyenv root``), as present.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attrs import frozen

TWO_THREADS_PROGRAM = """\
import sys
import threading


def light_strings():
    text = ""
    while True:
        text = ("abc" * 50).upper()
        text = text.lower().replace("a", "b")


def heavy_math():
    total = 0
    print("ready", flush=True)
    while True:
        total = (total * 31 + 7) % 1000003
        total = (total ^ 0x5A5A) + 1


def main():
    worker = threading.Thread(target=light_strings, name="light", daemon=True)
    worker.start()
    print(worker.native_id, worker.ident, threading.get_ident(), flush=True)
    heavy_math()


main()
"""
# 1-based line ranges of each loop (the `while` line and its body), as CPython reports them.
HEAVY_MATH_LINES = range(15, 18)
LIGHT_STRINGS_LINES = range(7, 10)
MAIN_CALL_LINE = 24  # heavy_math() in main
MODULE_CALL_LINE = 27  # main() at module level


# 2:1 by the clock under main(): heavy_math runs 20 ms, light_strings 10 ms, over and over.
TWO_FUNCTIONS_BY_CLOCK_PROGRAM = """\
import time


def heavy_math():
    end = time.perf_counter() + 0.02
    total = 0
    while time.perf_counter() < end:
        total = (total * 31 + 7) % 1000003


def light_strings():
    end = time.perf_counter() + 0.01
    text = ""
    while time.perf_counter() < end:
        text = ("abc" * 50).upper().lower()


def main():
    print("ready", flush=True)
    while True:
        heavy_math()
        light_strings()


main()
"""
BY_CLOCK_SHARES = {"heavy_math": 2 / 3, "light_strings": 1 / 3}
BY_CLOCK_LINES = {
    "heavy_math": range(5, 9),
    "light_strings": range(12, 16),
    "main": range(21, 23),
    "<module>": range(25, 26),
}
BY_CLOCK_START_LINES = {
    "heavy_math": 4,
    "light_strings": 11,
    "main": 18,
    "<module>": 1,
}  # each `def`; a module starts at 1

# A C extension under a Python caller: sha256 over 4 MiB (hashlib releases the GIL for it).
HASHLIB_PROGRAM = """\
import hashlib

DATA = bytes(range(256)) * 16384


def digest_all():
    return hashlib.sha256(DATA).hexdigest()


def main():
    print("ready", flush=True)
    while True:
        digest_all()


main()
"""


@frozen
class Interpreter:
    path: str
    version: tuple[int, int]  # from the file name

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]}:{self.path}"


def pyenv_root() -> Path | None:
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = None
    if not root:
        root = str(Path.home() / ".pyenv")
    return Path(root) if Path(root, "versions").is_dir() else None


def cpython_interpreters() -> list[Interpreter]:
    """Debian's python3.11 and every pyenv CPython present (executables named pythonX.Y)."""
    found: list[Interpreter] = []
    if os.access("/usr/bin/python3.11", os.X_OK):
        found.append(Interpreter("/usr/bin/python3.11", (3, 11)))
    root = pyenv_root()
    if root is not None:
        for version_dir in sorted((root / "versions").iterdir()):
            match = re.fullmatch(r"(\d+)\.(\d+)\.\d+", version_dir.name)  # plain CPython builds only
            executable = version_dir / "bin" / f"python{match.group(1)}.{match.group(2)}" if match else None
            if match and executable is not None and os.access(executable, os.X_OK):
                found.append(Interpreter(str(executable), (int(match.group(1)), int(match.group(2)))))
    return sorted(found, key=lambda interpreter: (interpreter.version, interpreter.path))


@frozen
class RunningProgram:
    pid: int
    main_tid: int
    worker_tid: int
    path: Path
    main_pthread: int  # threading.get_ident(): pthread_self() of each thread
    worker_pthread: int

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        _wait_stopped(self.pid)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Until every thread of ``pid`` is in state T (SIGSTOP is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            states.append(stat.rpartition(")")[2].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    raise TimeoutError(f"process {pid} did not stop within {timeout}s")


@contextmanager
def running_two_threads(interpreter: str, directory: Path, timeout: float = 60.0) -> Iterator[RunningProgram]:
    """The two-thread program under ``interpreter``, once its main thread is about to loop."""
    path = directory / "two_threads.py"
    path.write_text(TWO_THREADS_PROGRAM)
    process = subprocess.Popen([interpreter, str(path)], stdout=subprocess.PIPE, bufsize=0)
    try:
        assert process.stdout is not None
        lines = _LineReader(process.stdout.fileno(), process.pid)
        worker_tid, worker_pthread, main_pthread = map(int, lines.next(timeout).split())
        if lines.next(timeout) != "ready":
            raise RuntimeError(f"{interpreter}: the program did not start")
        yield RunningProgram(process.pid, process.pid, worker_tid, path, main_pthread, worker_pthread)
    finally:
        process.kill()
        process.wait(timeout=30)


@contextmanager
def running_program(
    command: list[str], source: str, directory: Path, timeout: float = 60.0
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` + a script holding ``source`` (which prints "ready" when it starts its work)."""
    path = directory / "program.py"
    path.write_text(source)
    process = subprocess.Popen([*command, str(path)], stdout=subprocess.PIPE, bufsize=0)
    try:
        assert process.stdout is not None
        if _LineReader(process.stdout.fileno(), process.pid).next(timeout) != "ready":
            raise RuntimeError(f"{command}: the program did not start")
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


class _LineReader:
    """Lines from a pipe with a deadline each (the fd is read directly: no hidden buffer to wait past)."""

    def __init__(self, fd: int, pid: int) -> None:
        self.fd = fd
        self.pid = pid
        self.buffer = b""

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                raise TimeoutError(f"no output from pid {self.pid} within {timeout}s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise RuntimeError(f"pid {self.pid} ended early")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode().strip()


if __name__ == "__main__":  # pragma: no cover - a manual aid: list what the tests will use
    for found in cpython_interpreters():
        print(found.label, file=sys.stdout)
