"""``--log-format json``: every stderr line is a JSON object, even what gRPC's C core writes itself.

The OTLP sink talks TLS to a plaintext gRPC port, so every connection attempt fails in the
handshake, which gRPC's core likes to log; the environment asks it to log everything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from antiprof_otlp.testing import ProfilesReceiver, serve

from antiprof_core.testing.agent import RunningAgent, wait_until

CHATTY_GRPC = {"GRPC_VERBOSITY": "DEBUG", "GRPC_TRACE": "all"}


def tls_to_plaintext_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "antiprof.toml"
    config.write_text(
        f"""
[agent]
shutdown_timeout = "1s"
[sampler]
source = "synthetic"
window = "200ms"
synthetic = {{ processes = 2, stacks = 10, depth = 4 }}
[consumers.otlp]
endpoint = "127.0.0.1:{port}"
insecure = false
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
"""
    )
    return config


def json_lines(stderr: str) -> list[dict[str, str]]:
    entries = []
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"a stderr line is not JSON: {line!r}") from None
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


def environment(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ANTIPROF_GRPC"))}
    return {**base, **CHATTY_GRPC, **extra}


def test_every_stderr_line_is_json_and_grpc_core_is_quiet_by_default(tmp_path: Path) -> None:
    with serve(ProfilesReceiver()) as port:
        config = tls_to_plaintext_config(tmp_path, port)
        agent = RunningAgent(config, tmp_path, args=["--log-format", "json"], env=environment())
        with agent:
            wait_until(lambda: "failed with UNAVAILABLE" in agent.stderr, what="a failed TLS handshake")
    entries = json_lines(agent.stderr)
    assert any("failed with UNAVAILABLE" in e["message"] for e in entries)  # our own line says what is wrong
    assert not [e for e in entries if e["logger"] == "antiprof.grpc"]


def test_antiprof_grpc_log_lets_grpc_core_log_as_json_records(tmp_path: Path) -> None:
    with serve(ProfilesReceiver()) as port:
        config = tls_to_plaintext_config(tmp_path, port)
        debug = environment(ANTIPROF_GRPC_LOG="debug", GRPC_TRACE="tcp")
        agent = RunningAgent(config, tmp_path, args=["--log-format", "json"], env=debug)
        with agent:
            wait_until(lambda: "Handshake failed" in agent.stderr, what="gRPC core's handshake line")
    grpc_lines = [e for e in json_lines(agent.stderr) if e["logger"] == "antiprof.grpc"]
    assert any("Handshake failed" in e["message"] for e in grpc_lines)
    assert not any(e["message"].startswith(("E", "I", "D")) and "] " in e["message"][:80] for e in grpc_lines)
