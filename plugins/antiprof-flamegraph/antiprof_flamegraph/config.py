"""``[consumers.flamegraph]``: which pictures are drawn, where, and how many are kept."""

from __future__ import annotations

import enum

from attrs import field, frozen

from antiprof_core.config import FieldValueError, between, positive
from antiprof_core.units import Duration

DEFAULT_OUTPUT_DIR = "/var/lib/antiprof/flamegraph"


class OutputFormat(enum.Enum):
    HTML = "html"  # interactive, self-contained (scripts and styles inline)
    FOLDED = "folded"  # collapsed stacks: ``a;b;c 12`` per line
    SVG = "svg"  # static picture, for tickets

    @property
    def suffix(self) -> str:
        return f".{self.value}"


@frozen
class FlameGraphConfig:
    output_dir: str = DEFAULT_OUTPUT_DIR
    formats: tuple[OutputFormat, ...] = (OutputFormat.HTML,)
    per_window: bool = True  # one file per window and format, rotated by max_files
    latest: str = "flamegraph"  # base name of the files covering the last `span`, rewritten every window; "" off
    span: Duration = field(default=Duration(600.0), validator=positive)
    max_files: int = field(default=144, validator=between(1, 1_000_000))  # per format
    max_nodes: int = field(default=100_000, validator=between(100, 10_000_000))  # the narrowest frames go first
    title: str = ""  # default: "antiprof: HOSTNAME"

    def __attrs_post_init__(self) -> None:
        if not self.output_dir:
            raise FieldValueError("output_dir", "must not be empty")
        if not self.formats:
            raise FieldValueError("formats", 'list at least one of "html", "folded", "svg"')
        if len(set(self.formats)) != len(self.formats):
            raise FieldValueError("formats", "lists a format twice")
        if self.latest and (self.latest in (".", "..") or "/" in self.latest or "\0" in self.latest):
            raise FieldValueError("latest", f"must be a plain file name without '/', got {self.latest!r}")
        if not self.per_window and not self.latest:
            raise FieldValueError("latest", 'per_window = false and latest = "" would write nothing')
