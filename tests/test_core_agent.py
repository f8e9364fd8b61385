"""The agent end to end on the synthetic source, through the real command line."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from antiprof_core.codec import window_from_dict
from antiprof_core.testing import antiprof_command

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import RunCli

REPO = Path(__file__).resolve().parents[1]


def test_run_writes_one_json_line_per_window(run_cli: RunCli) -> None:
    result = run_cli("run", "-c", str(REPO / "examples/synthetic.toml"), "--duration", "3s")
    assert result.returncode == 0, result.stderr
    windows = [window_from_dict(json.loads(line)) for line in result.stdout.splitlines()]
    assert len(windows) == 3  # 1 s windows over 3 s
    for earlier, later in itertools.pairwise(windows):
        assert earlier.end_ns == later.start_ns  # contiguous: nothing falls between windows
    assert all(len(w.samples) == 500 for w in windows)
    assert "consumer 'json': 3 windows consumed, 0 dropped (queue full), 0 errors" in result.stderr


def test_sigterm_mid_window_delivers_the_last_window_to_every_consumer(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text(
        '[sampler]\nsource = "synthetic"\nwindow = "1m"\n'
        f'[consumers.first]\ntype = "json"\npath = "{tmp_path}/first.jsonl"\n'
        f'[consumers.second]\ntype = "json"\npath = "{tmp_path}/second.jsonl"\n'
    )
    agent = subprocess.Popen(antiprof_command("run", "-c", str(config)), stderr=subprocess.PIPE, text=True)
    assert agent.stderr is not None
    started = time.monotonic()
    for line in agent.stderr:
        if "sampling at" in line:
            break
    time.sleep(1)
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr
    assert time.monotonic() - started < 20
    for name in ("first", "second"):
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == 1  # the partial window, not lost
        window = json.loads(lines[0])
        assert 0.5e9 < window["end_ns"] - window["start_ns"] < 30e9
        assert os.stat(tmp_path / f"{name}.jsonl").st_mode & 0o777 == 0o600
    assert "SIGTERM received" in stderr


def test_json_sink_writes_to_stdout_by_default(run_cli: RunCli, tmp_path: Path) -> None:
    # [consumers.json] with no keys: JSON lines on stdout.
    config = tmp_path / "s.toml"
    config.write_text('[sampler]\nsource = "synthetic"\nwindow = "1s"\n[consumers.json]\n')
    result = run_cli("run", "-c", str(config), "--duration", "1s")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_json_log_format(run_cli: RunCli) -> None:
    result = run_cli("run", "-c", str(REPO / "examples/synthetic.toml"), "--duration", "1s", "--log-format", "json")
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert {e["level"] for e in entries} == {"info"}
    assert any(e["message"].startswith("sampling at 19 Hz") for e in entries)


def test_bad_duration_flag_is_a_usage_error(run_cli: RunCli) -> None:
    result = run_cli("run", "--duration", "forever")
    assert result.returncode == 2
    assert "Invalid value for '--duration': invalid duration 'forever'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_consumer_that_cannot_start_is_retried_and_the_others_go_on(tmp_path: Path, run_cli: RunCli) -> None:
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "a.toml"
    config.write_text(
        '[sampler]\nsource = "synthetic"\nwindow = "1s"\n'
        f'[consumers.broken]\ntype = "json"\npath = "{tmp_path}/a-file/w.jsonl"\n'
        f'[consumers.good]\ntype = "json"\npath = "{tmp_path}/good.jsonl"\n'
    )
    result = run_cli("run", "-c", str(config), "--duration", "2s")
    assert result.returncode == 0
    assert len((tmp_path / "good.jsonl").read_text().splitlines()) == 2
    # Tried at start and again before each of the 2 windows, one line each, no traceback.
    refused = f"consumer 'broken' start failed: OutputPathError: {tmp_path}/a-file: is not a directory"
    assert result.stderr.count(refused) == 3
    assert "consumer 'broken': 0 windows consumed, 0 dropped (queue full), 3 errors" in result.stderr
    assert "Traceback" not in result.stderr


def test_record_prints_the_hottest_functions(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("record", "--source", "synthetic", "-d", "2s", "-F", "99", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "Hottest functions" in result.stdout
    assert "synthetic_" in result.stdout
    [json_file] = (tmp_path / "out").glob("antiprof-*.jsonl")  # one file per run, never an old one appended to
    assert f"JSON lines written: {json_file}" in result.stdout
    assert f"Flame graph written: {tmp_path / 'out' / 'flamegraph.html'}" in result.stdout


def test_metrics_are_served_for_prometheus(tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "a.toml"
    config.write_text(
        f'[agent]\nmetrics_address = "127.0.0.1:{port}"\n'
        '[sampler]\nsource = "synthetic"\nwindow = "200ms"\n'
        f'[consumers.json]\npath = "{tmp_path}/w.jsonl"\n'
    )
    agent = subprocess.Popen(antiprof_command("run", "-c", str(config), "--duration", "5s"), stderr=subprocess.PIPE)
    try:
        text = ""
        deadline = time.monotonic() + 4
        while 'antiprof_windows_delivered_total{consumer="json"}' not in text and time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
    finally:
        agent.terminate()
        agent.communicate(timeout=30)
    assert 'antiprof_windows_delivered_total{consumer="json"}' in text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(values["antiprof_samples_seen_total"]) > 0
    assert float(values["antiprof_windows_total"]) >= 1


def test_metrics_address_in_use_is_one_line_and_exit_1(run_cli: RunCli, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "a.toml"
        config.write_text(f'[agent]\nmetrics_address = "127.0.0.1:{port}"\n[sampler]\nsource = "synthetic"\n')
        result = run_cli("run", "-c", str(config), "--duration", "1s")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"antiprof: error: agent.metrics_address: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
