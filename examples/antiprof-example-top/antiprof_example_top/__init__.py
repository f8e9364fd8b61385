"""Example antiprof plugin: logs the hottest leaf function of every window.

Activate it with a config section::

    [consumers.top]
    limit = 3
"""

from __future__ import annotations

import collections

from attrs import field, frozen

from antiprof_core import Consumer, ConsumerContext, ConsumerType, ProfileWindow, hookimpl
from antiprof_core.config import between
from antiprof_core.consumer import Register


@frozen
class TopConfig:
    limit: int = field(default=1, validator=between(1, 100))


class TopConsumer(Consumer):
    name = "top"

    def __init__(self, config: TopConfig, context: ConsumerContext) -> None:
        self.limit = config.limit
        self.logger = context.logger

    def consume(self, window: ProfileWindow) -> None:
        leaves: collections.Counter[str] = collections.Counter()
        for sample in window.samples:
            if sample.stack:
                leaves[sample.stack[0].symbol or hex(sample.stack[0].address)] += sample.count
        for function, count in leaves.most_common(self.limit):
            self.logger.info("hot: %s %.1f%%", function, 100 * count / max(window.sample_count, 1))


@hookimpl
def antiprof_register_consumers(register: Register) -> None:
    register(ConsumerType("top", TopConfig, TopConsumer, "logs the hottest functions of each window"))
