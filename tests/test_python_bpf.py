"""Python function names in the stacks (issue 12), through `antiprof run` and its JSON sink.

Each check is what a user looks at: the Python functions' names, files and lines, their shares
against the clock split the program makes, and where they sit among the native frames: each
`_PyEval_EvalFrameDefault` replaced by the Python frames it ran, so a C extension shows under
its Python caller and the interpreter's own frames stay below, down to `main`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from antiprof_core.model import FrameKind, ProfileWindow, Sample
from antiprof_core.testing import require_bpf
from antiprof_core.testing.agent import RunningAgent
from antiprof_core.testing.python_workloads import (
    BY_CLOCK_LINES,
    BY_CLOCK_SHARES,
    BY_CLOCK_START_LINES,
    HASHLIB_PROGRAM,
    TWO_FUNCTIONS_BY_CLOCK_PROGRAM,
    Interpreter,
    cpython_interpreters,
    running_program,
    running_two_threads,
)
from antiprof_core.testing.record import TABLE_ROW, run_record
from antiprof_core.testing.stacks import read_windows, samples_of, settled, wait_for_settled_samples

pytestmark = pytest.mark.bpf

DEBIAN_PYTHON = "/usr/bin/python3.11"
SUPPORTED = (3, 11)


def write_config(directory: Path, pids: list[int], frequency_hz: int = 199) -> tuple[Path, Path]:
    config, output = directory / "antiprof.toml", directory / "windows.jsonl"
    pid_line = f"pids = {pids}" if pids else ""
    config.write_text(
        f"""
[sampler]
window = "1s"
frequency_hz = {frequency_hz}
{pid_line}
unwind_cache_dir = "{directory / "unwind-cache"}"
max_stacks = 16384

[consumers.json]
path = "{output}"
"""
    )
    return config, output


def sample(directory: Path, pids: list[int], samples: int, frequency_hz: int = 199) -> tuple[list[ProfileWindow], str]:
    """`antiprof run` on ``pids`` until each has ``samples`` settled samples: its windows and log."""
    config, output = write_config(directory, pids, frequency_hz)
    with RunningAgent(config, directory) as agent:
        process = agent.process
        assert process is not None
        wait_for_settled_samples(output, pids, samples, timeout=300, alive=lambda: process.poll() is None)
    assert agent.returncode == 0, agent.stderr
    return settled(read_windows(output)), agent.stderr


def python_names(sample: Sample) -> list[str | None]:
    return [frame.symbol for frame in sample.stack if frame.kind is FrameKind.CPYTHON]


def share(samples: list[Sample], test: Callable[[Sample], bool]) -> float:
    total = sum(s.count for s in samples)
    return sum(s.count for s in samples if test(s)) / total if total else 0.0


def check_two_functions(samples: list[Sample], script: Path, tolerance: float) -> None:
    """heavy_math and light_strings named, with file and line, at 2:1, under main and <module>."""
    assert sum(s.count for s in samples) > 0
    for function, truth in BY_CLOCK_SHARES.items():
        measured = share(samples, lambda s, f=function: f in python_names(s))  # type: ignore[misc]
        assert measured == pytest.approx(truth, abs=tolerance), (function, measured)
    frames = [f for s in samples for f in s.stack if f.kind is FrameKind.CPYTHON and f.symbol in BY_CLOCK_LINES]
    assert frames and all(f.file == str(script) for f in frames)
    on_line = sum(1 for f in frames if f.line in BY_CLOCK_LINES[f.symbol or ""])
    assert on_line / len(frames) >= 0.99, {(f.symbol, f.line) for f in frames}
    assert {(f.symbol, f.start_line) for f in frames} <= set(BY_CLOCK_START_LINES.items())
    shaped = share(samples, lambda s: python_names(s)[-2:] == ["main", "<module>"])
    assert shaped >= 0.95


def test_debian_python_names_both_functions_with_file_line_and_true_shares(tmp_path: Path) -> None:
    require_bpf()
    with running_program([DEBIAN_PYTHON, "-I"], TWO_FUNCTIONS_BY_CLOCK_PROGRAM, tmp_path) as program:
        # 2000 samples: 3 points on a 2/3 share is about 2.9 standard errors.
        windows, _ = sample(tmp_path, [program.pid], 2000, frequency_hz=499)
    samples = samples_of(windows, program.pid)
    check_two_functions(samples, tmp_path / "program.py", tolerance=0.03)
    # The Python frames take the place of the interpreter's loop, above its native frames down to main.
    heavy = [s for s in samples if python_names(s)[:1] == ["heavy_math"]]
    # Debian's main tail-calls Py_BytesMain: libc's start is the frame below it.
    whole = [s for s in heavy if entry_order(s) == ["heavy_math", "main", "<module>", *INTERPRETER_ENTRY]]
    assert sum(s.count for s in whole) / sum(s.count for s in heavy) >= 0.95
    assert not any(f.symbol == "_PyEval_EvalFrameDefault" for s in heavy for f in s.stack)


INTERPRETER_ENTRY = ("Py_BytesMain", "__libc_start_main")


def test_record_names_python_functions_in_its_table_and_in_perf_script(tmp_path: Path) -> None:
    """What a user runs: `antiprof record -p PID`, its table, then `perf script` on its perf.data."""
    require_bpf()
    from antiprof_perfdata.perftool import parse_script, run_perf

    out = tmp_path / "out"
    with running_program([DEBIAN_PYTHON, "-I"], TWO_FUNCTIONS_BY_CLOCK_PROGRAM, tmp_path) as program:
        done = run_record(program.pid, out, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {m.group(4): float(m.group(2)) for m in TABLE_ROW.finditer(done.stdout)}  # total shares
    for function, truth in BY_CLOCK_SHARES.items():
        assert rows[function] == pytest.approx(100 * truth, abs=6), (function, rows)
    [perf_data] = out.glob("*.perf.data")
    script = run_perf(["script", "-i", str(perf_data)], tmp_path / "perf-home")
    assert script.returncode == 0, script.stderr
    samples = parse_script(script.stdout)
    script_path = tmp_path / "program.py"

    def python_part(frames: tuple[str | None, ...]) -> list[str]:
        return [name for name in frames if name and name.startswith("py::")]

    chains = [python_part(tuple(f.symbol for f in sample.frames)) for sample in samples]
    heavy = [f"py::heavy_math:{script_path}", f"py::main:{script_path}", f"py::<module>:{script_path}"]
    assert sum(chain == heavy for chain in chains) / len(chains) == pytest.approx(2 / 3, abs=0.06)


# A row of record's table: self %, total %, samples, function, module


def entry_order(sample: Sample) -> list[str | None]:
    """The stack's Python frames and the interpreter's entry points, leaf first."""
    return [f.symbol for f in sample.stack if f.kind is FrameKind.CPYTHON or f.symbol in INTERPRETER_ENTRY]


@pytest.mark.parametrize(
    "interpreter", [i for i in cpython_interpreters() if i.version >= (3, 10)], ids=lambda i: i.label
)
def test_every_cpython_on_the_machine_is_named_or_said_unsupported(interpreter: Interpreter, tmp_path: Path) -> None:
    require_bpf()
    with running_program([interpreter.path], TWO_FUNCTIONS_BY_CLOCK_PROGRAM, tmp_path) as program:
        windows, log = sample(tmp_path, [program.pid], 600)
    samples = samples_of(windows, program.pid)
    if interpreter.version >= SUPPORTED:
        check_two_functions(samples, tmp_path / "program.py", tolerance=0.06)
        assert sum(w.counters.python.get("frames_read", 0) for w in windows) > 0
    else:  # profiled natively, and the log says why
        assert not any(python_names(s) for s in samples)
        version = f"{interpreter.version[0]}.{interpreter.version[1]}"
        assert f"Python frames not read: CPython {version}: only 3.11 and newer" in log


def test_a_c_extension_shows_under_its_python_caller(tmp_path: Path) -> None:
    require_bpf()
    with running_program([DEBIAN_PYTHON, "-I"], HASHLIB_PROGRAM, tmp_path) as program:
        windows, _ = sample(tmp_path, [program.pid], 600)
    samples = samples_of(windows, program.pid)
    # OpenSSL's sha256 (its leaf, sha256_block_data_order_*, is a local symbol Debian strips: unnamed)
    hashing = [s for s in samples if any("sha256" in (name or "").lower() for name in native_above_python(s))]
    assert share(samples, lambda s: s in hashing) >= 0.5  # most of the time goes into OpenSSL's sha256

    def under_caller(s: Sample) -> bool:
        names = [f.symbol for f in s.stack]
        native_leaf = next(n for n, f in enumerate(s.stack) if "sha256" in (f.symbol or "").lower())
        return (
            "digest_all" in names
            and names.index("digest_all") > native_leaf
            and python_names(s)
            == [
                "digest_all",
                "main",
                "<module>",
            ]
        )

    assert share(hashing, under_caller) >= 0.95


def native_above_python(sample: Sample) -> list[str | None]:
    """The user-space native frames above the leaf-most Python frame (what Python called)."""
    names = []
    for frame in sample.stack:
        if frame.kind is FrameKind.CPYTHON:
            break
        if frame.kind is not FrameKind.KERNEL:
            names.append(frame.symbol)
    return names


def test_each_thread_carries_its_own_python_stack(tmp_path: Path) -> None:
    require_bpf()
    with running_two_threads(DEBIAN_PYTHON, tmp_path) as program:
        config, output = write_config(tmp_path, [program.pid])
        with RunningAgent(config, tmp_path) as agent:
            deadline = time.monotonic() + 300
            while True:
                samples = samples_of(settled(read_windows(output)), program.pid)
                by_thread = {
                    tid: sum(s.count for s in samples if s.tid == tid) for tid in (program.pid, program.worker_tid)
                }
                if min(by_thread.values()) >= 200:
                    break
                assert time.monotonic() < deadline and agent.process and agent.process.poll() is None, by_thread
                time.sleep(0.5)
    main_thread = [s for s in samples if s.tid == program.pid]
    worker = [s for s in samples if s.tid == program.worker_tid]
    assert share(main_thread, lambda s: "heavy_math" in python_names(s)) >= 0.95
    assert share(worker, lambda s: "light_strings" in python_names(s)) >= 0.95
    assert not any("light_strings" in python_names(s) for s in main_thread)
    assert not any("heavy_math" in python_names(s) for s in worker)


def test_a_short_lived_program_and_one_exec_d_from_a_shell_are_named(tmp_path: Path) -> None:
    """Both start after the agent is attached (every process sampled): the short one runs Python
    for 3 s and exits; the other is a shell that execs into Python."""
    require_bpf()
    script = tmp_path / "program.py"
    script.write_text(TWO_FUNCTIONS_BY_CLOCK_PROGRAM.replace("    while True:", "    for _ in range(100):"))
    config, output = write_config(tmp_path, [])
    with RunningAgent(config, tmp_path) as agent:
        short = subprocess.Popen([DEBIAN_PYTHON, "-I", str(script)], stdout=subprocess.DEVNULL)
        shell = subprocess.Popen(
            ["sh", "-c", f"sleep 0.2; exec {DEBIAN_PYTHON} -I {script}"], stdout=subprocess.DEVNULL
        )
        assert short.wait(timeout=120) == 0 and shell.wait(timeout=120) == 0
        exited_ns = time.time_ns()
        deadline = time.monotonic() + 60
        while not any(w.start_ns >= exited_ns for w in read_windows(output)):  # their last window is out
            assert time.monotonic() < deadline, "no window after both programs exited"
            time.sleep(0.2)
    assert agent.returncode == 0, agent.stderr
    windows = read_windows(output)

    def is_named(sample: Sample) -> bool:
        return bool({"heavy_math", "light_strings"} & set(python_names(sample)))

    for process in (short, shell):
        samples = samples_of(windows, process.pid)
        assert sum(s.count for s in samples) >= 50, process.args
        assert share(samples, is_named) >= 0.8, (process.args, share(samples, is_named))
        # Its last window is named after it exited, from what was read while it ran.
        last = samples_of([w for w in windows if samples_of([w], process.pid)][-1:], process.pid)
        assert share(last, is_named) >= 0.8, (process.args, share(last, is_named))


def test_a_python_process_in_its_own_pid_namespace_is_named(tmp_path: Path) -> None:
    """As in a container: CPython numbers its threads as its own PID namespace does (here it is
    PID 1 there), not as the host does, and the BPF program must find its thread state by that number."""
    require_bpf()
    launcher = ["unshare", "--pid", "--fork", "--kill-child", DEBIAN_PYTHON, "-I"]
    with running_program(launcher, TWO_FUNCTIONS_BY_CLOCK_PROGRAM, tmp_path) as unshare:
        python_pid = only_child(unshare.pid)
        assert namespaced_pids(python_pid) == [python_pid, 1]
        windows, _ = sample(tmp_path, [python_pid], 600)
    check_two_functions(samples_of(windows, python_pid), tmp_path / "program.py", tolerance=0.06)


def only_child(pid: int) -> int:
    [child] = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(child)


def namespaced_pids(pid: int) -> list[int]:
    """The `NSpid` line of /proc/PID/status: its number in each PID namespace, the host's first."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(n) for n in line.split()[1:]]
    raise AssertionError(f"/proc/{pid}/status has no NSpid line")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, *sys.argv[1:]]))
