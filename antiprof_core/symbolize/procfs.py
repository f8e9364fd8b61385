"""Reading a process from /proc: executable mappings, names, command line, container ID."""

from __future__ import annotations

import os
import re
from pathlib import Path

from attrs import frozen

PROC = Path("/proc")
# a 64-hex container ID in a cgroup path: docker, containerd, cri-o, podman, kubepods
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")


@frozen
class MapsEntry:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    device: int  # os.makedev(major, minor)
    inode: int
    path: str

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    @property
    def anonymous(self) -> bool:
        return not self.path or (self.inode == 0 and not self.path.startswith("/"))


def parse_maps_line(line: str) -> MapsEntry | None:
    parts = line.split(None, 5)
    if len(parts) < 5:
        return None
    start, _, end = parts[0].partition("-")
    major, _, minor = parts[3].partition(":")
    path = parts[5].strip() if len(parts) > 5 else ""
    if path.endswith(" (deleted)"):
        path = path[: -len(" (deleted)")]
    return MapsEntry(
        start=int(start, 16),
        end=int(end, 16),
        perms=parts[1],
        offset=int(parts[2], 16),
        device=os.makedev(int(major, 16), int(minor, 16)),
        inode=int(parts[4]),
        path=path,
    )


def read_maps(pid: int, proc: Path = PROC, executable_only: bool = False) -> list[MapsEntry]:
    """Mappings of ``pid`` (only the executable ones if asked: the others never become objects).

    Empty when the process is gone or unreadable.
    """
    try:
        text = (proc / str(pid) / "maps").read_text()
    except (OSError, UnicodeDecodeError):
        return []
    lines = text.splitlines()
    if executable_only:
        lines = [line for line in lines if line[line.find(" ") + 3 : line.find(" ") + 4] == "x"]
    return [entry for entry in map(parse_maps_line, lines) if entry is not None]


@frozen
class Status:
    """From /proc/PID/status: who owns the process and its PID in its own namespace."""

    uid: int  # effective
    namespace_pid: int  # the last NSpid field; the PID itself outside PID namespaces


def read_status(pid: int, proc: Path = PROC) -> Status | None:
    try:
        text = (proc / str(pid) / "status").read_text(errors="replace")
    except OSError:
        return None
    uid, namespace_pid = -1, pid
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            uid = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else -1
        elif line.startswith("NSpid:"):
            fields = line.split()
            namespace_pid = int(fields[-1]) if fields[-1].isdigit() else pid
    return Status(uid=uid, namespace_pid=namespace_pid) if uid >= 0 else None


def read_comm(pid: int, proc: Path = PROC) -> str | None:
    try:
        return (proc / str(pid) / "comm").read_text().rstrip("\n")
    except OSError:
        return None


def read_cmdline(pid: int, proc: Path = PROC) -> tuple[str, ...]:
    try:
        data = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in data.rstrip(b"\0").split(b"\0")) if data else ()


def read_exe(pid: int, proc: Path = PROC) -> str | None:
    try:
        path = os.readlink(proc / str(pid) / "exe")
    except OSError:
        return None
    return path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path


def container_id_from_cgroup(text: str) -> str | None:
    """The container ID in /proc/PID/cgroup text, or None for a process outside containers."""
    for line in text.splitlines():
        cgroup_path = line.split(":", 2)[-1]
        for part in cgroup_path.split("/"):
            match = _CONTAINER_ID.search("/" + part.removesuffix(".scope") + "/")
            if match:
                return match.group(1)
    return None


def read_container_id(pid: int, proc: Path = PROC) -> str | None:
    try:
        return container_id_from_cgroup((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return None


def alive(pid: int, proc: Path = PROC) -> bool:
    return (proc / str(pid)).exists()


def live_pids(proc: Path = PROC) -> set[int]:
    """Every process now, from one read of the /proc directory (a few getdents calls, not a stat per PID)."""
    with os.scandir(proc) as entries:
        return {int(entry.name) for entry in entries if entry.name.isdigit()}


VDSO_PATH = "[vdso]"
MAX_VDSO_BYTES = 1 << 20


def read_own_vdso() -> bytes | None:
    """This process's vDSO image, the ELF file the kernel maps into every 64-bit process (the same
    bytes in each on one kernel): the way to name and unwind code that no file on disk holds."""
    for entry in read_maps(os.getpid()):
        if entry.path == VDSO_PATH:
            if entry.end - entry.start > MAX_VDSO_BYTES:
                return None
            try:
                with open("/proc/self/mem", "rb", buffering=0) as memory:
                    memory.seek(entry.start)
                    image = memory.read(entry.end - entry.start)
            except OSError:
                return None
            return image if len(image) == entry.end - entry.start else None
    return None
