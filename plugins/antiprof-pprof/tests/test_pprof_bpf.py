"""End to end with real eBPF: ``antiprof run`` on the two-function workload, read by go tool pprof and pprof-format."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from antiprof_core.codec import window_from_dict
from antiprof_core.model import ProfileWindow
from antiprof_core.summary import HottestFunctions
from antiprof_core.symbolize.elf import read_elf
from antiprof_core.testing import antiprof_command, require_bpf
from antiprof_core.testing.agent import RunningAgent, json_sink_samples, wait_until
from antiprof_core.testing.workloads import TWO_FUNCTION_CALLERS, TWO_FUNCTION_SHARES

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import GoPprof, Readers

pytestmark = pytest.mark.bpf
WORKLOAD_SECONDS = 90  # outlives the agent (BCC compiles for seconds on a busy machine); killed after
FUNCTIONS = (*TWO_FUNCTION_SHARES, *TWO_FUNCTION_CALLERS)


def write_config(directory: Path, pid: int, http_address: str = "") -> Path:
    config = directory / "antiprof.toml"
    endpoint = f'http_address = "{http_address}"' if http_address else ""
    config.write_text(
        textwrap.dedent(
            f"""
            [sampler]
            frequency_hz = 99
            window = "1s"
            pids = [{pid}]

            [consumers.pprof]
            output_dir = "{directory / "pprof"}"
            {endpoint}

            [consumers.json]
            path = "{directory / "windows.jsonl"}"
            """
        )
    )
    return config


def read_windows(directory: Path) -> list[ProfileWindow]:
    lines = (directory / "windows.jsonl").read_text().splitlines()
    return [window_from_dict(json.loads(line)) for line in lines if line.strip()]


def table_of(windows: list[ProfileWindow]) -> HottestFunctions:
    table = HottestFunctions()
    for window in windows:
        table.consume(window)
    return table


def assert_within_one_point(found: dict[str, tuple[float, float]], expected: dict[str, tuple[float, float]]) -> None:
    for name in FUNCTIONS:
        own, total = expected[name]
        assert abs(found[name][0] - own) <= 1 and abs(found[name][1] - total) <= 1, (name, found[name], own, total)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, two_function_binary: Path) -> tuple[Path, int]:
    """One agent run writing pprof files and JSON windows side by side, until 1000 samples of the
    workload (enough for the share tolerances however busy the host)."""
    require_bpf()
    directory = tmp_path_factory.mktemp("pprof-run")
    # At nice -20, so other load on the machine cannot skew the workload's 2:1 split; runs until killed.
    workload = subprocess.Popen(["nice", "-n", "-20", str(two_function_binary)])
    try:
        config = write_config(directory, workload.pid)
        with RunningAgent(config, directory) as agent:
            windows = directory / "windows.jsonl"
            wait_until(lambda: json_sink_samples(windows, workload.pid) >= 1000, timeout=300, what="samples")
    finally:
        workload.kill()
        workload.wait()
    assert agent.returncode == 0, agent.stderr
    return directory, workload.pid


def test_go_tool_pprof_shares_match_antiprof_table(
    recorded: tuple[Path, int], go_pprof: GoPprof, readers: type[Readers]
) -> None:
    directory, _ = recorded
    files = sorted((directory / "pprof").glob("*.pb.gz"))
    expected = readers.table_shares(table_of(read_windows(directory)))

    top = go_pprof.top(*map(str, files))  # go tool pprof merges the per-window files

    assert len(files) >= 2
    assert_within_one_point({name: (row.flat_percent, row.cum_percent) for name, row in top.items()}, expected)
    for name, truth in TWO_FUNCTION_SHARES.items():
        # Against the truth: its time with kernel work on its behalf (interrupts, preemption): total.
        assert abs(expected[name][1] - 100 * truth) <= 5, (name, expected[name])


def test_pprof_format_reads_the_workload_with_its_binary_and_labels(
    recorded: tuple[Path, int], two_function_binary: Path, readers: type[Readers]
) -> None:
    directory, pid = recorded
    files = sorted((directory / "pprof").glob("*.pb.gz"))
    windows = read_windows(directory)

    decoded = readers.decode(*files)

    assert_within_one_point(readers.decoded_shares(decoded), readers.table_shares(table_of(windows)))
    mapping = next(m for m in decoded[0]["mappings"] if m["file"] == str(two_function_binary))
    assert mapping["buildId"] == read_elf(two_function_binary).build_id and mapping["hasFunctions"] is True
    stacks = [s for profile in decoded for s in profile["samples"] if s["stack"][0] in TWO_FUNCTION_SHARES]
    assert stacks and all(s["stack"][1:3] == list(TWO_FUNCTION_CALLERS) for s in stacks)
    assert {(s["labels"]["pid"], s["labels"]["tid"], s["labels"]["process"]) for s in stacks} == {
        (pid, pid, "two_functions")
    }
    by_start = {str(w.start_ns): w for w in windows}
    for profile in decoded:  # one file per window, its time and samples
        window = by_start[profile["timeNanos"]]
        assert sum(s["values"][0] for s in profile["samples"]) == window.sample_count


class AgentLog:
    """Collects the agent's stderr lines as they come, so the test can wait for one."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.lines)


def test_go_tool_pprof_profiles_a_running_agent_over_http(
    tmp_path: Path, two_function_binary: Path, go_pprof: GoPprof, readers: type[Readers]
) -> None:
    require_bpf()
    workload = subprocess.Popen([str(two_function_binary), str(WORKLOAD_SECONDS)])
    config = write_config(tmp_path, workload.pid, http_address="127.0.0.1:0")
    agent = subprocess.Popen(antiprof_command("run", "-c", str(config), "--duration", "80s"), stderr=subprocess.PIPE)
    assert agent.stderr is not None
    log = AgentLog(agent.stderr)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "pprof").glob("*.pb.gz")):  # windows flow: BPF is compiled and sampling
            assert agent.poll() is None and time.monotonic() < deadline, log.text()
            time.sleep(0.1)
        match = re.search(r"go tool pprof (http://127\.0\.0\.1:\d+/debug/pprof/profile)\?seconds=30", log.text())
        assert match, log.text()

        done = go_pprof.run("-top", "-sample_index=samples", "-nodecount=100000", "-nodefraction=0",
                            f"{match.group(1)}?seconds=3")  # fmt: skip
    finally:
        agent.send_signal(signal.SIGINT)
        agent.wait(timeout=60)
        workload.kill()
        workload.wait()

    assert done.returncode == 0, done.stderr
    match = re.search(r"Saved profile in (\S+)", done.stderr)
    assert match is not None, done.stderr
    saved = Path(match.group(1))
    [profile] = readers.decode(saved)
    start, end = int(profile["timeNanos"]), int(profile["timeNanos"]) + int(profile["durationNanos"])
    covered = [w for w in read_windows(tmp_path) if start <= w.start_ns and w.end_ns <= end]
    assert 3 <= len(covered) <= 5  # 3 s of 1 s windows, and the one in progress when they ended
    top = readers.parse_top(done.stdout)
    found = {name: (row.flat_percent, row.cum_percent) for name, row in top.items()}
    assert_within_one_point(found, readers.table_shares(table_of(covered)))
    assert "pprof: served 3 s" in log.text()
