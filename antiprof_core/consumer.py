"""What a plugin provides: a consumer type (name, config class, factory) and the consumers it makes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from attrs import frozen
from prometheus_client import CollectorRegistry

from antiprof_core.model import Host, ProfileWindow

ConfigT = TypeVar("ConfigT")


@frozen
class ConsumerContext:
    """What the agent hands a consumer factory besides its own config."""

    name: str  # the config section name, e.g. "collector" for [consumers.collector]
    host: Host
    logger: logging.Logger
    metrics: CollectorRegistry


class Consumer:
    """A sink for windows. The router calls every method from the consumer's own thread.

    ``consume`` may block (it only delays this consumer); it may raise, and the router logs and
    counts the error and goes on with the next window.
    """

    name: str = "consumer"

    def start(self) -> None:
        """Open files or connections; called once before the first window."""

    def consume(self, window: ProfileWindow) -> None:
        raise NotImplementedError

    def flush(self, timeout: float) -> None:
        """Deliver whatever is buffered, giving up after ``timeout`` seconds."""

    def close(self) -> None:
        """Release resources; no window follows."""


@frozen
class ConsumerType(Generic[ConfigT]):
    """A kind of consumer a plugin offers: ``[consumers.X] type = name`` activates it.

    ``config_class`` is an attrs class; the core structures the section into it with the same
    strict rules as its own config. ``factory(config, context)`` makes the consumer.
    """

    name: str
    config_class: type[ConfigT]
    factory: Callable[[ConfigT, ConsumerContext], Consumer]
    description: str = ""


Register = Callable[[ConsumerType[Any]], None]
