"""What a plugin provides: a consumer type (name, config class, factory) and the consumers it makes."""

from __future__ import annotations

import abc
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

from attrs import frozen
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics import MetricWrapperBase

from antiprof_core.model import Host, ProfileWindow

ConfigT = TypeVar("ConfigT")
MetricT = TypeVar("MetricT", bound=MetricWrapperBase)

CONSUMER_LABEL = "consumer"


class LabelledMetric(Generic[MetricT]):
    """A metric family with its first label, ``consumer``, already set to one consumer's name.

    ``labels(*rest)`` gives the child for the remaining labels (none: ``labels()``).
    """

    def __init__(self, family: MetricT, consumer: str) -> None:
        self.family: MetricT = family
        self._consumer = consumer

    def labels(self, *values: str) -> MetricT:
        return self.family.labels(self._consumer, *values)


_families: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, tuple[Any, tuple[str, ...]]]] = (
    weakref.WeakKeyDictionary()
)
_families_lock = threading.Lock()


def labelled_family(
    registry: CollectorRegistry, kind: type[MetricT], name: str, documentation: str, labels: Sequence[str] = ()
) -> MetricT:
    """Get or create the family ``name`` labelled ``("consumer", *labels)`` in ``registry``.

    Two consumers of one type share a registry, so the second must find the first's family
    instead of registering the name twice (which prometheus_client refuses).
    """
    label_names = (CONSUMER_LABEL, *labels)
    with _families_lock:
        known = _families.setdefault(registry, {})
        found = known.get(name)
        if found is None:
            family = kind(name, documentation, label_names, registry=registry)
            known[name] = (family, label_names)
            return family
        family, names = found
        if type(family) is not kind or names != label_names:
            raise ValueError(
                f"metric {name!r} already exists as a {type(family).__name__} labelled {names}, "
                f"not a {kind.__name__} labelled {label_names}"
            )
        return cast(MetricT, family)


@frozen
class ConsumerContext:
    """What the agent hands a consumer factory besides its own config."""

    name: str  # the config section name, e.g. "collector" for [consumers.collector]
    host: Host
    logger: logging.Logger
    metrics: CollectorRegistry

    def counter(self, name: str, documentation: str, *labels: str) -> LabelledMetric[Counter]:
        """A counter labelled by this consumer's name (and ``labels``), shared with same-type consumers."""
        return LabelledMetric(labelled_family(self.metrics, Counter, name, documentation, labels), self.name)

    def gauge(self, name: str, documentation: str, *labels: str) -> LabelledMetric[Gauge]:
        """A gauge labelled by this consumer's name (and ``labels``), shared with same-type consumers."""
        return LabelledMetric(labelled_family(self.metrics, Gauge, name, documentation, labels), self.name)


class Consumer(abc.ABC):
    """A sink for windows. The router calls every method from the consumer's own thread.

    ``consume`` may block (it only delays this consumer); it may raise, and the router logs and
    counts the error with the consumer's config section name and goes on with the next window.
    """

    def start(self) -> None:  # noqa: B027 - optional: most sinks open lazily
        """Open files or connections; called once before the first window."""

    @abc.abstractmethod
    def consume(self, window: ProfileWindow) -> None:
        """Handle one window. The window is immutable and shared with every other consumer."""

    def flush(self, timeout: float) -> None:  # noqa: B027
        """Deliver whatever is buffered, giving up after ``timeout`` seconds."""

    def close(self) -> None:  # noqa: B027
        """Release resources; no window follows."""


@frozen
class ConsumerType(Generic[ConfigT]):
    """A kind of consumer a plugin offers: ``[consumers.X] type = name`` activates it.

    ``config_class`` is an attrs class; the core structures the section into it with the same
    strict rules as its own config. ``validate(config, section)`` (optional) runs the checks
    the factory would, without opening anything, so ``antiprof config check`` reports them: it
    raises ``ValueError`` (or ``ConfigError``) whose message is one line. ``factory(config,
    context)`` makes the consumer.
    """

    name: str
    config_class: type[ConfigT]
    factory: Callable[[ConfigT, ConsumerContext], Consumer]
    description: str = ""
    validate: Callable[[ConfigT, str], None] | None = None


Register = Callable[[ConsumerType[Any]], None]
"""The ``register`` argument of ``antiprof_register_consumers``."""
