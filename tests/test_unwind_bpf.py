"""Whole native stacks from binaries without frame pointers (issue 11), through `antiprof run`.

Each check is what a user would look at in the JSON sink: the share of a process's samples whose
stack reaches ``main``, next to what ``perf record --call-graph dwarf`` gives on the same process
at the same time. The frame-pointer runs are the control: the same checks fail there, so they can.
Workloads run at nice -20 (other load on the host cannot skew their split) and runs stop on
sample counts, not clocks.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from attrs import frozen

from antiprof_core.model import FrameKind, ProfileWindow, Sample
from antiprof_core.sources.unwind.cache import TableCache
from antiprof_core.sources.unwind.elfsections import read_sections
from antiprof_core.testing import require_bpf
from antiprof_core.testing.agent import RunningAgent
from antiprof_core.testing.native_workloads import (
    FORK_CHILDREN,
    NO_FP_CALLERS,
    NO_FP_SHARES,
    PYTHON_FUNCTIONS,
    QSORT_COMPARATOR,
    VDSO_CALLERS,
    build_fork_workload,
    build_no_frame_pointer_workload,
    build_qsort_workload,
    build_vdso_clock_workload,
    frame_pointer_functions,
    python_two_functions,
    xz_compressing,
)
from antiprof_core.testing.perfdwarf import PerfRecording, entry_share, record_dwarf
from antiprof_core.testing.stacks import (
    counters_add_up,
    read_windows,
    samples_of,
    settled,
    share_with,
    wait_for_settled_samples,
)
from antiprof_core.testing.stacks import entry_share as antiprof_entry_share
from antiprof_core.testing.workloads import build_two_function_workload

pytestmark = pytest.mark.bpf

NICE = ("nice", "-n", "-20")
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def write_config(
    directory: Path, pids: list[int], unwinder: str, frequency_hz: int = 199, cache: Path | None = None
) -> Path:
    config = directory / f"{unwinder}.toml"
    pid_line = f"pids = {pids}" if pids else ""
    config.write_text(
        f"""
[sampler]
source = "bpf"
window = "1s"
frequency_hz = {frequency_hz}
{pid_line}
unwinder = "{unwinder}"
unwind_cache_dir = "{cache or directory / "unwind-cache"}"
max_stacks = 16384

[consumers.json]
path = "{directory / f"{unwinder}.jsonl"}"
"""
    )
    return config


@frozen
class Run:
    windows: tuple[ProfileWindow, ...]  # settled: after the last window with a frame-pointer fallback
    returncode: int | None
    stderr: str

    def samples(self, pid: int) -> list[Sample]:
        return samples_of(self.windows, pid)


def attached(agent: RunningAgent) -> Callable[[], bool]:
    """Whether the agent still runs: a wait for samples gives up at once when it has died."""
    process = agent.process
    assert process is not None
    return lambda: process.poll() is None


def sample_until(
    directory: Path, workloads: list[subprocess.Popen[bytes]], unwinder: str, samples: int, frequency_hz: int = 199
) -> Run:
    """`antiprof run` on stopped ``workloads``, resumed once it is attached, until each has
    ``samples`` settled samples; its JSON windows after that."""
    pids = [workload.pid for workload in workloads]
    run_dir = directory / unwinder
    run_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(run_dir, pids, unwinder, frequency_hz, cache=directory / "unwind-cache")
    output = run_dir / f"{unwinder}.jsonl"
    with RunningAgent(config, run_dir) as agent:
        resume(*workloads)
        wait_for_settled_samples(output, pids, samples, timeout=300, alive=attached(agent))
    return Run(tuple(settled(read_windows(output))), agent.returncode, agent.stderr)


def has_callers(names: list[str | None]) -> bool:
    return all(caller in names for caller in NO_FP_CALLERS)


def short_stacks(samples: list[Sample], limit: int = 5) -> str:
    """The commonest stacks without ``main`` and ``middle``, for a failure's message."""
    counts: collections.Counter[str] = collections.Counter()
    for sample in samples:
        names = [frame.symbol for frame in sample.stack]
        if not has_callers(names):
            counts[" <- ".join(f"{frame.symbol or hex(frame.address)}" for frame in sample.stack)] += sample.count
    return "\n".join(f"{count} x {stack}" for stack, count in counts.most_common(limit))


def total_share(samples: list[Sample], function: str) -> float:
    """The function's share with kernel work on its behalf (interrupts, preemption) on top: total."""
    return share_with(samples, lambda names: function in names)


@contextlib.contextmanager
def running(*command: str | Path) -> Iterator[subprocess.Popen[bytes]]:
    """The workload at nice -20, stopped (SIGSTOP) until ``resume``: at that priority it would take a
    CPU from BCC's compile, which on a busy host then outlasts the readiness timeout."""
    process = subprocess.Popen([*NICE, *(str(part) for part in command)])
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def resume(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        os.kill(process.pid, signal.SIGCONT)


# -- the -O2 -fomit-frame-pointer program ---------------------------------------------------------


@pytest.fixture(scope="module")
def no_fp_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_no_frame_pointer_workload(tmp_path_factory.mktemp("no-fp"))


def test_the_workload_has_no_frame_pointer_prologues(no_fp_program: Path, tmp_path: Path) -> None:
    prologues = frame_pointer_functions(no_fp_program)
    assert set(prologues) == {"cpu_now", "alpha", "beta", "middle", "descend", "main"}
    assert not any(prologues.values()), prologues
    # The check finds them where they are: the frame-pointer workload sets rbp up in every function.
    with_fp = frame_pointer_functions(build_two_function_workload(tmp_path), ("work_heavy", "work_light", "cycle"))
    assert with_fp == {"work_heavy": True, "work_light": True, "cycle": True}


def test_dwarf_walks_every_sample_to_main_with_true_shares(no_fp_program: Path, tmp_path: Path) -> None:
    require_bpf()
    with running(no_fp_program) as workload:
        # 3000 samples: a 3-point tolerance on a 2/3 share is then ~3.5 standard errors.
        run = sample_until(tmp_path, [workload], "dwarf", 3000, frequency_hz=499)
    assert run.returncode == 0, run.stderr
    samples = run.samples(workload.pid)
    assert share_with(samples, has_callers) >= 0.99, short_stacks(samples)
    for function, truth in NO_FP_SHARES.items():
        assert total_share(samples, function) == pytest.approx(truth, abs=0.03), function


def test_a_process_that_execs_is_walked_with_its_new_programs_tables(no_fp_program: Path, tmp_path: Path) -> None:
    """A shell planned at start-up execs the program: from then on every sample either reaches main
    or is counted as walked by frame pointers while the new tables load; none is walked with the
    shell's tables (which have no row for the program's code) uncounted."""
    require_bpf()
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.01; done; exec {no_fp_program}"
    with running("sh", "-c", script) as workload:
        run_dir = tmp_path / "dwarf"
        run_dir.mkdir()
        config = write_config(run_dir, [workload.pid], "dwarf", 499, cache=tmp_path / "unwind-cache")
        output = run_dir / "dwarf.jsonl"
        with RunningAgent(config, run_dir) as agent:  # ready: the shell's tables are in (pids preload)
            resume(workload)
            go.touch()
            wait_for_settled_samples(output, [workload.pid], 1500, timeout=300, alive=attached(agent))
    assert agent.returncode == 0, agent.stderr
    windows = read_windows(output)
    samples = samples_of(windows, workload.pid)  # the shell's few are under 1%: it waits 10 ms at most
    short = sum(s.count for s in samples if not has_callers([frame.symbol for frame in s.stack]))
    fallbacks = sum(window.counters.stack_errors.get("unwind_fallback", 0) for window in windows)
    total = sum(s.count for s in samples)
    assert short <= fallbacks + 0.01 * total, (short, fallbacks, total, short_stacks(samples))
    # Code outside the mappings read (libc, before the loader mapped it) is walked no further for
    # as long as it takes the agent to read them again: a moment, not windows.
    no_table = sum(window.counters.stack_errors.get("unwind_no_table", 0) for window in windows)
    assert no_table <= 0.02 * total, (no_table, total)
    assert share_with(samples_of(settled(windows), workload.pid), has_callers) >= 0.99


def test_frame_pointer_mode_cannot_walk_it(no_fp_program: Path, tmp_path: Path) -> None:
    """The control: frame pointers lose the callers, so the dwarf test above can fail."""
    require_bpf()
    with running(no_fp_program) as workload:
        run = sample_until(tmp_path, [workload], "frame-pointer", 1000, frequency_hz=499)
    assert run.returncode == 0, run.stderr
    samples = run.samples(workload.pid)
    assert total_share(samples, "alpha") + total_share(samples, "beta") > 0.9  # the leaves are there...
    assert share_with(samples, has_callers) < 0.5  # ...but not who called them


# -- Debian's own binaries, side by side with perf --------------------------------------------------


@frozen
class SideBySide:
    run: Run
    perf: PerfRecording
    pids: dict[str, int]


DEBIAN_WORKLOADS = ("python3.11", "xz", "qsort")


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SideBySide]:
    """python3.11, xz -9 and a qsort callback sampled by the agent (dwarf) and by perf at the same time."""
    require_bpf()
    directory = tmp_path_factory.mktemp("debian")
    qsort_program = build_qsort_workload(directory)
    with (
        running(*python_two_functions(directory)) as python,
        xz_compressing(prefix=NICE) as xz,
        running(qsort_program) as qsort,
    ):
        os.kill(xz.pid, signal.SIGSTOP)
        pids = {"python3.11": python.pid, "xz": xz.pid, "qsort": qsort.pid}
        config = write_config(directory, list(pids.values()), "dwarf")
        output = directory / "dwarf.jsonl"
        with RunningAgent(config, directory) as agent:
            alive = attached(agent)
            resume(python, xz, qsort)
            wait_for_settled_samples(output, list(pids.values()), 50, timeout=300, alive=alive)
            perf = record_dwarf(list(pids.values()), seconds=8, directory=directory / "perf")
            wait_for_settled_samples(output, list(pids.values()), 300, timeout=300, alive=alive)
    run = Run(tuple(settled(read_windows(output))), agent.returncode, agent.stderr)
    yield SideBySide(run, perf, pids)


@pytest.mark.parametrize("workload", DEBIAN_WORKLOADS)
def test_perf_walks_debian_binaries_to_main(debian: SideBySide, workload: str) -> None:
    """The reference holds: perf's DWARF unwinding reaches main in nearly every stack of these workloads."""
    stacks = debian.perf.of(debian.pids[workload])
    assert len(stacks) >= 100
    assert entry_share(stacks) >= 0.95


@pytest.mark.parametrize("workload", DEBIAN_WORKLOADS)
def test_antiprof_reaches_main_as_often_as_perf(debian: SideBySide, workload: str) -> None:
    assert debian.run.returncode == 0, debian.run.stderr
    pid = debian.pids[workload]
    ours = antiprof_entry_share(debian.run.samples(pid))
    perfs = entry_share(debian.perf.of(pid))
    print(f"{workload}: antiprof {ours:.1%} of stacks reach main, perf --call-graph dwarf {perfs:.1%}")
    assert ours >= 0.95
    assert ours == pytest.approx(perfs, abs=0.03)


def test_python_stacks_reach_py_bytes_main_from_both_functions(debian: SideBySide) -> None:
    samples = debian.run.samples(debian.pids["python3.11"])
    assert share_with(samples, lambda names: "Py_BytesMain" in names) >= 0.95
    # In the interpreter's loop: named as the C function, or as the Python functions when Python
    # frames are read too.
    interpreter = ("_PyEval_EvalFrameDefault", *PYTHON_FUNCTIONS)
    assert share_with(samples, lambda names: any(name in names for name in interpreter)) >= 0.5


def comparator_chain(names: list[str | None]) -> bool:
    """compare_slowly, then libc's sort somewhere below it, then main below that.

    libc's frames are named from its dynamic symbols (qsort_r) or, with libc6-dbg, its debug file
    (msort_with_tmp.part.0, __GI___qsort_r): any name with qsort or msort in it is libc's sort."""
    if QSORT_COMPARATOR not in names:
        return True  # samples outside the comparator (filling the array) are not about this
    below = names[names.index(QSORT_COMPARATOR) + 1 :]
    sort = [index for index, name in enumerate(below) if name and ("qsort" in name or "msort" in name)]
    return bool(sort) and "main" in below[sort[-1] :]


def test_perf_shows_the_comparator_under_libc_qsort_under_main(debian: SideBySide) -> None:
    stacks = debian.perf.of(debian.pids["qsort"])
    in_comparator = [stack for stack in stacks if QSORT_COMPARATOR in stack.symbols]
    assert len(in_comparator) > 0.5 * len(stacks)
    assert sum(comparator_chain(list(stack.symbols)) for stack in in_comparator) >= 0.95 * len(in_comparator)


def test_antiprof_shows_the_comparator_under_libc_qsort_under_main(debian: SideBySide) -> None:
    samples = debian.run.samples(debian.pids["qsort"])
    assert total_share(samples, QSORT_COMPARATOR) > 0.5
    assert share_with(samples, comparator_chain) >= 0.95


# -- the vDSO ----------------------------------------------------------------------------------------


def user_leaf_path(sample: Sample) -> str | None:
    """The mapping path of the sample's first user-space frame ('[vdso]' for the vDSO)."""
    for frame in sample.stack:
        if frame.kind is not FrameKind.KERNEL:
            return frame.mapping.path if frame.mapping else None
    return None


def clocksource() -> str:
    path = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    return path.read_text().strip() if path.exists() else "unknown"


def test_stacks_through_the_vdso_reach_main(tmp_path: Path) -> None:
    """A clock_gettime loop spends its time in the vDSO, code no file holds: its table is built
    from the agent's own vDSO image, so those samples reach main like the others."""
    require_bpf()
    program = build_vdso_clock_workload(tmp_path / "vdso")
    with running(program) as workload:
        run = sample_until(tmp_path, [workload], "dwarf", 1500, frequency_hz=499)
    assert run.returncode == 0, run.stderr
    samples = run.samples(workload.pid)
    in_vdso = [s for s in samples if user_leaf_path(s) == "[vdso]"]
    vdso_share = sum(s.count for s in in_vdso) / sum(s.count for s in samples)
    if vdso_share < 0.2:
        pytest.skip(f"clocksource {clocksource()}: clock_gettime makes a system call, not a vDSO read")
    assert {frame.symbol for s in in_vdso for frame in s.stack[:3]} & {"__vdso_clock_gettime", "clock_gettime"}

    def reaches_main(names: list[str | None]) -> bool:
        return all(caller in names for caller in VDSO_CALLERS)

    assert share_with(in_vdso, reaches_main) >= 0.95, short_stacks(in_vdso)


# -- the table cache across restarts ---------------------------------------------------------------

# The agent logs this line (JSON, logger under "antiprof") once the first tables are in the kernel.
TABLES_LINE = re.compile(r"unwind tables: (\d+) files?, (\d+) rows")


def tables_logged(stderr: str) -> int:
    """Files the run's 'unwind tables: N files, R rows ...' line says are loaded (0: no such line)."""
    files = 0
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            matched = TABLES_LINE.search(json.loads(line).get("message", ""))
            if matched:
                files = max(files, int(matched.group(1)))
    return files


def cache_files(cache: Path) -> dict[str, tuple[int, int]]:
    """Each cached table's (inode, mtime): a parse stores its table again, under a new inode."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in cache.glob("*.unwind")}


def logged_run(directory: Path, workload: subprocess.Popen[bytes], cache: Path) -> tuple[str, list[Sample]]:
    """An agent run (dwarf, JSON logs) until 200 settled samples of ``workload``: its log and those samples."""
    directory.mkdir()
    config = write_config(directory, [workload.pid], "dwarf", cache=cache)
    os.kill(workload.pid, signal.SIGSTOP)
    with RunningAgent(config, directory, args=("--log-format", "json")) as agent:
        alive = attached(agent)
        resume(workload)
        wait_for_settled_samples(directory / "dwarf.jsonl", [workload.pid], 200, timeout=300, alive=alive)
    assert agent.returncode == 0, agent.stderr
    return agent.stderr, samples_of(settled(read_windows(directory / "dwarf.jsonl")), workload.pid)


def test_a_restart_loads_tables_from_the_cache_and_a_corrupt_file_is_rebuilt(
    no_fp_program: Path, tmp_path: Path
) -> None:
    """No parse on a restart: a parsed table is always stored again (a new file, a new inode), so
    cached files left exactly as they were mean every table came from the cache."""
    require_bpf()
    cache = tmp_path / "cache"
    build_id = read_sections(str(no_fp_program), unwind=False).build_id
    libc_id = read_sections(LIBC, unwind=False).build_id
    assert build_id and libc_id
    own, libc = f"{build_id}.unwind", f"{libc_id}.unwind"
    with running(no_fp_program) as workload:
        log, samples = logged_run(tmp_path / "cold", workload, cache)
        assert tables_logged(log) >= 1, log
        cold = cache_files(cache)
        assert {own, libc} <= set(cold)
        assert share_with(samples, has_callers) >= 0.99

        log, samples = logged_run(tmp_path / "restart", workload, cache)
        assert tables_logged(log) >= 1, log
        restarted = cache_files(cache)
        assert {name: restarted.get(name) for name in cold} == cold  # nothing parsed, nothing stored again
        assert share_with(samples, has_callers) >= 0.99  # and the cached tables walk the stacks

        data = bytearray((cache / own).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (cache / own).write_bytes(bytes(data))
        corrupted = cache_files(cache)
        log, samples = logged_run(tmp_path / "corrupt", workload, cache)
    assert f"unwind cache {cache}/{own} is corrupt (checksum mismatch); rebuilding" in log
    rebuilt = cache_files(cache)
    assert rebuilt[own] != corrupted[own]  # parsed and stored again...
    assert TableCache(cache).load(build_id) is not None  # ...whole this time
    assert {name: rebuilt.get(name) for name in cold if name != own} == {n: c for n, c in cold.items() if n != own}
    assert share_with(samples, has_callers) >= 0.99


# -- processes that come and go --------------------------------------------------------------------


def last_window_start(path: Path) -> int:
    """start_ns of the last whole window in a JSON sink file (0 before the first)."""
    lines = path.read_text().splitlines() if path.exists() else []
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            return int(json.loads(line)["start_ns"])
    return 0


def test_a_hundred_short_lived_children_counters_add_up(tmp_path: Path) -> None:
    """Every process on the host is sampled (no pid filter) while 100 children fork, work and exit."""
    require_bpf()
    program = build_fork_workload(tmp_path)
    config = write_config(tmp_path, [], "dwarf", frequency_hz=99)
    output = tmp_path / "dwarf.jsonl"
    with RunningAgent(config, tmp_path) as agent:
        forks = subprocess.run([*NICE, str(program), str(FORK_CHILDREN)], capture_output=True, text=True, timeout=300)
        # One more full window after the last child exited, so the drain sees them all gone.
        first_after = time.time_ns()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and last_window_start(output) <= first_after:
            time.sleep(0.5)
    assert forks.returncode == 0 and forks.stdout == "done\n", forks.stderr
    assert agent.returncode == 0, agent.stderr
    assert "Traceback" not in agent.stderr
    windows = read_windows(output)
    assert windows
    assert all(counters_add_up(window) for window in windows), [window.counters for window in windows]
    children = {
        sample.pid
        for window in windows
        for sample in window.samples
        if window.processes.get(sample.pid) is not None and window.processes[sample.pid].name == "fork_children"
    }
    assert len(children) >= FORK_CHILDREN // 4  # most of them lived 30 ms of CPU: a few samples each at 99 Hz
    child_samples = [sample for window in windows for sample in window.samples if sample.pid in children]
    assert any("child_work" in [frame.symbol for frame in sample.stack] for sample in child_samples)
