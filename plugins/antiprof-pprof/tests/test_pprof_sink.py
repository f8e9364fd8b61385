"""The pprof sink's files: one per window, private, published whole, rotated away oldest first."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import antiprof_pprof
from antiprof_core.config import ConfigError
from antiprof_core.model import ProfileWindow
from antiprof_core.sources.synthetic import synthetic_window
from antiprof_core.testing import make_consumer, run_consumer, small_tmpfs
from antiprof_pprof import PprofSink, PprofWriteError, profile_pb2

START = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def windows(count: int, stacks: int = 50, step: int = 10 * SECOND) -> list[ProfileWindow]:
    return [
        synthetic_window(stacks=stacks, seed=index + 1, start_ns=START + index * step, duration_ns=step)
        for index in range(count)
    ]


def sink(options: dict[str, Any]) -> PprofSink:
    consumer = make_consumer(antiprof_pprof, "pprof", options)
    assert isinstance(consumer, PprofSink)
    return consumer


def test_one_readable_private_file_per_window(tmp_path: Path) -> None:
    out = tmp_path / "pprof"
    written = windows(3)

    consumer = run_consumer(sink({"output_dir": str(out)}), written)

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "antiprof-synthetic-host-20231114T221320Z.pb.gz",
        "antiprof-synthetic-host-20231114T221330Z.pb.gz",
        "antiprof-synthetic-host-20231114T221340Z.pb.gz",
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())
    for path, window in zip(sorted(out.iterdir()), written, strict=True):
        profile = profile_pb2.Profile.FromString(gzip.decompress(path.read_bytes()))
        assert sum(s.value[0] for s in profile.sample) == window.sample_count
        assert profile.time_nanos == window.start_ns
    assert isinstance(consumer, PprofSink) and len(consumer.files_written) == 3


def test_windows_in_the_same_second_get_their_own_files(tmp_path: Path) -> None:
    out = tmp_path / "pprof"

    run_consumer(sink({"output_dir": str(out)}), windows(3, step=SECOND // 4))

    assert sorted(p.name for p in out.iterdir()) == [
        "antiprof-synthetic-host-20231114T221320Z-1.pb.gz",
        "antiprof-synthetic-host-20231114T221320Z-2.pb.gz",
        "antiprof-synthetic-host-20231114T221320Z.pb.gz",
    ]


def test_retention_keeps_the_newest_files_and_leaves_others_alone(tmp_path: Path) -> None:
    out = tmp_path / "pprof"
    out.mkdir(mode=0o700)
    (out / "notes.txt").write_text("mine")
    (out / "antiprof-other-host-20200101T000000Z.pb.gz").write_bytes(b"theirs")

    run_consumer(sink({"output_dir": str(out), "max_files": 2}), windows(5))

    assert sorted(p.name for p in out.iterdir()) == [
        "antiprof-other-host-20200101T000000Z.pb.gz",
        "antiprof-synthetic-host-20231114T221350Z.pb.gz",
        "antiprof-synthetic-host-20231114T221400Z.pb.gz",
        "notes.txt",
    ]


def test_retention_by_total_size_never_removes_the_newest(tmp_path: Path) -> None:
    out = tmp_path / "pprof"
    big = windows(4, stacks=400)
    one_file = len(antiprof_pprof.encode_profile([big[0]]))

    run_consumer(sink({"output_dir": str(out), "max_total_size": int(one_file * 2.5)}), big)

    assert [p.name[-22:] for p in sorted(out.iterdir())] == ["20231114T221340Z.pb.gz", "20231114T221350Z.pb.gz"]
    run_consumer(sink({"output_dir": str(out), "max_total_size": 1}), windows(1, stacks=400))
    assert len(list(out.iterdir())) == 1


def test_windows_without_samples_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "pprof"
    empty = synthetic_window(stacks=0, start_ns=START)

    run_consumer(sink({"output_dir": str(out)}), [empty])

    assert list(out.iterdir()) == []


def test_a_symlink_instead_of_the_directory_is_refused_then_the_sink_recovers(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "pprof"
    out.symlink_to(elsewhere)
    consumer = sink({"output_dir": str(out)})
    first, second = windows(2)
    consumer.start()

    with pytest.raises(PprofWriteError) as refused:
        consumer.consume(first)
    out.unlink()
    consumer.consume(second)
    consumer.close()

    assert str(refused.value) == (
        f"cannot write {out}: not a directory (a symlink is refused); this window's file is lost, "
        "the next one will try again"
    )
    assert list(elsewhere.iterdir()) == []
    assert [p.name for p in out.iterdir()] == ["antiprof-synthetic-host-20231114T221330Z.pb.gz"]


def test_a_full_disk_costs_one_window_and_leaves_no_partial_file(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "full", size="64k") as mount:
        out = mount / "pprof"
        consumer = sink({"output_dir": str(out)})
        consumer.start()
        with pytest.raises(PprofWriteError) as full:
            consumer.consume(synthetic_window(stacks=3000, seed=1, start_ns=START))
        consumer.consume(synthetic_window(stacks=5, seed=2, start_ns=START + 10 * SECOND))
        consumer.close()

        assert "No space left on device" in str(full.value) and str(out) in str(full.value)
        assert [p.name for p in out.iterdir()] == ["antiprof-synthetic-host-20231114T221330Z.pb.gz"]
        assert gzip.decompress((out / "antiprof-synthetic-host-20231114T221330Z.pb.gz").read_bytes())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"http_address": "0.0.0.0:6060"},
         "consumers.pprof.http_address: must be a loopback address (127.0.0.1, [::1] or localhost), got "
         "'0.0.0.0:6060': the endpoint has no authentication; reach it from elsewhere through ssh or kubectl "
         "port-forward"),
        ({"http_address": "6060"}, "consumers.pprof.http_address: expected host:port, e.g. 127.0.0.1:6060, got '6060'"),
        ({"output_dir": ""},
         "consumers.pprof.output_dir: is empty and http_address is not set: the sink would do nothing"),
        ({"max_files": 0}, "consumers.pprof.max_files: must be between 1 and 10000000, got 0"),
    ],
)  # fmt: skip
def test_bad_config_is_one_line_naming_the_field(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        sink(options)

    assert error.value.lines() == [message]


def test_a_taken_port_is_a_start_up_error_naming_the_address() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as error:
            sink({"output_dir": "", "http_address": f"127.0.0.1:{port}"})

    assert str(error.value).endswith(f"http_address: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_files_are_never_written_through_a_planted_symlink(tmp_path: Path) -> None:
    out = tmp_path / "pprof"
    out.mkdir(mode=0o700)
    target = tmp_path / "victim"
    target.write_text("precious")
    name = "antiprof-synthetic-host-20231114T221320Z.pb.gz"
    os.symlink(target, out / name)

    run_consumer(sink({"output_dir": str(out)}), windows(1))

    assert target.read_text() == "precious"
    assert (out / name).is_symlink()
    assert [p.name for p in sorted(out.iterdir())] == [
        "antiprof-synthetic-host-20231114T221320Z-1.pb.gz", name,
    ]  # fmt: skip


def test_config_show_lists_the_defaults(tmp_path: Path) -> None:
    config = sink({}).config
    assert (config.output_dir, config.max_files, config.max_total_size, config.http_address) == (
        "/var/lib/antiprof/pprof", 8640, 1 << 30, "",
    )  # fmt: skip
    assert Path(config.output_dir).is_absolute()
