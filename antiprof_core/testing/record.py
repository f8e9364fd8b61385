"""``antiprof record -p PID`` as a user runs it, for tests: the run, and its table read back."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from antiprof_core.testing import antiprof_command

TABLE_ROW = re.compile(r"│\s*([\d.]+)%\s*│\s*([\d.]+)%\s*│\s*(\d+)\s*│\s*(\S+)\s*│\s*(\S*)\s*│")
"""One row of record's "Hottest functions" table: self %, total %, samples, function, module."""


def run_record(pid: int, out: Path, duration: str = "4s", timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``antiprof record`` at 199 Hz on ``pid`` into ``out``, on a terminal 200 columns wide
    (so the table's function names are not cut)."""
    return subprocess.run(
        antiprof_command("record", "-d", duration, "-F", "199", "-p", str(pid), "-o", str(out)),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )
