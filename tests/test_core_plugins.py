"""Plugin discovery through real entry points of installed distributions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fake_install(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    """What an installer leaves behind: the module and a .dist-info with METADATA and entry points."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[antiprof]\n{entry_name} = {module}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory holding the example plugin (installed by pip) and two bad ones."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(REPO / "examples/antiprof-example-top"),
        ],
        check=True,
        capture_output=True,
    )
    _fake_install(site, "antiprof-broken", "antiprof_broken", "raise ImportError('libfoo.so.1 not found')\n", "broken")
    _fake_install(
        site,
        "antiprof-copycat",
        "antiprof_copycat",
        "from antiprof_core import ConsumerType, hookimpl\nimport attrs\n"
        "@attrs.frozen\nclass C:\n    pass\n"
        "@hookimpl\ndef antiprof_register_consumers(register):\n"
        "    register(ConsumerType('top', C, lambda c, ctx: None))\n",
        "copycat",
    )
    return site


def _plugins(run_cli, site: Path, **env: str) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site), **env})
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


def test_installed_plugins_are_listed_with_distribution_version_and_types(run_cli, site: Path) -> None:  # type: ignore[no-untyped-def]
    plugins = _plugins(run_cli, site, ANTIPROF_DISABLE_PLUGINS="copycat")
    assert plugins["json"] == {
        "name": "json",
        "distribution": "antiprof-json",
        "version": "0.1.0",
        "consumer_types": ["json"],
        "status": "ok",
        "error": None,
    }
    assert plugins["top"]["distribution"] == "antiprof-example-top"
    assert plugins["top"]["consumer_types"] == ["top"] and plugins["top"]["status"] == "ok"
    assert plugins["broken"]["status"] == "error"
    assert plugins["broken"]["error"] == "ImportError: libfoo.so.1 not found"
    assert plugins["copycat"]["status"] == "disabled"


def test_two_plugins_claiming_one_type_is_an_error_naming_both(run_cli, site: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plugins = _plugins(run_cli, site)
    message = "consumer type 'top' is registered by both plugin 'copycat' and plugin 'top'"
    assert plugins["top"]["error"] == message
    config = tmp_path / "a.toml"
    config.write_text("[consumers.top]\n")
    result = run_cli("config", "check", str(config), env={"PYTHONPATH": str(site)})
    assert result.returncode == 2
    assert result.stderr == f"antiprof: {config}: consumers.top: consumer type 'top' failed to load: {message}\n"


def test_a_broken_plugin_is_fatal_only_when_activated(run_cli, site: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"PYTHONPATH": str(site), "ANTIPROF_DISABLE_PLUGINS": "copycat"}
    good = tmp_path / "good.toml"
    good.write_text('[sampler]\nsource = "synthetic"\nwindow = "1s"\n[consumers.top]\nlimit = 2\n')
    result = run_cli("run", "-c", str(good), "--duration", "1s", env=env)
    assert result.returncode == 0, result.stderr
    assert "hot: synthetic_" in result.stderr  # the example plugin ran
    bad = tmp_path / "bad.toml"
    bad.write_text("[consumers.broken]\n")
    result = run_cli("run", "-c", str(bad), "--duration", "1s", env=env)
    assert result.returncode == 2
    assert result.stderr == (
        f"antiprof: {bad}: consumers.broken: consumer type 'broken' failed to load: "
        "ImportError: libfoo.so.1 not found\n"
    )


def test_plugin_config_is_validated_by_its_own_class(run_cli, site: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "a.toml"
    config.write_text("[consumers.top]\nlimit = 1000\n")
    result = run_cli(
        "config", "check", str(config), env={"PYTHONPATH": str(site), "ANTIPROF_DISABLE_PLUGINS": "copycat"}
    )
    assert result.returncode == 2
    assert result.stderr == f"antiprof: {config}: consumers.top.limit: must be between 1 and 100, got 1000\n"


def test_a_disabled_plugin_says_so(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "a.toml"
    config.write_text("[consumers.json]\n")
    result = run_cli("config", "check", str(config), env={"ANTIPROF_DISABLE_PLUGINS": "json"})
    assert result.returncode == 2
    assert (
        result.stderr
        == f"antiprof: {config}: consumers.json: consumer type 'json' is disabled by ANTIPROF_DISABLE_PLUGINS\n"
    )
