"""The compiler child: ``python child.py FD``, started by ``loader.Compilation``.

Reads its request (program text, cflags, function and map names, tail calls, raw tracepoints)
as JSON on stdin, compiles and loads the program with BCC, attaches the raw tracepoints, and
sends one message on the Unix socket FD: JSON with the map names and its peak RSS, carrying the
program's, the maps' and the attachments' file descriptors (SCM_RIGHTS); or JSON with one error
line and no descriptors. Then it exits, and LLVM with it; an attachment lasts while the agent
holds its descriptor.

Imports nothing of antiprof, so the child loads BCC and little else.
"""

from __future__ import annotations

import ctypes
import json
import socket
import sys
from typing import Any

BCC_MISSING = (
    "BCC cannot be imported ({error}): apt-get install python3-bpfcc"
    " and use a virtualenv made with --system-site-packages"
)
PERF_EVENT_PROGRAM = 7  # BPF_PROG_TYPE_PERF_EVENT


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _peak_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _child_main(fd: int) -> int:
    """Compile, load, hand over the file descriptors, exit. Runs in the child only."""
    reply_socket = socket.socket(fileno=fd)
    request = json.load(sys.stdin)

    def reply(message: dict[str, Any], fds: tuple[int, ...] = ()) -> int:
        socket.send_fds(reply_socket, [json.dumps(message).encode()], list(fds))
        return 0

    try:
        from bcc import BPF
    except Exception as exc:  # ImportError, or OSError when libbcc.so is missing
        return reply({"error": BCC_MISSING.format(error=f"{type(exc).__name__}: {exc}")})
    try:
        bpf = BPF(text=request["text"].encode(), cflags=request["cflags"])
        program = bpf.load_func(request["function"].encode(), PERF_EVENT_PROGRAM)
        for array_name, functions in request.get("tail_calls", {}).items():
            array = bpf.get_table(array_name.encode())
            for index, function in enumerate(functions):
                callee = bpf.load_func(function.encode(), PERF_EVENT_PROGRAM)
                array[ctypes.c_int(index)] = ctypes.c_int(callee.fd)
        attachments = []
        for tracepoint, function in request.get("raw_tracepoints", {}).items():
            bpf.attach_raw_tracepoint(tp=tracepoint.encode(), fn_name=function.encode())
            attachments.append(bpf.raw_tracepoint_fds[tracepoint.encode()])
    except Exception as exc:
        sys.stderr.flush()
        return reply({"error": f"the BPF program failed to compile or load: {_first_line(exc)}"})
    map_fds = []
    for name in request["maps"]:
        try:
            map_fds.append(bpf.get_table(name.encode()).map_fd)
        except KeyError:
            return reply({"error": f"the BPF program declares no map '{name}'"})
    return reply(
        {"maps": request["maps"], "peak_bytes": _peak_bytes()},
        (program.fd, *map_fds, *attachments),
    )


if __name__ == "__main__":
    sys.exit(_child_main(int(sys.argv[1])))
