"""The ``flamegraph`` consumer: a picture per window, and a rolling one of the last ``span``.

A write that fails (full disk, permissions, a vanished directory) costs that window's files: the
error names the path and the next window tries again (the rolling file then covers it anyway).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from antiprof_core.consumer import Consumer, ConsumerContext
from antiprof_core.model import ProfileWindow
from antiprof_flamegraph import files, naming
from antiprof_flamegraph.config import FlameGraphConfig, OutputFormat
from antiprof_flamegraph.render import Heading, render_folded, render_html, render_svg
from antiprof_flamegraph.stacks import FlatTree, Folded, LabelTable, Lines, add_into, flatten, fold_window

_MAX_SAME_SECOND = 1000
_COMPACT_LABELS_OVER = 500_000  # and over 4x the labels the span still uses


class FlameGraphWriteError(Exception):
    """A file could not be written; the message names it."""


class _Window:
    __slots__ = ("end_ns", "folded", "lines", "start_ns")

    def __init__(self, start_ns: int, end_ns: int, folded: Folded, lines: Lines) -> None:
        self.start_ns, self.end_ns, self.folded, self.lines = start_ns, end_ns, folded, lines


class FlameGraphSink(Consumer):
    name = "flamegraph"

    def __init__(self, config: FlameGraphConfig, context: ConsumerContext) -> None:
        self.config = config
        self.context = context
        self.directory = Path(config.output_dir)
        self.title = config.title or f"antiprof: {context.host.hostname}"
        self.labels = LabelTable()
        self.recent: collections.deque[_Window] = collections.deque()
        self.span_counts: Folded = {}  # the sum of recent windows' paths, kept up to date
        self.span_lines: Lines = {}  # and of their source lines (interpreted frames)
        self.files_written: list[Path] = []
        self._target = self.directory
        written = context.counter("antiprof_flamegraph_files_written", "Flame graph files written", "format")
        self._files_metric = {f: written.labels(f.value) for f in config.formats}
        self._failed_metric = context.counter(
            "antiprof_flamegraph_write_errors", "Flame graph files not written (disk full, permissions)"
        ).labels()

    def start(self) -> None:
        try:
            os.close(files.open_directory(self.directory))
        except OSError as exc:  # not fatal: every window tries again
            self.context.logger.error("flamegraph: cannot open %s: %s", self.directory, exc.strerror or exc)

    def consume(self, window: ProfileWindow) -> None:
        lines: Lines = {}
        current = _Window(window.start_ns, window.end_ns, fold_window(window, self.labels, lines), lines)
        self._remember(current)
        self._target = self.directory  # what the error names if a write fails
        try:
            directory_fd = files.open_directory(self.directory)
            try:
                if self.config.per_window and current.folded:
                    self._write_window(directory_fd, current)
                if self.config.latest:
                    self._write_latest(directory_fd)
            finally:
                os.close(directory_fd)
        except OSError as exc:
            self._failed_metric.inc()
            raise FlameGraphWriteError(f"cannot write {self._target}: {exc.strerror or exc}") from None

    def _remember(self, current: _Window) -> None:
        self.recent.append(current)
        add_into(self.span_counts, current.folded)
        add_into(self.span_lines, current.lines)
        oldest_kept = current.end_ns - int(self.config.span * 1e9)
        while len(self.recent) > 1 and self.recent[0].end_ns <= oldest_kept:
            oldest = self.recent.popleft()
            add_into(self.span_counts, oldest.folded, -1)
            add_into(self.span_lines, oldest.lines, -1)
        if len(self.labels) > _COMPACT_LABELS_OVER:
            used = {label for path in self.span_counts for label in path}
            if len(self.labels) > 4 * len(used):
                foldeds = self.labels.compact(
                    [self.span_counts, *(w.folded for w in self.recent)],
                    [self.span_lines, *(w.lines for w in self.recent)],
                )
                self.span_counts = foldeds[0]
                for kept, folded in zip(self.recent, foldeds[1:], strict=True):
                    kept.folded = folded

    def _render_all(self, folded: Folded, lines: Lines, heading: Heading) -> Iterator[tuple[OutputFormat, bytes]]:
        tree: FlatTree | None = None  # built once for HTML and SVG
        for output in self.config.formats:
            if output is OutputFormat.FOLDED:
                yield output, render_folded(folded, self.labels).encode()
                continue
            if tree is None:
                tree = flatten(folded, self.config.max_nodes)
            if output is OutputFormat.SVG:
                yield output, render_svg(tree, self.labels, heading, lines).encode()
            else:
                yield output, render_html(tree, self.labels, heading, lines).encode()

    def _write_window(self, directory_fd: int, current: _Window) -> None:
        heading = Heading(self.title, current.start_ns, current.end_ns)
        for output, content in self._render_all(current.folded, current.lines, heading):
            for sequence in range(_MAX_SAME_SECOND):
                name = naming.window_file_name(self.context.host.hostname, current.start_ns, output.suffix, sequence)
                self._target = self.directory / name
                try:
                    files.write_new(directory_fd, name, content)
                except FileExistsError:
                    continue
                break
            else:
                raise OSError(errno.EEXIST, "too many windows started in one second", name)
            self._wrote(output, self.directory / name)
            self._apply_retention(directory_fd, output)

    def _write_latest(self, directory_fd: int) -> None:
        windows = list(self.recent)
        heading = Heading(self.title, windows[0].start_ns, windows[-1].end_ns, len(windows))
        for output, content in self._render_all(self.span_counts, self.span_lines, heading):
            name = self.config.latest + output.suffix
            self._target = self.directory / name
            files.replace(directory_fd, name, content)
            self._wrote(output, self._target)

    def _wrote(self, output: OutputFormat, path: Path) -> None:
        if path not in self.files_written:
            self.files_written.append(path)
        self._files_metric[output].inc()

    def _apply_retention(self, directory_fd: int, output: OutputFormat) -> None:
        """Keep the newest ``max_files`` per-window files of this format."""
        own = naming.own_files(directory_fd, self.context.host.hostname, output.suffix)
        for old in own[: max(len(own) - self.config.max_files, 0)]:
            with contextlib.suppress(FileNotFoundError):
                try:
                    os.unlink(old, dir_fd=directory_fd)
                except OSError as exc:
                    self.context.logger.warning("flamegraph: cannot remove %s: %s", self.directory / old, exc)
