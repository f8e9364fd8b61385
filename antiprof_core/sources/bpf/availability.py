"""Whether this process may load BPF here, decided cheaply and without importing BCC."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

_CAP_SYS_ADMIN = 21
_CAP_PERFMON = 38
_CAP_BPF = 39


def _effective_capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _kernel_headers_present() -> bool:
    release = os.uname().release
    return Path(f"/lib/modules/{release}/build").exists() or Path("/sys/kernel/kheaders.tar.xz").exists()


@functools.cache
def bpf_unavailable_reason() -> str | None:
    """None when this process can load BPF here; otherwise one line: what is missing and the fix.

    Cheap on purpose (no BPF compile, no ``import bcc``: LLVM must never enter the agent); the
    compiler child reports what only a compile finds. Tests call it to decide whether to run.
    """
    caps = _effective_capabilities()
    has_caps = bool(caps & (1 << _CAP_SYS_ADMIN)) or (bool(caps & (1 << _CAP_BPF)) and bool(caps & (1 << _CAP_PERFMON)))
    if not has_caps:
        return "not allowed to load BPF: run as root or grant CAP_BPF and CAP_PERFMON (setcap cap_bpf,cap_perfmon+ep)"
    if importlib.util.find_spec("bcc") is None:
        return (
            "BCC cannot be imported (no module named 'bcc'): apt-get install python3-bpfcc"
            " and use a virtualenv made with --system-site-packages"
        )
    if not _kernel_headers_present():
        release = os.uname().release
        return (
            f"no kernel headers at /lib/modules/{release}/build: apt-get install linux-headers-{release}"
            " or link the nearest installed headers there (see the README)"
        )
    return None
