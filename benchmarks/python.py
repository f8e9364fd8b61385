"""CPython frames while sampling: BPF cost per sample with and without the Python walk, naming cost
per window, and the function shares next to py-spy's.

One run of Debian's python3.11 on the 2:1 program (``heavy_math`` 20 ms, ``light_strings`` 10 ms,
over and over, at nice -20) is sampled at the same time by two agents, ``python_frames = true``
and ``false`` (everything else equal), and by ``py-spy record`` (PyPI: ``make bench`` installs it).
Printed: each agent's BPF cost per sample (``run_time_ns / run_cnt`` of its programs, with
BPF run-time statistics on for the phase) and the ratio (target: Python walk at most 2x),
each agent's mean "symbolized in" time per window after the first two (naming, warm caches),
and the shares of heavy_math and light_strings from the Python agent and from py-spy (target:
within 3 points). The per-frame naming cost is in ``python_naming.py``.

    sudo .venv/bin/python benchmarks/python.py              # 60 s
    sudo .venv/bin/python benchmarks/python.py --seconds 15 # a short look
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the BPF statistics helpers of the unwinder benchmark

from unwind import bpf_stats, program_runs

from antiprof_core.model import FrameKind, ProfileWindow
from antiprof_core.sources.bpf import bpf_unavailable_reason
from antiprof_core.testing.agent import RunningAgent
from antiprof_core.testing.python_workloads import TWO_FUNCTIONS_BY_CLOCK_PROGRAM, running_program
from antiprof_core.testing.stacks import read_windows

PYTHON = "/usr/bin/python3.11"
FUNCTIONS = ("heavy_math", "light_strings")
SYMBOLIZED = re.compile(r"window: (\d+) samples, .*symbolized in ([\d.]+) ms")


def write_config(directory: Path, pid: int, frequency: int, python_frames: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "antiprof.toml"
    config.write_text(
        f'[sampler]\nwindow = "1s"\nfrequency_hz = {frequency}\npids = [{pid}]\n'
        f"python_frames = {str(python_frames).lower()}\n"
        f'unwind_cache_dir = "{directory.parent / "unwind-cache"}"\n\n'
        f'[consumers.json]\npath = "{directory / "windows.jsonl"}"\n'
    )
    return config


def agent_shares(windows: list[ProfileWindow], pid: int, since_ns: int) -> dict[str, float]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for window in windows:
        if window.start_ns < since_ns:
            continue
        for sample in window.samples:
            if sample.pid != pid:
                continue
            total += sample.count
            names = {f.symbol for f in sample.stack if f.kind is FrameKind.CPYTHON}
            for function in FUNCTIONS:
                counts[function] += sample.count if function in names else 0
    return {function: counts[function] / total if total else 0.0 for function in FUNCTIONS}


def py_spy_shares(raw: Path) -> dict[str, float]:
    """From ``py-spy record --format raw``: folded stacks, one ``frame;frame;... count`` per line."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for function in FUNCTIONS:
            if re.search(rf"(^|;){function} \(", stack):
                counts[function] += int(count)
    return {function: counts[function] / total if total else 0.0 for function in FUNCTIONS}


def wait_for_window(agent_dir: Path, test: Callable[[ProfileWindow], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(test(window) for window in read_windows(agent_dir / "windows.jsonl")):
        if time.monotonic() > deadline:
            raise SystemExit(f"python: no such window from the agent in {agent_dir} after {timeout:.0f} s")
        time.sleep(0.2)


def mean_symbolize_ms(log: str) -> float:
    times = [float(ms) for samples, ms in SYMBOLIZED.findall(log) if int(samples)][2:]
    return sum(times) / len(times) if times else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--frequency", type=int, default=99)
    args = parser.parse_args()
    reason = bpf_unavailable_reason()
    if reason:
        print(f"python: skipped ({reason})")
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        with running_program(["nice", "-n", "-20", PYTHON, "-I"], TWO_FUNCTIONS_BY_CLOCK_PROGRAM, directory) as program:
            agents = {}
            with contextlib.ExitStack() as stack:
                for python_frames in (True, False):
                    agent_dir = directory / f"python-{python_frames}"
                    config = write_config(agent_dir, program.pid, args.frequency, python_frames)
                    agents[python_frames] = (
                        stack.enter_context(RunningAgent(config, agent_dir, ["--log-level", "debug"])),
                        agent_dir,
                    )
                wait_for_window(agents[True][1], lambda w: bool(w.counters.python.get("frames_read")))
                raw = directory / "py-spy.txt"
                spy_command = [py_spy, "record", "--format", "raw", "--rate", str(args.frequency)]
                spy_command += ["--duration", str(int(args.seconds)), "--pid", str(program.pid), "--output", str(raw)]
                with bpf_stats():
                    started_ns = time.time_ns()
                    before = {key: program_runs(agent.pid) for key, (agent, _) in agents.items()}
                    spy = subprocess.run(spy_command, capture_output=True, text=True, timeout=args.seconds + 120)
                    after = {key: program_runs(agent.pid) for key, (agent, _) in agents.items()}
                ended_ns = time.time_ns()
                for _, agent_dir in agents.values():  # the last window of the span reaches the JSON sink
                    wait_for_window(agent_dir, lambda w: w.start_ns >= ended_ns)
        print(f"python: {PYTHON}, 2:1 program, {args.frequency} Hz, {args.seconds:g} s, both agents at once")
        cost = {}
        for python_frames, (agent, _) in agents.items():
            runtime, runs = (after[python_frames][i] - before[python_frames][i] for i in (0, 1))
            cost[python_frames] = runtime / runs / 1000 if runs else float("nan")
            label = "with the Python walk" if python_frames else "native only        "
            print(
                f"  {label}: BPF {cost[python_frames]:6.2f} us per sample ({runs} runs),"
                f" naming {mean_symbolize_ms(agent.stderr):6.2f} ms per window"
            )
        print(f"  ratio: {cost[True] / cost[False]:.2f}x (target <= 2x)")
        ours = agent_shares(read_windows(agents[True][1] / "windows.jsonl"), program.pid, started_ns)
        if spy.returncode != 0 or not raw.exists():
            print(f"  py-spy: failed ({spy.stderr.strip().splitlines()[-1:] or spy.returncode})")
            return 0
        theirs = py_spy_shares(raw)
        for function in FUNCTIONS:
            print(
                f"  {function:14} antiprof {100 * ours[function]:5.1f}%   py-spy {100 * theirs[function]:5.1f}%"
                f"   difference {100 * abs(ours[function] - theirs[function]):4.1f} points (target <= 3)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
