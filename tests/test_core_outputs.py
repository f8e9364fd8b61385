"""antiprof_core.outputs: how every sink creates its files and folders as root."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from antiprof_core.outputs import (
    OutputPathError,
    atomic_replace,
    ensure_private_dir,
    open_output_fd,
    open_output_file,
    publish_new,
)
from antiprof_core.testing.users import HostileUser, unprivileged_user


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUser]:
    with unprivileged_user("antiprof-t-outputs") as user:
        yield user


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only file that a planted link points at; it must never change."""
    path = tmp_path / "victim"
    path.write_bytes(b"root only\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def users_folder(hostile: HostileUser) -> Iterator[Path]:
    """A folder the hostile user owns (not sticky: the kernel's protected_symlinks does not help)."""
    with tempfile.TemporaryDirectory() as parent:
        os.chmod(parent, 0o755)
        folder = Path(parent) / "theirs"
        folder.mkdir()
        os.chown(folder, hostile.uid, hostile.gid)
        yield folder


def test_new_folders_and_their_parents_are_0700(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        ensure_private_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old_umask)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    ensure_private_dir(tmp_path / "a" / "b" / "c")  # existing: fine


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    ensure_private_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_a_file_where_a_folder_should_be_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError) as caught:
        ensure_private_dir(tmp_path / "file")
    assert str(caught.value) == f"{tmp_path / 'file'}: is not a directory"


def test_new_file_is_0600_and_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with open_output_file(path, exclusive=True) as out:
        out.write(b"abc")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"abc"
    with pytest.raises(FileExistsError):
        open_output_fd(path, exclusive=True)


def test_append_reuses_an_existing_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"one\n")
    with open_output_file(path, exclusive=False, append=True) as out:
        out.write(b"two\n")
    assert path.read_bytes() == b"one\ntwo\n"


def test_a_symlink_at_the_output_path_is_refused_even_when_root_made_it(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "out.jsonl"
    link.symlink_to(victim)
    for exclusive in (True, False):
        with pytest.raises(OutputPathError) as caught:
            open_output_fd(link, exclusive=exclusive, append=True)
        assert str(caught.value) == f"{link}: is a symbolic link; refusing to write through it"
    with pytest.raises(OutputPathError):
        atomic_replace(link, b"new")
    assert victim.read_bytes() == b"root only\n"
    assert link.is_symlink()


def test_a_hard_link_to_another_file_is_refused(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "out.jsonl"
    os.link(victim, link)
    with pytest.raises(OutputPathError, match="has 2 hard links"):
        open_output_fd(link, exclusive=False, append=True)
    assert victim.read_bytes() == b"root only\n"


def test_a_fifo_at_the_output_path_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="FIFO"):
        open_output_fd(fifo, exclusive=False)


def test_a_symlink_planted_by_another_user_is_refused(users_folder: Path, victim: Path, hostile: HostileUser) -> None:
    planted = users_folder / "windows.jsonl"
    hostile.run(["ln", "-s", str(victim), str(planted)])
    with pytest.raises(OutputPathError) as caught:
        open_output_fd(planted, exclusive=False, append=True)
    assert str(caught.value) == f"{planted}: is a symbolic link; refusing to write through it"
    assert victim.read_bytes() == b"root only\n"


def test_a_folder_symlink_planted_by_another_user_is_refused(
    users_folder: Path, tmp_path: Path, hostile: HostileUser
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = users_folder / "perf"
    hostile.run(["ln", "-s", str(elsewhere), str(planted)])
    with pytest.raises(OutputPathError) as caught:
        ensure_private_dir(planted / "more")
    assert str(caught.value) == (
        f"{planted}: is a symbolic link owned by uid {hostile.uid}; refusing to write through it"
    )
    assert list(elsewhere.iterdir()) == []


def test_a_folder_symlink_made_by_root_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "data"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    ensure_private_dir(tmp_path / "link" / "perf")
    assert stat.S_IMODE((real / "perf").stat().st_mode) == 0o700


def test_atomic_replace_leaves_old_or_new_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "flame.html"
    atomic_replace(path, b"old")
    atomic_replace(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["flame.html"]


def test_atomic_replace_on_a_full_disk_keeps_the_old_file(tmp_path: Path) -> None:
    from antiprof_core.testing import small_tmpfs

    with small_tmpfs(tmp_path / "small", size="64k") as folder:
        path = folder / "flame.html"
        atomic_replace(path, b"old")
        with pytest.raises(OSError) as caught:
            atomic_replace(path, b"x" * (1 << 20))
        assert caught.value.errno == 28  # ENOSPC
        assert path.read_bytes() == b"old"
        assert [p.name for p in folder.iterdir()] == ["flame.html"]


def test_publish_new_never_replaces(tmp_path: Path) -> None:
    temporary, final = tmp_path / ".a.tmp", tmp_path / "a"
    temporary.write_bytes(b"new")
    final.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        publish_new(temporary, final)
    assert final.read_bytes() == b"someone else's"
    final.unlink()
    publish_new(temporary, final)
    assert final.read_bytes() == b"new" and not temporary.exists()
