"""antiprof: a continuous CPU profiler for Linux. This package is the core a plugin builds on.

Everything a plugin author needs is importable from here (typed: the package ships ``py.typed``)::

    from antiprof_core import Consumer, ConsumerContext, ConsumerType, ProfileWindow, Register, hookimpl
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("antiprof-core")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from antiprof_core.config import ConfigError, FieldValueError, between, positive
from antiprof_core.consumer import (
    Consumer,
    ConsumerContext,
    ConsumerType,
    LabelledMetric,
    Register,
)
from antiprof_core.hookspecs import hookimpl
from antiprof_core.model import (
    Counters,
    Frame,
    FrameKind,
    Host,
    Mapping,
    Process,
    ProfileWindow,
    Sample,
    SamplingMode,
)
from antiprof_core.sources import (
    AgentInfo,
    SourceContext,
    SourceExhausted,
    SourceRegister,
    SourceType,
    SourceUnavailable,
    WindowSource,
)
from antiprof_core.units import ByteSize, Duration


def distribution_version(distribution: str) -> str:
    """The installed version of ``distribution`` (e.g. "antiprof-perfdata"), "0+unknown" when not installed.

    Versions come from one place, the package metadata, never from a string in the code.
    """
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "0+unknown"


__all__ = [
    "AgentInfo",
    "ByteSize",
    "ConfigError",
    "Consumer",
    "ConsumerContext",
    "ConsumerType",
    "Counters",
    "Duration",
    "FieldValueError",
    "Frame",
    "FrameKind",
    "Host",
    "LabelledMetric",
    "Mapping",
    "Process",
    "ProfileWindow",
    "Register",
    "Sample",
    "SamplingMode",
    "SourceContext",
    "SourceExhausted",
    "SourceRegister",
    "SourceType",
    "SourceUnavailable",
    "WindowSource",
    "__version__",
    "between",
    "distribution_version",
    "hookimpl",
    "positive",
]
