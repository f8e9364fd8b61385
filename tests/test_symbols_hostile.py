"""A hostile local user against the real agent (real BPF): perf maps and ELF files built to make
root read a secret, hang, or run out of memory. Each case is a process run as a user this test
creates; one agent profiles them all, and must keep producing windows, never publish the secret,
log each refusal once, and exit on SIGTERM."""

from __future__ import annotations

import json
import os
import pwd
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from antiprof_core.codec import window_from_dict
from antiprof_core.model import ProfileWindow
from antiprof_core.testing import antiprof_command, require_bpf
from antiprof_core.testing.workloads import build_jit_workload

pytestmark = pytest.mark.bpf

USER = "antiprof-hostile"
SECRET = "ROOT_ONLY_SECRET_7c1e"
HONEST_NAME = "jit_honest_function"

# How each hostile process prepares /tmp/perf-$$.map before exec'ing the spinner ($1: the secret)
PREPARE = {
    "symlink_to_secret": 'ln -s "$1" "$MAP"',
    "fifo": 'mkfifo "$MAP"',
    "sparse_2gb": 'truncate -s 2G "$MAP"',
    "dev_zero": 'ln -s /dev/zero "$MAP"',
    "garbage_64mb": 'head -c 64M /dev/urandom > "$MAP"',
    "huge_elf_section": ":",
    "honest": "",  # written by the test once the JIT page's address is known
}


def ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(USER)


def claim_huge_symtab(binary: Path) -> None:
    """Rewrite the section header of .symtab to claim 2^63 bytes; the kernel still runs it."""
    data = bytearray(binary.read_bytes())
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    for index in range(shnum):
        header = shoff + index * shentsize
        if struct.unpack_from("<I", data, header + 4)[0] == 2:  # SHT_SYMTAB
            struct.pack_into("<Q", data, header + 32, 1 << 63)
            break
    else:
        raise AssertionError("no .symtab to patch")
    binary.write_bytes(bytes(data))


@attrs.frozen
class Run:
    pids: dict[str, int]
    windows: list[ProfileWindow]
    output_text: str
    log: str
    returncode: int
    exit_seconds: float
    peak_rss_kb: int


def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline()


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def hostile_run() -> Iterator[Run]:
    require_bpf()
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user and run the agent")
    user = ensure_user()
    shared = Path(tempfile.mkdtemp(prefix="antiprof-hostile-"))  # pytest's tmp_path is closed to other users
    private = Path(tempfile.mkdtemp(prefix="antiprof-agent-"))  # 0700: the secret and the agent's output
    os.chmod(shared, 0o755)
    secret = private / "secret"
    secret.write_text(f"1 fffffffffffff {SECRET}\n")  # as a perf map it would name every address
    os.chmod(secret, 0o600)
    spin = build_jit_workload(shared, "spin")
    huge = shared / "spin_huge"
    huge.write_bytes(spin.read_bytes())
    claim_huge_symtab(huge)
    for binary in (spin, huge):
        os.chown(binary, user.pw_uid, user.pw_gid)
        os.chmod(binary, 0o755)
    processes: dict[str, subprocess.Popen[str]] = {}
    maps: list[Path] = []
    try:
        for case, prepare in PREPARE.items():
            binary = huge if case == "huge_elf_section" else spin
            script = f'MAP=/tmp/perf-$$.map; {prepare or ":"}; exec "{binary}" 600'
            processes[case] = subprocess.Popen(
                [
                    "setpriv",
                    f"--reuid={user.pw_uid}",
                    f"--regid={user.pw_gid}",
                    "--clear-groups",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(secret),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        pages = {case: int(first_line(process), 16) for case, process in processes.items()}
        pids = {case: process.pid for case, process in processes.items()}
        maps = [Path(f"/tmp/perf-{pid}.map") for pid in pids.values()]
        honest = Path(f"/tmp/perf-{pids['honest']}.map")
        honest.write_text(f"{pages['honest']:x} 40 {HONEST_NAME}\n")
        os.chown(honest, user.pw_uid, user.pw_gid)

        output = private / "windows.jsonl"
        config = private / "antiprof.toml"
        config.write_text(
            f'[sampler]\nsource = "bpf"\nwindow = "1s"\nfrequency_hz = 199\npids = {sorted(pids.values())}\n\n'
            f'[consumers.json]\npath = "{output}"\n'
        )
        log_path = private / "agent.log"
        with log_path.open("w") as log:
            agent = subprocess.Popen([*antiprof_command(), "run", "-c", str(config)], stderr=log, stdout=log)
        try:
            deadline = time.monotonic() + 180  # compiling the BPF program on a busy machine takes a while
            while time.monotonic() < deadline and agent.poll() is None:
                if output.exists() and len(output.read_text().splitlines()) >= 5:
                    break
                time.sleep(0.2)
            peak = vm_hwm_kb(agent.pid) if agent.poll() is None else 0
            stopped = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            returncode = agent.wait(timeout=60)
            exit_seconds = time.monotonic() - stopped
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        text = output.read_text() if output.exists() else ""
        windows = [window_from_dict(json.loads(line)) for line in text.splitlines()]
        yield Run(pids, windows, text, log_path.read_text(), returncode, exit_seconds, peak)
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
        for path in maps:
            path.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(shared), str(private)], check=False)


def windows_with(run: Run, case: str) -> int:
    pid = run.pids[case]
    return sum(1 for window in run.windows if any(sample.pid == pid for sample in window.samples))


def test_agent_keeps_producing_windows_and_exits_on_sigterm(hostile_run: Run) -> None:
    assert len(hostile_run.windows) >= 5, hostile_run.log
    assert hostile_run.returncode == 0, hostile_run.log
    assert hostile_run.exit_seconds < 30
    assert "Traceback" not in hostile_run.log and "sampler failed" not in hostile_run.log


def test_honest_perf_map_still_names_jit_code(hostile_run: Run) -> None:
    """The control: the same spinner with a well-formed perf map is named, so refusals are real."""
    pid = hostile_run.pids["honest"]
    leaves = [s.stack[-1].symbol for w in hostile_run.windows for s in w.samples if s.pid == pid and s.stack]
    named = [s for w in hostile_run.windows for s in w.samples if s.pid == pid and s.stack]
    assert any(frame.symbol == HONEST_NAME for sample in named for frame in sample.stack), leaves


def test_perf_map_symlinked_to_a_root_only_file_is_not_read(hostile_run: Run) -> None:
    assert windows_with(hostile_run, "symlink_to_secret") >= 2
    assert SECRET not in hostile_run.output_text
    assert SECRET not in hostile_run.log
    pid = hostile_run.pids["symlink_to_secret"]
    refusals = [line for line in hostile_run.log.splitlines() if f"perf map of PID {pid} not read" in line]
    assert len(refusals) == 1, hostile_run.log


@pytest.mark.parametrize("case", ["fifo", "dev_zero"])
def test_perf_map_that_is_not_a_regular_file_is_refused_without_hanging(hostile_run: Run, case: str) -> None:
    assert windows_with(hostile_run, case) >= 2
    pid = hostile_run.pids[case]
    refusals = [line for line in hostile_run.log.splitlines() if f"perf map of PID {pid} not read" in line]
    assert len(refusals) == 1, hostile_run.log


@pytest.mark.parametrize("case", ["sparse_2gb", "garbage_64mb"])
def test_huge_perf_map_costs_bounded_memory(hostile_run: Run, case: str) -> None:
    assert windows_with(hostile_run, case) >= 2
    assert 0 < hostile_run.peak_rss_kb < 400 * 1024, f"agent peak RSS {hostile_run.peak_rss_kb} kB"


def test_elf_claiming_2_to_the_63_bytes_is_one_logged_error(hostile_run: Run) -> None:
    assert windows_with(hostile_run, "huge_elf_section") >= 2
    errors = [line for line in hostile_run.log.splitlines() if "cannot read ELF file" in line and "spin_huge" in line]
    assert len(errors) == 1, hostile_run.log
    assert "MemoryError" not in hostile_run.log
