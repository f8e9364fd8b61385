"""The TOML config: attrs classes, one strict cattrs converter, and error text with paths.

Every problem becomes one line ``path: message`` (``consumers.collector.endpoint: ...``), so a
user can fix a file without reading a traceback. Plugins' config classes are structured by the
same converter and so get the same strictness, durations and sizes for free.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import tomllib
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from attrs import field, frozen
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from antiprof_core.consumer import ConsumerType
from antiprof_core.model import SamplingMode
from antiprof_core.units import ByteSize, Duration, format_duration, parse_duration, parse_size

DEFAULT_CONFIG_PATH = Path("/etc/antiprof/antiprof.toml")
CONFIG_ENV = "ANTIPROF_CONFIG"

T = TypeVar("T")


class ConfigError(Exception):
    """One or more problems, each a ``path: message`` line."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.source = source  # the file the problems are in, if any

    def lines(self) -> list[str]:
        return [f"{self.source}: {problem}" if self.source else problem for problem in self.problems]


class SourceKind(enum.Enum):
    BPF = "bpf"
    SYNTHETIC = "synthetic"


class FieldValueError(ValueError):
    """Raised by validators so the error line can name the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator: value > 0."""
    if value <= 0:
        raise FieldValueError(attribute.name, f"must be greater than 0, got {value}")


def between(low: int, high: int) -> Any:
    """attrs validator: low <= value <= high."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if not low <= value <= high:
            raise FieldValueError(attribute.name, f"must be between {low} and {high}, got {value}")

    return check


@frozen
class AgentConfig:
    node_name: str = ""  # empty: the hostname
    cluster_name: str = ""
    queue_size: int = field(default=8, validator=between(1, 10_000))  # windows per consumer
    shutdown_timeout: Duration = field(default=Duration(10.0), validator=positive)
    metrics_address: str = ""  # host:port to serve Prometheus /metrics on; empty: off


@frozen
class SyntheticConfig:
    """Shape of the seeded synthetic windows (``sampler.source = "synthetic"``)."""

    processes: int = field(default=20, validator=between(1, 1_000_000))
    stacks: int = field(default=500, validator=between(1, 10_000_000))
    depth: int = field(default=16, validator=between(1, 127))
    seed: int = 1


@frozen
class SamplerConfig:
    source: SourceKind = SourceKind.BPF
    frequency_hz: int = field(default=19, validator=between(1, 10_000))
    window: Duration = field(default=Duration(10.0), validator=positive)
    mode: SamplingMode = SamplingMode.AGGREGATE
    pids: tuple[int, ...] = ()  # empty: every process
    kernel_stacks: bool = True
    user_stacks: bool = True
    include_idle: bool = False
    max_stack_depth: int = field(default=127, validator=between(1, 127))
    max_stacks: int = field(default=0, validator=between(0, 10_000_000))  # 0: sized from frequency x CPUs x window
    synthetic: SyntheticConfig = field(factory=SyntheticConfig)


@frozen
class SymbolizerConfig:
    """``[symbolizer]``: memory for symbol tables of the files processes map, in MiB."""

    cache_mb: int = field(default=32, validator=between(1, 65_536))


@frozen
class ActiveConsumer:
    """A ``[consumers.NAME]`` section, resolved against the installed consumer types."""

    name: str
    type: ConsumerType[Any]
    config: Any  # an instance of type.config_class
    queue_size: int


@frozen
class Config:
    agent: AgentConfig = field(factory=AgentConfig)
    sampler: SamplerConfig = field(factory=SamplerConfig)
    consumers: tuple[ActiveConsumer, ...] = ()
    symbolizer: SymbolizerConfig = field(factory=SymbolizerConfig)
    path: Path | None = None  # where it was read from; None: built-in defaults


# --- the converter -------------------------------------------------------------------------

_TYPE_WORDS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _describe(value: Any) -> str:
    word = _TYPE_WORDS.get(type(value), type(value).__name__)
    return f"{word} ({value!r})" if isinstance(value, (bool, int, float, str)) else word


def _strict(kind: type) -> Any:
    def structure(value: Any, _: type) -> Any:
        ok = type(value) is kind or (kind is float and type(value) is int)
        if not ok:
            raise TypeError(f"expected {_TYPE_WORDS[kind]}, got {_describe(value)}")
        return kind(value)

    return structure


def _structure_duration(value: Any, _: type) -> Duration:
    if type(value) is not str:
        raise TypeError(f"expected a duration string like '10s', got {_describe(value)}")
    return parse_duration(value)


def _structure_size(value: Any, _: type) -> ByteSize:
    if type(value) is int and value >= 0:
        return ByteSize(value)
    if type(value) is not str:
        raise TypeError(f"expected a size like '100MiB', got {_describe(value)}")
    return parse_size(value)


def _structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    choices = ", ".join(repr(member.value) for member in cls)
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"expected one of {choices}, got {_describe(value)}") from None


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (bool, int, float, str):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook(Duration, _structure_duration)
    converter.register_structure_hook(ByteSize, _structure_size)
    converter.register_structure_hook_func(lambda t: isinstance(t, type) and issubclass(t, enum.Enum), _structure_enum)
    converter.register_unstructure_hook(Duration, format_duration)
    converter.register_unstructure_hook(ByteSize, str)
    converter.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda e: e.value
    )
    return converter


converter = make_converter()


def _problem_lines(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' exception groups into ``path: message`` lines."""
    if isinstance(exc, ClassValidationError):
        with_notes, without_notes = exc.group_exceptions()
        lines = [line for inner, note in with_notes for line in _problem_lines(inner, _join(path, note.name))]
        return lines + [line for inner in without_notes for line in _problem_lines(inner, path)]
    if isinstance(exc, IterableValidationError):
        items, others = exc.group_exceptions()
        lines = [line for inner, note in items for line in _problem_lines(inner, f"{path}[{note.index}]")]
        return lines + [line for inner in others for line in _problem_lines(inner, path)]
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        return [_unknown_key(_join(path, key), key, known) for key in sorted(exc.extra_fields)]
    if isinstance(exc, KeyError):
        return [f"{path}: required key is missing"]
    if isinstance(exc, FieldValueError):
        return [f"{_join(path, exc.field_name)}: {exc}"]
    if isinstance(exc, BaseExceptionGroup):
        return [line for inner in exc.exceptions for line in _problem_lines(inner, path)]
    return [f"{path}: {exc}"]


def _unknown_key(path: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})" if known else ""
    return f"{path}: unknown key{hint}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def structure_section(data: Any, cls: type[T], path: str) -> T:
    """Structure one table into ``cls``, raising ConfigError with lines under ``path``."""
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a table, got {_describe(data)}"])
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        raise ConfigError(_problem_lines(exc, path)) from None
    except (TypeError, ValueError) as exc:  # raised by an attrs validator or the class itself
        raise ConfigError(_problem_lines(exc, path)) from None


# --- ${VAR} expansion ------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, environ: MappingABC[str, str], path: str = "") -> tuple[Any, list[str]]:
    """Replace ``${VAR}`` (or ``${VAR:-default}``) in every string; ``$$`` is a literal ``$``."""
    problems: list[str] = []
    if isinstance(data, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name is None:
                return "$"
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable '{name}' is not set")
            return ""

        return _VARIABLE.sub(substitute, data), problems
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], found = expand_env(value, environ, _join(path, str(key)))
            problems += found
        return out, problems
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            item, found = expand_env(value, environ, f"{path}[{index}]")
            items.append(item)
            problems += found
        return items, problems
    return data, problems


# --- loading ---------------------------------------------------------------------------------


@frozen
class PluginCatalog:
    """What the config may activate: installed consumer types and plugins that failed to load."""

    types: MappingABC[str, ConsumerType[Any]] = field(factory=dict)
    load_errors: MappingABC[str, str] = field(factory=dict)  # plugin name -> error
    disabled: frozenset[str] = frozenset()  # plugins blocked by ANTIPROF_DISABLE_PLUGINS


def resolve_config_path(cli_path: str | None, environ: MappingABC[str, str]) -> Path | None:
    """``-c`` wins, then ``$ANTIPROF_CONFIG``, then /etc/antiprof/antiprof.toml if it exists."""
    if cli_path:
        return Path(cli_path)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def read_toml(path: Path) -> dict[str, Any]:
    problem = None
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        problem = "no such file"
    except PermissionError:
        problem = "permission denied"
    except IsADirectoryError:
        problem = "is a directory, not a config file"
    except tomllib.TOMLDecodeError as exc:
        problem = f"invalid TOML: {exc}"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    raise ConfigError([problem], source=str(path))


def load_config(path: Path | None, catalog: PluginCatalog, environ: MappingABC[str, str] | None = None) -> Config:
    """Read, expand and validate a config file (None: built-in defaults). Raises ConfigError."""
    data = read_toml(path) if path is not None else {}
    try:
        return build_config(data, catalog, os.environ if environ is None else environ, path)
    except ConfigError as error:
        raise ConfigError(error.problems, source=str(path) if path else None) from None


def build_config(
    data: dict[str, Any],
    catalog: PluginCatalog,
    environ: MappingABC[str, str],
    path: Path | None = None,
) -> Config:
    data, problems = expand_env(data, environ)
    unknown = sorted(set(data) - {"agent", "sampler", "consumers", "symbolizer"})
    problems += [_unknown_key(key, key, ["agent", "sampler", "consumers", "symbolizer"]) for key in unknown]
    agent = _collect(problems, lambda: structure_section(data.get("agent", {}), AgentConfig, "agent"))
    sampler = _collect(problems, lambda: structure_section(data.get("sampler", {}), SamplerConfig, "sampler"))
    symbolizer = _collect(
        problems, lambda: structure_section(data.get("symbolizer", {}), SymbolizerConfig, "symbolizer")
    )
    consumers: list[ActiveConsumer] = []
    sections = data.get("consumers", {})
    if not isinstance(sections, dict):
        problems.append(f"consumers: expected a table of [consumers.NAME] sections, got {_describe(sections)}")
        sections = {}
    default_queue = agent.queue_size if agent else AgentConfig().queue_size
    for name, section in sections.items():
        active = _collect(problems, lambda n=name, s=section: _resolve_consumer(n, s, catalog, default_queue))
        if active is not None:
            consumers.append(active)
    if problems:
        raise ConfigError(problems)
    assert agent is not None and sampler is not None and symbolizer is not None
    return Config(agent=agent, sampler=sampler, consumers=tuple(consumers), symbolizer=symbolizer, path=path)


def _collect(problems: list[str], make: Any) -> Any:
    try:
        return make()
    except ConfigError as error:
        problems += error.problems
        return None


def _resolve_consumer(name: str, section: Any, catalog: PluginCatalog, default_queue: int) -> ActiveConsumer:
    path = f"consumers.{name}"
    if not isinstance(section, dict):
        raise ConfigError([f"{path}: expected a table, got {_describe(section)}"])
    options = dict(section)
    type_name = options.pop("type", name)
    if type(type_name) is not str:
        raise ConfigError([f"{path}.type: expected a string, got {_describe(type_name)}"])
    queue_size = options.pop("queue_size", default_queue)
    if type(queue_size) is not int or not 1 <= queue_size <= 10_000:
        raise ConfigError([f"{path}.queue_size: expected an integer between 1 and 10000, got {_describe(queue_size)}"])
    consumer_type = catalog.types.get(type_name)
    if consumer_type is None:
        raise ConfigError([f"{path}: {_missing_type_message(type_name, catalog)}"])
    config = structure_section(options, consumer_type.config_class, path)
    return ActiveConsumer(name=name, type=consumer_type, config=config, queue_size=queue_size)


def _missing_type_message(type_name: str, catalog: PluginCatalog) -> str:
    installed = ", ".join(sorted(catalog.types)) or "none"
    if type_name in catalog.load_errors:
        return f"consumer type '{type_name}' failed to load: {catalog.load_errors[type_name]}"
    if type_name in catalog.disabled:
        return f"consumer type '{type_name}' is disabled by ANTIPROF_DISABLE_PLUGINS"
    return (
        f"consumer type '{type_name}' is not installed: pip install antiprof-{type_name} (installed types: {installed})"
    )


def config_to_dict(config: Config) -> dict[str, Any]:
    """The effective config as plain data (for ``antiprof config show``)."""
    consumers = {}
    for active in config.consumers:
        section = {"type": active.type.name, "queue_size": active.queue_size}
        section.update(converter.unstructure(active.config))
        consumers[active.name] = section
    return {
        "agent": converter.unstructure(config.agent),
        "sampler": converter.unstructure(config.sampler),
        "symbolizer": converter.unstructure(config.symbolizer),
        "consumers": consumers,
    }
