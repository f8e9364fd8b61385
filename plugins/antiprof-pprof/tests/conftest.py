"""The real readers the tests check our profiles with: ``go tool pprof`` and npm ``pprof-format``.

Both are installed by scripts/setup-system.sh (Debian golang-go; pprof-format pinned in tests/js).
A missing reader fails the test with the set-up step to run: a skipped reader checks nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from attrs import frozen

from antiprof_core.summary import HottestFunctions
from antiprof_core.testing.workloads import build_two_function_workload

REPO = Path(__file__).resolve().parents[3]
NODE_MODULES = REPO / "tests" / "js" / "node_modules"
DECODER = Path(__file__).with_name("decode_pprof.mjs")
SETUP = "run scripts/setup-system.sh (make setup)"


@frozen
class TopRow:
    function: str
    flat_percent: float
    cum_percent: float


class GoPprof:
    """``go tool pprof -top`` with its state (saved profiles, caches) kept in a private directory."""

    def __init__(self, home: Path) -> None:
        go = shutil.which("go")
        if go is None:
            pytest.fail(f"go is not installed: {SETUP}")
        self.go = go
        home.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, HOME=str(home), PPROF_TMPDIR=str(home), GOCACHE=str(home / "gocache"))

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.go, "tool", "pprof", *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def top(self, *sources: str, timeout: float = 120) -> dict[str, TopRow]:
        """Every function's flat% and cum% of sample counts, by name."""
        done = self.run("-top", "-sample_index=samples", "-nodecount=100000", "-nodefraction=0", "-edgefraction=0",
                        *sources, timeout=timeout)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return parse_top(done.stdout)


def parse_top(text: str) -> dict[str, TopRow]:
    rows: dict[str, TopRow] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if line.split() == ["flat", "flat%", "sum%", "cum", "cum%"]:
            break
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            rows[fields[5]] = TopRow(fields[5], float(fields[1].rstrip("%")), float(fields[4].rstrip("%")))
    return rows


def decode_with_pprof_format(*paths: Path) -> list[dict[str, Any]]:
    """What the npm pprof-format decoder reads in each file (see decode_pprof.mjs)."""
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "pprof-format").is_dir():
        pytest.fail(f"node or tests/js/node_modules/pprof-format is missing: {SETUP}")
    done = subprocess.run(
        [node, str(DECODER), str(NODE_MODULES), *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    decoded: list[dict[str, Any]] = json.loads(done.stdout)
    return decoded


def table_shares(table: HottestFunctions) -> dict[str, tuple[float, float]]:
    """antiprof's own table as percentages: function -> (self %, total %)."""
    return {
        cost.function: (100 * cost.self_samples / table.samples, 100 * cost.total_samples / table.samples)
        for cost in table.top(limit=100_000)
    }


def decoded_shares(profiles: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Self and total % of sample counts per function, computed from pprof-format's decode."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for profile in profiles:
        for sample in profile["samples"]:
            count = sample["values"][0]
            samples += count
            own[sample["stack"][0]] = own.get(sample["stack"][0], 0) + count
            for name in set(sample["stack"]):
                total[name] = total.get(name, 0) + count
    return {name: (100 * own.get(name, 0) / samples, 100 * total[name] / samples) for name in total}


@pytest.fixture
def go_pprof(tmp_path: Path) -> GoPprof:
    return GoPprof(tmp_path / "go-pprof-home")


@pytest.fixture(scope="session")
def two_function_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_function_workload(tmp_path_factory.mktemp("workload"))


class Readers:
    """The helpers above, for test modules (which cannot import conftest under --import-mode=importlib)."""

    decode = staticmethod(decode_with_pprof_format)
    table_shares = staticmethod(table_shares)
    decoded_shares = staticmethod(decoded_shares)
    parse_top = staticmethod(parse_top)


@pytest.fixture(scope="session")
def readers() -> type[Readers]:
    return Readers
