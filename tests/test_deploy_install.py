"""``make dist`` + ``scripts/install.sh`` + the systemd unit, as an SRE runs them, then uninstall.

Everything is installed under a temporary root (the script's ANTIPROF_* variables), so the test
never touches /opt or /etc. The unit is checked with ``systemd-analyze verify``; when this
machine runs systemd, it is started as a transient copy, otherwise its ExecStart line is run as
is. Either way the agent must attach (/readyz) and write a perf.data window.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from antiprof_core.testing import require_bpf
from antiprof_core.testing.agent import READY_TIMEOUT, wait_until
from antiprof_core.testing.workloads import started

pytestmark = pytest.mark.bpf

REPO = Path(__file__).resolve().parent.parent
PLUGINS = sorted(path.name.replace("-", "_") for path in (REPO / "plugins").glob("antiprof-*"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def status(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def windows_total(metrics: str) -> float:
    values = [line.split()[1] for line in metrics.splitlines() if line.startswith("antiprof_windows_total ")]
    return float(values[0]) if values else 0.0


def systemd_running() -> bool:
    if shutil.which("systemctl") is None:
        return False
    state = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True, check=False)
    return state.stdout.strip() in ("running", "degraded")


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dist = root / "dist"
        self.prefix = root / "opt/antiprof"
        self.config_dir = root / "etc/antiprof"
        self.unit_dir = root / "etc/systemd/system"
        self.state_dir = root / "var/lib/antiprof"
        self.unit = self.unit_dir / "antiprof.service"
        self.config = self.config_dir / "antiprof.toml"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ANTIPROF_PREFIX": str(self.prefix),
            "ANTIPROF_CONFIG_DIR": str(self.config_dir),
            "ANTIPROF_UNIT_DIR": str(self.unit_dir),
            "ANTIPROF_STATE_DIR": str(self.state_dir),
            "ANTIPROF_DIST": str(self.dist),
        }

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO / "scripts/install.sh"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    if os.geteuid() != 0:
        pytest.skip("install.sh installs system-wide: needs root")
    layout = Layout(tmp_path_factory.mktemp("root"))
    made = subprocess.run(
        ["make", "-s", "-C", str(REPO), "dist", f"DIST={layout.dist}"], capture_output=True, text=True, timeout=900
    )
    assert made.returncode == 0, made.stderr
    yield layout


def test_make_dist_builds_a_wheel_of_every_distribution(layout: Layout) -> None:
    names = sorted(path.name.split("-")[0] for path in layout.dist.glob("*.whl"))
    assert names == ["antiprof_core", *PLUGINS]


def test_install_verify_start_and_uninstall(layout: Layout) -> None:
    require_bpf()
    done = layout.install()
    assert done.returncode == 0, done.stderr
    agent = layout.prefix / ".venv/bin/antiprof"
    assert os.access(agent, os.X_OK)
    assert layout.config.read_text() == (REPO / "examples/deploy/antiprof.toml").read_text()
    unit = layout.unit.read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert exec_start is not None
    command = shlex.split(exec_start.group(1))
    assert command[:4] == [str(agent), "run", "-c", str(layout.config)]
    assert not re.search(r"^(Nice|CPUQuota=[0-9]%|CPUQuota=[1-9][0-9]%)", unit, re.MULTILINE)

    verify = subprocess.run(["systemd-analyze", "verify", str(layout.unit)], capture_output=True, text=True)
    problems = [line for line in verify.stderr.splitlines() if "antiprof.service" in line]
    assert verify.returncode == 0 and not problems, verify.stderr

    # The installed config is the user's: a second install keeps it.
    layout.config.write_text(layout.config.read_text().replace('window = "10s"', 'window = "1s"'))
    again = layout.install()
    assert again.returncode == 0, again.stderr
    assert 'window = "1s"' in layout.config.read_text()
    assert "kept the existing" in again.stderr

    # Short windows, a free metrics port and a private perf.data directory, so the run is quick.
    port = free_port()
    perf_dir = layout.root / "perf"
    config = layout.config.read_text()
    config = config.replace('"127.0.0.1:9464"', f'"127.0.0.1:{port}"').replace("/var/lib/antiprof/perf", str(perf_dir))
    layout.config.write_text(config)
    if systemd_running():
        run_under_systemd(layout, port, perf_dir)
    else:
        run_directly(command, port, perf_dir)

    removed = layout.install("--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not layout.prefix.exists() and not layout.unit.exists()
    assert layout.config.exists()  # the config is kept
    purged = layout.install("--purge")
    assert purged.returncode == 0, purged.stderr
    assert not layout.config_dir.exists()


def produced_a_window(port: int, perf_dir: Path) -> None:
    """Ready, then a window with samples on disk. A busy loop makes sure there are samples: on an
    idle machine a 1 s window at 19 Hz may hold none, and the sink writes no sample-less file."""
    wait_until(lambda: status(port, "/readyz")[0] == 200, timeout=READY_TIMEOUT, what="/readyz")
    with started(sys.executable, "-c", "while True: pass"):
        wait_until(lambda: windows_total(status(port, "/metrics")[1]) >= 1, timeout=60, what="a window")
        wait_until(lambda: any(perf_dir.glob("*.perf.data")), timeout=60, what="a perf.data file")
    assert status(port, "/healthz")[0] == 200


def run_directly(command: list[str], port: int, perf_dir: Path) -> None:
    agent = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        produced_a_window(port, perf_dir)
    except AssertionError as error:  # with what the agent said: the one clue to why in a CI log
        agent.send_signal(signal.SIGTERM)
        raise AssertionError(f"{error}; the agent logged:\n{agent.communicate(timeout=60)[1]}") from None
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    files = list(perf_dir.glob("*.perf.data"))
    assert files and files[0].read_bytes()[:8] == b"PERFILE2"


def run_under_systemd(layout: Layout, port: int, perf_dir: Path) -> None:
    transient = Path("/run/systemd/system/antiprof-install-test.service")
    # ProtectSystem=strict: the test's perf.data directory must be made writable for the unit.
    transient.write_text(layout.unit.read_text().replace("[Service]\n", f"[Service]\nReadWritePaths={perf_dir}\n"))
    perf_dir.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "start", transient.name], check=True, timeout=60)
        produced_a_window(port, perf_dir)
        subprocess.run(["systemctl", "reload", transient.name], check=True, timeout=60)
        subprocess.run(["systemctl", "stop", transient.name], check=True, timeout=60)
        assert list(perf_dir.glob("*.perf.data"))
    finally:
        subprocess.run(["systemctl", "stop", transient.name], check=False)
        transient.unlink(missing_ok=True)
        subprocess.run(["systemctl", "daemon-reload"], check=False)
