"""antiprof-perfdata: profile windows as perf.data files that ``perf report`` and ``perf script`` read."""

from __future__ import annotations

from antiprof_core import Consumer, ConsumerContext, ConsumerType, hookimpl
from antiprof_core.consumer import Register
from antiprof_perfdata.config import OutputMode, PerfDataConfig
from antiprof_perfdata.sink import PerfDataSink, PerfDataWriteError
from antiprof_perfdata.writer import PerfDataFile, PerfDataPipe, write_perf_data

__all__ = [
    "OutputMode",
    "PerfDataConfig",
    "PerfDataFile",
    "PerfDataPipe",
    "PerfDataSink",
    "PerfDataWriteError",
    "antiprof_register_consumers",
    "write_perf_data",
]


def _make(config: PerfDataConfig, context: ConsumerContext) -> Consumer:
    return PerfDataSink(config, context)


@hookimpl
def antiprof_register_consumers(register: Register) -> None:
    register(ConsumerType("perfdata", PerfDataConfig, _make, "perf.data files for perf report and perf script"))
