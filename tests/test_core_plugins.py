"""Plugin discovery through real entry points of installed distributions, and in-process through
``antiprof_core.testing``: hooks go through pluggy, and a broken plugin is listed, never fatal."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import click
import pytest

from antiprof_core import AgentInfo, ConsumerType, hookimpl
from antiprof_core.agent import Agent
from antiprof_core.config import PluginCatalog, SamplerConfig, build_config
from antiprof_core.plugins import consumer_types
from antiprof_core.sources import SourceContext, WindowSource
from antiprof_core.testing import load_test_plugins, plugin_manager

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples/antiprof-example-top"


def _fake_install(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    """What an installer leaves behind: the module and a .dist-info with METADATA and entry points."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[antiprof]\n{entry_name} = {module}\n")


BAD_PLUGINS = {
    "broken": "raise ImportError('libfoo.so.1 not found')\n",
    "copycat": "from antiprof_core import ConsumerType, hookimpl\nimport attrs\n"
    "@attrs.frozen\nclass C:\n    pass\n"
    "@hookimpl\ndef antiprof_register_consumers(register):\n"
    "    register(ConsumerType('top', C, lambda c, ctx: None))\n",
    "misspelled": "from antiprof_core import hookimpl\n"
    "@hookimpl\ndef antiprof_register_consumer(register):\n    pass\n",
    "raiser": "from antiprof_core import hookimpl\n"
    "@hookimpl\ndef antiprof_register_consumers(register):\n    raise RuntimeError('no licence key')\n",
    "twice": "from antiprof_core import ConsumerType, hookimpl\nimport attrs\n"
    "@attrs.frozen\nclass C:\n    pass\n"
    "@hookimpl\ndef antiprof_register_consumers(register):\n"
    "    register(ConsumerType('dup', C, lambda c, ctx: None))\n"
    "    register(ConsumerType('dup', C, lambda c, ctx: None))\n",
    "hijack": "import click\nfrom antiprof_core import hookimpl\n"
    "@click.command('run')\ndef run():\n    click.echo('hijacked')\n"
    "@hookimpl\ndef antiprof_register_commands(cli):\n    cli.add_command(run)\n",
    # A plugin that works: a command, lifecycle hooks that omit their argument, and an unmarked
    # function with a hook's name that must never be called.
    "lifecycle": "import os\nimport click\nfrom antiprof_core import hookimpl\n"
    "def _log(word):\n"
    "    with open(os.environ.get('LIFECYCLE_LOG', os.devnull), 'a') as f:\n        f.write(word + '\\n')\n"
    "@click.command()\n@click.argument('who')\ndef hello(who):\n    '''Say hello from a plugin.'''\n"
    "    click.echo(f'hello {who} from a plugin')\n"
    "@hookimpl\ndef antiprof_register_commands(cli):\n    cli.add_command(hello)\n"
    "@hookimpl\ndef antiprof_startup():\n    _log('startup')\n"
    "@hookimpl\ndef antiprof_shutdown():\n    _log('shutdown')\n"
    "def antiprof_register_consumers(register):\n    raise RuntimeError('an unmarked function was called')\n",
}

BAD_ERRORS = {
    "broken": "ImportError: libfoo.so.1 not found",
    "misspelled": "PluginValidationError: unknown hook 'antiprof_register_consumer' "
    "(did you mean 'antiprof_register_consumers'?)",
    "raiser": "antiprof_register_consumers failed: RuntimeError: no licence key",
    "twice": "antiprof_register_consumers registered 'dup' twice",
    "hijack": "command 'run' already exists; the plugin's commands are not added",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory holding the example plugin (installed by pip) and the plugins above."""
    site = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--target", str(site), str(EXAMPLE)],
        check=True,
        capture_output=True,
    )
    for name, source in BAD_PLUGINS.items():
        _fake_install(site, f"antiprof-{name}", f"antiprof_{name}", source, name)
    return site


def _plugins(run_cli: Any, site: Path, **env: str) -> dict[str, dict[str, Any]]:
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site), **env})
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


def test_installed_plugins_are_listed_with_distribution_version_and_types(run_cli: Any, site: Path) -> None:
    plugins = _plugins(run_cli, site, ANTIPROF_DISABLE_PLUGINS="copycat")
    assert plugins["json"] == {
        "name": "json",
        "distribution": "antiprof-json",
        "version": importlib.metadata.version("antiprof-json"),
        "consumer_types": ["json"],
        "source_types": [],
        "commands": [],
        "status": "ok",
        "error": None,
    }
    assert plugins["top"]["distribution"] == "antiprof-example-top"
    assert plugins["top"]["consumer_types"] == ["top"] and plugins["top"]["status"] == "ok"
    assert plugins["lifecycle"]["commands"] == ["hello"] and plugins["lifecycle"]["status"] == "ok"
    assert plugins["copycat"]["status"] == "disabled"


def test_each_broken_plugin_is_listed_with_its_error_and_left_out(run_cli: Any, site: Path) -> None:
    plugins = _plugins(run_cli, site, ANTIPROF_DISABLE_PLUGINS="copycat")
    for name, error in BAD_ERRORS.items():
        assert (plugins[name]["status"], plugins[name]["error"]) == ("error", error), name
        assert plugins[name]["consumer_types"] == [] and plugins[name]["commands"] == []
    table = run_cli("plugins", env={"PYTHONPATH": str(site), "COLUMNS": "400"})
    assert table.returncode == 0, table.stderr
    assert "error: ImportError: libfoo.so.1 not found" in table.stdout
    assert "unknown hook 'antiprof_register_consumer'" in table.stdout


def test_run_record_and_config_work_with_broken_plugins_installed(run_cli: Any, site: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(site), "LIFECYCLE_LOG": str(tmp_path / "lifecycle.log")}
    config = tmp_path / "a.toml"
    out = tmp_path / "w.jsonl"
    config.write_text(f'[sampler]\nsource = "synthetic"\nwindow = "1s"\n[consumers.json]\npath = "{out}"\n')
    checked = run_cli("config", "check", str(config), env=env)
    assert (checked.returncode, checked.stdout) == (0, f"{config}: ok; consumers: json (json)\n"), checked.stderr
    shown = run_cli("config", "show", str(config), env=env)
    assert shown.returncode == 0 and 'source = "synthetic"' in shown.stdout, shown.stderr
    ran = run_cli("run", "-c", str(config), "--duration", "1s", env=env)
    assert ran.returncode == 0, ran.stderr
    assert "hijacked" not in ran.stdout and len(out.read_text().splitlines()) >= 1
    assert (tmp_path / "lifecycle.log").read_text() == "startup\nshutdown\n"  # called without agent_info
    recorded = run_cli("record", "--source", "synthetic", "-d", "1s", "-o", str(tmp_path / "rec"), env=env)
    assert recorded.returncode == 0, recorded.stderr
    assert "Hottest functions" in recorded.stdout


def test_a_plugin_command_appears_in_help_and_runs(run_cli: Any, site: Path) -> None:
    helped = run_cli("--help", env={"PYTHONPATH": str(site)})
    assert helped.returncode == 0, helped.stderr
    assert re.search(r"^  hello +Say hello from a plugin\.$", helped.stdout, re.MULTILINE), helped.stdout
    said = run_cli("hello", "world", env={"PYTHONPATH": str(site)})
    assert (said.returncode, said.stdout) == (0, "hello world from a plugin\n"), said.stderr


def test_two_plugins_claiming_one_type_is_an_error_naming_both(run_cli: Any, site: Path, tmp_path: Path) -> None:
    plugins = _plugins(run_cli, site)
    message = "consumer type 'top' is registered by both plugin 'copycat' and plugin 'top'"
    for owner in ("top", "copycat"):  # neither owns it: the type is left out
        assert (plugins[owner]["status"], plugins[owner]["error"]) == ("error", message)
        assert plugins[owner]["consumer_types"] == []
    config = tmp_path / "a.toml"
    config.write_text("[consumers.top]\n")
    result = run_cli("config", "check", str(config), env={"PYTHONPATH": str(site)})
    assert result.returncode == 2
    assert result.stderr == f"antiprof: {config}: consumers.top: consumer type 'top' failed to load: {message}\n"


def test_a_broken_plugin_is_fatal_only_when_activated(run_cli: Any, site: Path, tmp_path: Path) -> None:
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


def test_plugin_config_is_validated_by_its_own_class(run_cli: Any, site: Path, tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text("[consumers.top]\nlimit = 1000\n")
    result = run_cli(
        "config", "check", str(config), env={"PYTHONPATH": str(site), "ANTIPROF_DISABLE_PLUGINS": "copycat"}
    )
    assert result.returncode == 2
    assert result.stderr == f"antiprof: {config}: consumers.top.limit: must be between 1 and 100, got 1000\n"


def test_a_disabled_plugin_says_so(run_cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text("[consumers.json]\n")
    result = run_cli("config", "check", str(config), env={"ANTIPROF_DISABLE_PLUGINS": "json"})
    assert result.returncode == 2
    assert (
        result.stderr
        == f"antiprof: {config}: consumers.json: consumer type 'json' is disabled by ANTIPROF_DISABLE_PLUGINS\n"
    )


def test_example_plugin_passes_mypy_strict_importing_only_antiprof_core() -> None:
    package = EXAMPLE / "antiprof_example_top"
    imports = {
        line.split()[1].split(".")[0]
        for line in (package / "__init__.py").read_text().splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imports == {"__future__", "collections", "attrs", "antiprof_core"}
    # Types come from the core's sources (an editable install is an import hook mypy cannot see);
    # only the example's own errors count, the core is checked by `make lint`.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent", str(package)],
        capture_output=True,
        text=True,
        cwd=EXAMPLE,
        env={**os.environ, "MYPYPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found")


# --- in process, through antiprof_core.testing --------------------------------------------------


@attrs.frozen
class _Options:
    pass


class _Sink:
    def consume(self, window: object) -> None:
        pass


def _make(config: _Options, context: object) -> Any:
    return _Sink()


def _type(name: str) -> ConsumerType[_Options]:
    return ConsumerType(name, _Options, _make)


class _OmitsArgument:
    """An implementation written against a spec it names no argument of: pluggy passes nothing."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def antiprof_register_consumers(self) -> None:
        self.calls += 1


class _Unmarked:
    def antiprof_register_consumers(self, register: Any) -> None:
        raise AssertionError("a function without @hookimpl was called")


class _Good:
    @hookimpl
    def antiprof_register_consumers(self, register: Any) -> None:
        register(_type("good"))


class _Raises:
    @hookimpl
    def antiprof_register_consumers(self, register: Any) -> None:
        register(_type("half"))
        raise ValueError("cannot find my licence")


def test_an_implementation_that_omits_an_argument_is_called_and_an_unmarked_one_is_not() -> None:
    omits = _OmitsArgument()
    assert consumer_types(plugin_manager(omits, _Unmarked(), _Good())) == {"good": _type("good")}
    assert omits.calls == 1


def test_one_plugins_failure_is_credited_to_it_and_the_others_go_on() -> None:
    loaded = load_test_plugins(good=_Good(), raises=_Raises(), omits=_OmitsArgument())
    by_name = {info.name: info for info in loaded.plugins}
    assert by_name["raises"].error == "antiprof_register_consumers failed: ValueError: cannot find my licence"
    assert by_name["raises"].consumer_types == ()  # what it registered before raising is left out
    assert (by_name["good"].error, by_name["good"].consumer_types) == (None, ("good",))
    assert by_name["omits"].error is None
    assert sorted(loaded.types) == ["good"]
    assert sorted(loaded.sources) == ["bpf", "replay", "synthetic"]  # the core's, through the same hook
    assert not loaded.manager.is_registered(_Raises)  # left out: none of its other hooks run


class _ExtraArgument:
    @hookimpl
    def antiprof_register_consumers(self, register: Any, extra: Any) -> None:
        raise AssertionError("pluggy refuses an argument the spec lacks, at registration")


class _Exits:
    @hookimpl
    def antiprof_register_consumers(self, register: Any) -> None:
        sys.exit(3)


def test_an_argument_the_spec_lacks_and_a_sys_exit_are_the_plugins_errors() -> None:
    loaded = load_test_plugins(extra=_ExtraArgument(), exits=_Exits(), good=_Good())
    by_name = {info.name: info for info in loaded.plugins}
    assert by_name["extra"].error is not None
    assert by_name["extra"].error.startswith(
        "PluginValidationError: Plugin 'extra' for hook 'antiprof_register_consumers' hookimpl definition: "
    )
    assert by_name["extra"].error.endswith(
        "Argument(s) {'extra'} are declared in the hookimpl but can not be found in the hookspec"
    )
    assert by_name["exits"].error == "antiprof_register_consumers failed: SystemExit: 3"
    assert sorted(loaded.types) == ["good"]


def test_startup_gets_agent_info_and_a_failing_shutdown_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[object] = []

    class Lifecycle:
        @hookimpl
        def antiprof_startup(self, agent_info: AgentInfo) -> None:
            seen.append(agent_info)

        @hookimpl
        def antiprof_shutdown(self) -> None:
            raise RuntimeError("disk gone")

    loaded = load_test_plugins(lifecycle=Lifecycle())
    data = {"sampler": {"source": "synthetic", "window": "50ms"}}
    config = build_config(data, loaded.catalog, {})
    agent = Agent(config, plugins=loaded.manager)
    assert agent.run(duration=0.2) == 0
    (info,) = seen
    assert isinstance(info, AgentInfo) and info.config is config and info.host is agent.host
    assert info.version == importlib.metadata.version("antiprof-core") and list(info.consumers) == []
    assert "plugin 'lifecycle': antiprof_shutdown failed: RuntimeError: disk gone" in caplog.text


def test_a_plugin_command_is_added_to_a_click_group_in_process() -> None:
    @click.command()
    def mine() -> None:
        pass

    class Commands:
        @hookimpl
        def antiprof_register_commands(self, cli: click.Group) -> None:
            cli.add_command(mine)

    group = click.Group("antiprof")
    loaded = load_test_plugins(commands=Commands()).add_commands(group)
    assert group.commands == {"mine": mine}
    assert loaded.plugins[0].commands == ("mine",)


def never_built(config: SamplerConfig, options: object, context: SourceContext) -> WindowSource:
    """The factory of a source type these tests register but never select."""
    raise AssertionError("the source was built")


def test_a_plugin_broken_in_one_hook_is_left_out_of_the_others() -> None:
    from antiprof_core import SourceType

    class HalfBroken:
        @hookimpl
        def antiprof_register_sources(self, register: Any) -> None:
            register(SourceType("mine", never_built))

        @hookimpl
        def antiprof_register_consumers(self, register: Any) -> None:
            raise RuntimeError("half")

    loaded = load_test_plugins(half=HalfBroken())
    assert loaded.plugins[0].error == "antiprof_register_consumers failed: RuntimeError: half"
    assert "mine" not in loaded.sources and loaded.plugins[0].source_types == ()


def test_a_plugin_cannot_replace_a_core_source() -> None:
    from antiprof_core import SourceType
    from antiprof_core.sources import builtin_sources

    class Impostor:
        @hookimpl
        def antiprof_register_sources(self, register: Any) -> None:
            register(SourceType("bpf", never_built))

    loaded = load_test_plugins(impostor=Impostor())
    assert loaded.plugins[0].error == "source 'bpf' is antiprof-core's own; not replaced"
    assert loaded.sources["bpf"] == builtin_sources()["bpf"]


def test_catalog_without_the_loader_still_knows_the_core_sources() -> None:
    assert sorted(PluginCatalog().sources) == ["bpf", "replay", "synthetic"]
