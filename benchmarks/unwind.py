"""Native unwinding (issue 11): table build times, and the unwinders side by side in one run.

Tables. Cold: a fresh Python process parses the file (the figure the issue's targets are about:
libc <= 1 s, python3.11 <= 3 s); its imports are shown apart. Warm: a fresh process loads the
table from the disk cache by build ID (target <= 50 ms). References in the same run: binutils'
`readelf --debug-dump=frames-interp` on the same file (C, and it prints every row), and, in
the full run, pyelftools' CFI decoder on libc in this process (the library this parser replaces).
The page cache is warm for every figure: the files are read once before measuring.

Sampling (needs root and real BPF). Two phases, both CPUs busy at nice -20: Debian's python3.11
running two Python functions next to an -O2 -fomit-frame-pointer C program, then two copies of
that program recursing 120 frames deep. Two `antiprof run` agents (unwinder = "frame-pointer" and
"dwarf", pid-filtered on every workload, 99 Hz) run through both phases, and `perf record
--call-graph dwarf` joins each phase: all sample the same processes at the same time (the other
phase's workloads are stopped meanwhile). Per unwinder: BPF time per program run
(run_time_ns / run_cnt from the program fd's fdinfo, with BPF_ENABLE_STATS held for the phase),
mean frames per stack, agent RSS (its child processes, the unwind worker, apart) and kernel
memory of its maps, the share of stacks that reach main, and how many samples were walked with
frame pointers while tables loaded (unwind_fallback); for perf the same share and its perf.data
bytes per sample.

    .venv/bin/python benchmarks/unwind.py                       # full (make bench): 60 s phases
    .venv/bin/python benchmarks/unwind.py --quick --seconds 15  # short: under 2 minutes
    .venv/bin/python benchmarks/unwind.py --unwinders frame-pointer  # before the dwarf walk exists
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes as ct
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from attrs import frozen

from antiprof_core.testing.agent import RunningAgent
from antiprof_core.testing.native_workloads import build_no_frame_pointer_workload, python_two_functions
from antiprof_core.testing.perfdwarf import PerfRecording, PerfUnavailable, entry_share, record_dwarf
from antiprof_core.testing.stacks import FALLBACK_COUNTER, read_windows, samples_of
from antiprof_core.testing.stacks import entry_share as antiprof_entry_share

FILES = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11"]

CHILD = r"""
import json, sys, time
started = time.perf_counter()
from pathlib import Path
from antiprof_core.sources.unwind.build import build_table
from antiprof_core.sources.unwind.cache import TableCache
from antiprof_core.sources.unwind.elfsections import read_sections
imported = time.perf_counter()
path, cache_dir, mode = sys.argv[1:4]
cache = TableCache(Path(cache_dir))
if mode == "cold":
    table = build_table(path)
    cache.store(table)
else:
    table = cache.load(read_sections(path, unwind=False).build_id)
    assert table is not None, "not in the cache"
done = time.perf_counter()
print(json.dumps({"import": imported - started, "work": done - imported, "rows": len(table),
                  "bytes": table.size_bytes, "fdes": table.counts.get("fdes", 0)}))
"""


def child(path: str, cache_dir: str, mode: str) -> dict[str, float]:
    output = subprocess.run([sys.executable, "-c", CHILD, path, cache_dir, mode], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    return json.loads(output)  # type: ignore[no-any-return]


def readelf_seconds(path: str) -> float:
    started = time.perf_counter()
    subprocess.run(["readelf", "--debug-dump=frames-interp", path], stdout=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def pyelftools_seconds(path: str) -> tuple[float, str]:
    """pyelftools decoding every CIE/FDE of .eh_frame into its rule table, as a reference."""
    from elftools.elf.elffile import ELFFile

    started = time.perf_counter()
    failed = decoded = 0
    with open(path, "rb") as stream:
        for entry in ELFFile(stream).get_dwarf_info().EH_CFI_entries():
            if hasattr(entry, "get_decoded"):
                try:
                    entry.get_decoded()
                    decoded += 1
                except Exception:  # its failures are part of the figure
                    failed += 1
    return time.perf_counter() - started, f"{decoded} entries decoded, {failed} failed"


# -- the unwinders side by side while sampling ---------------------------------------------------

SYS_BPF = 321  # x86-64
BPF_ENABLE_STATS = 32
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
NICE = ("nice", "-n", "-20")
DEEP_FRAMES = 120  # descend() frames between main and middle: stacks of about 125 frames


@contextlib.contextmanager
def bpf_stats() -> Iterator[str]:
    """BPF run-time statistics on for the block: through a BPF_ENABLE_STATS fd (off again when it is
    closed, so a crash never leaves them on, and other users' own enables are left alone), else
    through the sysctl, restored afterwards."""
    libc = ct.CDLL(None, use_errno=True)
    attr = (ct.c_uint32 * 2)(0, 0)  # enable_stats.type = BPF_STATS_RUN_TIME
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, ct.sizeof(attr))
    if fd >= 0:
        try:
            yield "BPF_ENABLE_STATS"
        finally:
            os.close(fd)
        return
    before = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        yield "kernel.bpf_stats_enabled"
    finally:
        BPF_STATS.write_text(before)


def _bpf_fdinfo(pid: int, kind: str) -> list[dict[str, str]]:
    """fdinfo of every ``anon_inode:bpf-KIND`` fd ``pid`` holds."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != f"anon_inode:bpf-{kind}":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        found.append(dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line))
    return found


def program_runs(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs of ``pid``."""
    programs = _bpf_fdinfo(pid, "prog")
    return sum(int(p.get("run_time_ns", 0)) for p in programs), sum(int(p.get("run_cnt", 0)) for p in programs)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def write_agent_config(directory: Path, pids: list[int], unwinder: str, frequency: int, cache: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "antiprof.toml"
    config.write_text(
        f'[sampler]\nsource = "bpf"\nwindow = "1s"\nfrequency_hz = {frequency}\npids = {pids}\n'
        f'unwinder = "{unwinder}"\nunwind_cache_dir = "{cache}"\n\n'
        f'[consumers.json]\npath = "{directory / "windows.jsonl"}"\n'
    )
    return config


@frozen
class Phase:
    name: str
    workloads: list[subprocess.Popen[bytes]]

    @property
    def pids(self) -> list[int]:
        return [workload.pid for workload in self.workloads]

    def signal(self, signum: int) -> None:
        for workload in self.workloads:
            os.kill(workload.pid, signum)


TABLES_TIMEOUT = 300.0  # the agent at nice 0 beside nice -20 workloads builds its tables slowly


def wait_for_tables(agent_dirs: dict[str, Path], since_ns: int) -> None:
    """Until each table-walking agent has a window with samples, begun after ``since_ns``, in which no
    sample was walked by frame pointers for want of tables: the phase measures walks, not loading."""
    deadline = time.monotonic() + TABLES_TIMEOUT
    for unwinder, agent_dir in agent_dirs.items():
        if unwinder == "frame-pointer":
            continue
        while True:
            with contextlib.suppress(OSError, ValueError):  # a window being written
                windows = [w for w in read_windows(agent_dir / "windows.jsonl") if w.start_ns > since_ns]
                if any(w.sample_count and not w.counters.stack_errors.get(FALLBACK_COUNTER, 0) for w in windows):
                    break
            if time.monotonic() > deadline:
                print(f"  {unwinder}: tables not loaded after {TABLES_TIMEOUT:.0f} s; measuring anyway")
                break
            time.sleep(0.5)


def measure_phase(
    phase: Phase,
    agents: dict[str, RunningAgent],
    seconds: float,
    frequency: int,
    directory: Path,
    agent_dirs: dict[str, Path],
) -> dict[str, Any]:
    """Run the phase's workloads for ``seconds`` while every agent and perf sample them."""
    phase.signal(signal.SIGCONT)
    try:
        wait_for_tables(agent_dirs, time.time_ns())
        with bpf_stats(), ThreadPoolExecutor(max_workers=1) as pool:
            perf = pool.submit(record_dwarf, phase.pids, seconds, directory / phase.name.replace(" ", "-"), frequency)
            started_ns = time.time_ns()
            before = {unwinder: program_runs(agent.pid) for unwinder, agent in agents.items()}
            time.sleep(seconds)
            after = {unwinder: program_runs(agent.pid) for unwinder, agent in agents.items()}
            ended_ns = time.time_ns()
            try:
                recording: PerfRecording | None = perf.result()
            except PerfUnavailable as error:
                print(f"  perf: {error}")
                recording = None
        memory = {
            unwinder: (
                rss_kib(agent.pid),
                sum(rss_kib(child) for child in children_of(agent.pid)),
                sum(int(m.get("memlock", 0)) for m in _bpf_fdinfo(agent.pid, "map")),
            )
            for unwinder, agent in agents.items()
        }
    finally:
        phase.signal(signal.SIGSTOP)
    return {"span": (started_ns, ended_ns), "before": before, "after": after, "perf": recording, "memory": memory}


def phase_rows(phase: Phase, measured: dict[str, Any], agent_dirs: dict[str, Path]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    started_ns, ended_ns = measured["span"]  # the other phase's workloads are stopped: no samples of theirs
    for unwinder, agent_dir in agent_dirs.items():
        windows = [
            window
            for window in read_windows(agent_dir / "windows.jsonl")
            if window.start_ns < ended_ns and window.end_ns > started_ns  # a window may outlast the phase
        ]
        fallback = sum(window.counters.stack_errors.get(FALLBACK_COUNTER, 0) for window in windows)
        samples = [sample for pid in phase.pids for sample in samples_of(windows, pid)]
        count = sum(sample.count for sample in samples)
        frames = sum(len(sample.stack) * sample.count for sample in samples) / max(count, 1)
        runtime = measured["after"][unwinder][0] - measured["before"][unwinder][0]
        runs = measured["after"][unwinder][1] - measured["before"][unwinder][1]
        rss, children, memlock = measured["memory"][unwinder]
        rows.append((
            phase.name, f"antiprof {unwinder}", f"{runtime / runs:.0f} ns" if runs else "n/a", str(runs), str(count),
            f"{frames:.1f}", f"{antiprof_entry_share(samples):.1%}", str(fallback), f"{rss / 1024:.0f} MiB",
            f"{children / 1024:.0f} MiB", f"{memlock / 2**20:.1f} MiB", "",
        ))  # fmt: skip
    perf: PerfRecording | None = measured["perf"]
    if perf is not None:
        stacks = [stack for stack in perf.stacks if stack.pid in phase.pids]
        frames = sum(len(stack.frames) for stack in stacks) / max(len(stacks), 1)
        rows.append((
            phase.name, "perf --call-graph dwarf", "", "", str(len(stacks)), f"{frames:.1f}",
            f"{entry_share(stacks):.1%}", "", "", "", "", f"{perf.bytes_per_sample:.0f} B",
        ))  # fmt: skip
    return rows


def compare_unwinders(unwinders: list[str], seconds: float, frequency: int) -> None:
    """Every phase's workloads start stopped; one agent per unwinder samples all of them (one BPF
    compile each), and the phases take turns running: each phase's figures are its own processes'."""
    from antiprof_core.sources.bpf import bpf_unavailable_reason

    reason = bpf_unavailable_reason()
    if reason is not None:
        print(f"sampling comparison skipped: {reason}")
        return
    print(f"\nunwinders side by side: {frequency} Hz, {seconds:.0f} s per phase, workloads at nice -20 on "
          f"{os.cpu_count()} CPUs; BPF time per program run (every CPU's samples, filtered out or not)")  # fmt: skip
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="antiprof-unwind-bench-") as temporary, contextlib.ExitStack() as stack:
        directory = Path(temporary)
        program = str(build_no_frame_pointer_workload(directory))
        commands = {
            "python3.11 + no-fp": [python_two_functions(directory), [program]],
            f"no-fp {DEEP_FRAMES} deep x2": [[program, str(DEEP_FRAMES)], [program, str(DEEP_FRAMES)]],
        }
        phases = []
        for name, argvs in commands.items():
            phase = Phase(name, [stack.enter_context(stopped([*NICE, *argv])) for argv in argvs])
            phases.append(phase)
        pids = [pid for phase in phases for pid in phase.pids]
        agents: dict[str, RunningAgent] = {}
        agent_dirs: dict[str, Path] = {}
        for unwinder in unwinders:
            agent_dirs[unwinder] = directory / unwinder
            config = write_agent_config(agent_dirs[unwinder], pids, unwinder, frequency, directory / "cache")
            agents[unwinder] = stack.enter_context(RunningAgent(config, agent_dirs[unwinder], ready_timeout=600))
        measured = [measure_phase(phase, agents, seconds, frequency, directory, agent_dirs) for phase in phases]
        for agent in agents.values():
            agent.stop()
            if agent.returncode != 0:
                print(f"  agent exited {agent.returncode}: {agent.stderr.strip().splitlines()[-1:]}")
        for phase, figures in zip(phases, measured, strict=True):
            rows += phase_rows(phase, figures, agent_dirs)
    header = ("phase", "tool", "BPF/run", "runs", "samples", "frames", "reach main", "fallback", "RSS", "children",
              "BPF maps", "B/sample")  # fmt: skip
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    by_key = {(row[0], row[1]): row for row in rows}
    for phase in phases:
        fp, dwarf = by_key.get((phase.name, "antiprof frame-pointer")), by_key.get((phase.name, "antiprof dwarf"))
        if fp and dwarf and fp[2] != "n/a" and dwarf[2] != "n/a":
            fp_ns, dwarf_ns = float(fp[2].split()[0]), float(dwarf[2].split()[0])
            print(
                f"{phase.name}: dwarf costs {dwarf_ns / max(fp_ns, 1.0):.1f}x frame-pointer per run (target <= 3x), "
                f"{dwarf_ns / 1000:.1f} us at {dwarf[5]} frames (target <= 20 us at 127)"
            )


@contextlib.contextmanager
def stopped(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A workload started and stopped at once (SIGSTOP): it runs only in its phase."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, no pyelftools reference")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each sampling phase")
    parser.add_argument("--frequency", type=int, default=99)
    parser.add_argument("--unwinders", default="frame-pointer,dwarf", help="comma-separated, side by side")
    parser.add_argument("--no-tables", action="store_true", help="only the sampling comparison")
    parser.add_argument("--no-sampling", action="store_true", help="only the table build times")
    args = parser.parse_args()
    if not args.no_tables:
        table_build_times(args)
    if not args.no_sampling:
        compare_unwinders(args.unwinders.split(","), args.seconds, args.frequency)


def table_build_times(args: argparse.Namespace) -> None:
    rounds = 3 if args.quick else args.rounds
    print(f"unwind table build, median of {rounds} fresh processes each; CPython {sys.version.split()[0]}")
    print(f"{'file':<34} {'rows':>7} {'KiB':>6} {'cold':>8} {'warm':>8} {'imports':>8} {'readelf':>8}  target")
    for path in FILES:
        if not Path(path).exists():
            print(f"{path}: not installed, skipped")
            continue
        Path(path).read_bytes()  # page cache
        with tempfile.TemporaryDirectory() as cache_dir:
            cold = [child(path, cache_dir, "cold") for _ in range(rounds)]
            warm = [child(path, cache_dir, "warm") for _ in range(rounds)]
        cold_s = statistics.median(run["work"] for run in cold)
        warm_s = statistics.median(run["work"] for run in warm)
        imports = statistics.median(run["import"] for run in cold)
        reference = statistics.median(readelf_seconds(path) for _ in range(rounds))
        target = 1.0 if "libc" in path else 3.0
        print(
            f"{path:<34} {cold[0]['rows']:>7} {cold[0]['bytes'] / 1024:>6.0f} {cold_s * 1000:>6.0f}ms "
            f"{warm_s * 1000:>6.1f}ms {imports * 1000:>6.0f}ms {reference * 1000:>6.0f}ms  "
            f"cold {cold_s / target:.2f}x of {target:.0f} s, warm {warm_s / 0.05:.2f}x of 50 ms, "
            f"{cold_s / reference:.1f}x readelf"
        )
    if not args.quick:
        seconds, outcome = pyelftools_seconds(FILES[0])
        import elftools

        print(f"pyelftools {elftools.__version__} CFI decode of {FILES[0]}: {seconds:.2f} s ({outcome})")


if __name__ == "__main__":
    main()
