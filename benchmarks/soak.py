"""The agent under sustained load: does its memory stay flat and does it keep up?

Runs ``antiprof run`` (real BPF, every process, JSON sink to /dev/null) at 999 Hz for an hour
while 2000 threads wake briefly and often, and 200 new short-lived processes start each second
(``/bin/true``; every fourth ``sha256sum``). Prints the agent's RSS every minute, then the
growth after warm-up (the first 5 minutes; target < 10 MB), windows late (naming past the next
window's end, or drain + naming longer than a window) and dropped (consumer queue full), and
the agent's CPU. The reference for the growth is the agent's own RSS at the end of warm-up.

    sudo .venv/bin/python benchmarks/soak.py                          # one hour (make bench)
    sudo .venv/bin/python benchmarks/soak.py --minutes 3 --warm-up 1  # a short look

Two diagnostic modes, for when the growth is over target:

    --metrics      the agent serves /metrics on loopback; each minute's line adds the symbolizer's
                   cache bytes and entry counts (files, kernel frames, names, processes), files read and evicted
    --tracemalloc  the agent runs under tracemalloc (slower: its CPU figure is not the real one),
                   a snapshot each minute; prints Python's traced total next to RSS (a gap that
                   grows is allocator fragmentation, not objects) and the lines whose allocations
                   grew most between the end of warm-up and the last minute
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from antiprof_core.sources.bpf import bpf_unavailable_reason
from antiprof_core.testing.workloads import compile_c

THREADS_SOURCE = r"""
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void *worker(void *unused) {
    struct timespec pause = {0, 100 * 1000 * 1000};
    for (;;) {
        volatile unsigned long sum = 0;
        for (int i = 0; i < 10000; i++) sum += i;
        nanosleep(&pause, NULL);
    }
    return unused;
}

int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (int i = 0; i < threads; i++) {
        pthread_t thread;
        if (pthread_create(&thread, &attr, worker, NULL) != 0) return 1;
    }
    sleep(atoi(argv[2]));
    return 0;
}
"""

CHURN_SOURCE = r"""
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    double rate = atof(argv[1]);
    time_t end = time(NULL) + atoi(argv[2]);
    struct timespec pause = {0, (long)(1e9 / rate)};
    char *true_argv[] = {"/bin/true", NULL};
    char *hash_argv[] = {"/usr/bin/sha256sum", "/etc/hostname", NULL};
    unsigned long started = 0;
    while (time(NULL) < end) {
        pid_t pid;
        char **child = (started++ % 4 == 3) ? hash_argv : true_argv;
        posix_spawn(&pid, child[0], NULL, NULL, child, environ);
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
        nanosleep(&pause, NULL);
    }
    while (wait(NULL) > 0) {}
    return 0;
}
"""

DRAIN_LINE = re.compile(r"drained in ([\d.]+) ms, symbolized in ([\d.]+) ms")
LATE_LINE = re.compile(r"naming ran past the next window's end: (\d+) frames")
DROPPED_LINE = re.compile(r"windows consumed, (\d+) dropped")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_rss_mib(pid: int) -> float:
    """RSS of the agent's child processes (the unwind table worker), which the agent's own leaves out."""
    total = 0.0
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            with contextlib.suppress(OSError):  # exited since
                total += rss_mib(int(child))
    return total


def cpu_seconds(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


# Runs the agent's CLI under tracemalloc, dumping a snapshot into argv[1] every argv[2] seconds.
TRACEMALLOC_BOOTSTRAP = r"""
import sys, threading, time, tracemalloc
directory, interval = sys.argv[1], float(sys.argv[2])
def dump():
    started = time.monotonic()
    for minute in range(1, 1 << 30):
        time.sleep(max(started + minute * interval - time.monotonic(), 0))
        tracemalloc.take_snapshot().dump(f"{directory}/{minute}.snapshot")
threading.Thread(target=dump, name="soak-tracemalloc", daemon=True).start()
from antiprof_core.cli import main
sys.argv = ["antiprof", *sys.argv[3:]]
main()
"""
METRIC_LINE = re.compile(r"^antiprof_symbolizer_(\w+?)(?:_total)? ([-+.\deE]+)$", re.MULTILINE)
METRIC_COLUMNS = {  # column title: metric name
    "cache MiB": "cache_bytes",
    "files": "cache_files",
    "kframes": "kernel_frames",
    "names": "names",
    "procs": "processes",
    "reads": "file_reads",
    "evicted": "cache_evictions",
}


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return int(listener.getsockname()[1])


def symbolizer_metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {name: float(value) for name, value in METRIC_LINE.findall(text)}


def metric_cells(metrics: dict[str, float]) -> str:
    cells = []
    for title, name in METRIC_COLUMNS.items():
        value = metrics.get(name)
        shown = "-" if value is None else f"{value / 2**20:.1f}" if name.endswith("bytes") else f"{value:.0f}"
        cells.append(f"{shown:>{len(title)}}")
    return " " + " ".join(cells)


def tracemalloc_report(directory: Path, warm: int, last: int, rss_by_minute: dict[int, float]) -> None:
    """Traced total next to RSS each minute, then the lines that grew most after warm-up."""
    import tracemalloc

    print(f"{'minute':>6} {'RSS MiB':>8} {'traced MiB':>11} {'RSS - traced':>13}")
    snapshots: dict[int, tracemalloc.Snapshot] = {}
    for minute in sorted(rss_by_minute):
        path = directory / f"{minute}.snapshot"
        if not path.exists():
            continue
        snapshot = tracemalloc.Snapshot.load(str(path))
        traced = sum(trace.size for trace in snapshot.traces) / 2**20
        print(f"{minute:>6} {rss_by_minute[minute]:>8.1f} {traced:>11.1f} {rss_by_minute[minute] - traced:>13.1f}")
        if minute in (warm, last):
            snapshots[minute] = snapshot
    if warm in snapshots and last in snapshots and warm != last:
        print(f"soak: allocations that grew most from minute {warm} to {last}:")
        for difference in snapshots[last].compare_to(snapshots[warm], "lineno")[:15]:
            print(f"  {difference}")


def slope(points: list[tuple[int, float]]) -> float:
    """The least-squares slope of (minute, MiB): a growth figure one lucky minute cannot make."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def late_windows(log: str, window_seconds: float) -> tuple[int, int, int]:
    """(windows, windows late, frames left raw)."""
    drains = [(float(a) + float(b)) / 1000 for a, b in DRAIN_LINE.findall(log)]
    slow = sum(1 for seconds in drains if seconds > window_seconds)
    raw = [int(count) for count in LATE_LINE.findall(log)]
    return len(drains), max(slow, len(raw)), sum(raw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--warm-up", type=float, default=5, help="minutes before the growth is measured")
    parser.add_argument("--frequency", type=int, default=999)
    parser.add_argument("--threads", type=int, default=2000)
    parser.add_argument("--processes-per-second", type=float, default=200)
    parser.add_argument("--window", type=float, default=5, help="seconds")
    parser.add_argument("--metrics", action="store_true", help="print the symbolizer's caches each minute")
    parser.add_argument("--tracemalloc", action="store_true", help="find what grows (slows the agent)")
    args = parser.parse_args()
    reason = bpf_unavailable_reason()
    if reason is not None:
        print(f"soak: skipped, real eBPF unavailable: {reason}")
        return 0
    seconds = int(args.minutes * 60)
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        threads = compile_c(THREADS_SOURCE, workdir / "threads")
        churn = compile_c(CHURN_SOURCE, workdir / "churn")
        config = workdir / "antiprof.toml"
        port = free_port() if args.metrics else 0
        agent_section = f'[agent]\nmetrics_address = "127.0.0.1:{port}"\n\n' if port else ""
        config.write_text(
            f'{agent_section}[sampler]\nsource = "bpf"\nfrequency_hz = {args.frequency}\nwindow = "{args.window}s"\n\n'
            '[consumers.json]\npath = "-"\n'
        )
        log_path = workdir / "agent.log"
        antiprof = Path(sys.executable).parent / "antiprof"
        command = [str(antiprof)]
        snapshots = workdir / "snapshots"
        if args.tracemalloc:
            snapshots.mkdir()
            command = [sys.executable, "-X", "tracemalloc=1", "-c", TRACEMALLOC_BOOTSTRAP, str(snapshots), "60"]
        load = [
            subprocess.Popen([str(threads), str(args.threads), str(seconds + 600)]),
            subprocess.Popen(
                [str(churn), str(args.processes_per_second), str(seconds + 600)], stdout=subprocess.DEVNULL
            ),
        ]
        try:
            with log_path.open("w") as log_file:
                agent = subprocess.Popen(
                    [*command, "run", "-c", str(config), "--log-level", "debug"],
                    stderr=log_file,
                    stdout=subprocess.DEVNULL,
                )
            while " CPUs at " not in log_path.read_text():
                if agent.poll() is not None:
                    print(f"soak: antiprof run failed:\n{log_path.read_text()}")
                    return 1
                time.sleep(0.05)
            print(
                f"soak: {args.minutes:g} min at {args.frequency} Hz, {args.threads} threads,"
                f" {args.processes_per_second:g} new processes/s, {args.window:g} s windows"
            )
            titles = " " + " ".join(METRIC_COLUMNS) if port else ""
            print(
                f"{'minute':>6} {'RSS MiB':>8} {'windows':>8} {'late':>5} {'raw frames':>11} {'agent CPU':>10}"
                f" {'worker MiB':>10}{titles}"
            )
            started = time.monotonic()
            cpu_start = cpu_seconds(agent.pid)
            rss_by_minute: dict[int, float] = {}
            cpu_at_warm_up = cpu_start
            for minute in range(1, int(args.minutes) + 1):
                time.sleep(max(started + 60 * minute - time.monotonic(), 0))
                if agent.poll() is not None:
                    print(f"soak: the agent exited:\n{log_path.read_text()[-2000:]}")
                    return 1
                rss_by_minute[minute] = rss_mib(agent.pid)
                cpu = cpu_seconds(agent.pid)
                if minute == int(args.warm_up):
                    cpu_at_warm_up = cpu
                windows, late, raw = late_windows(log_path.read_text(), args.window)
                share = (cpu - cpu_start) / (time.monotonic() - started)
                print(
                    f"{minute:>6} {rss_by_minute[minute]:>8.1f} {windows:>8} {late:>5} {raw:>11} {100 * share:>9.1f}%"
                    f" {children_rss_mib(agent.pid):>10.1f}" + (metric_cells(symbolizer_metrics(port)) if port else ""),
                    flush=True,
                )
            cpu_end = cpu_seconds(agent.pid)
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=120)
            if args.tracemalloc:
                tracemalloc_report(snapshots, int(args.warm_up), max(rss_by_minute), rss_by_minute)
        finally:
            for process in load:
                process.kill()
                process.wait()
        log = log_path.read_text()
    windows, late, raw = late_windows(log, args.window)
    dropped = sum(int(count) for count in DROPPED_LINE.findall(log))
    warm = int(args.warm_up)
    last = max(rss_by_minute)
    growth = rss_by_minute[last] - rss_by_minute.get(warm, rss_by_minute[min(rss_by_minute)])
    steady_minutes = max(last - warm, 1)
    print(
        f"soak: RSS {rss_by_minute.get(warm, 0):.1f} MiB after {warm} min warm-up, {rss_by_minute[last]:.1f} MiB"
        f" at {last} min: growth {growth:+.1f} MiB (target < 10 MB over the hour)"
    )
    steady = [(minute, rss) for minute, rss in rss_by_minute.items() if minute >= warm]
    if len(steady) >= 2:
        print(
            f"soak: after warm-up RSS {min(rss for _, rss in steady):.1f}-{max(rss for _, rss in steady):.1f} MiB,"
            f" trend {slope(steady):+.2f} MiB per minute (least squares)"
        )
    print(
        f"soak: {windows} windows, {late} late, {dropped} dropped; {raw} frames left raw;"
        f" agent CPU after warm-up {100 * (cpu_end - cpu_at_warm_up) / (60 * steady_minutes):.1f}% of one CPU"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
