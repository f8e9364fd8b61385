"""One spawned process that runs jobs in order, and that can be killed at any moment.

``ProcessPoolExecutor`` cannot be: its result pipe is held open by the parent too, so a worker
killed while it is sending a result (a table of megabytes takes a while) leaves the pool's
manager thread waiting for the rest of that message forever, and the interpreter's exit joins
that thread. The agent then hangs at shutdown. Here only the worker holds the write end of the
results pipe: killed, it gives the reader EOF, and every job still pending fails with
:class:`WorkerGone`.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from multiprocessing.connection import Connection
from typing import Any, ParamSpec, TypeVar

PARENT_CHECK_SECONDS = 1.0

P = ParamSpec("P")
T = TypeVar("T")


class WorkerGone(RuntimeError):
    """The worker process ended (shut down, OOM-killed) before it answered."""


class SpawnedWorker(Executor):
    """``submit(fn, *args)`` -> Future, run in order in one process started with ``spawn`` (not
    ``fork``: the agent has threads, and BCC, that a forked child must not inherit).

    ``submit`` never blocks: jobs go to a sender thread. Functions and arguments are pickled, so
    ``fn`` must be importable by name. The worker exits by itself once its parent is gone.
    """

    def __init__(self, name: str) -> None:
        context = multiprocessing.get_context("spawn")
        jobs_reader, jobs_writer = context.Pipe(duplex=False)
        results_reader, results_writer = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve_jobs, args=(jobs_reader, results_writer, os.getpid()), name=name, daemon=True
        )
        self._process.start()
        jobs_reader.close()  # the parent keeps only its own ends: the worker's death is then EOF here
        results_writer.close()
        self._lock = threading.Lock()
        self._pending: collections.deque[Future[Any]] = collections.deque()
        self._outbox: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] = (
            queue.SimpleQueue()
        )
        self._gone = False
        threading.Thread(target=self._send_jobs, args=(jobs_writer,), name=f"{name}-send", daemon=True).start()
        threading.Thread(target=self._read_results, args=(results_reader,), name=f"{name}-read", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def gone(self) -> bool:
        """True once the worker has ended: every later ``submit`` raises WorkerGone."""
        with self._lock:
            return self._gone

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._gone:
                raise WorkerGone(f"the worker process {self._process.name} (pid {self.pid}) has ended")
            self._pending.append(future)
        self._outbox.put((fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Ends the worker at once, abandoning the job under way; pending futures fail with WorkerGone."""
        self._outbox.put(None)
        if self._process.is_alive():
            self._process.kill()
        if wait:
            self._process.join()

    def _send_jobs(self, jobs: Connection) -> None:
        try:
            while (job := self._outbox.get()) is not None:
                jobs.send(job)
        except (OSError, ValueError):  # the worker is gone; the reader fails what is pending
            pass
        finally:
            jobs.close()

    def _read_results(self, results: Connection) -> None:
        try:
            while True:
                succeeded, value = results.recv()
                with self._lock:
                    future = self._pending.popleft()
                if future.set_running_or_notify_cancel():
                    if succeeded:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        except (EOFError, OSError):
            pass
        finally:
            results.close()
            with self._lock:
                self._gone = True
                pending, self._pending = list(self._pending), collections.deque()
            self._outbox.put(None)  # and the sender stops
            for future in pending:
                if future.set_running_or_notify_cancel():
                    future.set_exception(WorkerGone(f"the worker process (pid {self.pid}) ended before answering"))


def _serve_jobs(jobs: Connection, results: Connection, parent_pid: int) -> None:
    """The worker's loop: one job at a time, its result or exception sent back in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the agent decides
    _exit_with_parent(parent_pid)
    while True:
        try:
            fn, args, kwargs = jobs.recv()
        except EOFError:
            return
        try:
            outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except Exception as error:  # sent back to the caller, as the future's exception
            outcome = (False, error)
        try:
            results.send(outcome)
        except (pickle.PicklingError, TypeError, AttributeError) as error:  # an exception that cannot travel
            results.send((False, RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]} ({error})")))


def _exit_with_parent(parent_pid: int) -> None:
    """A SIGKILLed agent runs no shutdown, and an orphaned worker would otherwise live on (and
    keep its memory) until the host reboots."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
