"""Facts about the machine that go into perf.data headers and OTLP resources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from antiprof_core.host import online_cpus, read_host


@pytest.mark.parametrize(("text", "count"), [("0-3\n", 4), ("0\n", 1), ("0-3,6\n", 5), ("0,2,4-5\n", 4)])
def test_online_cpus_counts_the_kernels_list(tmp_path: Path, text: str, count: int) -> None:
    online = tmp_path / "online"
    online.write_text(text)
    assert online_cpus(online) == count


def test_online_cpus_is_not_the_agents_affinity() -> None:
    """Pinned to one CPU (taskset), the agent still reports every online CPU."""
    expected = online_cpus()
    if expected < 2:
        pytest.skip("needs a machine with two online CPUs")
    script = "from antiprof_core.host import read_host; print(read_host().online_cpus)"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == expected
    assert read_host().online_cpus == expected
