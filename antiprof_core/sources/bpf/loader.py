"""Compiling apart: BCC compiles and loads the program in a short-lived child process, which hands
the program's and maps' file descriptors to the agent over a Unix socket (SCM_RIGHTS) and exits.

BCC maps LLVM and clang (about 55 MB) the moment it is imported, and the compile peaks at about
175 MiB; the agent lives for months, so none of that may enter it. The child is a fresh
interpreter running ``child.py``, never a fork of the agent.

This is the agent's end; ``child.py`` beside it is the child's. Errors come back as
the one line the agent prints; the compiler's own output is kept for the debug log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from attrs import frozen

from antiprof_core.sources import SourceUnavailable
from antiprof_core.sources.bpf import syscalls
from antiprof_core.sources.bpf.maps import MapInfo

COMPILE_TIMEOUT_SECONDS = 180.0  # BCC took 13 s on a busy 2-CPU host; a stuck child must not hang the agent
_MAX_REPLY = 1 << 16
_MAX_FDS = 64
CHILD_SCRIPT = Path(__file__).with_name("child.py")  # run as a script: no antiprof module in the child


class CompileTimeout(SourceUnavailable):
    """The compiler child did not answer in time: a slow host, not a kernel that refuses the program."""


@frozen
class LoadedProgram:
    """The agent's file descriptors for the loaded program and its maps, and what loading cost."""

    program_fd: int
    maps: dict[str, MapInfo]
    compile_seconds: float
    compiler_peak_bytes: int  # the child's VmHWM
    attachments: tuple[int, ...] = ()  # raw tracepoint links: attached while these stay open

    def close(self) -> None:
        for fd in (self.program_fd, *(info.fd for info in self.maps.values()), *self.attachments):
            with contextlib.suppress(OSError):
                os.close(fd)


class Compilation:
    """A compile running in a child process; the agent does other start-up work until ``result()``."""

    def __init__(
        self,
        text: str,
        cflags: list[str],
        function: str,
        maps: tuple[str, ...],
        tail_calls: dict[str, list[str]] | None = None,
        raw_tracepoints: dict[str, str] | None = None,
    ) -> None:
        """``tail_calls``: program arrays to fill, each with the functions to load into it in order;
        ``raw_tracepoints``: tracepoint name to the function the child attaches to it."""
        self.started = time.monotonic()
        self._socket, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        request = {
            "text": text,
            "cflags": cflags,
            "function": function,
            "maps": list(maps),
            "tail_calls": tail_calls or {},
            "raw_tracepoints": raw_tracepoints or {},
        }
        try:
            self._child = subprocess.Popen(
                # -P: the script's folder (this package) is not put on sys.path, where its
                # modules could shadow what BCC imports.
                [sys.executable, "-P", str(CHILD_SCRIPT), str(child_end.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(child_end.fileno(),),
            )
        finally:
            child_end.close()
        self._request = json.dumps(request).encode()

    def cancel(self) -> None:
        """Stop the child; whatever it loaded goes with it."""
        self._child.kill()
        self._child.communicate()
        self._socket.close()

    def result(self, timeout: float = COMPILE_TIMEOUT_SECONDS) -> tuple[LoadedProgram, str]:
        """The loaded program and the compiler's diagnostics; raises SourceUnavailable with one line."""
        try:
            _, stderr = self._child.communicate(self._request, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise CompileTimeout(f"the BPF compiler did not finish within {timeout:.0f} s") from None
        diagnostics = stderr.decode(errors="replace")
        try:
            self._socket.setblocking(False)
            payload, fds, _, _ = socket.recv_fds(self._socket, _MAX_REPLY, _MAX_FDS)
        except BlockingIOError:
            payload, fds = b"", []
        finally:
            self._socket.close()
        try:
            reply: dict[str, Any] = json.loads(payload) if payload else {}
        except ValueError:
            reply = {}
        if "error" in reply or not fds:
            for fd in fds:
                os.close(fd)
            raise SourceUnavailable(_error_line(reply, diagnostics, self._child.returncode))
        program_fd, *map_fds = fds
        map_fds, attachments = map_fds[: len(reply["maps"])], map_fds[len(reply["maps"]) :]
        maps = {name: _map_info(name, fd) for name, fd in zip(reply["maps"], map_fds, strict=True)}
        loaded = LoadedProgram(
            program_fd=program_fd,
            maps=maps,
            compile_seconds=time.monotonic() - self.started,
            compiler_peak_bytes=int(reply.get("peak_bytes", 0)),
            attachments=tuple(attachments),
        )
        return loaded, diagnostics


def _map_info(name: str, fd: int) -> MapInfo:
    kernel = syscalls.map_info(fd)
    return MapInfo(
        name=name,
        fd=fd,
        type=kernel.type,
        key_size=kernel.key_size,
        value_size=kernel.value_size,
        max_entries=kernel.max_entries,
    )


# Lines of a verifier log that trace its walk rather than say what it refused.
_VERIFIER_TRACE = re.compile(
    r"^(\d+: |\d+$|; |cur state|old state|processed \d+ insns|verification time|stack depth|from \d+ to \d+"
    r"|mark_precise|last_idx|regs=|parent |func#|frame\d+|R\d+[_ =])"
)


def _error_line(reply: dict[str, Any], diagnostics: str, returncode: int | None) -> str:
    """One line: the child's message, and what the compiler or the verifier said was wrong."""
    message = str(reply.get("error") or f"the BPF compiler child exited with status {returncode} and no answer")
    detail = _compiler_detail(diagnostics)
    return f"{message}: {detail}" if detail else message


def _compiler_detail(diagnostics: str) -> str | None:
    """clang's first error; else the verifier's reason; else the compiler's last line."""
    lines = [line.strip() for line in diagnostics.splitlines() if line.strip()]
    clang_error = next((line for line in lines if "error: " in line), None)
    if clang_error:
        return clang_error
    rejected = [n for n, line in enumerate(lines) if line.startswith("bpf: Failed to load program")]
    if rejected:
        reasons = [line for line in lines[rejected[-1] + 1 :] if not _VERIFIER_TRACE.match(line)]
        if reasons:
            return reasons[-1]
    return lines[-1] if lines else None
