"""A real unprivileged user for hostile-user tests: made by the test, removed afterwards (needs root).

with unprivileged_user("antiprof-t-json") as user:
    user.run(["ln", "-s", "/etc/shadow", str(planted)])
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import time
from collections.abc import Iterator, Sequence

from attrs import frozen

_LOCK_RETRIES = 50  # useradd/userdel fail while another process holds /etc/passwd's lock


@frozen
class HostileUser:
    name: str
    uid: int
    gid: int

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as this user, with no groups and no capabilities."""
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            *argv,
        ]

    def run(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user; fails the caller's test when it exits non-zero."""
        return subprocess.run(
            self.command(argv), check=True, capture_output=True, text=True, timeout=timeout, env={"PATH": os.defpath}
        )


def _retrying(argv: Sequence[str]) -> None:
    for _ in range(_LOCK_RETRIES):
        result = subprocess.run(list(argv), capture_output=True, text=True)
        if result.returncode == 0:
            return
        if "lock" not in result.stderr:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
        time.sleep(0.1)
    raise RuntimeError(f"{' '.join(argv)}: /etc/passwd stayed locked")


@contextlib.contextmanager
def unprivileged_user(name: str) -> Iterator[HostileUser]:
    """A system user ``name`` with no home and no login shell; skips the test when not root."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    with contextlib.suppress(KeyError):  # left over by a killed run: start clean
        pwd.getpwnam(name)
        _retrying(["userdel", name])
    _retrying(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name])
    entry = pwd.getpwnam(name)
    try:
        yield HostileUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        _retrying(["userdel", name])
