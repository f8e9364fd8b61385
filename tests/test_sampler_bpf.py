"""The real sampler on real workloads: names, shares, filters, kernel frames, JIT frames, exits.

Each fixture loads the BPF program once and records a few one-second windows; the tests then
check what a user would look at in those windows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attrs import frozen

from antiprof_core.config import SamplerConfig
from antiprof_core.host import read_host
from antiprof_core.model import FrameKind, ProfileWindow, Sample, SamplingMode
from antiprof_core.sources.bpf import BpfSampler
from antiprof_core.testing import require_bpf
from antiprof_core.testing.workloads import (
    SYSCALL_FUNCTION,
    TWO_FUNCTION_CALLERS,
    TWO_FUNCTION_SHARES,
    build_syscall_workload,
    build_two_function_workload,
)
from antiprof_core.units import Duration

pytestmark = pytest.mark.bpf
UNTIL_STOPPED = "3600"  # seconds: workloads outlive any start-up on a busy host; the test kills them

NODE_SCRIPT = """
function antiprofHotLoop(n) { let x = 0; for (let i = 0; i < n; i++) { x += Math.sqrt(i) * 1.0001; } return x; }
const end = Date.now() + 1000 * Number(process.argv[2]);
let total = 0;
while (Date.now() < end) total += antiprofHotLoop(100000);
console.log(total > 0 ? "ok" : "no");
"""


@frozen
class Recording:
    windows: tuple[ProfileWindow, ...]
    pids: dict[str, int]
    program: Path

    def samples(self, pid: int) -> list[Sample]:
        return [sample for window in self.windows for sample in window.samples if sample.pid == pid]


@contextlib.contextmanager
def running(config: SamplerConfig) -> Iterator[BpfSampler]:
    sampler = BpfSampler(config, read_host(), logging.getLogger("antiprof.test.sampler"))
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.close()


def cpu_seconds(pid: int) -> float:
    """Time ``pid``'s main thread has spent on a CPU (schedstat, ns)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def collect_windows(
    sampler: BpfSampler, count: int, seconds: float = 1.0, busy: int | None = None
) -> tuple[ProfileWindow, ...]:
    """``count`` windows of at least ``seconds``; with ``busy``, each also waits until that
    process has had half a second of CPU, however loaded the host (so counts can be asserted).
    Only for pid-filtered runs: a longer window of every process could overflow the maps."""
    windows = []
    for _ in range(count):
        started = time.monotonic()
        used = cpu_seconds(busy) if busy else 0.0
        time.sleep(seconds)
        while busy and cpu_seconds(busy) - used < 0.5 and time.monotonic() - started < 120:
            time.sleep(0.1)
        windows.append(sampler.collect())
    return tuple(windows)


def share(samples: list[Sample], function: str) -> float:
    total = sum(sample.count for sample in samples)
    hits = sum(sample.count for sample in samples if any(frame.symbol == function for frame in sample.stack))
    return hits / total


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    """The two-function workload, sampled with a pid filter while a twin runs unfiltered-out."""
    require_bpf()
    program = build_two_function_workload(tmp_path_factory.mktemp("filtered"))
    target = subprocess.Popen([str(program), UNTIL_STOPPED])
    twin = subprocess.Popen([str(program), UNTIL_STOPPED])
    try:
        config = SamplerConfig(frequency_hz=199, window=Duration(1.0), pids=(target.pid,))
        with running(config) as sampler:
            sampler.collect()  # start-up: the workloads ran before the program was attached
            windows = collect_windows(sampler, 3, busy=target.pid)
        yield Recording(windows, {"target": target.pid, "twin": twin.pid}, program)
    finally:
        for process in (target, twin):
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    """No filter: a syscall loop, node with a perf map, and a process that exits mid-window."""
    require_bpf()
    directory = tmp_path_factory.mktemp("everything")
    syscall_program = build_syscall_workload(directory)
    short_program = build_two_function_workload(directory)
    script = directory / "hot.js"
    script.write_text(NODE_SCRIPT)
    node = shutil.which("node")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # Maps for 40 s of samples of every process: on a loaded host a slow first symbolize
        # (every binary read once) stretches a 1 s window to 20 s, and this fixture checks
        # that nothing is lost by the switch, not the default sizing (test_sampler_loader does).
        config = SamplerConfig(frequency_hz=199, window=Duration(1.0), max_stacks=16384)
        with running(config) as sampler:
            processes["syscall"] = subprocess.Popen([str(syscall_program), UNTIL_STOPPED])
            if node:
                processes["node"] = subprocess.Popen(  # cwd: node also writes isolate-*-v8.log there
                    [node, "--perf-basic-prof", str(script), UNTIL_STOPPED], stdout=subprocess.DEVNULL, cwd=directory
                )
            time.sleep(0.2)
            short = processes["short"] = subprocess.Popen([str(short_program), UNTIL_STOPPED])
            windows = []
            started = last = time.monotonic()
            while cpu_seconds(short.pid) < 0.4 and time.monotonic() - started < 120:  # however loaded the host
                time.sleep(0.05)
                if time.monotonic() - last >= 1.0:  # windows of the configured length meanwhile
                    windows.append(sampler.collect())
                    last = time.monotonic()
            short.kill()
            short.wait()  # gone before the drain
            windows += [sampler.collect(), *collect_windows(sampler, 2)]  # 1 s: every process fills the maps
        yield Recording(tuple(windows), {name: process.pid for name, process in processes.items()}, short_program)
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
        for process in processes.values():
            Path(f"/tmp/perf-{process.pid}.map").unlink(missing_ok=True)


def test_both_functions_are_named_with_their_shares_and_callers(filtered: Recording) -> None:
    samples = filtered.samples(filtered.pids["target"])
    assert sum(sample.count for sample in samples) > 100
    for function, truth in TWO_FUNCTION_SHARES.items():
        assert share(samples, function) == pytest.approx(truth, abs=0.05), function
        for sample in samples:
            names = [frame.symbol for frame in sample.stack]
            if function in names:
                index = names.index(function)
                assert tuple(names[index + 1 : index + 1 + len(TWO_FUNCTION_CALLERS)]) == TWO_FUNCTION_CALLERS


def test_no_unnamed_frame_in_the_workloads_own_code(filtered: Recording) -> None:
    own = [
        frame
        for sample in filtered.samples(filtered.pids["target"])
        for frame in sample.stack
        if frame.mapping is not None and frame.mapping.path == str(filtered.program)
    ]
    assert own
    assert [frame for frame in own if frame.symbol is None] == []
    mapping = own[0].mapping
    assert mapping is not None and mapping.build_id and mapping.inode == os.stat(filtered.program).st_ino
    process = filtered.windows[-1].processes[filtered.pids["target"]]
    assert process.name == "two_functions"
    assert mapping in process.mappings


def test_pid_filter_excludes_every_other_process(filtered: Recording) -> None:
    for window in filtered.windows:
        assert {sample.pid for sample in window.samples} == {filtered.pids["target"]}
        assert set(window.processes) == {filtered.pids["target"]}


def test_two_buffers_lose_nothing(filtered: Recording, everything: Recording) -> None:
    for window in filtered.windows + everything.windows:
        assert window.counters.samples_lost == 0
        assert window.counters.samples_seen == window.sample_count > 0


def test_syscall_loop_shows_named_kernel_frames_under_it(everything: Recording) -> None:
    samples = everything.samples(everything.pids["syscall"])
    in_kernel = [sample for sample in samples if sample.stack and sample.stack[0].kind is FrameKind.KERNEL]
    assert sum(sample.count for sample in in_kernel) > 0.2 * sum(sample.count for sample in samples)
    sample = max(in_kernel, key=lambda s: s.count)
    kernel = [frame for frame in sample.stack if frame.kind is FrameKind.KERNEL]
    user = [frame for frame in sample.stack if frame.kind is not FrameKind.KERNEL]
    assert all(frame.symbol for frame in kernel)
    assert all(frame.mapping is not None and frame.mapping.path == "[kernel.kallsyms]" for frame in kernel)
    assert any("syscall" in (frame.symbol or "").lower() for frame in kernel)
    assert SYSCALL_FUNCTION in [frame.symbol for frame in user]


def test_node_with_perf_basic_prof_shows_the_javascript_function(everything: Recording) -> None:
    if "node" not in everything.pids:
        pytest.skip("node is not installed")
    frames = [frame for sample in everything.samples(everything.pids["node"]) for frame in sample.stack]
    jit = [frame for frame in frames if frame.kind is FrameKind.JIT and frame.symbol]
    assert any("antiprofHotLoop" in (frame.symbol or "") for frame in jit)


def test_process_that_exits_mid_window_is_still_named(everything: Recording) -> None:
    pid = everything.pids["short"]
    samples = everything.samples(pid)
    assert samples
    assert share(samples, "work_heavy") > 0.4
    after_exit = [window for window in everything.windows if pid in window.processes][-1]  # drained once it was gone
    process = after_exit.processes[pid]
    assert process.name == "two_functions"
    assert process.executable == str(everything.program)


def test_trace_mode_keeps_every_timestamp(tmp_path: Path) -> None:
    require_bpf()
    program = build_two_function_workload(tmp_path)
    workload = subprocess.Popen([str(program), UNTIL_STOPPED])
    try:
        config = SamplerConfig(frequency_hz=99, window=Duration(1.0), pids=(workload.pid,), mode=SamplingMode.TRACE)
        with running(config) as sampler:
            sampler.collect()
            windows = collect_windows(sampler, 2, busy=workload.pid)
    finally:
        workload.kill()
        workload.wait()
    for window in windows:
        assert window.mode is SamplingMode.TRACE
        assert window.counters.samples_seen == window.sample_count > 20
        for sample in window.samples:
            assert len(sample.timestamps) == sample.count
            assert all(window.start_ns - 50_000_000 <= t <= window.end_ns + 50_000_000 for t in sample.timestamps)
