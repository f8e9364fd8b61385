"""A bound on the time between the last window delivered and the process's end.

By then every window is out and every sink closed, but the interpreter's own exit still runs
other people's code: atexit hooks and the joins of library threads (concurrent.futures,
multiprocessing, a plugin's). One that hangs would keep a stopped agent alive until systemd or
Kubernetes kills it, and a `--duration` run would never return. Nothing is left to lose, so
past the grace period the process ends with the code it was going to exit with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

EXIT_GRACE_SECONDS = 15.0


def bound_exit(code: int, logger: logging.Logger, grace: float = EXIT_GRACE_SECONDS) -> None:
    """Ends the process with ``code`` if it is still running ``grace`` seconds from now."""

    def end() -> None:
        logger.warning("the process did not exit within %.0f s of its last window: ending it", grace)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)

    timer = threading.Timer(grace, end)
    timer.name = "antiprof-exit-guard"
    timer.daemon = True  # not waited for: it only acts if the exit it guards has stalled
    timer.start()
