"""``[consumers.perfdata]``: where and how perf.data is written."""

from __future__ import annotations

import enum

from attrs import field, frozen

from antiprof_core.config import FieldValueError, between, positive
from antiprof_core.units import ByteSize, Duration

DEFAULT_OUTPUT_DIR = "/var/lib/antiprof/perf"
STDOUT = "-"


class OutputMode(enum.Enum):
    FILE = "file"  # rotated files in output_dir
    PIPE = "pipe"  # one pipe-format stream to path (a FIFO or "-" for stdout)


@frozen
class PerfDataConfig:
    output_dir: str = DEFAULT_OUTPUT_DIR
    rotate_every: Duration = field(default=Duration(3600.0), validator=positive)
    max_file_size: ByteSize = field(default=ByteSize(100 << 20), validator=positive)
    max_files: int = field(default=24, validator=between(1, 1_000_000))
    mode: OutputMode = OutputMode.FILE
    path: str = ""  # pipe mode only
    compact: bool = False  # one record per distinct stack, period-weighted: only perf report weighs it right

    def __attrs_post_init__(self) -> None:
        if self.mode is OutputMode.PIPE and not self.path:
            raise FieldValueError("path", 'pipe mode needs a path: a FIFO, or "-" for stdout')
        if self.mode is OutputMode.FILE and self.path:
            raise FieldValueError("path", 'only used with mode = "pipe"; file mode writes into output_dir')
        if not self.output_dir:
            raise FieldValueError("output_dir", "must not be empty")
