"""``antiprof run`` with the otlp sink, as a user runs it: SIGTERM flushes the queue, and the real
sampler's two-function workload arrives decoded with the right shares after a first UNAVAILABLE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from antiprof_otlp.reading import decoded_samples, index_problems
from antiprof_otlp.testing import ProfilesReceiver, Reply, serve

from antiprof_core.testing import antiprof_command, require_bpf
from antiprof_core.testing.agent import RunningAgent, wait_until
from antiprof_core.testing.workloads import TWO_FUNCTION_CALLERS, TWO_FUNCTION_SHARES, build_two_function_workload

OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS")


def environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in OTEL_VARIABLES}


def otlp_section(port: int) -> str:
    return f"""
[consumers.otlp]
endpoint = "127.0.0.1:{port}"
insecure = true
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
"""


def test_sigterm_flushes_the_queue(tmp_path: Path) -> None:
    receiver = ProfilesReceiver(default=Reply(delay=0.3))  # slower than the windows come: a backlog builds
    lines = tmp_path / "windows.jsonl"  # the json sink beside it tells which windows the agent made
    with serve(receiver) as port:
        config = tmp_path / "antiprof.toml"
        config.write_text(
            f"""
[sampler]
source = "synthetic"
window = "100ms"
[sampler.synthetic]
processes = 2
stacks = 20
depth = 6
[consumers.json]
path = "{lines}"
"""
            + otlp_section(port)
        )
        agent = subprocess.Popen(
            antiprof_command("run", "-c", str(config)), stderr=subprocess.PIPE, text=True, env=environment()
        )
        try:
            assert receiver.wait_for(2, timeout=30), "the agent delivered nothing"
            before_signal = len(receiver.requests)
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=30)
        finally:
            if agent.poll() is None:
                agent.kill()
        received_at_exit = len(receiver.requests)
    assert agent.returncode == 0, stderr
    made = [json.loads(line)["start_ns"] for line in lines.read_text().splitlines()]
    assert len(made) > before_signal + 1  # windows were still queued (beyond the last, partial one)
    starts = [r.resource_profiles[0].scope_profiles[0].profiles[0].time_unix_nano for r in receiver.requests]
    assert received_at_exit == len(made)
    assert starts == made  # every window, once, in order
    assert "not delivered" not in stderr


def received(receiver: ProfilesReceiver, pid: int) -> int:
    requests = list(receiver.requests)
    return sum(s.count for request in requests for s in decoded_samples(request) if s.resource["process.pid"] == pid)


@pytest.mark.bpf
def test_real_sampler_two_function_workload_arrives_with_true_shares(tmp_path: Path) -> None:
    require_bpf()
    program = build_two_function_workload(tmp_path)
    workload = subprocess.Popen([str(program)])  # until killed below
    receiver = ProfilesReceiver([Reply(grpc.StatusCode.UNAVAILABLE)])
    try:
        with serve(receiver) as port:
            config = tmp_path / "antiprof.toml"
            config.write_text(
                f"""
[sampler]
source = "bpf"
frequency_hz = 199
window = "1s"
pids = [{workload.pid}]
"""
                + otlp_section(port)
            )
            # Until 1000 samples arrived (a 5-point tolerance is then ~3.4 standard errors), not for
            # a fixed time: on a busy host BCC attaches late and the workload gets little CPU.
            with RunningAgent(config, tmp_path, env=environment()) as agent:
                wait_until(lambda: received(receiver, workload.pid) >= 1000, timeout=300, what="1000 samples")
            assert agent.returncode == 0, agent.stderr
    finally:
        workload.kill()
        workload.wait()
    assert receiver.calls[0].code is grpc.StatusCode.UNAVAILABLE
    assert receiver.requests, agent.stderr
    samples = []
    for request in receiver.requests:
        assert index_problems(request) == []
        samples += [s for s in decoded_samples(request) if s.resource["process.pid"] == workload.pid]
    total = sum(s.count for s in samples)
    assert total >= 1000
    for function, truth in TWO_FUNCTION_SHARES.items():
        hits = sum(s.count for s in samples if any(f.function == function for f in s.frames))
        assert abs(hits / total - truth) < 0.05, (function, hits, total)
    resource = samples[0].resource
    assert resource["process.executable.path"] == str(program)
    assert resource["service.name"] == program.name
    heavy = next(s for s in samples if any(f.function == "work_heavy" for f in s.frames))
    names = [f.function for f in heavy.frames]
    below = names[names.index("work_heavy") + 1 :]
    assert [name for name in below if name in TWO_FUNCTION_CALLERS] == list(TWO_FUNCTION_CALLERS)
    frame = heavy.frames[names.index("work_heavy")]
    assert frame.frame_type == "native" and frame.mapping_path == str(program) and frame.build_id
