"""`antiprof record` on the real sampler: the hottest functions, self and total, and the perf command."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from antiprof_core.testing import antiprof_command, require_bpf
from antiprof_core.testing.workloads import TWO_FUNCTION_CALLERS, TWO_FUNCTION_SHARES, build_two_function_workload

pytestmark = pytest.mark.bpf

ROW = re.compile(r"│\s*([\d.]+)%\s*│\s*([\d.]+)%\s*│\s*(\d+)\s*│\s*(\S+)\s*│\s*(\S*)\s*│")


def test_record_prints_self_and_total_shares_and_the_perf_report_command(tmp_path: Path) -> None:
    require_bpf()
    program = build_two_function_workload(tmp_path)
    workload = subprocess.Popen([str(program)])  # until killed below
    out = tmp_path / "data"
    try:
        result = subprocess.run(
            antiprof_command("record", "-d", "4s", "-F", "199", "-p", str(workload.pid), "-o", str(out)),
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        workload.kill()
        workload.wait()
    assert result.returncode == 0, result.stderr
    rows = {m.group(4): (float(m.group(1)), float(m.group(2))) for m in ROW.finditer(result.stdout)}
    for function, share in TWO_FUNCTION_SHARES.items():
        self_share, total_share = rows[function]
        assert abs(self_share - 100 * share) <= 5, (function, self_share)
        assert total_share >= self_share
    for caller in TWO_FUNCTION_CALLERS:
        assert rows[caller][1] >= 95  # every sample runs under cycle() and main()
    modules = {m.group(4): m.group(5) for m in ROW.finditer(result.stdout)}
    assert modules["work_heavy"] == program.name
    assert "[kernel.kallsyms]" in modules.values()  # clock_gettime's kernel frames, named
    [perf_file] = out.glob("*.perf.data")
    assert f"perf report -i {perf_file}" in result.stdout
