"""Tables on disk by build ID and the worker that builds them: a restart parses nothing, a
corrupt or planted cache file costs one log line and a rebuild, requests never wait."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest

from antiprof_core.config import PluginCatalog, build_config
from antiprof_core.sources.unwind import UnwindInputError, build_table
from antiprof_core.sources.unwind import worker as worker_module
from antiprof_core.sources.unwind.cache import CacheUnavailable, TableCache
from antiprof_core.sources.unwind.elfsections import read_sections
from antiprof_core.sources.unwind.table import UnwindTable
from antiprof_core.sources.unwind.worker import TableResult, UnwindTableBuilder
from antiprof_core.testing.agent import wait_until

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
PYTHON = "/usr/bin/python3.11"


def same(first: UnwindTable, second: UnwindTable) -> bool:
    return (first.build_id, first.pcs, first.rows, dict(first.counts)) == (
        second.build_id, second.pcs, second.rows, dict(second.counts),
    )  # fmt: skip


def test_round_trip_and_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "unwind"
    cache = TableCache(directory)
    table = build_table(LIBC)
    assert table.build_id
    cache.store(table)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    stored = directory / f"{table.build_id}.unwind"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert [path.name for path in directory.iterdir()] == [stored.name]  # no temporary file left
    loaded = TableCache(directory).load(table.build_id)
    assert loaded is not None and same(loaded, table)
    assert TableCache(directory).load("00" * 20) is None


def test_a_corrupt_file_is_logged_removed_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    builder = UnwindTableBuilder(cache_dir=tmp_path, process=False)
    try:
        first = builder.request(LIBC).result(timeout=60)
        assert not first.from_cache
        build_id = first.table.build_id
        path = tmp_path / f"{build_id}.unwind"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        with caplog.at_level(logging.WARNING):
            second = builder.request(LIBC).result(timeout=60)
        assert not second.from_cache and same(second.table, first.table)
        assert f"unwind cache {tmp_path}/{build_id}.unwind is corrupt (checksum mismatch); rebuilding" in caplog.text
        third = builder.request(LIBC).result(timeout=60)
        assert third.from_cache and same(third.table, first.table)
        path.write_bytes(b"APUNWIND" + b"\x07" * 40)  # another format version
        with caplog.at_level(logging.WARNING):
            assert not builder.request(LIBC).result(timeout=60).from_cache
        assert "format version 117901063, this agent writes 1" in caplog.text
    finally:
        builder.close()


def test_a_restart_parses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = UnwindTableBuilder(cache_dir=tmp_path, process=False)
    built = {path: builder.request(path).result(timeout=120) for path in (LIBC, PYTHON)}
    builder.close()

    def no_parsing(*args: object, **kwargs: object) -> UnwindTable:
        raise AssertionError("a cached table was parsed again")

    monkeypatch.setattr(worker_module, "build_table", no_parsing)
    restarted = UnwindTableBuilder(cache_dir=tmp_path, process=False)
    try:
        for path, result in built.items():
            again = restarted.request(path).result(timeout=60)
            assert again.from_cache and same(again.table, result.table)
    finally:
        restarted.close()


def test_planted_symlinks_are_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = build_table(LIBC)
    assert table.build_id
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    (directory / f"{table.build_id}.unwind").symlink_to(victim)
    cache = TableCache(directory)
    with caplog.at_level(logging.WARNING):
        assert cache.load(table.build_id) is None
    assert "unreadable" in caplog.text
    cache.store(table)
    assert victim.read_bytes() == b"precious"
    assert not (directory / f"{table.build_id}.unwind").is_symlink()
    linked = tmp_path / "linked"
    linked.symlink_to(directory)
    with pytest.raises(CacheUnavailable):
        TableCache(linked).open_directory()


def test_a_directory_someone_else_owns_is_not_used(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(CacheUnavailable, match="owned by uid 65534"):
        TableCache(directory).open_directory()
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    TableCache(loose).open_directory()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_requests_return_at_once_and_share_one_build(tmp_path: Path) -> None:
    builder = UnwindTableBuilder(cache_dir=None, process=False)
    try:
        first = builder.request(PYTHON)
        second = builder.request(PYTHON)
        assert isinstance(first, Future) and second is first
        assert len(first.result(timeout=60).table) > 10_000
        failed = builder.request(str(tmp_path / "missing"))
        with pytest.raises(UnwindInputError, match="cannot open"):
            failed.result(timeout=60)
    finally:
        builder.close()


def test_process_worker_gives_the_same_table_and_errors(tmp_path: Path) -> None:
    builder = UnwindTableBuilder(cache_dir=tmp_path, process=True)
    try:
        result: TableResult = builder.request(LIBC, build_id=read_sections(LIBC, unwind=False).build_id).result(120)
        assert same(result.table, build_table(LIBC))
        with pytest.raises(UnwindInputError) as caught:
            builder.request(str(tmp_path / "missing")).result(timeout=60)
        assert caught.value.path == str(tmp_path / "missing")
    finally:
        builder.close()
    assert (tmp_path / f"{result.table.build_id}.unwind").exists()


def test_the_cache_directory_is_configurable() -> None:
    default = build_config({}, PluginCatalog(), {})
    assert default.sampler.unwind_cache_dir == "/var/cache/antiprof/unwind"
    custom = build_config({"sampler": {"unwind_cache_dir": "/tmp/tables"}}, PluginCatalog(), {})
    assert custom.sampler.unwind_cache_dir == "/tmp/tables"


OWNER_OF_A_BUILDER = """
import multiprocessing, os, sys, time
from antiprof_core.sources.unwind.worker import UnwindTableBuilder
builder = UnwindTableBuilder(None)
builder.request(os.path.realpath(sys.executable)).result(timeout=120)
print(*[child.pid for child in multiprocessing.active_children()], flush=True)
time.sleep(3600)
"""


def test_the_worker_exits_when_the_agent_is_killed() -> None:
    """A SIGKILLed agent runs no shutdown: its table worker must not live on as an orphan."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER_OF_A_BUILDER], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        workers = [int(pid) for pid in owner.stdout.readline().split()]
        assert workers and all(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        owner.kill()
        owner.wait()
    wait_until(lambda: not any(_running(pid) for pid in workers), timeout=30, what="the orphaned worker to exit")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited orphan is reaped by init, but maybe not at once)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3] + " "
    except OSError:
        return False
