"""`antiprof run --duration` ends even when the interpreter's own exit hangs after the last window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The real CLI, with an exit hook that never returns: what a stuck library thread join looks like.
HANGING_AT_EXIT = (
    "import atexit, sys, time; atexit.register(time.sleep, 3600); "
    "from antiprof_core.cli import main; sys.argv[0] = 'antiprof'; main()"
)


def synthetic_config(tmp_path: Path) -> tuple[Path, Path]:
    config, output = tmp_path / "antiprof.toml", tmp_path / "windows.jsonl"
    config.write_text(
        f"""
[sampler]
source = "synthetic"
window = "200ms"
synthetic = {{ processes = 2, stacks = 10, depth = 4 }}
[consumers.json]
path = "{output}"
"""
    )
    return config, output


@pytest.mark.parametrize("hangs", [True, False], ids=["exit-hangs", "exit-clean"])
def test_a_run_ends_with_its_code_and_every_window_when_exit_hangs(tmp_path: Path, hangs: bool) -> None:
    config, output = synthetic_config(tmp_path)
    prefix = [sys.executable, "-c", HANGING_AT_EXIT] if hangs else [sys.executable, "-m", "antiprof_core.cli"]
    started = time.monotonic()
    done = subprocess.run(
        [*prefix, "run", "-c", str(config), "--duration", "1s"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ANTIPROF_EXIT_GRACE": "2"},
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    windows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(windows) >= 4  # 1 s of 200 ms windows: delivered before the exit began
    warned = "the process did not exit within 2 s of its last window: ending it" in done.stderr
    assert warned is hangs, done.stderr
    assert took < 60  # not the hour the exit hook asks for
