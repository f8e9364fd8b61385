"""Example antiprof plugin: logs the hottest leaf function of every window.

Activate it with a config section::

    [consumers.top]
    limit = 3

It imports from ``antiprof_core`` alone and passes ``mypy --strict``.
"""

from __future__ import annotations

import collections

from attrs import field, frozen

from antiprof_core import Consumer, ConsumerContext, ConsumerType, ProfileWindow, Register, between, hookimpl


@frozen
class TopConfig:
    limit: int = field(default=1, validator=between(1, 100))


class TopConsumer(Consumer):
    def __init__(self, config: TopConfig, context: ConsumerContext) -> None:
        self.limit = config.limit
        self.logger = context.logger
        self.windows = context.counter("antiprof_top_windows", "Windows the top consumer looked at").labels()

    def consume(self, window: ProfileWindow) -> None:
        leaves: collections.Counter[str] = collections.Counter()
        for sample in window.samples:
            if sample.stack:  # a sample may have no frames (both stacks failed to walk)
                leaves[sample.stack[0].symbol or hex(sample.stack[0].address)] += sample.count
        for function, count in leaves.most_common(self.limit):
            self.logger.info("hot: %s %.1f%%", function, 100 * count / max(window.sample_count, 1))
        self.windows.inc()


@hookimpl
def antiprof_register_consumers(register: Register) -> None:
    register(ConsumerType("top", TopConfig, TopConsumer, "logs the hottest functions of each window"))
