"""The agent's cost against ``perf record -a -g`` (+ ``perf report``), measured in the same run on
the same load: CPU with and without process churn, steady RSS, peak RSS, start-up.

Both CPUs are kept busy by the two-function workload. For each frequency, ``antiprof run`` (real
BPF source, perfdata and OTLP sinks on, the OTLP receiver a real gRPC server in this process)
and then ``perf record -F HZ -a -g`` each run two phases of the same length: no churn, then 50 new
short-lived processes per second (``/bin/true`` and ``sha256sum``, alternately). The table gives
CPU per wall second in each phase (antiprof: after its first three windows, which warm the
caches), RSS at the end (steady RSS: the long mode runs 10 minutes), VmHWM (the agent's own; the
BCC compiler child's peak is listed apart), and start-up: from launch to sampling attached
(antiprof) or to perf's first bytes on disk. perf names frames later, in ``perf report``: its CPU
per recorded second is shown in the drain column. A last row drains a window of about 20k
distinct stacks with warm caches.

    sudo .venv/bin/python benchmarks/sampler.py            # long: 10 minutes per tool and frequency
    sudo .venv/bin/python benchmarks/sampler.py --short    # 2 x 10 s per tool and frequency
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from antiprof_core.config import SamplerConfig
from antiprof_core.host import read_host
from antiprof_core.sources.bpf import BpfSampler, bpf_unavailable_reason
from antiprof_core.testing.workloads import build_many_stacks_workload, build_two_function_workload
from antiprof_core.units import Duration

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
WARM_UP_WINDOWS = 3
CHURN_PER_SECOND = 50
DRAIN_LINE = re.compile(r"drained in ([\d.]+) ms, symbolized in ([\d.]+) ms")
ATTACHED_LINE = re.compile(r"sampling attached in ([\d.]+) s .*compiler child peak (\d+) MiB")


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


@contextmanager
def churn(workdir: Path, per_second: int) -> Iterator[None]:
    """``per_second`` new short-lived processes each second, until the block ends."""
    data = workdir / "churn.bin"
    data.write_bytes(os.urandom(64 * 1024))
    commands = [["/bin/true"], [shutil.which("sha256sum") or "/usr/bin/sha256sum", str(data)]]
    stop = threading.Event()

    def spawn() -> None:
        started, count = time.monotonic(), 0
        with open(os.devnull, "w") as null:
            quiet = [(os.POSIX_SPAWN_DUP2, null.fileno(), 1)]
            while not stop.is_set():
                command = commands[count % 2]
                os.waitpid(os.posix_spawn(command[0], command, os.environ, file_actions=quiet), 0)
                count += 1
                stop.wait(max(started + count / per_second - time.monotonic(), 0.0))

    thread = threading.Thread(target=spawn, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def cpu_over(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def measure_agent(frequency: int, seconds: float, window: str, workdir: Path, otlp_port: int) -> dict[str, str]:
    config = workdir / f"agent-{frequency}.toml"
    config.write_text(
        f'[sampler]\nsource = "bpf"\nfrequency_hz = {frequency}\nwindow = "{window}"\n\n'
        f'[consumers.perfdata]\noutput_dir = "{workdir / f"perf-{frequency}"}"\n\n'
        f'[consumers.otlp]\nendpoint = "127.0.0.1:{otlp_port}"\ninsecure = true\n'
    )
    log = workdir / f"agent-{frequency}.log"
    antiprof = Path(sys.executable).parent / "antiprof"
    launched = time.monotonic()
    with log.open("w") as log_file:
        agent = subprocess.Popen(
            [str(antiprof), "run", "-c", str(config), "--log-level", "debug"],
            stderr=log_file,
            stdout=subprocess.DEVNULL,
        )
    while not ATTACHED_LINE.search(log.read_text()):  # sampling has begun
        if agent.poll() is not None:
            raise SystemExit(f"antiprof run failed: {log.read_text()}")
        time.sleep(0.01)
    startup = time.monotonic() - launched
    attached_rss, _ = rss_mib(agent.pid)  # modules, sinks and the sampler, before any symbol is read
    child_peak = ATTACHED_LINE.search(log.read_text()).group(2)  # type: ignore[union-attr]
    # The first windows warm the caches (ELF symbols are read when a sample first hits a file,
    # which at 19 Hz takes a few windows): they are start-up, not steady state.
    while log.read_text().count("drained in") < WARM_UP_WINDOWS:
        time.sleep(0.05)
    quiet = cpu_over(agent.pid, seconds)
    with churn(workdir, CHURN_PER_SECOND):
        busy = cpu_over(agent.pid, seconds)
    rss, peak = rss_mib(agent.pid)
    cost = bpf_cost_ns(agent.pid)
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=60)
    text = log.read_text()
    drains = [(float(a), float(b)) for a, b in DRAIN_LINE.findall(text)][WARM_UP_WINDOWS:]
    drain_ms = sum(a + b for a, b in drains) / len(drains) if drains else float("nan")
    warnings = text.count(" WARNING ")
    return {
        "quiet": f"{100 * quiet:.2f}%",
        "churn": f"{100 * busy:.2f}%",
        "rss": f"{rss:.0f} MiB ({attached_rss:.0f} at attach)",
        "peak": f"{peak:.0f} MiB (compiler child {child_peak} MiB)",
        "startup": f"{startup:.2f} s",
        "bpf": f"{cost / 1000:.2f} us" if cost else "-",
        "drain": f"{drain_ms:.1f} ms" + (f", {warnings} warnings" if warnings else ""),
        "quiet_value": str(quiet),
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
    quiet = cpu_over(perf.pid, seconds)
    with churn(workdir, CHURN_PER_SECOND):
        busy = cpu_over(perf.pid, seconds)
    rss, peak = rss_mib(perf.pid)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=120)
    # perf names frames afterwards, in `perf report`; antiprof does it live. Count that too.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        ["perf", "report", "-i", str(output), "--stdio"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (2 * seconds + 0.5)
    return {
        "quiet": f"{100 * quiet:.2f}%",
        "churn": f"{100 * busy:.2f}%",
        "rss": f"{rss:.0f} MiB",
        "peak": f"{peak:.0f} MiB",
        "startup": f"{startup:.2f} s",
        "bpf": "-",
        "drain": f"report: {100 * report_cpu:.2f}%/s",
        "quiet_value": str(quiet),
    }


def measure_many_stacks(workdir: Path) -> tuple[int, int, float, float]:
    """(distinct stacks, stacks not stored, drain ms, symbolize ms) of one ~20k-stack window, warm caches.

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
    not_stored = window.counters.stack_errors["user_map_full"]
    return stacks, not_stored, 1000 * sampler.last_drain_seconds, 1000 * sampler.last_symbolize_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="10 s phases and 2 s windows instead of 5 min and 10 s")
    parser.add_argument("--seconds", type=float, help="length of each phase (churn and no churn)")
    parser.add_argument("--frequencies", default="19,99")
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.short else 300.0)
    window = "2s" if args.short else "10s"
    reason = bpf_unavailable_reason()
    if reason:
        print(f"benchmark needs real eBPF: {reason}", file=sys.stderr)
        return 1
    if not shutil.which("perf"):
        print("benchmark needs perf: apt-get install linux-perf", file=sys.stderr)
        return 1
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # this process forks workloads beside its receiver
    try:
        from antiprof_otlp.testing import ProfilesReceiver, serve
    except ImportError:
        print("benchmark needs antiprof-otlp installed (make setup)", file=sys.stderr)
        return 1
    frequencies = [int(f) for f in args.frequencies.split(",")]
    stats_before = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    rows = []
    receiver = ProfilesReceiver()
    with tempfile.TemporaryDirectory(prefix="antiprof-bench-") as directory, serve(receiver) as port:
        workdir = Path(directory)
        program = build_two_function_workload(workdir)
        load = [subprocess.Popen([str(program), "100000"]) for _ in range(os.cpu_count() or 2)]
        try:
            for frequency in frequencies:
                agent = measure_agent(frequency, seconds, window, workdir, port)
                perf = measure_perf(frequency, seconds, workdir)
                ratio = float(agent["quiet_value"]) / max(float(perf["quiet_value"]), 1e-6)
                rows.append((f"{frequency} Hz", "antiprof", agent, f"{ratio:.1f}x perf"))
                rows.append((f"{frequency} Hz", "perf record", perf, ""))
        finally:
            for process in load:
                process.kill()
                process.wait()
            BPF_STATS.write_text(stats_before)
        stacks, not_stored, drain_ms, symbolize_ms = measure_many_stacks(workdir)
        exported = len(receiver.requests)
    header = (
        "freq", "tool", "CPU/s", f"CPU/s, {CHURN_PER_SECOND} proc/s", "RSS at end", "VmHWM", "start-up",
        "BPF/sample", "drain+sym/window", "CPU ratio",
    )  # fmt: skip
    table = [header] + [
        (freq, tool, m["quiet"], m["churn"], m["rss"], m["peak"], m["startup"], m["bpf"], m["drain"], ratio)
        for freq, tool, m, ratio in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    host = read_host()
    print(
        f"# {host.cpu_description}, {host.online_cpus} CPUs, kernel {host.kernel_release}, both CPUs busy;"
        f" {seconds:.0f} s per phase, {window} windows, perfdata + OTLP sinks ({exported} OTLP exports received)"
    )
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        f"\nwarm drain of {stacks} distinct stacks: {drain_ms:.0f} ms drain + {symbolize_ms:.0f} ms symbolize"
        f" = {drain_ms + symbolize_ms:.0f} ms (target < 500 ms); {not_stored} stacks not stored (map full)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
