"""The unwind tables' worker process: killed at any moment, the agent still exits at once.

CI once saw the agent hang for a minute at shutdown: the table worker (then a
ProcessPoolExecutor) was killed while it sent back a table, and the interpreter's exit waited
forever on the pool's thread reading the rest of that message. Each script below runs in its own
interpreter, since what is checked is that the interpreter ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from antiprof_core.sources.unwind import UnwindInputError
from antiprof_core.sources.unwind.worker import UnwindTableBuilder
from antiprof_core.sources.unwind.workerprocess import SpawnedWorker, WorkerGone
from antiprof_core.testing.agent import wait_until

KILLED_WHILE_ANSWERING = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from antiprof_core.sources.unwind.workerprocess import SpawnedWorker, WorkerGone

    def large_answer(marker, size):
        answer = b"x" * size
        Path(marker).touch()
        return answer  # then pickled and sent: 200 MB take a while

    if __name__ == "__main__":
        delay, marker = float(sys.argv[1]), sys.argv[2]
        worker = SpawnedWorker("test-worker")
        future = worker.submit(large_answer, marker, 200_000_000)
        while not os.path.exists(marker):
            time.sleep(0.001)
        time.sleep(delay)
        worker.shutdown(wait=False)
        try:
            print("answered" if len(future.result(timeout=30)) else "empty")
        except WorkerGone:
            print("gone")
    """
)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4])
def test_the_interpreter_exits_when_the_worker_is_killed_mid_answer(delay: float, tmp_path: Path) -> None:
    """Killed before, during or after sending its answer (ProcessPoolExecutor hung from 0.15 s on)."""
    script = tmp_path / "owner.py"
    script.write_text(KILLED_WHILE_ANSWERING)
    done = subprocess.run(
        [sys.executable, str(script), str(delay), str(tmp_path / "marker")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"answered", "gone"}


def test_jobs_answer_in_order_and_their_errors_come_back_as_raised() -> None:
    worker = SpawnedWorker("test-worker")
    try:
        lengths = [worker.submit(len, "a" * n) for n in range(50)]
        failed = worker.submit(int, "not a number")
        assert [f.result(timeout=60) for f in lengths] == list(range(50))
        with pytest.raises(ValueError, match="not a number"):
            failed.result(timeout=60)
    finally:
        worker.shutdown()


def test_a_worker_killed_from_outside_fails_what_is_pending_and_a_builder_starts_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As when the OOM killer picks it: the builder's next request gets a new worker."""
    builder = UnwindTableBuilder(cache_dir=None, process=True)
    try:
        first = builder._executor
        assert isinstance(first, SpawnedWorker) and first.pid
        pending = first.submit(time.sleep, 120)  # under way when the kill comes
        os.kill(first.pid, signal.SIGKILL)
        with pytest.raises(WorkerGone):
            pending.result(timeout=60)
        wait_until(lambda: first.gone, timeout=30, what="the killed worker to be noticed")
        with pytest.raises(UnwindInputError, match="cannot open"):
            builder.request(str(tmp_path / "missing")).result(timeout=60)
        assert builder._executor is not first
        assert "unwind table worker died; starting a new one" in caplog.text
    finally:
        builder.close()
