"""The writer, proven by Debian's perf reading what it wrote: names, shares, headers, build IDs."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from antiprof_perfdata import layout
from antiprof_perfdata.perftool import leaf_shares, parse_script, perf_path, report_shares, run_perf
from antiprof_perfdata.writer import PerfDataFile, PerfDataPipe, write_perf_data

from antiprof_core.host import read_host
from antiprof_core.model import Frame, FrameKind, Host, SamplingMode
from antiprof_core.testing import synthetic_window

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import ElfWindows

STACKS = {
    ("work_heavy", "cycle", "main"): 6,
    ("work_light", "cycle", "main"): 3,
    ("cycle", "main"): 1,
}
COMMAND_LINE = ("/usr/bin/antiprof", "run", "-c", "/etc/antiprof/antiprof.toml")


@pytest.fixture(scope="module")
def host() -> Host:
    return read_host()


def test_report_and_script_name_every_function_with_the_windows_own_shares(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host
) -> None:
    path = write_perf_data(tmp_path / "a.perf.data", [elf_windows.window(STACKS, host)], COMMAND_LINE)

    report = run_perf(["report", "-i", str(path), "--stdio", "--no-children", "--sort", "sym"], buildid_dir)
    script = run_perf(["script", "-i", str(path)], buildid_dir)

    assert (report.returncode, report.stderr) == (0, "")
    assert (script.returncode, script.stderr) == (0, "")
    samples = parse_script(script.stdout)
    assert len(samples) == sum(STACKS.values())  # one record per sample, at the sampling period
    assert {sample.period for sample in samples} == {1_000_000_000 // 99}
    assert all(frame.symbol is not None for sample in samples for frame in sample.frames)
    assert {tuple(frame.symbol for frame in sample.frames) for sample in samples} == set(STACKS)
    total = sum(STACKS.values())
    expected = {names[0]: Fraction(count, total) for names, count in STACKS.items()}
    assert {name: Fraction(share).limit_denominator(1000) for name, share in leaf_shares(samples).items()} == expected
    shown = report_shares(report.stdout)
    assert shown == pytest.approx({name: float(share) for name, share in expected.items()}, abs=0.00005)
    assert "Samples: 10  of event 'cpu-clock'" in report.stdout
    period = 1_000_000_000 // 99
    assert f"Event count (approx.): {total * period}" in report.stdout


def test_header_shows_host_cpus_command_line_and_event(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host
) -> None:
    path = write_perf_data(tmp_path / "h.perf.data", [elf_windows.window(STACKS, host)], COMMAND_LINE)

    header = run_perf(["report", "-i", str(path), "--header-only"], buildid_dir)

    assert (header.returncode, header.stderr) == (0, "")
    assert f"# hostname : {host.hostname}\n" in header.stdout
    assert f"# os release : {host.kernel_release}\n" in header.stdout
    assert f"# nrcpus online : {host.online_cpus}\n" in header.stdout
    assert f"# nrcpus avail : {host.cpu_count}\n" in header.stdout
    assert f"# arch : {host.arch}\n" in header.stdout
    assert "# cmdline : /usr/bin/antiprof run -c /etc/antiprof/antiprof.toml" in header.stdout
    assert "# event : name = cpu-clock," in header.stdout
    assert f"# total memory : {host.memory_kb} kB" in header.stdout
    assert "# time of first sample : 1700000000.000000" in header.stdout


def test_buildid_list_has_the_binary_and_the_kernel(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host
) -> None:
    path = write_perf_data(tmp_path / "b.perf.data", [elf_windows.window(STACKS, host)])

    listed = run_perf(["buildid-list", "-i", str(path)], buildid_dir)

    assert listed.returncode == 0
    lines = set(listed.stdout.splitlines())
    assert f"{elf_windows.build_id} {elf_windows.binary}" in lines
    assert host.kernel is not None and host.kernel.build_id
    assert f"{host.kernel.build_id} [kernel.kallsyms]" in lines


def test_kernel_frames_are_named_under_the_user_stack(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host
) -> None:
    names = ["__x64_sys_getppid", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
    kernel = tuple(Frame(kallsyms_address(name) + 1, FrameKind.KERNEL, name, 1) for name in names)
    window = elf_windows.window({("cycle", "main"): 2}, host, kernel=kernel)
    path = write_perf_data(tmp_path / "k.perf.data", [window])

    script = run_perf(["script", "-i", str(path)], buildid_dir)

    assert (script.returncode, script.stderr) == (0, "")
    samples = parse_script(script.stdout)
    assert len(samples) == 2
    for sample in samples:
        assert [(f.symbol, f.dso) for f in sample.frames] == [(n, "[kernel.kallsyms]") for n in names] + [
            ("cycle", str(elf_windows.binary)),
            ("main", str(elf_windows.binary)),
        ]


def kallsyms_address(name: str) -> int:
    for line in Path("/proc/kallsyms").read_text().splitlines():
        address, _, symbol = line.split()[:3]
        if symbol == name:
            return int(address, 16)
    raise LookupError(name)


def test_pipe_mode_reads_through_cat(tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host) -> None:
    stream_path = tmp_path / "stream.perf.data"
    with stream_path.open("wb") as stream:
        pipe = PerfDataPipe(stream, host, 99, COMMAND_LINE)
        pipe.write(elf_windows.window(STACKS, host))
        pipe.write(elf_windows.window(STACKS, host, start_ns=1_700_000_001_000_000_000))

    cat = subprocess.Popen(["cat", str(stream_path)], stdout=subprocess.PIPE)
    script = subprocess.run(
        [perf_path(), "script", "-i", "-"],
        stdin=cat.stdout,
        capture_output=True,
        env={"PERF_BUILDID_DIR": str(buildid_dir), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    cat.wait()

    assert (script.returncode, script.stderr.decode()) == (0, "")
    samples = parse_script(script.stdout.decode())
    assert len(samples) == 2 * sum(STACKS.values())
    leaves = [names[0] for names, count in STACKS.items() for _ in range(count)]
    assert sorted(str(s.leaf) for s in samples) == sorted(leaves * 2)
    assert stream_path.read_bytes()[:16] == layout.PIPE_HEADER.pack(b"PERFILE2", 16)


def test_compact_writes_one_period_weighted_record_per_stack(
    tmp_path: Path, buildid_dir: Path, elf_windows: ElfWindows, host: Host
) -> None:
    path = write_perf_data(tmp_path / "c.perf.data", [elf_windows.window(STACKS, host)], compact=True)

    report = run_perf(["report", "-i", str(path), "--stdio", "--no-children", "--sort", "sym"], buildid_dir)
    samples = parse_script(run_perf(["script", "-i", str(path)], buildid_dir).stdout)

    assert len(samples) == 3
    period = 1_000_000_000 // 99
    assert sorted(s.period for s in samples) == sorted(count * period for count in STACKS.values())
    assert "Samples: 3  of event 'cpu-clock'" in report.stdout
    assert report_shares(report.stdout)["work_heavy"] == pytest.approx(0.6)  # perf report weighs period


def test_trace_mode_writes_each_sample_at_its_own_time(tmp_path: Path, buildid_dir: Path) -> None:
    window = synthetic_window(processes=2, stacks=10, mode=SamplingMode.TRACE, start_ns=1_700_000_000_000_000_000)
    path = write_perf_data(tmp_path / "t.perf.data", [window])

    script = run_perf(["script", "-i", str(path), "-F", "tid,time,period"], buildid_dir)

    assert script.returncode == 0
    times = [float(line.split()[1].rstrip(":")) for line in script.stdout.splitlines() if line.strip()]
    expected = sorted(t for sample in window.samples for t in sample.timestamps)
    assert len(times) == window.sample_count
    assert times == pytest.approx([t / 1e9 for t in expected], abs=2e-6)  # printed in time order


def test_file_reads_after_every_window_and_counts_add_up(tmp_path: Path, buildid_dir: Path) -> None:
    path = tmp_path / "w.perf.data"
    windows = [synthetic_window(processes=3, stacks=40, seed=seed, start_ns=seed * 10**10) for seed in range(1, 4)]
    with PerfDataFile(path, windows[0].host, windows[0].frequency_hz) as out:
        for written, window in enumerate(windows, start=1):
            out.write(window)
            script = run_perf(["script", "-i", str(path), "-F", "tid,period"], buildid_dir)
            assert script.returncode == 0
            periods = [int(line.split()[1]) for line in script.stdout.splitlines() if line.strip()]
            assert len(periods) == sum(w.sample_count for w in windows[:written])
            assert sum(periods) == sum(w.sample_count for w in windows[:written]) * windows[0].period_ns


def test_new_file_is_private_and_never_overwrites(tmp_path: Path) -> None:
    window = synthetic_window(stacks=5)
    path = write_perf_data(tmp_path / "p.perf.data", [window])
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        write_perf_data(path, [window])
    (tmp_path / "link.perf.data").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        write_perf_data(tmp_path / "link.perf.data", [window])
    assert not (tmp_path / "elsewhere").exists()
