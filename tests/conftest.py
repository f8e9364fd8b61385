from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from antiprof_core.testing import antiprof_command

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> RunCli:
    """Run ``antiprof ARGS`` as the user would, returning exit code, stdout and stderr."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(antiprof_command(*args), capture_output=True, text=True, env=full_env, timeout=timeout)

    return run


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "antiprof.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
