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
import stat
import tomllib
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from attrs import field, frozen
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from antiprof_core.consumer import ConsumerType
from antiprof_core.model import SamplingMode, Unwinder
from antiprof_core.sources import SourceType, builtin_sources
from antiprof_core.units import (
    MAX_SIZE_BYTES,
    ByteSize,
    Duration,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

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


def _check_address(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """``host:port`` with a port a socket can listen on (``[::1]:9100`` for IPv6; empty: off)."""
    if not value:
        return
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
        message = f"expected host:port with a port from 1 to 65535, got {_shorten(value)!r}"
        raise FieldValueError(attribute.name, message)
    if host.startswith("[") != host.endswith("]"):
        raise FieldValueError(attribute.name, f"expected [IPv6]:port, got {_shorten(value)!r}")


def _shorten(text: str, limit: int = 60) -> str:
    """Long hostile values are quoted by their start, so an error stays one readable line."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@frozen
class AgentConfig:
    node_name: str = ""  # empty: the hostname
    cluster_name: str = ""
    queue_size: int = field(default=8, validator=between(1, 10_000))  # windows per consumer
    shutdown_timeout: Duration = field(default=Duration(10.0), validator=positive)
    metrics_address: str = field(default="", validator=_check_address)  # host:port for /metrics; empty: off


@frozen
class SyntheticConfig:
    """Shape of the seeded synthetic windows (``sampler.source = "synthetic"``)."""

    processes: int = field(default=20, validator=between(1, 1_000_000))
    stacks: int = field(default=500, validator=between(1, 10_000_000))
    depth: int = field(default=16, validator=between(1, 127))
    seed: int = 1


@frozen
class ReplayConfig:
    """The ``antiprof-json`` file whose windows ``sampler.source = "replay"`` feeds to the sinks, in order."""

    path: str = ""


MAX_PID = 1 << 22  # the kernel's PID_MAX_LIMIT on 64-bit


def _check_pids(instance: Any, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    for index, pid in enumerate(value):
        if not 1 <= pid <= MAX_PID:
            message = f"must be a process ID between 1 and {MAX_PID}, got {pid}"
            raise FieldValueError(f"{attribute.name}[{index}]", message)


@frozen
class SamplerConfig:
    source: str = "bpf"  # a registered source type: bpf, synthetic, replay, or a plugin's
    frequency_hz: int = field(default=19, validator=between(1, 10_000))
    window: Duration = field(default=Duration(10.0), validator=positive)
    mode: SamplingMode = SamplingMode.AGGREGATE
    pids: tuple[int, ...] = field(default=(), validator=_check_pids)  # empty: every process
    kernel_stacks: bool = True
    user_stacks: bool = True
    include_idle: bool = False
    max_stack_depth: int = field(default=127, validator=between(1, 127))
    max_stacks: int = field(default=0, validator=between(0, 10_000_000))  # 0: sized from frequency x CPUs x window
    unwinder: Unwinder = Unwinder.AUTO
    unwind_cache_dir: str = "/var/cache/antiprof/unwind"  # native unwind tables by build ID (0700); "": no cache
    unwind_table_rows: int = field(default=1 << 20, validator=between(1024, 1 << 26))  # 16 bytes of kernel memory each
    unwind_processes: int = field(default=4096, validator=between(16, 1 << 20))  # processes walked with tables
    python_frames: bool = True  # CPython 3.11+ functions in the stacks, in place of the interpreter's frames
    max_python_depth: int = field(default=64, validator=between(1, 64))  # at most max_stack_depth; 64: the verifier
    synthetic: SyntheticConfig = field(factory=SyntheticConfig)
    replay: ReplayConfig = field(factory=ReplayConfig)


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
    source: SourceType[Any] = field(factory=lambda: builtin_sources()["bpf"])  # sampler.source, resolved
    source_options: Any = None  # its [sampler.NAME] table, structured into source.config_class


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
    if type(value) is int and 0 <= value <= MAX_SIZE_BYTES:
        return ByteSize(value)
    if type(value) is int:
        raise ValueError(f"expected a size from 0 to {MAX_SIZE_BYTES} bytes, got {value}")
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

MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; /dev/zero or a huge file must not be read to the end
MAX_NESTING = 32  # tables and arrays within each other; antiprof's own config needs 4
KERNEL_MEMORY_SHARE = 0.5  # BPF maps may take at most this share of the host's memory


@frozen
class PluginCatalog:
    """What the config may activate: installed consumer and source types, plugins that failed to load."""

    types: MappingABC[str, ConsumerType[Any]] = field(factory=dict)
    load_errors: MappingABC[str, str] = field(factory=dict)  # plugin name -> error
    disabled: frozenset[str] = frozenset()  # plugins blocked by ANTIPROF_DISABLE_PLUGINS
    sources: MappingABC[str, SourceType[Any]] = field(factory=builtin_sources)


def resolve_config_path(cli_path: str | None, environ: MappingABC[str, str]) -> Path | None:
    """``-c`` wins, then ``$ANTIPROF_CONFIG``, then /etc/antiprof/antiprof.toml if it exists."""
    if cli_path:
        return Path(cli_path)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


_FILE_KINDS = {
    stat.S_IFDIR: "is a directory, not a config file",
    stat.S_IFIFO: "is a FIFO, not a regular file",
    stat.S_IFCHR: "is a character device, not a regular file",
    stat.S_IFBLK: "is a block device, not a regular file",
    stat.S_IFSOCK: "is a socket, not a regular file",
}


def read_config_bytes(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The file's bytes, if it is a regular file of at most ``limit`` bytes; else ConfigError.

    Opened non-blocking so a FIFO cannot hang the agent, checked with fstat on the open file
    (no race with a rename), and read with a cap so /dev/zero or a growing file cannot eat memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(["no such file"], source=str(path)) from None
    except PermissionError:
        raise ConfigError(["permission denied"], source=str(path)) from None
    except (OSError, ValueError) as exc:  # ELOOP, ENOTDIR, ENAMETOOLONG, a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"cannot open: {reason}"], source=str(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "is not a regular file")
            raise ConfigError([kind], source=str(path))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ConfigError([f"larger than {format_size(limit)}: not a config file"], source=str(path))
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], source=str(path)) from None
    finally:
        os.close(fd)


def read_toml(path: Path) -> dict[str, Any]:
    data = read_config_bytes(path)
    problem = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["not UTF-8 text"], source=str(path)) from None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problem = f"invalid TOML: {exc}"
    except RecursionError:
        problem = f"invalid config: tables or arrays nested more than {MAX_NESTING} deep"
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        problem = f"invalid TOML: {exc}"
    if problem is not None:
        raise ConfigError([problem], source=str(path))
    nested = _nesting_problem(parsed)
    if nested:
        raise ConfigError([nested], source=str(path))
    return parsed


def _nesting_problem(data: Any) -> str | None:
    """Deep nesting is refused before anything recurses over it (expansion, structuring, printing)."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_NESTING:
            return f"{path or 'config'}: tables or arrays nested more than {MAX_NESTING} deep"
        if isinstance(value, dict):
            stack.extend((item, depth + 1, _join(path, str(key))) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{path}[{index}]") for index, item in enumerate(value))
    return None


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
    nested = _nesting_problem(data)
    if nested:
        raise ConfigError([nested])
    data, problems = expand_env(data, environ)
    unknown = sorted(set(data) - {"agent", "sampler", "consumers", "symbolizer"})
    problems += [_unknown_key(key, key, ["agent", "sampler", "consumers", "symbolizer"]) for key in unknown]
    agent = _collect(problems, lambda: structure_section(data.get("agent", {}), AgentConfig, "agent"))
    sampler_data = data.get("sampler", {})
    plugin_tables: dict[str, Any] = {}
    if isinstance(sampler_data, dict):  # [sampler.NAME] of a plugin's source is its own, not SamplerConfig's
        own = {a.name for a in attrs.fields(SamplerConfig)}
        plugin_tables = {k: v for k, v in sampler_data.items() if k in catalog.sources and k not in own}
        sampler_data = {k: v for k, v in sampler_data.items() if k not in plugin_tables}
    sampler = _collect(problems, lambda: structure_section(sampler_data, SamplerConfig, "sampler"))
    source, options = None, None
    if sampler is not None:
        found = _collect(problems, lambda: _resolve_source(sampler, plugin_tables, catalog))
        if found is not None:
            source, options = found
        problems += _kernel_memory_problems(sampler)
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
    assert agent is not None and sampler is not None and source is not None and symbolizer is not None
    return Config(
        agent=agent,
        sampler=sampler,
        consumers=tuple(consumers),
        symbolizer=symbolizer,
        path=path,
        source=source,
        source_options=options,
    )


def _collect(problems: list[str], make: Any) -> Any:
    try:
        return make()
    except ConfigError as error:
        problems += error.problems
        return None


def _resolve_source(
    sampler: SamplerConfig, plugin_tables: dict[str, Any], catalog: PluginCatalog
) -> tuple[SourceType[Any], Any]:
    source = catalog.sources.get(sampler.source)
    if source is None:
        known = sorted(catalog.sources)
        close = difflib.get_close_matches(sampler.source, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known sources: {', '.join(known)}"
        raise ConfigError([f"sampler.source: unknown source {_shorten(sampler.source)!r} ({hint})"])
    section = f"sampler.{source.name}"
    if source.config_class is None:
        options = None
    elif source.name in plugin_tables or not hasattr(sampler, source.name):
        options = structure_section(plugin_tables.get(source.name, {}), source.config_class, section)
    else:
        options = getattr(sampler, source.name)
    if source.validate is not None:
        _run_validate(source.validate, options, section)
    return source, options


def _run_validate(validate: Any, options: Any, section: str) -> None:
    """A type's own checks (those its factory would make), as config lines named by section."""
    try:
        validate(options, section)
    except ConfigError:
        raise
    except (ValueError, TypeError, OSError) as exc:
        message = str(exc)
        raise ConfigError([message if message.startswith(section) else f"{section}: {message}"]) from None


def bpf_map_bytes(max_stacks: int, max_stack_depth: int) -> int:
    """Kernel memory the BPF maps take for ``max_stacks`` (see bpf/profile.bpf.c): two sets, each a
    stack map of ``8 x depth`` bytes per entry and a counts hash of about 96 bytes per entry, with
    entries rounded up to a power of two as the sampler does. Preallocated: it is all taken at start."""
    entries = 1 << max(max_stacks - 1, 1).bit_length()
    return 2 * entries * (8 * max_stack_depth + 96)


def host_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _kernel_memory_problems(sampler: SamplerConfig) -> list[str]:
    if not sampler.max_stacks:
        return []  # sized from frequency x CPUs x window, capped at 65536 entries
    memory = host_memory_bytes()
    needed = bpf_map_bytes(sampler.max_stacks, sampler.max_stack_depth)
    if not memory or needed <= memory * KERNEL_MEMORY_SHARE:
        return []
    return [
        f"sampler.max_stacks: {sampler.max_stacks} stacks of depth {sampler.max_stack_depth} need "
        f"{_gib(needed)} of kernel memory for BPF maps, more than half of this host's {_gib(memory)}"
    ]


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


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
    if consumer_type.validate is not None:
        _run_validate(consumer_type.validate, config, path)
    return ActiveConsumer(name=name, type=consumer_type, config=config, queue_size=queue_size)


def _missing_type_message(type_name: str, catalog: PluginCatalog) -> str:
    installed = ", ".join(sorted(catalog.types)) or "none"
    if type_name in catalog.load_errors:
        return f"consumer type '{type_name}' failed to load: {catalog.load_errors[type_name]}"
    if type_name in catalog.disabled:
        return f"consumer type '{type_name}' is disabled by ANTIPROF_DISABLE_PLUGINS"
    close = difflib.get_close_matches(type_name, sorted(catalog.types), n=1)
    if close:
        return f"consumer type {_shorten(type_name)!r} is not installed (did you mean '{close[0]}'?)"
    return (
        f"consumer type {_shorten(type_name)!r} is not installed: pip install antiprof-{type_name} "
        f"(installed types: {installed})"
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
