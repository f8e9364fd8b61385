"""antiprof: a continuous CPU profiler for Linux. This package is the core a plugin builds on."""

from importlib.metadata import PackageNotFoundError, version

from antiprof_core.consumer import Consumer, ConsumerContext, ConsumerType
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
from antiprof_core.units import ByteSize, Duration

try:
    __version__ = version("antiprof-core")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ByteSize",
    "Consumer",
    "ConsumerContext",
    "ConsumerType",
    "Counters",
    "Duration",
    "Frame",
    "FrameKind",
    "Host",
    "Mapping",
    "Process",
    "ProfileWindow",
    "Sample",
    "SamplingMode",
    "__version__",
    "hookimpl",
]
