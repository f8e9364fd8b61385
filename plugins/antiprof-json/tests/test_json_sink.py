from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import antiprof_json
import pytest

from antiprof_core.codec import window_from_dict
from antiprof_core.config import ConfigError
from antiprof_core.outputs import OutputPathError
from antiprof_core.testing import make_consumer, run_consumer, small_tmpfs, synthetic_window
from antiprof_core.testing.python_windows import SYNTHETIC_PYTHON_FILE, synthetic_python_window
from antiprof_core.testing.users import unprivileged_user


def test_one_line_per_window_written_through_at_once(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    windows = [synthetic_window(processes=3, stacks=40, seed=seed) for seed in range(3)]
    consumer = make_consumer(antiprof_json, "json", {"path": str(path)})
    consumer.start()
    consumer.consume(windows[0])
    # Readable before flush or close: a `tail -f` sees each window as it lands.
    assert window_from_dict(json.loads(path.read_text())) == windows[0]
    for window in windows[1:]:
        consumer.consume(window)
    consumer.close()
    lines = path.read_text().splitlines()
    assert [window_from_dict(json.loads(line)) for line in lines] == windows
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_appends_rather_than_truncating(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text('{"earlier": true}\n')
    run_consumer(make_consumer(antiprof_json, "json", {"path": str(path)}), [synthetic_window(stacks=5)])
    assert len(path.read_text().splitlines()) == 2


def test_stdout(tmp_path: Path) -> None:
    script = (
        "import antiprof_json\n"
        "from antiprof_core.testing import make_consumer, run_consumer, small_tmpfs, synthetic_window\n"
        "run_consumer(make_consumer(antiprof_json, 'json'), [synthetic_window(stacks=7), synthetic_window(stacks=9)])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
    assert [len(json.loads(line)["samples"]) for line in out.splitlines()] == [7, 9]


def test_missing_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "w.jsonl"
    run_consumer(make_consumer(antiprof_json, "json", {"path": str(path)}), [synthetic_window(stacks=5)])
    assert len(path.read_text().splitlines()) == 1
    for folder in (path.parent, path.parent.parent):  # the parents it makes are private too
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder


def test_unusable_path_fails_to_start(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    consumer = make_consumer(antiprof_json, "json", {"path": str(tmp_path / "a-file" / "w.jsonl")})
    with pytest.raises(OutputPathError) as error:
        consumer.start()
    assert str(error.value) == f"{tmp_path / 'a-file'}: is not a directory"


def test_a_symlink_planted_at_the_path_by_another_user_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "root-only"
    victim.write_bytes(b"secret\n")
    victim.chmod(0o600)
    with unprivileged_user("antiprof-t-json") as user, tempfile.TemporaryDirectory() as parent:
        os.chmod(parent, 0o755)
        theirs = Path(parent) / "theirs"
        theirs.mkdir()
        os.chown(theirs, user.uid, user.gid)  # a folder the user owns: the kernel's protected_symlinks does not apply
        planted = theirs / "windows.jsonl"
        user.run(["ln", "-s", str(victim), str(planted)])
        consumer = make_consumer(antiprof_json, "json", {"path": str(planted)})
        with pytest.raises(OutputPathError) as error:
            consumer.start()
        assert str(error.value) == f"{planted}: is a symbolic link; refusing to write through it"
        with pytest.raises(OutputPathError):  # and every window after that
            consumer.consume(synthetic_window(stacks=3))
        consumer.close()
    assert victim.read_bytes() == b"secret\n"


def test_config_is_strict() -> None:
    with pytest.raises(ConfigError) as error:
        make_consumer(antiprof_json, "json", {"path": "x", "pretty": True})
    assert error.value.problems == ["consumers.json.pretty: unknown key (known keys: path)"]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small") as mount:
        yield mount


def test_full_disk_keeps_the_file_valid_and_resumes_when_space_returns(full_disk: Path) -> None:
    path = full_disk / "w.jsonl"
    window = synthetic_window(processes=2, stacks=300, depth=8)  # ~70 KB a line: the 4th does not fit
    consumer = make_consumer(antiprof_json, "json", {"path": str(path)})
    consumer.start()
    written = 0
    with pytest.raises(OSError) as error:
        for written in range(10):  # noqa: B007 - the count is the point
            consumer.consume(window)
    assert str(error.value) == f"[Errno 28] {path}: cannot write window: No space left on device"
    assert written >= 1
    assert len(path.read_text().splitlines()) == written  # the partial last line was cut off
    path.write_text("")  # space comes back
    consumer.consume(window)
    consumer.close()
    assert [window_from_dict(json.loads(line)) for line in path.read_text().splitlines()] == [window]


def test_python_frames_keep_kind_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "python.jsonl"
    window = synthetic_python_window()
    run_consumer(make_consumer(antiprof_json, "json", {"path": str(path)}), [window])
    data = json.loads(path.read_text())
    heavy = [f for f in data["frames"] if f["symbol"] == "heavy_math"]
    assert sorted((f["kind"], f["file"], f["line"], f["mapping"]) for f in heavy) == [
        ("cpython", SYNTHETIC_PYTHON_FILE, 12, None),
        ("cpython", SYNTHETIC_PYTHON_FILE, 13, None),
    ]
    unnamed = next(f for f in data["frames"] if f["kind"] == "cpython" and f["symbol"] is None)
    assert "file" not in unnamed and "line" not in unnamed  # unknown: left out, as for native frames
    assert window_from_dict(data) == window
