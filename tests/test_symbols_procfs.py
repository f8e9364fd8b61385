"""Liveness from one read of /proc: every window checks its known processes without a stat per PID."""

from __future__ import annotations

import os
import subprocess

from antiprof_core.symbolize.procfs import live_pids


def test_live_pids_has_running_processes_and_not_reaped_ones() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert {os.getpid(), child.pid} <= live_pids()
    finally:
        child.kill()
        child.wait()
    assert child.pid not in live_pids()


def test_threads_are_not_listed_as_processes() -> None:
    import threading

    ready, done = threading.Event(), threading.Event()
    ids: list[int] = []

    def worker() -> None:
        ids.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        ready.wait(10)
        assert ids and ids[0] != os.getpid()
        assert ids[0] not in live_pids()
    finally:
        done.set()
        thread.join()
