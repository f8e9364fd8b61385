"""Tables are built off the hot path: ``request`` returns a future at once, a worker does the rest.

The worker is a separate process by default: parsing is pure Python, and in a thread it would
hold the GIL for up to a second per large file while a window is being drained. A thread
worker is there for tests and for hosts where a second process is unwelcome. Either way the
worker first tries the disk cache, then parses and stores.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

from attrs import frozen

from antiprof_core.sources.unwind.build import build_table
from antiprof_core.sources.unwind.cache import DEFAULT_CACHE_DIR, CacheUnavailable, TableCache
from antiprof_core.sources.unwind.elfsections import read_sections
from antiprof_core.sources.unwind.table import UnwindTable
from antiprof_core.sources.unwind.vdso import VDSO_WORKER_PATH, build_vdso_table
from antiprof_core.sources.unwind.workerprocess import SpawnedWorker, WorkerGone
from antiprof_core.symbolize.elf import DEBUG_ROOT

log = logging.getLogger(__name__)


@frozen
class TableResult:
    table: UnwindTable
    from_cache: bool  # True: loaded from the disk cache, no parsing happened
    seconds: float  # wall time in the worker


_caches: dict[str, TableCache | None] = {}  # per worker: one open cache directory each


def _cache_for(directory: str | None) -> TableCache | None:
    if directory is None:
        return None
    if directory not in _caches:
        cache: TableCache | None = TableCache(Path(directory))
        try:
            cache.open_directory()  # type: ignore[union-attr]
        except CacheUnavailable as error:
            log.warning("%s; unwind tables will be rebuilt at every start", error)
            cache = None
        _caches[directory] = cache
    return _caches[directory]


def load_or_build(
    path: str, cache_dir: str | None, debug_root: str, name: str | None = None, build_id: str | None = None
) -> TableResult:
    """The table for ``path`` (or, for ``VDSO_WORKER_PATH``, the vDSO's): from the cache when its
    build ID is there, else parsed and stored."""
    started = time.perf_counter()
    vdso = path == VDSO_WORKER_PATH
    cache = _cache_for(cache_dir)
    if cache is not None and (build_id or not vdso):
        build_id = build_id or read_sections(path, unwind=False).build_id
        if build_id:
            cached = cache.load(build_id)
            if cached is not None:
                return TableResult(cached, True, time.perf_counter() - started)
    table = build_vdso_table(Path(debug_root)) if vdso else build_table(path, Path(debug_root), name)
    if cache is not None:
        try:
            cache.store(table)
        except OSError as error:
            log.warning("unwind cache %s: cannot store %s (%s)", cache.directory, path, error.strerror or error)
    return TableResult(table, False, time.perf_counter() - started)


class UnwindTableBuilder:
    """``request(path)`` -> Future[TableResult]; never blocks; one build per file at a time."""

    def __init__(
        self,
        cache_dir: Path | None = DEFAULT_CACHE_DIR,
        debug_root: Path = DEBUG_ROOT,
        process: bool = True,
    ) -> None:
        self._cache_dir = None if cache_dir is None else str(cache_dir)
        self._debug_root = str(debug_root)
        self._process = process
        self._lock = threading.Lock()
        self._pending: dict[str, Future[TableResult]] = {}
        self._executor = self._make_executor()

    def _make_executor(self) -> Executor:
        if not self._process:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="antiprof-unwind")
        return SpawnedWorker("antiprof-unwind-worker")  # started now, so no request pays for the spawn

    def request(self, path: str, build_id: str | None = None, name: str | None = None) -> Future[TableResult]:
        """A future of the table for ``path``; asking again while it is being built gives the same future."""
        key = build_id or path
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                return pending
            args = (path, self._cache_dir, self._debug_root, name, build_id)
            try:
                future = self._executor.submit(load_or_build, *args)
            except WorkerGone:  # the worker died (OOM killer): start another
                log.warning("unwind table worker died; starting a new one")
                self._executor = self._make_executor()
                future = self._executor.submit(load_or_build, *args)
            self._pending[key] = future
        future.add_done_callback(lambda done: self._forget(key, done))
        return future

    def _forget(self, key: str, future: Future[TableResult]) -> None:
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]

    def close(self) -> None:
        """Stop at once: a build under way (seconds for a large library on a busy host) is abandoned,
        so the agent's shutdown never waits for it (a process worker is killed)."""
        self._executor.shutdown(wait=isinstance(self._executor, SpawnedWorker), cancel_futures=True)
