"""`antiprof run` end to end on the real sampler: the JSON sink shows the workload, named."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from antiprof_core.codec import window_from_dict
from antiprof_core.testing import antiprof_command, require_bpf
from antiprof_core.testing.workloads import TWO_FUNCTION_CALLERS, TWO_FUNCTION_SHARES, build_two_function_workload

pytestmark = pytest.mark.bpf

def test_antiprof_run_json_names_both_functions_with_their_shares(tmp_path: Path) -> None:
    require_bpf()
    program = build_two_function_workload(tmp_path)
    workload = subprocess.Popen([str(program), "3600"])  # until killed: start-up may be slow on a busy host
    output = tmp_path / "windows.jsonl"
    config = tmp_path / "antiprof.toml"
    config.write_text(
        f"""
[sampler]
source = "bpf"
window = "1s"
frequency_hz = 199
pids = [{workload.pid}]

[consumers.json]
path = "{output}"
"""
    )
    try:
        result = subprocess.run(
            [*antiprof_command(), "run", "-c", str(config), "--duration", "5s"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        workload.kill()
        workload.wait()
    assert result.returncode == 0, result.stderr
    windows = [window_from_dict(json.loads(line)) for line in output.read_text().splitlines()]
    assert len(windows) >= 3
    samples = [sample for window in windows for sample in window.samples]
    assert {sample.pid for sample in samples} == {workload.pid}
    total = sum(sample.count for sample in samples)
    assert total > 100
    for function, truth in TWO_FUNCTION_SHARES.items():
        hits = sum(s.count for s in samples if function in [frame.symbol for frame in s.stack])
        assert hits / total == pytest.approx(truth, abs=0.05), function
    chains = {
        tuple(f.symbol for f in s.stack if f.symbol in (*TWO_FUNCTION_SHARES, *TWO_FUNCTION_CALLERS)) for s in samples
    }
    assert ("work_heavy", *TWO_FUNCTION_CALLERS) in chains and ("work_light", *TWO_FUNCTION_CALLERS) in chains
    own = [f for s in samples for f in s.stack if f.mapping is not None and f.mapping.path == str(program)]
    assert own and all(frame.symbol for frame in own)
    for window in windows:
        assert window.counters.samples_seen == window.sample_count + window.counters.samples_lost


def test_antiprof_run_without_bpf_rights_exits_1_with_one_line() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    with tempfile.TemporaryDirectory() as directory:  # pytest's tmp_path is closed to other users
        os.chmod(directory, 0o755)
        config = Path(directory) / "antiprof.toml"
        config.write_text('[sampler]\nsource = "bpf"\nwindow = "1s"\n\n[consumers.json]\npath = "-"\n')
        os.chmod(config, 0o644)
        result = run_unprivileged(config)
    assert result.returncode == 1, result.stderr
    assert "run as root or grant CAP_BPF and CAP_PERFMON" in result.stderr
    assert result.stderr.strip().splitlines() == [
        "antiprof: error: not allowed to load BPF: run as root or grant CAP_BPF and CAP_PERFMON"
        " (setcap cap_bpf,cap_perfmon+ep)"
    ]


def run_unprivileged(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            *antiprof_command(),
            "run",
            "-c",
            str(config),
            "--duration",
            "2s",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/tmp"},
    )
