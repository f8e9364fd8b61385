"""Text a process chooses (its name, its executable's path) reaches an operator's terminal escaped,
and stays exact in the files sinks write."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from antiprof_core.logs import TextFormatter
from antiprof_core.terminal import terminal_safe
from antiprof_core.testing import antiprof_command, require_bpf
from antiprof_core.testing.workloads import build_two_function_workload

# Clears the screen, sets the window title, rings the bell; then a C1 CSI and a bidi override.
HOSTILE = "spin\x1b[2J\x1b]0;pwned\x07"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain name", "plain name"),
        (HOSTILE, "spin\\x1b[2J\\x1b]0;pwned\\x07"),
        ("tab\there\nnewline\r", "tab\\x09here\\x0anewline\\x0d"),
        ("c1\x9b31m del\x7f", "c1\\x9b31m del\\x7f"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("café 日本 _ZN2v8", "café 日本 _ZN2v8"),
    ],
)
def test_terminal_safe_escapes_control_characters_only(text: str, shown: str) -> None:
    assert terminal_safe(text) == shown


def test_text_log_lines_escape_what_processes_chose() -> None:
    record = logging.LogRecord("antiprof", logging.WARNING, __file__, 1, "cannot read %s", (HOSTILE,), None)
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line == "WARNING cannot read spin\\x1b[2J\\x1b]0;pwned\\x07"


@pytest.mark.bpf
def test_record_prints_a_hostile_process_name_escaped_and_writes_it_exactly(tmp_path: Path) -> None:
    require_bpf()
    program = tmp_path / HOSTILE
    shutil.copy(build_two_function_workload(tmp_path), program)
    workload = subprocess.Popen([str(program), "60"])
    comm = HOSTILE.encode()[:15]  # the kernel keeps 15 bytes of the executable's name
    out = tmp_path / "data"
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{workload.pid}/comm").read_bytes().rstrip(b"\n") != comm:  # exec has happened
            assert time.monotonic() < deadline, "the workload never started"
            time.sleep(0.01)
        result = subprocess.run(
            antiprof_command("record", "-d", "3s", "-F", "199", "-p", str(workload.pid), "-o", str(out)),
            capture_output=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "300"},
        )
    finally:
        workload.kill()
        workload.wait()
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"\x1b" not in result.stdout and b"\x07" not in result.stdout
    assert b"\x1b" not in result.stderr and b"\x07" not in result.stderr
    assert "spin\\x1b[2J\\x1b]0;pwned\\x07" in result.stdout.decode()  # the module column, escaped
    windows = [json.loads(line) for line in (out / "antiprof.jsonl").read_text().splitlines()]
    processes = {p["pid"]: p for w in windows for p in w["processes"]}
    assert processes[workload.pid]["name"] == comm.decode()  # exact, not escaped
    assert processes[workload.pid]["executable"] == str(program)
