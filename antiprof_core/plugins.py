"""Finding plugins: entry points in group ``antiprof``, each loaded, validated and called on its own.

A plugin that fails to import, has a hook pluggy refuses (a misspelled name, an argument the
spec lacks), raises in a hook, or registers a type another plugin also registers, is listed by
``antiprof plugins`` with its error and left out; every other plugin works. Such a failure is
fatal only when the config activates one of its types; see ``config.PluginCatalog``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterator
from collections.abc import Mapping as MappingABC
from typing import TYPE_CHECKING, Any

import attrs
import pluggy
from attrs import field, frozen

from antiprof_core import hookspecs
from antiprof_core import sources as core_sources
from antiprof_core.config import PluginCatalog
from antiprof_core.consumer import ConsumerType
from antiprof_core.sources import SourceType

if TYPE_CHECKING:
    import click

DISABLE_ENV = "ANTIPROF_DISABLE_PLUGINS"
CORE_PLUGIN_NAME = "antiprof-core"  # the core's own hook implementations (its window sources)

logger = logging.getLogger("antiprof.plugins")


class PluginError(Exception):
    """A plugin broke the rules at start-up, e.g. two plugins claimed one consumer type."""


@frozen
class PluginInfo:
    name: str  # the entry point's name
    distribution: str | None = None
    version: str | None = None
    consumer_types: tuple[str, ...] = ()
    source_types: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    error: str | None = None  # why it could not be loaded, or why part of it is unusable
    disabled: bool = False


@frozen
class LoadedPlugins:
    manager: pluggy.PluginManager
    plugins: tuple[PluginInfo, ...]
    types: MappingABC[str, ConsumerType[Any]] = field(factory=dict)
    type_errors: MappingABC[str, str] = field(factory=dict)  # consumer type -> why it is unusable
    sources: MappingABC[str, SourceType[Any]] = field(factory=dict)

    @property
    def catalog(self) -> PluginCatalog:
        # A broken plugin's entry point name is the consumer type it most likely offers (naming rule).
        errors = {p.name: p.error for p in self.plugins if p.error is not None}
        disabled = frozenset(p.name for p in self.plugins if p.disabled)
        return PluginCatalog(
            types=self.types,
            load_errors={**errors, **self.type_errors},
            disabled=disabled,
            sources=self.sources,
        )

    def add_commands(self, cli: click.Group) -> LoadedPlugins:
        """Call ``antiprof_register_commands`` per plugin; a plugin whose command clashes is refused."""
        infos = {info.name: info for info in self.plugins}
        for plugin_name, call in _single_callers(self.manager, "antiprof_register_commands"):
            info = infos.get(plugin_name)
            before = dict(cli.commands)
            error = None
            try:
                call(cli=cli)
            except (Exception, SystemExit) as exc:
                error = f"antiprof_register_commands failed: {_describe_error(exc)}"
            replaced = sorted(name for name in before if cli.commands.get(name) is not before[name])
            if replaced and error is None:
                error = f"command '{replaced[0]}' already exists; the plugin's commands are not added"
            added = sorted(set(cli.commands) - set(before))
            if error is not None:
                cli.commands.clear()
                cli.commands.update(before)
                added = []
            if info is not None:
                infos[plugin_name] = attrs.evolve(info, commands=tuple(added), error=info.error or error)
        return attrs.evolve(self, plugins=tuple(infos.values()))


def new_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def disabled_plugins(environ: MappingABC[str, str]) -> set[str]:
    return {name.strip() for name in environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def register_plugin(manager: pluggy.PluginManager, plugin: object, name: str | None = None) -> str | None:
    """Register ``plugin`` and validate its hooks now; on any problem, unregister it and say why.

    pluggy checks a hook's arguments at ``register`` but a misspelled hook name only at
    ``check_pending``, for every plugin at once; checking this plugin's hook callers ourselves
    (public ``get_hookcallers``/``has_spec``) credits the error to the plugin that has it.
    """
    try:
        manager.register(plugin, name=name)
    except Exception as exc:
        return _describe_error(exc)
    unknown = [caller.name for caller in manager.get_hookcallers(plugin) or [] if not caller.has_spec()]
    if unknown:
        manager.unregister(plugin)
        known = sorted(name for name in dir(hookspecs) if name.startswith("antiprof_"))
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (antiprof's hooks: {', '.join(known)})"
        return f"PluginValidationError: unknown hook '{unknown[0]}'{hint}"
    return None


def load_plugins(environ: MappingABC[str, str] | None = None) -> LoadedPlugins:
    """Load every installed plugin that is not disabled; never raises for one broken plugin."""
    environ = os.environ if environ is None else environ
    manager = new_plugin_manager()
    manager.register(core_sources, name=CORE_PLUGIN_NAME)
    disabled = disabled_plugins(environ)
    infos: list[PluginInfo] = []
    for entry_point in sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME), key=lambda e: e.name):
        dist = entry_point.dist
        info = PluginInfo(
            name=entry_point.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
        )
        if entry_point.name in disabled:
            infos.append(attrs.evolve(info, disabled=True))
            continue
        try:
            module = entry_point.load()
        except BaseException as exc:  # SystemExit or KeyboardInterrupt at import is still the plugin's fault
            if isinstance(exc, KeyboardInterrupt):
                raise
            infos.append(attrs.evolve(info, error=_describe_error(exc)))
            continue
        error = register_plugin(manager, module, name=entry_point.name)
        infos.append(attrs.evolve(info, error=error))
    return collect(manager, infos)


def collect(manager: pluggy.PluginManager, infos: list[PluginInfo]) -> LoadedPlugins:
    """Ask every registered plugin for its consumer and source types, each plugin on its own."""
    consumers = _collect_types(manager, "antiprof_register_consumers", ConsumerType)
    sources = _collect_types(manager, "antiprof_register_sources", SourceType)
    broken = {**consumers.broken, **sources.broken}
    for plugin_name in broken:  # left out: none of its hooks run and none of its types are used
        plugin = manager.get_plugin(plugin_name)
        if plugin is not None and plugin_name != CORE_PLUGIN_NAME:
            manager.unregister(plugin)
    for found in (consumers, sources):
        for plugin_name in broken:
            for type_name in found.owned.pop(plugin_name, []):
                del found.types[type_name]
    infos = [
        attrs.evolve(
            info,
            consumer_types=tuple(consumers.owned.get(info.name, ())),
            source_types=tuple(sources.owned.get(info.name, ())),
            error=info.error or consumers.errors.get(info.name) or sources.errors.get(info.name),
        )
        for info in infos
    ]
    return LoadedPlugins(
        manager=manager,
        plugins=tuple(infos),
        types=consumers.types,
        type_errors=consumers.clashes,
        sources=sources.types,
    )


def consumer_types(manager: pluggy.PluginManager) -> dict[str, ConsumerType[Any]]:
    """The consumer types registered through ``manager``; raises PluginError for any plugin's error."""
    found = _collect_types(manager, "antiprof_register_consumers", ConsumerType)
    if found.errors:
        raise PluginError(next(iter(found.errors.values())))
    return found.types


def source_types(manager: pluggy.PluginManager) -> dict[str, SourceType[Any]]:
    """The source types registered through ``manager``; raises PluginError for any plugin's error."""
    found = _collect_types(manager, "antiprof_register_sources", SourceType)
    if found.errors:
        raise PluginError(next(iter(found.errors.values())))
    return found.types


def _single_callers(manager: pluggy.PluginManager, hook_name: str) -> Iterator[tuple[str, pluggy.HookCaller]]:
    """For each plugin implementing ``hook_name`` (by name), a hook caller holding only its implementation.

    pluggy's public ``subset_hook_caller`` makes it: pluggy still matches arguments by name (so an
    implementation that omits an argument is called with the ones it names) and still applies
    tracing and monitoring, while an exception stays this plugin's instead of stopping the
    plugins after it, as a single ``manager.hook.X(...)`` call would.
    """
    implementations = getattr(manager.hook, hook_name).get_hookimpls()
    plugins = [impl.plugin for impl in implementations]
    for impl in sorted(implementations, key=lambda i: i.plugin_name):
        others = [plugin for plugin in plugins if plugin is not impl.plugin]
        yield impl.plugin_name, manager.subset_hook_caller(hook_name, remove_plugins=others)


def call_each(manager: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any, str | None]]:
    """Call ``hook_name`` once per implementing plugin: ``(plugin name, result, error line or None)``."""
    for plugin_name, call in _single_callers(manager, hook_name):
        try:
            result = call(**kwargs)
        except (Exception, SystemExit) as exc:  # a plugin's sys.exit() must not end the agent
            yield plugin_name, None, f"{hook_name} failed: {_describe_error(exc)}"
            continue
        yield plugin_name, result, None


def call_quietly(manager: pluggy.PluginManager, hook_name: str, log: logging.Logger, **kwargs: Any) -> None:
    """Call a notification hook (startup, shutdown) per plugin; a failure is logged with the plugin's name."""
    for plugin_name, _, error in call_each(manager, hook_name, **kwargs):
        if error is not None:
            log.error("plugin '%s': %s", plugin_name, error)


@frozen
class _FoundTypes:
    types: dict[str, Any]
    owned: dict[str, list[str]]  # plugin -> its usable types
    errors: dict[str, str]  # plugin -> its error
    broken: dict[str, str]  # plugins left out entirely (a subset of errors)
    clashes: dict[str, str]  # a type registered by two plugins is nobody's: type -> why


def _collect_types(manager: pluggy.PluginManager, hook_name: str, kind: type) -> _FoundTypes:
    """Call a registering hook once per plugin so each type is known with its owner."""
    registered_by: dict[str, list[Any]] = {}
    errors: dict[str, str] = {}
    for plugin_name, (registered, error) in _each_registration(manager, hook_name):
        wrong = [item for item in registered if not isinstance(item, kind)]
        names = [str(getattr(item, "name", "")) for item in registered if isinstance(item, kind)]
        twice = sorted({name for name in names if names.count(name) > 1})
        if error is None and wrong:
            error = f"{hook_name} registered {wrong[0]!r}, not a {kind.__name__}"
        if error is None and twice:
            error = f"{hook_name} registered '{twice[0]}' twice"
        if error is not None:
            errors[plugin_name] = error
            continue
        registered_by[plugin_name] = registered
    broken = dict(errors)
    owners: dict[str, list[str]] = {}
    for plugin_name, registered in registered_by.items():
        for item in registered:
            owners.setdefault(item.name, []).append(plugin_name)
    types: dict[str, Any] = {}
    owned: dict[str, list[str]] = {}
    clashes: dict[str, str] = {}
    noun = "consumer type" if kind is ConsumerType else "source"
    for plugin_name, registered in registered_by.items():
        for item in registered:
            claimants = owners[item.name]
            if CORE_PLUGIN_NAME in claimants and plugin_name != CORE_PLUGIN_NAME:  # the core's own stay its own
                errors.setdefault(plugin_name, f"{noun} '{item.name}' is antiprof-core's own; not replaced")
                continue
            if len(claimants) > 1 and plugin_name != CORE_PLUGIN_NAME:
                named = " and ".join(f"plugin '{name}'" for name in sorted(claimants))
                message = f"{noun} '{item.name}' is registered by both {named}"
                clashes[item.name] = message
                errors.setdefault(plugin_name, message)
                continue
            types[item.name] = item
            owned.setdefault(plugin_name, []).append(item.name)
    return _FoundTypes(types, owned, errors, broken, clashes)


def _each_registration(
    manager: pluggy.PluginManager, hook_name: str
) -> Iterator[tuple[str, tuple[list[Any], str | None]]]:
    """Per plugin, what it passed to ``register`` and its error; a hook that raises registers nothing."""
    for plugin_name, call in _single_callers(manager, hook_name):
        registered: list[Any] = []
        register: Callable[[Any], None] = registered.append
        try:
            call(register=register)
        except (Exception, SystemExit) as exc:
            yield plugin_name, ([], f"{hook_name} failed: {_describe_error(exc)}")
            continue
        yield plugin_name, (registered, None)


def _describe_error(exc: BaseException) -> str:
    """One line: the exception's type and its message, lines joined."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
