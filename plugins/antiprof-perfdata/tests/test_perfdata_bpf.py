"""End to end with real eBPF: ``antiprof run`` on known workloads, the files read by Debian's perf."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from antiprof_perfdata import readers
from antiprof_perfdata.perftool import ScriptSample, parse_script, perf_path, run_perf

from antiprof_core.codec import window_from_dict
from antiprof_core.host import read_host
from antiprof_core.model import ProfileWindow
from antiprof_core.symbolize.elf import read_elf
from antiprof_core.testing import require_bpf, small_tmpfs
from antiprof_core.testing.agent import RunningAgent, json_sink_samples, wait_until
from antiprof_core.testing.workloads import TWO_FUNCTION_CALLERS, TWO_FUNCTION_SHARES, build_syscall_workload

ANTIPROF = str(Path(sys.executable).parent / "antiprof")
pytestmark = pytest.mark.bpf
# Each run times itself from the moment it is attached (--duration); the bound covers BCC's start on a busy host.
AGENT_TIMEOUT = 900  # a busy machine slows BCC's compile down a lot: wait for the agent, do not fail it


def write_config(
    directory: Path, pid: int, perf_dir: Path, json_path: Path, window: str = "1s", mode: str = "aggregate"
) -> Path:
    config = directory / "antiprof.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [sampler]
            frequency_hz = 99
            window = "{window}"
            pids = [{pid}]
            mode = "{mode}"

            [consumers.perfdata]
            output_dir = "{perf_dir}"

            [consumers.json]
            path = "{json_path}"
            """
        )
    )
    return config


def start_workload(binary: Path, favoured: bool = False) -> subprocess.Popen[bytes]:
    """Runs until the test kills it (BCC may take many seconds to attach on a busy machine).

    ``favoured``: at nice -20, so other load on the machine does not take its CPU away."""
    workload = subprocess.Popen([*(["nice", "-n", "-20"] if favoured else []), str(binary)])
    time.sleep(0.2)  # past the loader, into main's loop
    return workload


def read_windows(json_path: Path) -> list[ProfileWindow]:
    return [window_from_dict(json.loads(line)) for line in json_path.read_text().splitlines() if line.strip()]


def inclusive_shares(samples: list[ScriptSample], names: Iterator[str] | tuple[str, ...]) -> dict[str, Fraction]:
    """Share of the total period whose stack holds each function (perf report's Children column)."""
    total = sum(s.period for s in samples)
    return {
        name: Fraction(sum(s.period for s in samples if any(f.symbol == name for f in s.frames)), total)
        for name in names
    }


def window_inclusive_shares(windows: list[ProfileWindow], names: tuple[str, ...]) -> dict[str, Fraction]:
    total = sum(w.sample_count for w in windows)
    return {
        name: Fraction(
            sum(s.count for w in windows for s in w.samples if any(f.symbol == name for f in s.stack)), total
        )
        for name in names
    }


class Run:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.perf_dir = base / "perf"
        self.json_path = base / "windows.jsonl"
        self.buildid_dir = base / "buildid"
        self.buildid_dir.mkdir(parents=True, exist_ok=True)

    @property
    def perf_file(self) -> Path:
        [path] = self.perf_dir.glob("*.perf.data")
        return path


def record_two_functions(base: Path, binary: Path, mode: str = "aggregate") -> Run:
    """``antiprof run`` with the perfdata and JSON sinks on the two-function workload (favoured),
    until it has 1000 samples: enough for the share tolerances however busy the host."""
    require_bpf()
    run = Run(base)
    workload = start_workload(binary, favoured=True)
    try:
        config = write_config(run.base, workload.pid, run.perf_dir, run.json_path, mode=mode)
        with RunningAgent(config, run.base) as agent:
            wait_until(lambda: json_sink_samples(run.json_path, workload.pid) >= 1000, timeout=300, what="samples")
    finally:
        workload.kill()
        workload.wait()
    assert agent.returncode == 0, agent.stderr
    return run


@pytest.fixture(scope="module")
def two_function_run(tmp_path_factory: pytest.TempPathFactory, two_function_binary: Path) -> Run:
    """One 3-second agent run on the two-function workload, shared by the assertions below."""
    return record_two_functions(tmp_path_factory.mktemp("two-function-run"), two_function_binary)


@pytest.fixture(scope="module")
def two_function_trace_run(tmp_path_factory: pytest.TempPathFactory, two_function_binary: Path) -> Run:
    """The same in trace mode: every sample keeps its own time."""
    return record_two_functions(tmp_path_factory.mktemp("two-function-trace"), two_function_binary, mode="trace")


@pytest.mark.parametrize("mode", ["aggregate", "trace"])
def test_every_reader_shows_the_shares_of_antiprofs_own_table(mode: str, request: pytest.FixtureRequest) -> None:
    """perf report, perf script folded by lines, npm flamegraph and speedscope: within 1 point.

    speedscope weighs a sample by the time to its thread's neighbours. Aggregated windows give a
    thread's samples even times, so that is the count. Trace windows keep the real times, where
    a thread the machine kept off its CPU lends the gap to the samples around it: speedscope is
    then checked against that time weighting of the same samples, and against the table when the
    workload ran without such gaps (it runs at nice -20 so that it does).
    """
    run = request.getfixturevalue("two_function_run" if mode == "aggregate" else "two_function_trace_run")
    windows = read_windows(run.json_path)
    assert all(window.mode.value == mode for window in windows)
    names = (*TWO_FUNCTION_SHARES, *TWO_FUNCTION_CALLERS)
    table = readers.table_shares(windows, names)
    assert table["work_heavy"] == pytest.approx(TWO_FUNCTION_SHARES["work_heavy"], abs=0.07)
    shown = readers.all_shares(run.perf_file, run.buildid_dir, names)
    speedscope = shown.pop("speedscope")
    for reader, shares in shown.items():
        for name in names:
            assert shares[name] == pytest.approx(table[name], abs=0.01), (mode, reader, name, shares, table)
    expected, widest_gap = table, 0.0
    if mode == "trace":
        expected, widest_gap = time_weighted_shares(windows, names)
        assert expected == pytest.approx(speedscope, abs=0.002)  # speedscope read every time and stack right
    if widest_gap <= 3 * windows[0].period_ns:
        for name in names:
            assert speedscope[name] == pytest.approx(table[name], abs=0.01), (mode, name, speedscope, table)


def time_weighted_shares(windows: list[ProfileWindow], names: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """speedscope's weighting of trace samples (half the time to each neighbour of the same thread),
    and the widest gap between a thread's samples."""
    by_thread: dict[tuple[int, int], list[tuple[int, frozenset[str]]]] = {}
    for window in windows:
        for sample in window.samples:
            held = frozenset(frame.symbol for frame in sample.stack if frame.symbol in names)
            by_thread.setdefault((sample.pid, sample.tid), []).extend((t, held) for t in sample.timestamps)
    weights: dict[str, float] = dict.fromkeys(names, 0.0)
    total, widest = 0.0, 0.0
    for events in by_thread.values():
        events.sort(key=lambda event: event[0])
        times = [time for time, _ in events]
        for index, (_, held) in enumerate(events):
            before = times[index] - times[index - 1] if index else 0
            after = times[index + 1] - times[index] if index + 1 < len(times) else 0
            weight = (before + after) / 2
            total += weight
            for name in held:
                weights[name] += weight
        widest = max([widest, *(later - earlier for earlier, later in itertools.pairwise(times))])
    return {name: weights[name] / (total or 1) for name in names}, widest


def test_report_and_script_read_the_run_cleanly_and_name_the_workload(
    two_function_run: Run, two_function_binary: Path
) -> None:
    run = two_function_run
    report = run_perf(["report", "-i", str(run.perf_file), "--stdio"], run.buildid_dir)
    script = run_perf(["script", "-i", str(run.perf_file)], run.buildid_dir)

    assert (report.returncode, report.stderr) == (0, "")
    assert (script.returncode, script.stderr) == (0, "")
    samples = parse_script(script.stdout)
    own = [f for s in samples for f in s.frames if f.dso == str(two_function_binary)]
    assert own and all(f.symbol is not None for f in own), "an [unknown] frame in the workload's own code"
    for leaf in TWO_FUNCTION_SHARES:
        stacks = [[f.symbol for f in s.frames] for s in samples if leaf in [f.symbol for f in s.frames]]
        assert stacks, f"{leaf} is missing"
        assert all(
            stack[stack.index(leaf) + 1 : stack.index(leaf) + 3] == list(TWO_FUNCTION_CALLERS) for stack in stacks
        )
    assert "work_heavy" in report.stdout and "work_light" in report.stdout


def test_shares_equal_the_windows_own_counts_and_the_truth(two_function_run: Run) -> None:
    run = two_function_run
    samples = parse_script(run_perf(["script", "-i", str(run.perf_file)], run.buildid_dir).stdout)
    windows = read_windows(run.json_path)
    names = tuple(TWO_FUNCTION_SHARES)

    from_perf = inclusive_shares(samples, names)

    assert from_perf == window_inclusive_shares(windows, names)  # exactly: the same data
    for name, truth in TWO_FUNCTION_SHARES.items():
        assert abs(float(from_perf[name]) - truth) <= 0.05, (name, float(from_perf[name]))


def test_header_and_build_ids_describe_the_run(two_function_run: Run, two_function_binary: Path) -> None:
    run = two_function_run
    header = run_perf(["report", "-i", str(run.perf_file), "--header-only"], run.buildid_dir)
    listed = run_perf(["buildid-list", "-i", str(run.perf_file)], run.buildid_dir)

    host = read_host()
    assert f"# hostname : {host.hostname}\n" in header.stdout
    assert f"# nrcpus avail : {host.cpu_count}\n" in header.stdout
    command = f"{ANTIPROF} run -c {run.base / 'antiprof.toml'} --ready-file {run.base / 'agent.ready'}"
    assert f"# cmdline : {command}" in header.stdout
    assert "# event : name = cpu-clock," in header.stdout
    build_id = read_elf(two_function_binary).build_id
    assert f"{build_id} {two_function_binary}" in listed.stdout.splitlines()


def test_kernel_frames_are_named_for_a_syscall_workload(tmp_path: Path) -> None:
    require_bpf()
    run = Run(tmp_path)
    workload = start_workload(build_syscall_workload(tmp_path / "workload"))
    try:
        config = write_config(tmp_path, workload.pid, run.perf_dir, run.json_path)
        done = subprocess.run(
            [ANTIPROF, "run", "-c", str(config), "--duration", "2s"], capture_output=True, timeout=AGENT_TIMEOUT
        )
    finally:
        workload.kill()
        workload.wait()
    assert done.returncode == 0, done.stderr.decode()

    script = run_perf(["script", "-i", str(run.perf_file)], run.buildid_dir)

    assert (script.returncode, script.stderr) == (0, "")
    kernel = [f for s in parse_script(script.stdout) for f in s.frames if f.dso == "[kernel.kallsyms]"]
    assert kernel, "no kernel frames"
    assert all(f.symbol is not None for f in kernel)
    assert any("getppid" in (f.symbol or "") for f in kernel)


def test_sigkill_of_the_agent_leaves_a_file_perf_reads(tmp_path: Path, two_function_binary: Path) -> None:
    require_bpf()
    run = Run(tmp_path)
    workload = start_workload(two_function_binary)
    try:
        config = write_config(tmp_path, workload.pid, run.perf_dir, run.json_path, window="300ms")
        with RunningAgent(config, tmp_path) as agent:  # returns once attached, however long BCC takes
            wait_until(
                lambda: run.json_path.exists() and len(run.json_path.read_text().splitlines()) >= 3,
                timeout=60,
                what="3 windows",
            )
            agent.signal(signal.SIGKILL)
    finally:
        workload.kill()
        workload.wait()

    report = run_perf(
        ["report", "-i", str(run.perf_file), "--stdio", "--no-children", "--sort", "sym"], run.buildid_dir
    )

    assert (report.returncode, report.stderr) == (0, "")
    assert "work_heavy" in report.stdout


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "full", size="96k") as mount:
        (mount / "filler").write_bytes(b"\0" * (92 * 1024))  # one page left
        yield mount


def test_full_disk_does_not_stop_the_agent_or_the_json_sink(
    tmp_path: Path, full_tmpfs: Path, two_function_binary: Path
) -> None:
    require_bpf()
    run = Run(tmp_path)
    workload = start_workload(two_function_binary)
    try:
        config = write_config(tmp_path, workload.pid, full_tmpfs / "perf", run.json_path, window="250ms")
        done = subprocess.run(
            [ANTIPROF, "run", "-c", str(config), "--duration", "3s"], capture_output=True, timeout=AGENT_TIMEOUT
        )
    finally:
        workload.kill()
        workload.wait()

    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    # Every window the agent made reached the JSON sink, disk full or not (how many windows 3 s
    # holds depends on how busy the host is: the agent says how many it delivered).
    delivered = re.search(r"consumer 'json': (\d+) windows consumed, 0 dropped", stderr)
    assert delivered is not None, stderr
    assert len(run.json_path.read_text().splitlines()) == int(delivered.group(1)) >= 6
    assert f"cannot write {full_tmpfs / 'perf'}" in stderr and "No space left on device" in stderr
    # All or nothing: a file appears only with a whole window in it, and then perf reads it.
    for path in (full_tmpfs / "perf").glob("*.perf.data"):
        report = run_perf(["report", "-i", str(path), "--stdio"], run.buildid_dir)
        assert report.returncode == 0 and "work_heavy" in report.stdout
    assert not list((full_tmpfs / "perf").glob(".*.tmp")), "a temporary file was left behind"


def test_agrees_with_perf_record_side_by_side(tmp_path: Path, two_function_binary: Path) -> None:
    require_bpf()
    run = Run(tmp_path)
    workload = start_workload(two_function_binary)
    reference = tmp_path / "perf-record.data"
    try:
        config = write_config(tmp_path, workload.pid, run.perf_dir, run.json_path)
        env = dict(os.environ, PERF_BUILDID_DIR=str(run.buildid_dir))
        recorder = subprocess.Popen(
            [
                perf_path(),
                "record",
                "-F",
                "99",
                "-g",
                "-p",
                str(workload.pid),
                "-o",
                str(reference),
                "--",
                "sleep",
                "3",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        done = subprocess.run(
            [ANTIPROF, "run", "-c", str(config), "--duration", "3s"], capture_output=True, timeout=AGENT_TIMEOUT
        )
        recorder.wait(timeout=AGENT_TIMEOUT)
    finally:
        workload.kill()
        workload.wait()
    assert done.returncode == 0, done.stderr.decode()
    names = tuple(TWO_FUNCTION_SHARES)

    ours = inclusive_shares(parse_script(run_perf(["script", "-i", str(run.perf_file)], run.buildid_dir).stdout), names)
    theirs = inclusive_shares(parse_script(run_perf(["script", "-i", str(reference)], run.buildid_dir).stdout), names)

    for name in names:
        assert abs(float(ours[name]) - float(theirs[name])) <= 0.05, (name, float(ours[name]), float(theirs[name]))


HOT_JS = """
function hotLoop(n) { let x = 0; for (let i = 0; i < n; i++) { x += i % 7; } return x; }
const end = process.argv[2] ? Date.now() + 1000 * Number(process.argv[2]) : Infinity; let s = 0;
while (Date.now() < end) { s += hotLoop(1e6); }
"""


def test_jit_frames_are_named_from_the_perf_map(tmp_path: Path) -> None:
    """Node's /tmp/perf-PID.map names JIT code in `perf report` because the file maps it as //anon."""
    require_bpf()
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/setup-system.sh installs it)")
    run = Run(tmp_path)
    script_path = tmp_path / "hot.js"
    script_path.write_text(HOT_JS)
    # node writes isolate-*.log files into its working directory: keep them in the test's.
    workload = subprocess.Popen([node, "--perf-basic-prof", str(script_path)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/perf-{workload.pid}.map").exists():  # JIT code exists once the map does
            assert time.monotonic() < deadline, "node wrote no perf map"
            time.sleep(0.1)
        time.sleep(0.5)
        config = write_config(tmp_path, workload.pid, run.perf_dir, run.json_path)
        done = subprocess.run(
            [ANTIPROF, "run", "-c", str(config), "--duration", "2s"], capture_output=True, timeout=AGENT_TIMEOUT
        )
        assert done.returncode == 0, done.stderr.decode()
        report = run_perf(
            ["report", "-i", str(run.perf_file), "--stdio", "--no-children", "--sort", "sym", "-g", "none"],
            run.buildid_dir,
        )  # while node runs: perf reads its perf map now
    finally:
        workload.kill()
        workload.wait()
        Path(f"/tmp/perf-{workload.pid}.map").unlink(missing_ok=True)

    assert report.returncode == 0, report.stderr
    assert "JS:*hotLoop" in report.stdout or "JS:~hotLoop" in report.stdout
