"""The sampler's cost against ``perf record -a -g``, measured in the same run on the same load.

Both CPUs are kept busy by the two-function workload. For each frequency, ``antiprof run``
(real BPF source, no consumers: windows are drained, symbolized and discarded) and then
``perf record -F HZ -a -g`` each run for the same time; the table gives their CPU per wall
second after start-up (antiprof: after its first three 2 s windows, which warm the caches), RSS, start-up
time (to the program attached; perf: to its first bytes on disk), the BPF program's cost per
sample (``kernel.bpf_stats_enabled``), and the drain and symbolize time per window. perf names
frames later, in ``perf report``: its CPU per recorded second is shown in the last column's
place. A last row drains a window of about 20k distinct stacks with warm caches.

    sudo .venv/bin/python benchmarks/sampler.py [--seconds 10] [--frequencies 19,99,999]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from antiprof_core.config import SamplerConfig
from antiprof_core.host import read_host
from antiprof_core.sources.bpf import BpfSampler, bpf_unavailable_reason
from antiprof_core.testing.workloads import build_many_stacks_workload, build_two_function_workload
from antiprof_core.units import Duration

TICKS = os.sysconf("SC_CLK_TCK")
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
WARM_UP_WINDOWS = 3
DRAIN_LINE = re.compile(r"drained in ([\d.]+) ms, symbolized in ([\d.]+) ms")


def cpu_seconds(pid: int) -> float:
    """Time on CPU of every live thread of ``pid``, from schedstat (ns, unlike stat's ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def rss_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def bpf_cost_ns(pid: int) -> float | None:
    """run_time_ns / run_cnt over the BPF programs ``pid`` holds open."""
    run_time = run_count = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        if "prog_type:" not in info:
            continue
        values = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        run_time += int(values.get("run_time_ns", "0"))
        run_count += int(values.get("run_cnt", "0"))
    return run_time / run_count if run_count else None


def measure_agent(frequency: int, seconds: float, workdir: Path) -> dict[str, str]:
    config = workdir / f"agent-{frequency}.toml"
    config.write_text(f'[sampler]\nsource = "bpf"\nfrequency_hz = {frequency}\nwindow = "2s"\n')
    log = workdir / f"agent-{frequency}.log"
    antiprof = Path(sys.executable).parent / "antiprof"
    launched = time.monotonic()
    with log.open("w") as log_file:
        agent = subprocess.Popen(
            [str(antiprof), "run", "-c", str(config), "--log-level", "debug"],
            stderr=log_file,
            stdout=subprocess.DEVNULL,
        )
    while " CPUs at " not in log.read_text():  # start-up ends when the program is attached
        if agent.poll() is not None:
            raise SystemExit(f"antiprof run failed: {log.read_text()}")
        time.sleep(0.01)
    startup = time.monotonic() - launched
    # The first windows warm the caches (ELF symbols are read when a sample first hits a file,
    # which at 19 Hz takes a few windows): they are start-up, not steady state.
    while log.read_text().count("drained in") < WARM_UP_WINDOWS:
        time.sleep(0.01)
    cpu_before = cpu_seconds(agent.pid)
    time.sleep(seconds)
    cpu = (cpu_seconds(agent.pid) - cpu_before) / seconds
    rss, peak = rss_mib(agent.pid)
    cost = bpf_cost_ns(agent.pid)
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=30)
    drains = [(float(a), float(b)) for a, b in DRAIN_LINE.findall(log.read_text())]
    drains = drains[WARM_UP_WINDOWS:] or drains
    drain_ms = sum(a + b for a, b in drains) / len(drains) if drains else float("nan")
    return {
        "cpu": f"{100 * cpu:.2f}%",
        "rss": f"{rss:.0f} MiB ({peak:.0f} peak)",
        "startup": f"{startup:.2f} s",
        "bpf": f"{cost / 1000:.2f} us" if cost else "-",
        "drain": f"{drain_ms:.1f} ms",
        "cpu_value": str(cpu),
    }


def measure_perf(frequency: int, seconds: float, workdir: Path) -> dict[str, str]:
    output = workdir / f"perf-{frequency}.data"
    launched = time.monotonic()
    perf = subprocess.Popen(
        ["perf", "record", "-F", str(frequency), "-a", "-g", "-o", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not (output.exists() and output.stat().st_size > 0):
        if perf.poll() is not None:
            raise SystemExit("perf record failed to start")
        time.sleep(0.01)
    startup = time.monotonic() - launched
    time.sleep(0.5)
    cpu_before = cpu_seconds(perf.pid)
    time.sleep(seconds)
    cpu = (cpu_seconds(perf.pid) - cpu_before) / seconds
    rss, peak = rss_mib(perf.pid)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=120)
    # perf names frames afterwards, in `perf report`; antiprof does it live. Count that too.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        ["perf", "report", "-i", str(output), "--stdio"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (seconds + 0.5)
    return {
        "cpu": f"{100 * cpu:.2f}%",
        "rss": f"{rss:.0f} MiB ({peak:.0f} peak)",
        "startup": f"{startup:.2f} s",
        "bpf": "-",
        "drain": f"report: {100 * report_cpu:.2f}%/s",
        "cpu_value": str(cpu),
    }


def measure_many_stacks(workdir: Path) -> tuple[int, int, float, float]:
    """(distinct stacks, collisions, drain ms, symbolize ms) of one ~20k-stack window, warm caches.

    The workload runs on CPU 1 and the sampler on CPU 0, so the figure is the drain's own cost,
    not its share of a CPU it fights for.
    """
    program = build_many_stacks_workload(workdir)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    workloads = [
        subprocess.Popen([str(program), "60"], preexec_fn=lambda: os.sched_setaffinity(0, {1})) for _ in range(2)
    ]
    try:
        config = SamplerConfig(
            frequency_hz=4999, window=Duration(4.0), pids=tuple(w.pid for w in workloads), kernel_stacks=False
        )
        sampler = BpfSampler(config, read_host(), logging.getLogger("antiprof.benchmark"))
        sampler.start()
        try:
            for _ in range(2):  # warm the ELF and frame caches
                time.sleep(4.0)
                sampler.collect()
            time.sleep(4.0)
            window = sampler.collect()
        finally:
            sampler.close()
    finally:
        os.sched_setaffinity(0, affinity)
        for workload in workloads:
            workload.kill()
            workload.wait()
    stacks = len({sample.stack for sample in window.samples})
    collisions = window.counters.stack_errors["user_collision"]
    return stacks, collisions, 1000 * sampler.last_drain_seconds, 1000 * sampler.last_symbolize_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per tool and frequency")
    parser.add_argument("--frequencies", default="19,99,999")
    args = parser.parse_args()
    reason = bpf_unavailable_reason()
    if reason:
        print(f"benchmark needs real eBPF: {reason}", file=sys.stderr)
        return 1
    if not shutil.which("perf"):
        print("benchmark needs perf: apt-get install linux-perf", file=sys.stderr)
        return 1
    frequencies = [int(f) for f in args.frequencies.split(",")]
    stats_before = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="antiprof-bench-") as directory:
        workdir = Path(directory)
        program = build_two_function_workload(workdir)
        load = [subprocess.Popen([str(program), "100000"]) for _ in range(os.cpu_count() or 2)]
        try:
            for frequency in frequencies:
                agent = measure_agent(frequency, args.seconds, workdir)
                perf = measure_perf(frequency, args.seconds, workdir)
                ratio = float(agent["cpu_value"]) / max(float(perf["cpu_value"]), 1e-6)
                rows.append((f"{frequency} Hz", "antiprof", agent, f"{ratio:.2f}x perf"))
                rows.append((f"{frequency} Hz", "perf record", perf, ""))
        finally:
            for process in load:
                process.kill()
                process.wait()
            BPF_STATS.write_text(stats_before)
        stacks, collisions, drain_ms, symbolize_ms = measure_many_stacks(workdir)
    header = ("freq", "tool", "CPU/wall s", "RSS", "start-up", "BPF/sample", "drain+sym/window", "CPU ratio")
    table = [header] + [
        (freq, tool, m["cpu"], m["rss"], m["startup"], m["bpf"], m["drain"], ratio) for freq, tool, m, ratio in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    host = read_host()
    print(f"# {host.cpu_description}, {host.online_cpus} CPUs, kernel {host.kernel_release}, both CPUs busy")
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        f"\nwarm drain of {stacks} distinct stacks: {drain_ms:.0f} ms drain + {symbolize_ms:.0f} ms symbolize"
        f" = {drain_ms + symbolize_ms:.0f} ms (target < 500 ms); {collisions} samples lost their stack to"
        " stack-map hash collisions (65536 buckets)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
