"""Versions come from one place, the package metadata, and every plugin pins the core it was built for."""

from __future__ import annotations

import importlib.metadata
import subprocess
import tomllib
from pathlib import Path

import pytest

from antiprof_core.testing import make_consumer, run_consumer, synthetic_window

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples/antiprof-example-top/pyproject.toml"
DISTRIBUTIONS = sorted([*REPO.glob("plugins/antiprof-*/pyproject.toml"), EXAMPLE])
CORE = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("pyproject", DISTRIBUTIONS, ids=lambda p: p.parent.name)
def test_every_plugin_pins_a_core_range_that_holds_this_core(pyproject: Path) -> None:
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = [d for d in project["dependencies"] if d.replace(" ", "").startswith("antiprof-core")]
    major, minor = (int(part) for part in CORE.split(".")[:2])
    assert pins == [f"antiprof-core>={major}.{minor},<{major}.{minor + 1}"]


@pytest.mark.parametrize("pyproject", DISTRIBUTIONS, ids=lambda p: p.parent.name)
def test_every_distribution_ships_py_typed(pyproject: Path) -> None:
    config = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    (package,) = [name for name in config["packages"] if "." not in name]  # its top-level package
    assert (pyproject.parent / package / "py.typed").exists()
    assert "py.typed" in config["package-data"][package]


def test_perf_reads_the_perfdata_version_from_the_package_metadata(tmp_path: Path) -> None:
    import antiprof_perfdata

    run_consumer(make_consumer(antiprof_perfdata, "perfdata", {"output_dir": str(tmp_path)}), [synthetic_window()])
    (perf_file,) = tmp_path.glob("*.perf.data")
    header = subprocess.run(
        ["perf", "report", "--header-only", "-i", str(perf_file)],
        capture_output=True,
        text=True,
        check=True,
        env={"PERF_BUILDID_DIR": str(tmp_path / "buildid"), "PATH": "/usr/bin:/bin"},
    ).stdout
    version = importlib.metadata.version("antiprof-perfdata")
    assert f"# perf version : antiprof-perfdata {version}\n" in header
