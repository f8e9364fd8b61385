"""The agent under sustained load: does its memory stay flat and does it keep up?

Runs ``antiprof run`` (real BPF, every process, JSON sink to /dev/null) at 999 Hz for an hour
while 2000 threads wake briefly and often, and 200 new short-lived processes start each second
(``/bin/true``; every fourth ``sha256sum``). Prints the agent's RSS every minute, then the
growth after warm-up (the first 5 minutes; target < 10 MB), windows late (naming past the next
window's end, or drain + naming longer than a window) and dropped (consumer queue full), and
the agent's CPU. The reference for the growth is the agent's own RSS at the end of warm-up.

    sudo .venv/bin/python benchmarks/soak.py                          # one hour (make bench)
    sudo .venv/bin/python benchmarks/soak.py --minutes 3 --warm-up 1  # a short look
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
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


def cpu_seconds(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


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
        config.write_text(
            f'[sampler]\nsource = "bpf"\nfrequency_hz = {args.frequency}\nwindow = "{args.window}s"\n\n'
            '[consumers.json]\npath = "-"\n'
        )
        log_path = workdir / "agent.log"
        antiprof = Path(sys.executable).parent / "antiprof"
        load = [
            subprocess.Popen([str(threads), str(args.threads), str(seconds + 600)]),
            subprocess.Popen(
                [str(churn), str(args.processes_per_second), str(seconds + 600)], stdout=subprocess.DEVNULL
            ),
        ]
        try:
            with log_path.open("w") as log_file:
                agent = subprocess.Popen(
                    [str(antiprof), "run", "-c", str(config), "--log-level", "debug"],
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
            print(f"{'minute':>6} {'RSS MiB':>8} {'windows':>8} {'late':>5} {'raw frames':>11} {'agent CPU':>10}")
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
                    f"{minute:>6} {rss_by_minute[minute]:>8.1f} {windows:>8} {late:>5} {raw:>11} {100 * share:>9.1f}%",
                    flush=True,
                )
            cpu_end = cpu_seconds(agent.pid)
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=120)
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
    print(
        f"soak: {windows} windows, {late} late, {dropped} dropped; {raw} frames left raw;"
        f" agent CPU after warm-up {100 * (cpu_end - cpu_at_warm_up) / (60 * steady_minutes):.1f}% of one CPU"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
