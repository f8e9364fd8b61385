"""SIGHUP re-reads the config: changed sinks restart, others and the sampler keep running, no window is lost."""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path

from antiprof_core.testing.agent import RunningAgent, wait_until


def config_text(tmp_path: Path, changed_path: str, window: str = "200ms") -> str:
    return f"""
[sampler]
source = "synthetic"
window = "{window}"
synthetic = {{ processes = 2, stacks = 10, depth = 4 }}

[consumers.kept]
type = "json"
path = "{tmp_path / "kept.jsonl"}"

[consumers.changed]
type = "json"
path = "{tmp_path / changed_path}"
"""


def windows(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(entry["start_ns"], entry["end_ns"]) for entry in map(json.loads, lines)]


def test_sighup_restarts_only_the_changed_sink_and_loses_no_window(tmp_path: Path) -> None:
    config = tmp_path / "antiprof.toml"
    config.write_text(config_text(tmp_path, "before.jsonl"))
    kept, before, after = tmp_path / "kept.jsonl", tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    with RunningAgent(config, tmp_path) as agent:
        wait_until(lambda: len(windows(kept)) >= 3, what="3 windows before the reload")
        config.write_text(config_text(tmp_path, "after.jsonl"))
        agent.signal(signal.SIGHUP)
        wait_until(lambda: "reload: config" in agent.stderr, what="the reload to be applied")
        wait_until(lambda: len(windows(after)) >= 3, what="3 windows after the reload")

        config.write_text(config_text(tmp_path, "after.jsonl") + "\n[agent]\nqueue_sise = 3\n")
        agent.signal(signal.SIGHUP)
        wait_until(lambda: "reload rejected" in agent.stderr, what="the invalid config to be rejected")
        count = len(windows(kept))
        wait_until(lambda: len(windows(kept)) >= count + 3, what="windows to go on after a rejected reload")
    assert agent.returncode == 0, agent.stderr

    every = windows(kept)
    # The unchanged sink and the sampler ran straight through: one start-up, contiguous windows.
    assert agent.stderr.count("attached and ready") == 1, agent.stderr
    assert all(previous[1] == following[0] for previous, following in itertools.pairwise(every))
    # The changed sink was flushed and closed at the reload and its successor took over: together
    # they saw every window the agent made, each once.
    split = windows(before) + windows(after)
    assert split == every
    assert windows(before) and windows(after)
    assert "consumer 'changed' restarting with its new section" in agent.stderr
    assert "consumer 'kept'" not in agent.stderr.split("SIGTERM")[0]
    # The bad file is named with its path and the running config is kept.
    assert f"reload rejected, keeping the running config: {config}: " in agent.stderr
    assert "did you mean 'queue_size'" in agent.stderr


def test_sighup_restarts_the_sampler_only_when_its_section_changed(tmp_path: Path) -> None:
    config = tmp_path / "antiprof.toml"
    config.write_text(config_text(tmp_path, "changed.jsonl"))
    kept = tmp_path / "kept.jsonl"
    with RunningAgent(config, tmp_path) as agent:
        wait_until(lambda: len(windows(kept)) >= 3, what="3 windows before the reload")
        config.write_text(config_text(tmp_path, "changed.jsonl", window="400ms"))
        agent.signal(signal.SIGHUP)
        wait_until(lambda: agent.stderr.count("attached and ready") == 2, what="the sampler to restart")
        reloaded_at = len(windows(kept))
        wait_until(lambda: len(windows(kept)) >= reloaded_at + 3, what="3 windows after the reload")
    assert agent.returncode == 0, agent.stderr
    every = windows(kept)
    assert windows(tmp_path / "changed.jsonl") == every  # its section did not change: one sink throughout
    # The old sampler's partial window was delivered; the new one starts right after it.
    gaps = [following[0] - previous[1] for previous, following in itertools.pairwise(every)]
    assert all(0 <= gap < 1_000_000_000 for gap in gaps), gaps
    later = [end - start for start, end in every[reloaded_at + 1 : -1]]
    assert later and all(0.35e9 < length < 0.6e9 for length in later), later
    assert "[sampler] changed; restarting the sampler" in agent.stderr
