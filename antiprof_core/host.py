"""Facts about this machine, read once at start-up."""

from __future__ import annotations

import os
import platform
import socket
import struct
from pathlib import Path

from antiprof_core.model import Host, Mapping

KERNEL_MAP_NAME = "[kernel.kallsyms]"
_NT_GNU_BUILD_ID = 3


def read_host(node_name: str = "", cluster_name: str = "") -> Host:
    uname = os.uname()
    hostname = socket.gethostname()
    return Host(
        hostname=hostname,
        node_name=node_name or hostname,
        cluster_name=cluster_name,
        kernel_release=uname.release,
        kernel_version=uname.version,
        arch=uname.machine,
        cpu_count=os.cpu_count() or 1,
        online_cpus=online_cpus(),
        cpu_description=_cpu_description(),
        memory_kb=_memory_kb(),
        kernel=kernel_mapping(),
    )


def online_cpus(path: Path = Path("/sys/devices/system/cpu/online")) -> int:
    """CPUs the kernel has online (e.g. "0-3,6" is 5), as perf records in its header.

    Not the agent's own CPU affinity: a profiler pinned to one CPU still samples them all.
    """
    try:
        text = path.read_text()[:4096].strip()
        count = 0
        for part in filter(None, text.split(",")):
            low, _, high = part.partition("-")
            count += int(high or low) - int(low) + 1
        return count or os.cpu_count() or 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def _cpu_description() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_kb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def kernel_mapping(kallsyms: Path = Path("/proc/kallsyms"), notes: Path = Path("/sys/kernel/notes")) -> Mapping | None:
    """The kernel's text as a mapping, as perf records it: start=_text, end=_etext, offset=_text."""
    text = etext = None
    try:
        with kallsyms.open() as handle:
            for line in handle:
                address, _, name = line.rstrip("\n").split(" ", 2)
                if name == "_text":
                    text = int(address, 16)
                elif name == "_etext":
                    etext = int(address, 16)
                if text is not None and etext is not None:
                    break
    except OSError:
        return None
    if not text or not etext:  # zeros: kptr_restrict hides the addresses
        return None
    return Mapping(start=text, end=etext, file_offset=text, path=KERNEL_MAP_NAME, build_id=kernel_build_id(notes))


def kernel_build_id(notes: Path = Path("/sys/kernel/notes")) -> str | None:
    """The GNU build ID among the kernel's ELF notes (4-byte aligned name and descriptor)."""
    try:
        data = notes.read_bytes()
    except OSError:
        return None
    offset = 0
    while offset + 12 <= len(data):
        name_size, desc_size, note_type = struct.unpack_from("<III", data, offset)
        offset += 12
        name = data[offset : offset + name_size]
        offset += (name_size + 3) & ~3
        desc = data[offset : offset + desc_size]
        offset += (desc_size + 3) & ~3
        if note_type == _NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU":
            return desc.hex()
    return None
