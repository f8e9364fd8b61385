"""Python (CPython) frames in perf.data: the real ``perf script`` and ``perf report`` name them.

Windows are made by hand, as the sampler delivers them: native frames of a real ELF (the
two-function workload stands in for a C extension above and the interpreter below) around
``FrameKind.CPYTHON`` frames whose ``address`` is a code object.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import antiprof_perfdata
import attrs
import pytest
from antiprof_perfdata import write_perf_data
from antiprof_perfdata.elfimage import TEXT_OFFSET, ElfSymbol, symbol_image
from antiprof_perfdata.perftool import parse_script, report_shares, run_perf
from antiprof_perfdata.pythonsyms import SLOT_SIZE
from antiprof_perfdata.readers import all_shares
from antiprof_perfdata.sink import PerfDataSink, PerfDataWriteError

from antiprof_core.model import Frame, FrameKind, ProfileWindow, Sample
from antiprof_core.testing import make_consumer, run_consumer
from antiprof_core.testing import small_tmpfs as mount_small_tmpfs

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import ElfWindows

T0 = 1_795_600_000_000_000_000  # 2026-11-25T09:46:40Z
SECOND = 1_000_000_000
PROG = "/tmp/x/prog.py"
CODE = 0x7F12_3456_0000  # code objects live on the heap, far from any code


def py(name: str | None, code: int, file: str = PROG, line: int = 7) -> Frame:
    return Frame(CODE + code, FrameKind.CPYTHON, name, 24, None, file, line)


def named(name: str, file: str = PROG) -> str:
    return f"py::{name}:{file}"


def python_window(
    elf: ElfWindows,
    stacks: dict[tuple[Frame | str, ...], int],
    pid: int = 4242,
    start_ns: int = T0,
    processes: dict[int, dict[tuple[Frame | str, ...], int]] | None = None,
) -> ProfileWindow:
    """``stacks``: leaf-first frames (a string is a native function of the workload) -> count."""
    per_pid = processes or {pid: stacks}
    samples = []
    for this_pid, this_stacks in per_pid.items():
        for index, (frames, count) in enumerate(this_stacks.items()):
            stack = tuple(elf.frame(frame) if isinstance(frame, str) else frame for frame in frames)
            samples.append(Sample(this_pid, this_pid, index % 2, "python3", stack, count))
    window = elf.window({("main",): 1}, start_ns=start_ns)
    template = window.processes[4242]
    return attrs.evolve(
        window,
        samples=tuple(samples),
        processes={p: attrs.evolve(template, pid=p, name="python3") for p in per_pid},
    )


def script(path: Path, buildid_dir: Path, cwd: Path | None = None) -> list[list[str | None]]:
    done = run_perf(["script", "-i", str(path)], buildid_dir, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return [[frame.symbol for frame in sample.frames] for sample in parse_script(done.stdout)]


def stack_counts(stacks: list[list[str | None]]) -> Counter[tuple[str | None, ...]]:
    return Counter(tuple(stack) for stack in stacks)


HEAVY, LIGHT, MAIN, MODULE = (
    py("heavy_math", 0x100),
    py("light_strings", 0x200),
    py("main", 0x300),
    py("<module>", 0x400),
)


def test_perf_script_shows_python_names_in_stack_order_from_any_directory(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    callback = py("on_item", 0x500)
    window = python_window(
        elf_windows,
        {
            ("work_light", HEAVY, MAIN, MODULE, "cycle", "main"): 3,  # a C extension called from heavy_math
            (LIGHT, MAIN, MODULE, "cycle", "main"): 2,  # pure Python at the leaf
            ("work_light", callback, "cycle", MAIN, MODULE, "cycle", "main"): 1,  # C calling back into Python
        },
    )
    (tmp_path / "out").mkdir()
    path = write_perf_data(tmp_path / "out" / "py.perf.data", [window])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    counts = stack_counts(script(path, buildid_dir, cwd=elsewhere))

    interpreter = ("cycle", "main")
    assert counts == {
        ("work_light", named("heavy_math"), named("main"), named("<module>"), *interpreter): 3,
        (named("light_strings"), named("main"), named("<module>"), *interpreter): 2,
        ("work_light", named("on_item"), "cycle", named("main"), named("<module>"), *interpreter): 1,
    }


@pytest.mark.parametrize("compact", [False, True])
def test_perf_report_weighs_python_functions_by_their_counts(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, compact: bool
) -> None:
    window = python_window(
        elf_windows,
        {(HEAVY, MAIN, MODULE, "cycle", "main"): 20, (LIGHT, MAIN, MODULE, "cycle", "main"): 10},
    )
    path = write_perf_data(tmp_path / "py.perf.data", [window], compact=compact)

    done = run_perf(["report", "-i", str(path), "--stdio", "--no-children", "--sort", "sym"], buildid_dir, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    shares = report_shares(done.stdout)
    assert shares[named("heavy_math")] == pytest.approx(2 / 3, abs=0.001)
    assert shares[named("light_strings")] == pytest.approx(1 / 3, abs=0.001)
    assert (
        "python-symbols-1.so" in run_perf(["report", "-i", str(path), "--stdio", "--sort", "dso"], buildid_dir).stdout
    )  # the Shared Object column names the image


def test_two_processes_with_the_same_code_address_get_their_own_names(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    same_code = 0x700
    first = py("parse", same_code, "/srv/a/app.py")
    second = py("render", same_code, "/srv/b/web.py")
    window = python_window(
        elf_windows,
        {},
        processes={100: {(first, "cycle", "main"): 2}, 200: {(second, "cycle", "main"): 1}},
    )
    path = write_perf_data(tmp_path / "two.perf.data", [window])

    done = run_perf(["script", "-i", str(path)], buildid_dir)
    by_pid = {(sample.tid, tuple(f.symbol for f in sample.frames)) for sample in parse_script(done.stdout)}

    assert by_pid == {
        (100, (named("parse", "/srv/a/app.py"), "cycle", "main")),
        (200, (named("render", "/srv/b/web.py"), "cycle", "main")),
    }


def test_a_python_frame_without_a_name_is_unknown_and_keeps_its_place(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    window = python_window(elf_windows, {(HEAVY, py(None, 0x900), MODULE, "cycle", "main"): 4})
    path = write_perf_data(tmp_path / "anon.perf.data", [window])

    assert stack_counts(script(path, buildid_dir)) == {
        (named("heavy_math"), None, named("<module>"), "cycle", "main"): 4
    }


def test_new_functions_in_later_windows_get_their_own_image(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    first = python_window(elf_windows, {(HEAVY, MODULE, "main"): 2})
    second = python_window(elf_windows, {(LIGHT, MODULE, "main"): 1, (HEAVY, MODULE, "main"): 1}, start_ns=T0 + SECOND)
    path = write_perf_data(tmp_path / "grow.perf.data", [first, second])

    images = sorted(p.name for p in (tmp_path / "grow.perf.data.python").iterdir())
    assert images == ["python-symbols-1.so", "python-symbols-2.so"]  # one per window that brought new names
    assert stack_counts(script(path, buildid_dir)) == {
        (named("heavy_math"), named("<module>"), "main"): 3,
        (named("light_strings"), named("<module>"), "main"): 1,
    }


def test_symbol_image_reads_back_with_pyelftools(tmp_path: Path) -> None:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import NoteSection, SymbolTableSection

    symbols = [ElfSymbol(named("heavy_math"), 0, SLOT_SIZE), ElfSymbol(named("Worker.run"), SLOT_SIZE, SLOT_SIZE)]
    image = symbol_image(symbols, 2 * SLOT_SIZE)
    (tmp_path / "image.so").write_bytes(image.data)

    with (tmp_path / "image.so").open("rb") as handle:
        elf = ELFFile(handle)
        assert (elf["e_type"], elf["e_machine"]) == ("ET_DYN", "EM_X86_64")
        text = elf.get_section_by_name(".text")
        assert text is not None
        assert (text["sh_type"], text["sh_addr"], text["sh_size"]) == ("SHT_NOBITS", TEXT_OFFSET, 2 * SLOT_SIZE)
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        read = [(s.name, s["st_value"], s["st_size"], s["st_info"]["type"]) for s in symtab.iter_symbols() if s.name]
        assert read == [
            (named("heavy_math"), TEXT_OFFSET, SLOT_SIZE, "STT_FUNC"),
            (named("Worker.run"), TEXT_OFFSET + SLOT_SIZE, SLOT_SIZE, "STT_FUNC"),
        ]
        note = elf.get_section_by_name(".note.gnu.build-id")
        assert isinstance(note, NoteSection)
        [gnu] = [n for n in note.iter_notes() if n["n_type"] == "NT_GNU_BUILD_ID"]
        assert gnu["n_desc"] == image.build_id.hex()
    assert len(image.data) < 1024


def test_a_moved_file_finds_its_images_through_the_build_id_cache(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    window = python_window(elf_windows, {(HEAVY, MODULE, "main"): 2})
    (tmp_path / "here").mkdir()
    original = write_perf_data(tmp_path / "here" / "py.perf.data", [window])
    moved = tmp_path / "there"
    shutil.copytree(tmp_path / "here", moved)
    shutil.rmtree(tmp_path / "here")  # the path in the MMAP2 record no longer exists
    image = moved / "py.perf.data.python" / "python-symbols-1.so"

    listed = run_perf(["buildid-list", "-i", str(moved / "py.perf.data")], buildid_dir)
    assert f" {original}.python/python-symbols-1.so" in listed.stdout  # the HEADER_BUILD_ID entry
    assert script(moved / "py.perf.data", buildid_dir) == [[None, None, "main"]] * 2  # not found by path

    added = run_perf(["buildid-cache", "-a", str(image)], buildid_dir)
    assert added.returncode == 0, added.stderr
    assert stack_counts(script(moved / "py.perf.data", buildid_dir)) == {
        (named("heavy_math"), named("<module>"), "main"): 2
    }


# --- the sink: rotation, retention, errors, pipe mode ----------------------------------------


def sink(options: dict[str, Any]) -> PerfDataSink:
    consumer = make_consumer(antiprof_perfdata, "perfdata", options)
    assert isinstance(consumer, PerfDataSink)
    return consumer


def test_rotation_keeps_each_files_images_and_retention_removes_them(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    functions = [py(f"step{i}", 0x100 * i) for i in range(4)]
    windows = [python_window(elf_windows, {(f, MODULE, "main"): i + 1}, start_ns=T0 + i * 2 * SECOND)
               for i, f in enumerate(functions)]  # fmt: skip
    out = tmp_path / "perf"
    run_consumer(sink({"output_dir": str(out), "rotate_every": "1s", "max_files": 2}), windows)

    files = sorted(out.glob("*.perf.data"))
    assert [f.name for f in files] == [
        "antiprof-synthetic-host-20261125T094644Z.perf.data",
        "antiprof-synthetic-host-20261125T094646Z.perf.data",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f.name for f in files] + [f.name + ".python" for f in files]
    )  # the two removed files' images went with them
    for index, path in zip((2, 3), files, strict=True):
        assert oct((path.parent / (path.name + ".python")).stat().st_mode & 0o777) == "0o700"
        image = path.parent / (path.name + ".python") / "python-symbols-1.so"
        assert oct(image.stat().st_mode & 0o777) == "0o600"
        assert stack_counts(script(path, buildid_dir)) == {
            (named(f"step{index}"), named("<module>"), "main"): index + 1
        }


def test_start_removes_image_folders_whose_file_is_gone(tmp_path: Path) -> None:
    orphan = tmp_path / "antiprof-synthetic-host-20261125T094640Z.perf.data.python"
    fresh = tmp_path / "antiprof-synthetic-host-20261125T094650Z.perf.data.python"
    kept = tmp_path / "antiprof-synthetic-host-20261125T094700Z.perf.data.python"
    other = tmp_path / "antiprof-other-host-20261125T094640Z.perf.data.python"
    for folder in (orphan, fresh, kept, other):
        folder.mkdir()
        (folder / "python-symbols-1.so").write_bytes(b"x")
    (tmp_path / "antiprof-synthetic-host-20261125T094700Z.perf.data").write_bytes(b"x")
    old = time.time() - 3600
    for folder in (orphan, kept, other):
        os.utime(folder, (old, old))

    consumer = sink({"output_dir": str(tmp_path)})
    consumer.start()
    consumer.close()

    assert (orphan.exists(), fresh.exists(), kept.exists(), other.exists()) == (False, True, True, True)


def test_an_image_that_cannot_be_written_drops_the_window_with_one_line(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    consumer = sink({"output_dir": str(tmp_path)})
    consumer.start()
    consumer.consume(python_window(elf_windows, {("work_heavy", "main"): 2}))  # native only: no images yet
    [path] = tmp_path.glob("*.perf.data")
    blocker = tmp_path / (path.name + ".python")
    blocker.write_bytes(b"not a folder")

    with pytest.raises(PerfDataWriteError) as error:
        consumer.consume(python_window(elf_windows, {(HEAVY, MODULE, "main"): 3}, start_ns=T0 + SECOND))
    assert str(error.value) == (
        f"cannot write {blocker}: is not a directory; window dropped, the next one will try again"
    )
    assert consumer.windows_dropped == 1
    assert stack_counts(script(path, buildid_dir)) == {("work_heavy", "main"): 2}  # the file is as it was

    blocker.unlink()
    consumer.consume(python_window(elf_windows, {(HEAVY, MODULE, "main"): 3}, start_ns=T0 + 2 * SECOND))
    consumer.close()
    assert stack_counts(script(path, buildid_dir)) == {
        ("work_heavy", "main"): 2,
        (named("heavy_math"), named("<module>"), "main"): 3,
    }


def test_pipe_mode_writes_images_before_the_records_that_need_them(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    stream = tmp_path / "stream.data"
    images = tmp_path / "images"
    windows = [
        python_window(elf_windows, {(HEAVY, MODULE, "main"): 2}),
        python_window(elf_windows, {(LIGHT, MODULE, "main"): 1}, start_ns=T0 + SECOND),
    ]
    run_consumer(sink({"mode": "pipe", "path": str(stream), "output_dir": str(images)}), windows)

    [folder] = images.iterdir()
    assert folder.name == "antiprof-synthetic-host-20261125T094640Z.pipe.python"
    assert sorted(p.name for p in folder.iterdir()) == ["python-symbols-1.so", "python-symbols-2.so"]
    done = run_perf(["script", "-i", "-"], buildid_dir, stdin=stream.read_bytes())
    assert done.returncode == 0, done.stderr
    assert stack_counts([[f.symbol for f in s.frames] for s in parse_script(done.stdout)]) == {
        (named("heavy_math"), named("<module>"), "main"): 2,
        (named("light_strings"), named("<module>"), "main"): 1,
    }


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted afterwards (needs root)."""
    with mount_small_tmpfs(tmp_path / "small") as mount:
        yield mount


def test_a_full_disk_while_writing_an_image_drops_the_window_and_recovers(
    small_tmpfs: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    out = small_tmpfs / "perf"
    consumer = sink({"output_dir": str(out)})
    consumer.start()
    consumer.consume(python_window(elf_windows, {(HEAVY, MODULE, "main"): 2}))
    [path] = out.glob("*.perf.data")
    images = out / (path.name + ".python")
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)

    with pytest.raises(PerfDataWriteError) as error:
        consumer.consume(python_window(elf_windows, {(LIGHT, MODULE, "main"): 1}, start_ns=T0 + SECOND))
    assert str(error.value) == (
        f"cannot write {images / 'python-symbols-2.so'}: No space left on device; "
        "window dropped, the next one will try again"
    )
    assert sorted(p.name for p in images.iterdir()) == ["python-symbols-1.so"]  # no half image, no temporary
    assert stack_counts(script(path, buildid_dir)) == {(named("heavy_math"), named("<module>"), "main"): 2}

    filler.unlink()
    consumer.consume(python_window(elf_windows, {(LIGHT, MODULE, "main"): 1}, start_ns=T0 + 2 * SECOND))
    consumer.close()
    assert stack_counts(script(path, buildid_dir)) == {
        (named("heavy_math"), named("<module>"), "main"): 2,
        (named("light_strings"), named("<module>"), "main"): 1,
    }


def test_flame_graph_readers_show_python_names_whole_with_their_shares(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    window = python_window(
        elf_windows,
        {("work_light", HEAVY, MAIN, MODULE, "cycle", "main"): 200, (LIGHT, MAIN, MODULE, "cycle", "main"): 100},
    )
    path = write_perf_data(tmp_path / "py.perf.data", [window])
    names = [named("heavy_math"), named("light_strings"), named("main")]

    shares = all_shares(path, buildid_dir, names)

    for reader, seen in shares.items():  # perf report, line-folded perf script, npm flamegraph, speedscope
        assert seen == pytest.approx(dict(zip(names, (2 / 3, 1 / 3, 1.0), strict=True)), abs=0.01), reader


def test_pipe_mode_keeps_the_newest_streams_image_folders(tmp_path: Path, elf_windows: ElfWindows) -> None:
    images = tmp_path / "images"
    for index in range(3):  # three streams, one after the other
        window = python_window(elf_windows, {(HEAVY, MODULE, "main"): 1}, start_ns=T0 + index * SECOND)
        options = {"mode": "pipe", "path": str(tmp_path / f"stream{index}"), "output_dir": str(images), "max_files": 2}
        run_consumer(sink(options), [window])

    assert sorted(p.name for p in images.iterdir()) == [
        "antiprof-synthetic-host-20261125T094641Z.pipe.python",
        "antiprof-synthetic-host-20261125T094642Z.pipe.python",
    ]


def test_a_name_whose_images_folder_is_taken_is_skipped(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows
) -> None:
    taken = tmp_path / "antiprof-synthetic-host-20261125T094640Z.perf.data.python"
    taken.mkdir()  # another writer's folder for a file it has not published yet
    (taken / "python-symbols-1.so").write_bytes(b"theirs")

    run_consumer(sink({"output_dir": str(tmp_path)}), [python_window(elf_windows, {(HEAVY, MODULE, "main"): 2})])

    [path] = tmp_path.glob("*.perf.data")
    assert path.name == "antiprof-synthetic-host-20261125T094640Z-1.perf.data"
    assert (taken / "python-symbols-1.so").read_bytes() == b"theirs"  # left alone
    assert stack_counts(script(path, buildid_dir)) == {(named("heavy_math"), named("<module>"), "main"): 2}
