"""The ``antiprof`` command line. Exit codes: 0 done, 1 run-time failure, 2 bad usage or config."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import attrs
import click
import tomli_w
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from antiprof_core import __version__
from antiprof_core.agent import Agent, AgentError
from antiprof_core.config import (
    Config,
    ConfigError,
    build_config,
    config_to_dict,
    load_config,
    resolve_config_path,
)
from antiprof_core.exitguard import EXIT_GRACE_SECONDS, bound_exit
from antiprof_core.logs import TextFormatter, configure_logging, quiet_grpc
from antiprof_core.outputs import ensure_private_dir
from antiprof_core.plugins import LoadedPlugins, load_plugins
from antiprof_core.recording import SampleCounter, show_progress, snapshot, written_since
from antiprof_core.summary import HottestFunctions
from antiprof_core.terminal import terminal_safe
from antiprof_core.units import Duration, parse_duration

EXIT_USAGE = 2
DEFAULT_RECORD_DIR = "./antiprof-data"

stdout = Console(soft_wrap=True)


class DurationParam(click.ParamType[Duration, Any]):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Duration:
        if isinstance(value, Duration):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _fail(lines: list[str], code: int) -> NoReturn:
    for line in lines:
        click.echo(f"antiprof: {line}", err=True)
    sys.exit(code)


def _load(config_path: str | None, plugins: LoadedPlugins) -> Config:
    path = resolve_config_path(config_path, os.environ)
    try:
        if path is None:  # built-in defaults: print windows as JSON lines, so a bare run shows something
            data = {"consumers": {"json": {"path": "-"}}} if "json" in plugins.types else {}
            return build_config(data, plugins.catalog, os.environ)
        return load_config(path, plugins.catalog)
    except ConfigError as error:
        _fail(error.lines(), EXIT_USAGE)


def _log_options(function: Any) -> Any:
    function = click.option(
        "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
    )(function)
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Logs go to stderr; json writes one object per line.",
    )(function)


_loaded: LoadedPlugins | None = None


def _plugins() -> LoadedPlugins:
    """The installed plugins, loaded once per process (their commands are added to ``main`` then)."""
    global _loaded
    if _loaded is None:
        quiet_grpc()  # before any plugin imports grpc: its core reads the environment once
        _loaded = load_plugins().add_commands(main)
    return _loaded


class _PluginGroup(click.Group):
    """The top-level group: plugins' ``antiprof_register_commands`` run before any lookup, so
    ``antiprof --help`` lists their commands and ``antiprof THEIRS`` finds them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        _plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            _plugins()
        return super().get_command(ctx, cmd_name)


def _run_agent(agent: Agent, duration: float | None, reload: Callable[[], Config] | None = None) -> int:
    def on_reload(_signum: int, _frame: Any) -> None:
        assert reload is not None
        agent.logger.info("SIGHUP received: re-reading the config")
        agent.request_reload(reload)

    if reload is not None:
        signal.signal(signal.SIGHUP, on_reload)

    def on_signal(signum: int, _frame: Any) -> None:
        agent.logger.info("%s received: delivering the last window and shutting down", signal.Signals(signum).name)
        agent.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal ends the process at once
            signal.signal(sig, signal.SIG_DFL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        return agent.run(duration)
    except AgentError as exc:
        _fail([f"error: {exc}"], 1)


def _exit(code: int, logger: logging.Logger) -> NoReturn:
    """The agent's work is done and delivered: exit, within a bounded time whatever hangs at exit."""
    try:
        grace = float(os.environ.get("ANTIPROF_EXIT_GRACE", EXIT_GRACE_SECONDS))  # tests shorten it
    except ValueError:
        grace = EXIT_GRACE_SECONDS
    bound_exit(code, logger, grace)
    sys.exit(code)


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="antiprof")
def main() -> None:
    """antiprof: a continuous CPU profiler for Linux (eBPF sampling, plugin sinks)."""


@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    help="Config file [default: $ANTIPROF_CONFIG, else /etc/antiprof/antiprof.toml if present]",
)
@click.option("--duration", type=DurationParam(), help="Stop after this long (e.g. 30s); default: until a signal.")
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Write the agent's pid here once sampling has started; removed when it stops.",
)
@_log_options
def run(
    config_path: str | None, duration: Duration | None, ready_file: Path | None, log_format: str, log_level: str
) -> None:
    """Run the agent until SIGINT/SIGTERM or the duration ends; SIGHUP re-reads the config."""
    logger = configure_logging(log_format, log_level)
    plugins = _plugins()
    config = _load(config_path, plugins)
    path = config.path

    def reload() -> Config:
        if path is None:
            raise ConfigError(["no config file to re-read: the agent started with built-in defaults"])
        return load_config(path, plugins.catalog)

    code = _run_agent(Agent(config, logger, plugins=plugins.manager, ready_file=ready_file), duration, reload)
    _exit(code, logger)


@main.command()
@click.option(
    "-d",
    "--duration",
    type=DurationParam(),
    default="10s",
    show_default=True,
    help="How long to sample, with a unit: 500ms, 10s, 2m.",
)
@click.option(
    "-F",
    "--frequency",
    type=click.IntRange(1, 10_000),
    default=99,
    show_default=True,
    help="Samples per second per CPU.",
)
@click.option("-p", "--pid", "pids", type=click.IntRange(1), multiple=True, help="Only this process (repeatable).")
@click.option(
    "-o",
    "--output",
    "output_dir",
    default=DEFAULT_RECORD_DIR,
    show_default=True,
    metavar="DIR",
    help="Directory for perf.data, flamegraph.html and the JSON lines (created 0700).",
)
@click.option(
    "--source",
    type=click.Choice(["bpf", "synthetic"]),
    default="bpf",
    show_default=True,
    help="synthetic: seeded made-up stacks, for demos without BPF.",
)
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="How many functions to print.")
@_log_options
def record(
    duration: Duration,
    frequency: int,
    pids: tuple[int, ...],
    output_dir: str,
    source: str,
    top: int,
    log_format: str,
    log_level: str,
) -> None:
    """Profile now, write perf.data, flamegraph.html and JSON lines to DIR, then print the hottest functions."""
    logger = configure_logging(log_format, log_level)
    plugins = _plugins()
    out = Path(output_dir)
    window = Duration(min(float(duration), RECORD_WINDOW_SECONDS))
    data = {
        "sampler": {"source": source, "frequency_hz": frequency, "pids": list(pids), "window": str(window)},
        "consumers": _record_consumers(plugins, out, duration, window),
    }
    try:
        config = build_config(data, plugins.catalog, os.environ)
    except ConfigError as error:
        _fail(error.lines(), EXIT_USAGE)
    alive = _existing_pids(pids)  # after the config check: a PID out of range is a usage error, not a missing one
    if alive != config.sampler.pids:
        config = attrs.evolve(config, sampler=attrs.evolve(config.sampler, pids=alive))
    try:
        ensure_private_dir(out)
    except OSError as exc:
        _fail([f"{out}: cannot create the output directory: {exc.strerror}"], 1)
    before = snapshot(out)
    summary, counter = HottestFunctions(), SampleCounter()
    agent = Agent(
        config,
        logger,
        extra_consumers=[("summary", summary), ("progress", counter)],
        plugins=plugins.manager,
    )
    starting = "compiling the BPF program…" if source == "bpf" else "starting the synthetic source…"
    with show_progress(counter, float(duration), starting) as live_console:
        if live_console is not None and log_format == "text":  # log lines above the live bar, not through it
            handler = RichHandler(console=live_console, show_path=False)
            handler.setFormatter(TextFormatter())  # process-chosen text stays escaped
            logger.handlers[:] = [handler]
        code = _run_agent(agent, float(duration))
    _print_hottest(summary, top)
    _print_written(written_since(out, before))
    _exit(code, logger)


RECORD_WINDOW_SECONDS = 1.0  # short windows, so the sample count in the progress line moves


def _existing_pids(pids: tuple[int, ...]) -> tuple[int, ...]:
    """The -p processes that exist now; none at all is an error, a few missing is a warning."""
    if not pids:
        return pids
    alive = tuple(pid for pid in pids if os.path.isdir(f"/proc/{pid}"))
    missing = ", ".join(str(pid) for pid in pids if pid not in alive)
    if not alive:
        _fail([f"no such process: {missing} (-p); nothing to profile"], 1)
    if missing:
        click.echo(f"antiprof: warning: no such process: {missing} (-p); profiling the others", err=True)
    return alive


def _record_consumers(plugins: LoadedPlugins, out: Path, duration: Duration, window: Duration) -> dict[str, Any]:
    """perf.data, one flame graph of the whole run, and JSON lines in a file of this run's own."""
    consumers: dict[str, dict[str, Any]] = {}
    if "perfdata" in plugins.types:
        consumers["perfdata"] = {"output_dir": str(out)}
    if "flamegraph" in plugins.types:
        consumers["flamegraph"] = {
            "output_dir": str(out),
            "per_window": False,
            "latest": "flamegraph",
            "span": str(Duration(float(duration) + float(window) + 60.0)),  # the whole run, and a margin
            "title": "antiprof record",
        }
    if "json" in plugins.types:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = out / f"antiprof-{stamp}.jsonl"
        sequence = 1
        while path.exists() or path.is_symlink():
            path, sequence = out / f"antiprof-{stamp}-{sequence}.jsonl", sequence + 1
        consumers["json"] = {"path": str(path)}
    return consumers


def _print_written(paths: list[Path]) -> None:
    """Only what this run wrote: older runs' files in the same directory are not listed."""
    for path in paths:
        shown = _shown(str(path))
        if path.name.endswith(".perf.data"):
            stdout.print(f"perf.data written: [bold]perf report -i {shown}[/bold]")
        elif path.suffix == ".html":
            stdout.print(f"Flame graph written: [bold]{shown}[/bold] (open it in a browser)")
        elif path.suffix == ".jsonl":
            stdout.print(f"JSON lines written: {shown}")
        else:
            stdout.print(f"Written: {shown}")


def _print_hottest(summary: HottestFunctions, limit: int) -> None:
    if not summary.samples:
        stdout.print("No samples were recorded.")
        return
    table = Table(title=f"Hottest functions ({summary.samples} samples)")
    for column in ("Self", "Total", "Samples", "Function", "Module"):
        table.add_column(column, justify="right" if column in ("Self", "Total", "Samples") else "left")
    for cost in summary.top(limit):
        table.add_row(
            f"{100 * cost.self_samples / summary.samples:.1f}%",
            f"{100 * cost.total_samples / summary.samples:.1f}%",
            str(cost.self_samples),
            _shown(cost.function),
            _shown(cost.module),
        )
    stdout.print(table)


def _shown(text: str) -> str:
    """Process-chosen text for the terminal: control characters escaped, and [brackets] not rich markup."""
    return escape(terminal_safe(text))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins, their versions, consumer types and load errors."""
    loaded = _plugins()
    if as_json:
        rows = [
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "consumer_types": list(info.consumer_types),
                "source_types": list(info.source_types),
                "commands": list(info.commands),
                "status": "disabled" if info.disabled else "error" if info.error else "ok",
                "error": info.error,
            }
            for info in loaded.plugins
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="antiprof plugins")
    for column in ("Plugin", "Distribution", "Version", "Provides", "Status"):
        table.add_column(column)
    for info in loaded.plugins:
        status = "disabled" if info.disabled else f"[red]error: {_shown(info.error)}[/red]" if info.error else "ok"
        provides = [
            *info.consumer_types,
            *(f"source {name}" for name in info.source_types),
            *(f"command {name}" for name in info.commands),
        ]
        table.add_row(_shown(info.name), info.distribution or "", info.version or "", ", ".join(provides), status)
    stdout.print(table)


@main.group()
def config() -> None:
    """Validate or print a config file."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=True, path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE against the installed plugins; one line per problem, exit 2 if any."""
    loaded = _plugins()
    try:
        checked = load_config(file, loaded.catalog)
    except ConfigError as error:
        _fail(error.lines(), EXIT_USAGE)
    names = ", ".join(f"{c.name} ({c.type.name})" for c in checked.consumers) or "none"
    click.echo(f"{file}: ok; consumers: {names}")


@config.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=True, path_type=Path))
def config_show(file: Path | None) -> None:
    """Print the effective config (FILE, or the default one) with every default filled in, as TOML."""
    loaded = _plugins()
    effective = _load(str(file) if file else None, loaded)
    click.echo(tomli_w.dumps(_redacted(_without_none(config_to_dict(effective)))), nl=False)


_SECRET_WORDS = ("header", "token", "password", "secret", "authorization")
_URL_PASSWORD = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?[^/@:\s]*:)[^/@\s]*@")


def _redacted(value: Any, secret: bool = False) -> Any:
    """Header values, anything named like a secret and URL passwords (``user:PASSWORD@host``) are
    replaced: `config show` output gets pasted."""
    if isinstance(value, dict):
        return {k: _redacted(v, secret or any(w in k.lower() for w in _SECRET_WORDS)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, secret) for v in value]
    if isinstance(value, str) and secret and value:
        return "<redacted>"
    return _URL_PASSWORD.sub(r"\1<redacted>@", value) if isinstance(value, str) else value


def _without_none(value: Any) -> Any:
    """TOML has no null: leave unset optional keys out."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


if __name__ == "__main__":
    main()
