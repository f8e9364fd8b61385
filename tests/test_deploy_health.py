"""/healthz and /readyz on the metrics address, as a probe sees them."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry

from antiprof_core.metrics import Health, serve
from antiprof_core.testing.agent import RunningAgent, wait_until


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def windows_total(metrics: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith("antiprof_windows_total "))
    return float(line.split()[1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_readyz_after_attach_and_healthz_fails_after_three_silent_windows() -> None:
    now = [1000.0]
    health = Health(window_seconds=10.0, clock=lambda: now[0])
    server = serve("127.0.0.1:0", CollectorRegistry(), health)
    try:
        assert get(server.port, "/readyz") == (503, "not attached yet\n")
        assert get(server.port, "/healthz") == (200, "ok\n")  # starting up is not a failure
        health.set_ready(True)
        assert get(server.port, "/readyz") == (200, "ok\n")
        now[0] += 29.0
        assert get(server.port, "/healthz") == (200, "ok\n")
        now[0] += 2.0  # 31 s without a window: more than 3 windows of 10 s
        status, body = get(server.port, "/healthz")
        assert status == 503
        assert body.startswith("no window for 31s (limit 3 windows, 30s)")
        health.window_published()
        assert get(server.port, "/healthz") == (200, "ok\n")
    finally:
        server.close()


def test_the_running_agent_serves_probes_and_metrics_on_one_port(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "antiprof.toml"
    config.write_text(
        f"""
[agent]
metrics_address = "127.0.0.1:{port}"
[sampler]
source = "synthetic"
window = "200ms"
synthetic = {{ processes = 2, stacks = 10, depth = 4 }}
"""
    )
    with RunningAgent(config, tmp_path) as agent:
        assert agent.ready_file.read_text() == f"{agent.pid}\n"
        assert get(port, "/readyz") == (200, "ok\n")
        assert get(port, "/healthz") == (200, "ok\n")
        wait_until(lambda: windows_total(get(port, "/metrics")[1]) >= 3, what="3 windows in /metrics")
    assert agent.returncode == 0, agent.stderr
    assert not agent.ready_file.exists()  # removed once the agent is no longer sampling
    assert "GET /" not in agent.stderr  # probes are not logged
