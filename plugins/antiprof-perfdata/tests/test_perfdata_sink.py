"""The perfdata consumer: config, file names, rotation, retention, failures and pipe mode."""

from __future__ import annotations

import os
import shutil
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
import attrs
import pytest
from antiprof_perfdata.perftool import parse_script, perf_path, run_perf
from antiprof_perfdata.sink import PerfDataSink, PerfDataWriteError

from antiprof_core.config import ConfigError
from antiprof_core.model import ProfileWindow
from antiprof_core.testing import make_consumer, run_consumer, synthetic_window
from antiprof_core.testing import small_tmpfs as mount_small_tmpfs

T0 = 1_795_600_000_000_000_000  # 2026-11-25T09:46:40Z
SECOND = 1_000_000_000
ANTIPROF = str(Path(sys.executable).parent / "antiprof")


def sink(options: dict[str, Any]) -> PerfDataSink:
    consumer = make_consumer(antiprof_perfdata, "perfdata", options)
    assert isinstance(consumer, PerfDataSink)
    return consumer


def windows(count: int, every_s: float = 1.0, stacks: int = 20) -> list[ProfileWindow]:
    return [
        synthetic_window(
            processes=2, stacks=stacks, seed=i + 1, start_ns=T0 + int(i * every_s * SECOND), duration_ns=SECOND
        )
        for i in range(count)
    ]


def samples_in(path: Path, buildid_dir: Path) -> int:
    script = run_perf(["script", "-i", str(path), "-F", "tid"], buildid_dir)
    assert script.returncode == 0, script.stderr
    return len(sample_lines(script.stdout))


def sample_lines(text: str) -> list[str]:
    """perf script's per-sample lines (frames, indented, are skipped)."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("\t")]


def counted(window_list: list[ProfileWindow]) -> int:
    """Samples the windows hold: one SAMPLE record each in perf.data."""
    return sum(window.sample_count for window in window_list)


def perf_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.perf.data"))


# --- config ------------------------------------------------------------------------------------


def test_defaults_match_the_documentation() -> None:
    config = sink({}).config
    assert config.output_dir == "/var/lib/antiprof/perf"
    assert (config.rotate_every, config.max_file_size, config.max_files) == (3600.0, 100 * 1024 * 1024, 24)
    assert (config.mode.value, config.path, config.compact) == ("file", "", False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_files": "24"}, "consumers.perfdata.max_files: expected an integer, got a string ('24')"),
        ({"max_files": 0}, "consumers.perfdata.max_files: must be between 1 and 1000000, got 0"),
        ({"rotate_every": "soon"}, "consumers.perfdata.rotate_every: invalid duration 'soon'"),
        ({"max_file_size": "lots"}, "consumers.perfdata.max_file_size: invalid size 'lots'"),
        ({"mode": "socket"}, "consumers.perfdata.mode: expected one of 'file', 'pipe', got a string ('socket')"),
        ({"mode": "pipe"}, 'consumers.perfdata.path: pipe mode needs a path: a FIFO, or "-" for stdout'),
        ({"path": "/tmp/x"}, 'consumers.perfdata.path: only used with mode = "pipe"'),
        ({"compacted": True}, "consumers.perfdata.compacted: unknown key (did you mean 'compact'?)"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sink(options)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(message)


# --- files -------------------------------------------------------------------------------------


def test_directory_and_files_are_private_and_named_by_host_and_utc_start(tmp_path: Path, buildid_dir: Path) -> None:
    out = tmp_path / "new" / "perf"
    run_consumer(sink({"output_dir": str(out)}), windows(3))
    assert out.stat().st_mode & 0o777 == 0o700
    assert out.parent.stat().st_mode & 0o777 == 0o700  # the parent it made too
    assert perf_files(out) == ["antiprof-synthetic-host-20261125T094640Z.perf.data"]
    [path] = out.glob("*.perf.data")
    assert path.stat().st_mode & 0o777 == 0o600
    assert samples_in(path, buildid_dir) == counted(windows(3))


def test_no_file_until_a_window_has_samples(tmp_path: Path, buildid_dir: Path) -> None:
    empty = [attrs.evolve(window, samples=()) for window in windows(2)]
    consumer = sink({"output_dir": str(tmp_path)})
    consumer.start()
    for window in empty:
        consumer.consume(window)
    assert perf_files(tmp_path) == []
    consumer.consume(windows(3)[-1])
    consumer.consume(empty[0])
    consumer.close()
    assert perf_files(tmp_path) == ["antiprof-synthetic-host-20261125T094642Z.perf.data"]
    assert samples_in(tmp_path / perf_files(tmp_path)[0], buildid_dir) == counted(windows(3)[-1:])


def test_rotation_by_time_starts_a_file_per_period(tmp_path: Path, buildid_dir: Path) -> None:
    run_consumer(sink({"output_dir": str(tmp_path), "rotate_every": "10s"}), windows(7, every_s=4))
    # windows at 0 4 8 | 12 16 20 | 24 seconds
    assert perf_files(tmp_path) == [
        "antiprof-synthetic-host-20261125T094640Z.perf.data",
        "antiprof-synthetic-host-20261125T094652Z.perf.data",
        "antiprof-synthetic-host-20261125T094704Z.perf.data",
    ]
    sent = windows(7, every_s=4)
    expected = [counted(sent[0:3]), counted(sent[3:6]), counted(sent[6:7])]
    assert [samples_in(tmp_path / name, buildid_dir) for name in perf_files(tmp_path)] == expected


def test_rotation_by_size_keeps_every_file_under_the_limit(tmp_path: Path, buildid_dir: Path) -> None:
    limit = 64 * 1024
    consumer = sink({"output_dir": str(tmp_path), "max_file_size": "64KiB"})
    run_consumer(consumer, windows(24, every_s=0.05, stacks=15))  # about 10 KB a window
    names = perf_files(tmp_path)
    assert len(names) == len(consumer.files_created) > 2
    assert "antiprof-synthetic-host-20261125T094640Z.perf.data" in names
    assert "antiprof-synthetic-host-20261125T094640Z-1.perf.data" in names  # same second: a sequence number
    assert all((tmp_path / name).stat().st_size <= limit for name in names)
    assert all(consumer_file.stat().st_size > limit * 0.8 for consumer_file in consumer.files_created[:-1])
    assert sum(samples_in(tmp_path / name, buildid_dir) for name in names) == counted(windows(24, 0.05, 15))


def test_retention_deletes_only_this_sinks_oldest_files(tmp_path: Path) -> None:
    foreign = [
        "antiprof-otherhost-20200101T000000Z.perf.data",
        "perf.data",
        "notes.txt",
        "antiprof-synthetic-host-20200101T000000Z.perf.data.bak",
    ]
    for name in foreign:
        (tmp_path / name).write_text("keep me")
    run_consumer(sink({"output_dir": str(tmp_path), "rotate_every": "1s", "max_files": 3}), windows(6))
    assert perf_files(tmp_path) == [
        "antiprof-otherhost-20200101T000000Z.perf.data",
        "antiprof-synthetic-host-20261125T094643Z.perf.data",
        "antiprof-synthetic-host-20261125T094644Z.perf.data",
        "antiprof-synthetic-host-20261125T094645Z.perf.data",
    ]
    assert all((tmp_path / name).read_text() == "keep me" for name in foreign)


def test_vanished_directory_is_recreated_on_the_next_window(tmp_path: Path, buildid_dir: Path) -> None:
    out = tmp_path / "perf"
    consumer = sink({"output_dir": str(out)})
    consumer.start()
    first, second = windows(2)
    consumer.consume(first)
    shutil.rmtree(out)
    consumer.consume(second)
    consumer.close()
    [path] = out.glob("*.perf.data")
    assert path.name == "antiprof-synthetic-host-20261125T094641Z.perf.data"
    assert samples_in(path, buildid_dir) == second.sample_count


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted afterwards (needs root)."""
    with mount_small_tmpfs(tmp_path / "small") as mount:
        yield mount


def test_full_disk_drops_the_window_names_the_path_and_recovers(small_tmpfs: Path, buildid_dir: Path) -> None:
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (200 * 1024))
    consumer = sink({"output_dir": str(small_tmpfs / "perf")})
    consumer.start()
    errors, written = [], []
    for window in windows(10, stacks=40):
        try:
            consumer.consume(window)
            written.append(window)
        except PerfDataWriteError as error:
            errors.append(str(error))
    assert consumer.windows_written == len(written) >= 1 and consumer.windows_dropped == len(errors) >= 1
    [path] = (small_tmpfs / "perf").glob("*.perf.data")
    assert errors[0] == (f"cannot write {path}: No space left on device; window dropped, the next one will try again")
    assert samples_in(path, buildid_dir) == counted(written)  # readable up to the last good window

    filler.unlink()
    last = windows(11, stacks=40)[-1]
    consumer.consume(last)
    consumer.close()
    assert samples_in(path, buildid_dir) == counted([*written, last])


def test_permission_denied_drops_the_window_and_retries(tmp_path: Path, buildid_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    public = Path(tempfile.mkdtemp(prefix="antiprof-perfdata-eacces-", dir="/tmp"))
    try:
        public.chmod(0o755)
        locked = public / "perf"
        locked.mkdir(mode=0o755)  # root's: an unprivileged agent cannot create files here
        child_code = textwrap.dedent(
            f"""
            import sys
            import antiprof_perfdata
            from antiprof_core.testing import make_consumer, synthetic_window
            from antiprof_perfdata.sink import PerfDataWriteError
            sink = make_consumer(antiprof_perfdata, "perfdata", {{"output_dir": {str(locked)!r}}})
            sink.start()
            for i in range(2):
                try:
                    sink.consume(synthetic_window(processes=2, stacks=20, seed=i + 1, start_ns={T0} + i * 10**9))
                    print("written", flush=True)
                except PerfDataWriteError as error:
                    print(error, flush=True)
                sys.stdin.readline()
            sink.close()
            """
        )
        child = subprocess.Popen(
            [sys.executable, "-c", child_code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            user=65534,
            group=65534,
            extra_groups=[],
            cwd="/",
        )
        assert child.stdin is not None and child.stdout is not None
        first = child.stdout.readline().strip()
        locked.chmod(0o777)
        child.stdin.write("go\n")
        child.stdin.flush()
        second = child.stdout.readline().strip()
        child.stdin.write("go\n")
        child.stdin.close()
        assert child.wait(timeout=30) == 0
        name = "antiprof-synthetic-host-20261125T094640Z.perf.data"
        assert first == (
            f"cannot write {locked / name}: Permission denied; window dropped, the next one will try again"
        )
        assert second == "written"
        [path] = locked.glob("*.perf.data")
        assert path.name == "antiprof-synthetic-host-20261125T094641Z.perf.data"
        os.chown(path, 0, 0)  # perf reads only its own user's (or root's) files
        second_window = synthetic_window(processes=2, stacks=20, seed=2, start_ns=T0 + SECOND)
        assert samples_in(path, buildid_dir) == second_window.sample_count
    finally:
        shutil.rmtree(public)


# --- crash safety ------------------------------------------------------------------------------


def test_sigkill_while_writing_leaves_a_file_perf_reads(tmp_path: Path, buildid_dir: Path) -> None:
    writer = textwrap.dedent(
        f"""
        import antiprof_perfdata
        from antiprof_core.testing import make_consumer, synthetic_window
        sink = make_consumer(antiprof_perfdata, "perfdata", {{"output_dir": {str(tmp_path)!r}}})
        sink.start()
        for i in range(100000):
            sink.consume(synthetic_window(processes=4, stacks=300, seed=i % 5, start_ns={T0} + i * 10**9))
            if i == 2:
                print("ready", flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    time.sleep(0.7)
    child.send_signal(signal.SIGKILL)
    child.wait()
    [path] = tmp_path.glob("*.perf.data")
    report = run_perf(["report", "-i", str(path), "--stdio"], buildid_dir)
    assert report.returncode == 0
    assert "WARNING" not in report.stderr and "failed" not in report.stderr
    samples = samples_in(path, buildid_dir)
    sent = [synthetic_window(processes=4, stacks=300, seed=i % 5) for i in range(200)]
    whole_windows = {counted(sent[:n]) for n in range(3, len(sent))}
    assert samples in whole_windows  # whole windows only


# --- pipe mode ---------------------------------------------------------------------------------


def test_pipe_mode_to_a_fifo_waits_for_a_reader_then_streams(tmp_path: Path, buildid_dir: Path) -> None:
    fifo = tmp_path / "perf.fifo"
    os.mkfifo(fifo)
    consumer = sink({"mode": "pipe", "path": str(fifo)})
    consumer.start()
    first, *rest = windows(4)
    with pytest.raises(PerfDataWriteError, match=f"cannot write {fifo}: No such device or address"):
        consumer.consume(first)  # nobody reads yet: dropped, not blocked
    reader = subprocess.Popen(
        f"cat {fifo} | {perf_path()} script -i - -F tid,period",
        shell=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PERF_BUILDID_DIR=str(buildid_dir)),
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            consumer.consume(rest[0])
            break
        except PerfDataWriteError:
            assert time.monotonic() < deadline, "cat never opened the FIFO"
            time.sleep(0.05)
    for window in rest[1:]:
        consumer.consume(window)
    consumer.close()
    out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0
    assert len(sample_lines(out.decode())) == counted(rest)


def test_antiprof_run_pipes_to_perf_script(tmp_path: Path, buildid_dir: Path) -> None:
    config = tmp_path / "pipe.toml"
    config.write_text(
        textwrap.dedent(
            """
            [sampler]
            source = "synthetic"
            window = "500ms"
            synthetic = { processes = 3, stacks = 30, depth = 8 }

            [consumers.perfdata]
            mode = "pipe"
            path = "-"
            """
        )
    )
    pipeline = subprocess.run(
        f"{ANTIPROF} run -c {config} --duration 1200ms | {perf_path()} script -i - -F comm,tid,period",
        shell=True,
        capture_output=True,
        env=dict(os.environ, PERF_BUILDID_DIR=str(buildid_dir)),
        timeout=60,
        check=False,
    )
    assert pipeline.returncode == 0, pipeline.stderr.decode()
    lines = sample_lines(pipeline.stdout.decode())
    assert len(lines) >= 2 * 30  # at least two windows of 30 stacks, one line per sample
    assert {line.split()[2] for line in lines} == {str(1_000_000_000 // 19)}
    assert all(line.split()[0].startswith("synthetic_") for line in lines)


def test_script_output_parses_into_frames(tmp_path: Path, buildid_dir: Path) -> None:
    run_consumer(sink({"output_dir": str(tmp_path)}), windows(1, stacks=5))
    [path] = tmp_path.glob("*.perf.data")
    samples = parse_script(run_perf(["script", "-i", str(path)], buildid_dir).stdout)
    assert len(samples) == counted(windows(1, stacks=5)) and all(len(s.frames) == 16 for s in samples)


def test_antiprof_record_writes_perf_data_and_says_how_to_open_it(tmp_path: Path, buildid_dir: Path) -> None:
    out = tmp_path / "antiprof-data"
    done = subprocess.run(
        [ANTIPROF, "record", "-d", "1s", "--source", "synthetic", "-o", str(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="500"),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [path] = out.glob("antiprof-*.perf.data")
    assert f"perf report -i {path}" in done.stdout
    assert samples_in(path, buildid_dir) > 0
