"""The replay source: an antiprof-json file turned back into the same windows, for every sink."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import antiprof_json
import antiprof_otlp
import antiprof_perfdata
import attrs
import pytest
from antiprof_otlp.testing import ProfilesReceiver, serve

from antiprof_core import SamplingMode, SourceExhausted
from antiprof_core.model import ProfileWindow, Sample
from antiprof_core.sources.replay import ReplayError, ReplaySource
from antiprof_core.testing import make_consumer, run_consumer, synthetic_window

START_NS = 1_764_000_000_000_000_000


def _windows() -> list[ProfileWindow]:
    """Aggregate and trace windows, one with a sample whose stack is empty, as the sampler can give."""
    windows = [
        synthetic_window(stacks=40, seed=seed, start_ns=START_NS + seed * 10**9, duration_ns=10**9) for seed in range(3)
    ]
    windows.append(
        synthetic_window(stacks=10, seed=9, start_ns=START_NS + 3 * 10**9, duration_ns=10**9, mode=SamplingMode.TRACE)
    )
    first = windows[0]
    empty = Sample(pid=first.samples[0].pid, tid=1, cpu=0, thread_name="idle", stack=(), count=2)
    windows[0] = attrs.evolve(first, samples=(*first.samples, empty))
    return windows


def _replayed(path: Path) -> list[ProfileWindow]:
    source = ReplaySource(str(path))
    source.start()
    windows = []
    try:
        while True:
            windows.append(source.collect())
    except SourceExhausted:
        pass
    finally:
        source.close()
    return windows


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[list[ProfileWindow], Path]:
    windows = _windows()
    path = tmp_path / "recorded.jsonl"
    run_consumer(make_consumer(antiprof_json, "json", {"path": str(path)}), windows)
    return windows, path


def test_replay_gives_back_the_windows_the_json_sink_wrote(recorded: tuple[list[ProfileWindow], Path]) -> None:
    windows, path = recorded
    assert _replayed(path) == windows


def test_replayed_through_the_json_sink_gives_the_same_bytes(
    recorded: tuple[list[ProfileWindow], Path], tmp_path: Path
) -> None:
    _, path = recorded
    again = tmp_path / "again.jsonl"
    run_consumer(make_consumer(antiprof_json, "json", {"path": str(again)}), _replayed(path))
    assert again.read_bytes() == path.read_bytes()


def _perf_script(path: Path, buildid_dir: Path) -> str:
    result = subprocess.run(
        ["perf", "script", "-F", "comm,pid,tid,cpu,time,ip,sym", "-i", str(path)],
        capture_output=True,
        text=True,
        env={"PERF_BUILDID_DIR": str(buildid_dir), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return result.stdout


def test_replayed_through_the_perfdata_sink_gives_what_perf_reads_from_the_originals(
    recorded: tuple[list[ProfileWindow], Path], tmp_path: Path
) -> None:
    windows, path = recorded
    outputs = {}
    for name, feed in (("original", windows), ("replayed", _replayed(path))):
        out = tmp_path / name
        run_consumer(make_consumer(antiprof_perfdata, "perfdata", {"output_dir": str(out)}), feed)
        files = sorted(out.glob("*.perf.data"))
        assert files
        outputs[name] = ([f.name for f in files], [f.read_bytes() for f in files])
        script = _perf_script(files[0], tmp_path / f"{name}-buildid")
        assert "synthetic_" in script
    assert outputs["replayed"] == outputs["original"]


def test_replayed_through_the_otlp_sink_sends_the_same_requests(
    recorded: tuple[list[ProfileWindow], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for suffix in ("ENDPOINT", "PROFILES_ENDPOINT", "HEADERS", "INSECURE"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{suffix}", raising=False)
    windows, path = recorded
    received: dict[str, list[bytes]] = {}
    for name, feed in (("original", windows), ("replayed", _replayed(path))):
        receiver = ProfilesReceiver()
        with serve(receiver) as port:
            options: dict[str, Any] = {"endpoint": f"127.0.0.1:{port}", "insecure": True, "timeout": "5s"}
            run_consumer(make_consumer(antiprof_otlp, "otlp", options), feed)
            assert receiver.wait_for(len(feed))
        received[name] = [request.SerializeToString(deterministic=True) for request in receiver.requests]
    assert len(received["original"]) == len(windows)
    assert received["replayed"] == received["original"]


def test_antiprof_run_replays_a_file_and_stops_at_its_end(
    run_cli: Any, recorded: tuple[list[ProfileWindow], Path], tmp_path: Path
) -> None:
    _, path = recorded
    out = tmp_path / "out.jsonl"
    config = tmp_path / "replay.toml"
    config.write_text(
        f'[sampler]\nsource = "replay"\nwindow = "10ms"\n[sampler.replay]\npath = "{path}"\n'
        f'[consumers.json]\npath = "{out}"\n'
    )
    result = run_cli("run", "-c", str(config), timeout=60)  # no --duration: the file's end stops it
    assert result.returncode == 0, result.stderr
    assert "source finished" in result.stderr
    assert out.read_bytes() == path.read_bytes()


def test_a_line_that_is_not_a_window_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"schema": 1}\n')
    source = ReplaySource(str(path))
    source.start()
    with pytest.raises(ReplayError, match=rf"^{path}:1: not an antiprof-json window: 'mappings'$"):
        source.collect()
    source.close()
