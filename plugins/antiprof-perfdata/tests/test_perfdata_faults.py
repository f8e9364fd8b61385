"""perf.data is all-or-nothing per file: full disks, SIGKILL at any moment, planted symlinks.

Every ``*.perf.data`` the sink leaves is one ``perf script`` reads, whatever happened meanwhile.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import antiprof_perfdata
import pytest
from antiprof_perfdata import naming
from antiprof_perfdata.perftool import run_perf
from antiprof_perfdata.sink import PerfDataSink, PerfDataWriteError
from antiprof_perfdata.writer import PerfDataFile, is_readable

from antiprof_core.model import ProfileWindow
from antiprof_core.testing import make_consumer, small_tmpfs, synthetic_window
from antiprof_core.testing.users import HostileUser, unprivileged_user

T0 = 1_795_600_000_000_000_000  # 2026-11-25T09:46:40Z
SECOND = 1_000_000_000


def sink(options: dict[str, Any]) -> PerfDataSink:
    consumer = make_consumer(antiprof_perfdata, "perfdata", options)
    assert isinstance(consumer, PerfDataSink)
    return consumer


def window(index: int, stacks: int = 40) -> ProfileWindow:
    return synthetic_window(processes=2, stacks=stacks, seed=index % 7 + 1, start_ns=T0 + index * SECOND)


def perf_script_samples(path: Path, buildid_dir: Path) -> int:
    """Sample lines ``perf script`` prints for ``path``; fails the test when perf cannot read it."""
    script = run_perf(["script", "-i", str(path), "-F", "tid"], buildid_dir)
    assert script.returncode == 0, f"{path.name} ({path.stat().st_size} bytes): {script.stderr.strip()}"
    return sum(1 for line in script.stdout.splitlines() if line.strip())


def assert_every_file_reads(directory: Path, buildid_dir: Path) -> list[Path]:
    files = sorted(directory.glob("*.perf.data"))
    for path in files:
        assert perf_script_samples(path, buildid_dir) > 0, f"{path.name} has no samples"
    return files


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk is full."""
    with path.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == 28


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny", size="256k") as mount:
        yield mount


def test_full_disk_then_space_back_leaves_only_readable_files(tiny_disk: Path, buildid_dir: Path) -> None:
    """A new file a window per second, disk full for a while: no empty or header-only file, ever."""
    out = tiny_disk / "perf"
    consumer = sink({"output_dir": str(out), "rotate_every": "1s", "max_files": 4})
    consumer.start()
    filler = tiny_disk / "filler"
    errors = 0
    for index in range(30):
        if index == 3:  # the disk fills up, but for less than a window: writes fail half way
            fill(filler)
            os.truncate(filler, filler.stat().st_size - 6 * 1024)
        if index == 20:
            filler.unlink()  # and space comes back
        try:
            consumer.consume(window(index))
        except PerfDataWriteError as error:
            assert "No space left on device" in str(error)
            errors += 1
        assert_every_file_reads(out, buildid_dir)
        assert not list(naming.own_temporaries(out, consumer.context.host.hostname)), "a temporary file was left"
    consumer.close()

    assert errors >= 10
    files = assert_every_file_reads(out, buildid_dir)
    assert len(files) == 4  # retention kept the newest readable ones
    assert files[-1].name == naming.file_name("synthetic-host", T0 + 29 * SECOND)


def test_a_new_file_that_cannot_take_its_first_window_is_removed(tiny_disk: Path) -> None:
    out = tiny_disk / "perf"
    consumer = sink({"output_dir": str(out)})
    consumer.start()
    fill(tiny_disk / "filler")
    os.truncate(tiny_disk / "filler", (tiny_disk / "filler").stat().st_size - 8 * 1024)
    with pytest.raises(PerfDataWriteError) as error:
        consumer.consume(window(0, stacks=400))
    name = naming.file_name("synthetic-host", T0)
    assert str(error.value) == (
        f"cannot write {out / name}: No space left on device; window dropped, the next one will try again"
    )
    assert list(out.iterdir()) == []


def test_retention_deletes_unreadable_files_before_readable_ones(tmp_path: Path, buildid_dir: Path) -> None:
    hostname = "synthetic-host"
    readable_old = tmp_path / naming.file_name(hostname, T0 - 3600 * SECOND)
    PerfDataFile(readable_old, window(0).host, 19).write(window(0))
    for hours in (2, 1):  # header-only files an older version left, newer than the readable one
        header_only = PerfDataFile(tmp_path / naming.file_name(hostname, T0 - hours * 600 * SECOND), window(0).host, 19)
        header_only.close()
    assert not is_readable(tmp_path / naming.file_name(hostname, T0 - 600 * SECOND))

    consumer = sink({"output_dir": str(tmp_path), "max_files": 2})
    consumer.start()
    consumer.consume(window(0))
    consumer.close()

    assert sorted(p.name for p in tmp_path.glob("*.perf.data")) == [readable_old.name, naming.file_name(hostname, T0)]
    assert_every_file_reads(tmp_path, buildid_dir)


def test_stale_temporary_files_of_this_host_are_removed_at_start(tmp_path: Path) -> None:
    stale = tmp_path / f".{naming.file_name('synthetic-host', T0)}.0123456789ab.tmp"
    fresh = tmp_path / f".{naming.file_name('synthetic-host', T0 + SECOND)}.ba9876543210.tmp"
    foreign = tmp_path / f".{naming.file_name('otherhost', T0)}.0123456789ab.tmp"
    for path in (stale, fresh, foreign):
        path.write_bytes(b"partial")
    an_hour_ago = time.time() - 3600
    for path in (stale, foreign):
        os.utime(path, (an_hour_ago, an_hour_ago))

    sink({"output_dir": str(tmp_path)}).start()

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, foreign.name])


def test_sigkill_during_rotation_leaves_only_readable_files(tmp_path: Path, buildid_dir: Path) -> None:
    """4 MiB files rotating every few windows, the writer killed 10 times at random moments."""
    rng = random.Random(9)
    writer = textwrap.dedent(
        f"""
        import attrs
        import antiprof_perfdata
        from antiprof_core.testing import make_consumer, synthetic_window
        options = {{"output_dir": {str(tmp_path)!r}, "max_file_size": "4MiB", "max_files": 3}}
        sink = make_consumer(antiprof_perfdata, "perfdata", options)
        sink.start()
        windows = [synthetic_window(processes=4, stacks=1500, seed=seed, duration_ns=10**9) for seed in (1, 2, 3)]
        for i in range(1_000_000):
            start = {T0} + i * 10**9
            sink.consume(attrs.evolve(windows[i % 3], start_ns=start, end_ns=start + 10**9))
            if i == 0:
                print("ready", flush=True)
        """
    )
    for kill in range(10):
        child = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "ready\n", f"kill {kill}: writer never started"
        time.sleep(rng.uniform(0.2, 2.0))
        child.send_signal(signal.SIGKILL)
        child.wait()
        files = assert_every_file_reads(tmp_path, buildid_dir)
        assert files, f"kill {kill}: no file at all"
        assert all(path.stat().st_size <= 4 << 20 for path in files)


@pytest.fixture
def hostile_folder() -> Iterator[tuple[Path, HostileUser]]:
    """A folder an unprivileged user (made for the test) owns, and that user."""
    with unprivileged_user("antiprof-t-perf") as user, tempfile.TemporaryDirectory() as parent:
        os.chmod(parent, 0o755)
        folder = Path(parent) / "theirs"
        folder.mkdir()
        os.chown(folder, user.uid, user.gid)
        yield folder, user


def test_a_symlinked_output_dir_planted_by_another_user_is_refused(
    hostile_folder: tuple[Path, HostileUser], tmp_path: Path
) -> None:
    folder, user = hostile_folder
    target = tmp_path / "roots-own"
    target.mkdir()
    planted = folder / "perf"
    user.run(["ln", "-s", str(target), str(planted)])
    consumer = sink({"output_dir": str(planted)})
    consumer.start()
    with pytest.raises(PerfDataWriteError) as error:
        consumer.consume(window(0))
    consumer.close()
    assert str(error.value) == (
        f"cannot write {planted}: is a symbolic link owned by uid {user.uid}; "
        "refusing to write through it; window dropped, the next one will try again"
    )
    assert list(target.iterdir()) == []


def test_a_symlink_planted_at_the_pipe_path_is_refused(
    hostile_folder: tuple[Path, HostileUser], tmp_path: Path
) -> None:
    folder, user = hostile_folder
    victim = tmp_path / "root-only"
    victim.write_bytes(b"secret\n")
    planted = folder / "perf.pipe"
    user.run(["ln", "-s", str(victim), str(planted)])
    consumer = sink({"mode": "pipe", "path": str(planted)})
    consumer.start()
    with pytest.raises(PerfDataWriteError) as error:
        consumer.consume(window(0))
    consumer.close()
    assert str(error.value) == (
        f"cannot write {planted}: is a symbolic link; refusing to write through it; "
        "window dropped, the next one will try again"
    )
    assert victim.read_bytes() == b"secret\n"
