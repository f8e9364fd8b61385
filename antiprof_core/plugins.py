"""Finding plugins: entry points in group ``antiprof``, one try per plugin, errors kept for later.

A plugin that fails to import is listed by ``antiprof plugins`` and is fatal only when the config
activates one of its consumer types; see ``config.PluginCatalog``.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping as MappingABC
from typing import Any

import attrs
import pluggy
from attrs import field, frozen

from antiprof_core import hookspecs
from antiprof_core.config import PluginCatalog
from antiprof_core.consumer import ConsumerType

DISABLE_ENV = "ANTIPROF_DISABLE_PLUGINS"


class PluginError(Exception):
    """A plugin broke the rules at start-up, e.g. two plugins claimed one consumer type."""


@frozen
class PluginInfo:
    name: str  # the entry point's name
    distribution: str | None = None
    version: str | None = None
    consumer_types: tuple[str, ...] = ()
    error: str | None = None  # why it could not be loaded
    disabled: bool = False


@frozen
class LoadedPlugins:
    manager: pluggy.PluginManager
    plugins: tuple[PluginInfo, ...]
    types: MappingABC[str, ConsumerType[Any]] = field(factory=dict)
    type_errors: MappingABC[str, str] = field(factory=dict)  # consumer type -> why it is unusable

    @property
    def catalog(self) -> PluginCatalog:
        # A broken plugin's entry point name is the consumer type it most likely offers (naming rule).
        errors = {p.name: p.error for p in self.plugins if p.error is not None}
        disabled = frozenset(p.name for p in self.plugins if p.disabled)
        return PluginCatalog(types=self.types, load_errors={**errors, **self.type_errors}, disabled=disabled)


def new_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def disabled_plugins(environ: MappingABC[str, str]) -> set[str]:
    return {name.strip() for name in environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def load_plugins(environ: MappingABC[str, str] | None = None) -> LoadedPlugins:
    """Load every installed plugin that is not disabled; never raises for one broken plugin."""
    environ = os.environ if environ is None else environ
    manager = new_plugin_manager()
    disabled = disabled_plugins(environ)
    infos: list[PluginInfo] = []
    for entry_point in sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME), key=lambda e: e.name):
        dist = entry_point.dist
        common: dict[str, Any] = {
            "name": entry_point.name,
            "distribution": dist.name if dist else None,
            "version": dist.version if dist else None,
        }
        if entry_point.name in disabled:
            infos.append(PluginInfo(**common, disabled=True))
            continue
        try:
            module = entry_point.load()
            manager.register(module, name=entry_point.name)
        except Exception as exc:
            infos.append(PluginInfo(**common, error=f"{type(exc).__name__}: {exc}"))
            continue
        infos.append(PluginInfo(**common))
    manager.check_pending()
    found = _collect_types(manager)
    infos = [_with_types(info, found.owned, found.plugin_errors) for info in infos]
    return LoadedPlugins(manager=manager, plugins=tuple(infos), types=found.types, type_errors=found.type_errors)


def consumer_types(manager: pluggy.PluginManager) -> dict[str, ConsumerType[Any]]:
    """The consumer types registered through ``manager``; raises PluginError on a clash."""
    found = _collect_types(manager)
    if found.plugin_errors:
        raise PluginError(next(iter(found.plugin_errors.values())))
    return found.types


@frozen
class _FoundTypes:
    types: dict[str, ConsumerType[Any]]
    owned: dict[str, list[str]]  # plugin -> its types
    plugin_errors: dict[str, str]
    type_errors: dict[str, str]  # a type claimed twice is nobody's


def _collect_types(manager: pluggy.PluginManager) -> _FoundTypes:
    """Call the hook once per plugin so each type is known with its owner."""
    types: dict[str, ConsumerType[Any]] = {}
    owner_of: dict[str, str] = {}
    owned: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    clashes: dict[str, str] = {}
    for plugin_name, plugin in manager.list_name_plugin():
        if not hasattr(plugin, "antiprof_register_consumers"):
            continue
        registered: list[ConsumerType[Any]] = []
        try:
            plugin.antiprof_register_consumers(register=registered.append)
        except Exception as exc:
            errors[plugin_name] = f"antiprof_register_consumers failed: {type(exc).__name__}: {exc}"
            continue
        for consumer_type in registered:
            if not isinstance(consumer_type, ConsumerType):
                errors[plugin_name] = f"registered {consumer_type!r}, not a ConsumerType"
                continue
            if consumer_type.name in owner_of:
                message = (
                    f"consumer type '{consumer_type.name}' is registered by both plugin "
                    f"'{owner_of[consumer_type.name]}' and plugin '{plugin_name}'"
                )
                errors[plugin_name] = clashes[consumer_type.name] = message
                types.pop(consumer_type.name, None)
                continue
            types[consumer_type.name] = consumer_type
            owner_of[consumer_type.name] = plugin_name
            owned.setdefault(plugin_name, []).append(consumer_type.name)
    return _FoundTypes(types, owned, errors, clashes)


def _with_types(info: PluginInfo, owned: dict[str, list[str]], errors: dict[str, str]) -> PluginInfo:
    return attrs.evolve(info, consumer_types=tuple(owned.get(info.name, ())), error=info.error or errors.get(info.name))
