"""The real sampler behind the readiness signal and across a reload that restarts it.

The test waits for the agent's ready file (however long BCC takes), then counts windows; a reload
that changes the pid filter restarts the sampler, which says "attached and ready" again, and the
windows switch from the first workload to the second with none lost or mixed.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from antiprof_core.testing import require_bpf
from antiprof_core.testing.agent import RunningAgent, wait_until
from antiprof_core.testing.workloads import build_two_function_workload, started

pytestmark = pytest.mark.bpf


def config_text(output: Path, pid: int) -> str:
    return f"""
[sampler]
frequency_hz = 99
window = "1s"
pids = [{pid}]
[consumers.json]
path = "{output}"
"""


def pids_per_window(output: Path) -> list[set[int]]:
    if not output.exists():
        return []
    return [{sample["pid"] for sample in json.loads(line)["samples"]} for line in output.read_text().splitlines()]


def test_workloads_started_after_ready_are_in_the_next_window_and_a_reload_restarts_the_sampler(
    tmp_path: Path,
) -> None:
    require_bpf()
    program = build_two_function_workload(tmp_path)
    output = tmp_path / "windows.jsonl"
    config = tmp_path / "antiprof.toml"
    with started(program) as first, started(program) as second:
        config.write_text(config_text(output, first.pid))
        with RunningAgent(config, tmp_path) as agent:
            wait_until(lambda: len(pids_per_window(output)) >= 2, timeout=120, what="two windows")
            config.write_text(config_text(output, second.pid))
            agent.signal(signal.SIGHUP)
            wait_until(lambda: agent.stderr.count("attached and ready") == 2, timeout=180, what="the sampler restart")
            wait_until(
                lambda: pids_per_window(output).count({second.pid}) >= 3, timeout=120, what="3 windows of the second"
            )
        assert agent.returncode == 0, agent.stderr
    # A window may hold no sample (the old sampler's last, partial one; a workload starved of CPU).
    windows = [pids for pids in pids_per_window(output) if pids]
    switch = windows.index({second.pid})
    assert switch >= 2 and windows[:switch] == [{first.pid}] * switch, windows
    assert len(windows) - switch >= 3 and windows[switch:] == [{second.pid}] * (len(windows) - switch), windows
    assert "[sampler] changed; restarting the sampler" in agent.stderr
