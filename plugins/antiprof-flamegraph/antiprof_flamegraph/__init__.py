"""antiprof-flamegraph: interactive HTML flame graphs, folded stacks and SVG, per window and for the last span."""

from __future__ import annotations

from antiprof_core import hookimpl
from antiprof_core.consumer import Consumer, ConsumerContext, ConsumerType, Register
from antiprof_flamegraph.config import FlameGraphConfig, OutputFormat
from antiprof_flamegraph.sink import FlameGraphSink, FlameGraphWriteError

__all__ = ["FlameGraphConfig", "FlameGraphSink", "FlameGraphWriteError", "OutputFormat"]


def _make(config: FlameGraphConfig, context: ConsumerContext) -> Consumer:
    return FlameGraphSink(config, context)


@hookimpl
def antiprof_register_consumers(register: Register) -> None:
    register(ConsumerType("flamegraph", FlameGraphConfig, _make, "interactive HTML flame graphs, folded stacks, SVG"))
