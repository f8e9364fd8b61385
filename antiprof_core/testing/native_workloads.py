"""Workloads without frame pointers, for the native (.eh_frame) unwinder's tests and benchmark.

Unlike ``workloads``, these are built as distributions build their packages (``-O2``, frame
pointers omitted) or are Debian's own binaries, so only unwind tables can walk them to ``main``.
Every C program runs until killed: a test's life decides the workload's, not a guess.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from antiprof_core.testing.workloads import WorkloadBuildError

__all__ = [
    "DEBIAN_PYTHON",
    "FORK_CHILDREN",
    "NO_FP_CALLERS",
    "NO_FP_SHARES",
    "OMIT_FRAME_POINTER_CFLAGS",
    "PYTHON_FUNCTIONS",
    "QSORT_COMPARATOR",
    "VDSO_CALLERS",
    "build_fork_workload",
    "build_no_frame_pointer_workload",
    "build_qsort_workload",
    "build_vdso_clock_workload",
    "compile_c_with",
    "frame_pointer_functions",
    "python_two_functions",
    "xz_compressing",
]

OMIT_FRAME_POINTER_CFLAGS = ("-O2", "-g", "-fomit-frame-pointer")
"""How the no-frame-pointer workloads are built: optimised as a distribution would, symbols kept."""

NO_FP_SHARES: dict[str, float] = {"alpha": 2 / 3, "beta": 1 / 3}
"""Of each 30 ms of the no-frame-pointer workload's CPU time, 20 go to alpha and 10 to beta."""

NO_FP_CALLERS: tuple[str, ...] = ("middle", "main")
"""Callers of both leaves, nearest first (with a depth argument, ``descend`` frames sit between)."""

NO_FP_FUNCTIONS = ("cpu_now", "alpha", "beta", "middle", "descend", "main")

QSORT_COMPARATOR = "compare_slowly"

DEBIAN_PYTHON = "/usr/bin/python3.11"
PYTHON_FUNCTIONS = ("antiprof_heavy", "antiprof_light")

FORK_CHILDREN = 100

VDSO_CALLERS: tuple[str, ...] = ("read_clocks", "timing_middle", "main")
"""Callers of libc's ``clock_gettime`` (which calls into the vDSO) in the vDSO workload, nearest first."""

_VDSO_CLOCK_SOURCE = r"""
#include <time.h>

volatile long sink;

/* CLOCK_MONOTONIC is read in the vDSO, without a system call, when the clocksource allows it
   (tsc, kvm-clock): most of the time is spent there, in code no file on disk holds. */
__attribute__((noipa)) long read_clocks(long count) {
    struct timespec now;
    long total = 0;
    for (long i = 0; i < count; i++) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        total += now.tv_nsec;
    }
    return total;
}

__attribute__((noipa)) long timing_middle(long count) {
    long total = read_clocks(count);
    sink = total;
    return total;
}

int main(void) {
    for (;;) {
        sink += timing_middle(100000);
    }
}
"""

_RAW_SYSCALL = r"""
#define _GNU_SOURCE
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

/* An inline syscall from our own code: libc's wrappers and the vDSO are other files, and a
   sample inside them would test their tables rather than this program's. */
static inline __attribute__((always_inline)) long raw_syscall2(long number, long a, long b) {
    long result;
    __asm__ volatile ("syscall" : "=a"(result) : "a"(number), "D"(a), "S"(b) : "rcx", "r11", "memory");
    return result;
}
"""

# noipa: no inlining, cloning (alpha.constprop.0) or other interprocedural changes, so every
# function keeps its name and its own frame. The stores to `sink` after each call keep the
# calls real calls: nothing is tail-called, so every caller's frame is on the stack.
_NO_FP_SOURCE = (
    _RAW_SYSCALL
    + r"""
volatile unsigned long sink;

__attribute__((noipa)) double cpu_now(void) {
    struct timespec ts;
    raw_syscall2(SYS_clock_gettime, CLOCK_THREAD_CPUTIME_ID, (long)&ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noipa)) void alpha(double end) {
    while (cpu_now() < end) {
        for (volatile int i = 0; i < 20000; i++) sink += i * 3;
    }
    sink += 1;
}

__attribute__((noipa)) void beta(double end) {
    while (cpu_now() < end) {
        for (volatile int i = 0; i < 20000; i++) sink += i * 5;
    }
    sink += 2;
}

__attribute__((noipa)) void middle(void) {
    double start = cpu_now();
    alpha(start + 0.020);
    beta(start + 0.030);
    sink += 3;
}

/* DEPTH more frames between main and middle, for deep-stack costs. */
__attribute__((noipa)) void descend(int depth) {
    if (depth > 0) descend(depth - 1);
    else middle();
    sink += depth;
}

int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 0;
    for (;;) {
        if (depth > 0) descend(depth);
        else middle();
        sink += 4;
    }
}
"""
)

_QSORT_SOURCE = r"""
#include <stdlib.h>

#define COUNT 20000
volatile unsigned long sink;
static int values[COUNT];

/* Called by libc's qsort (msort_with_tmp, from qsort_r): libc has no frame pointers, so only
   its unwind tables lead from here back to main. */
__attribute__((noipa)) int compare_slowly(const void *a, const void *b) {
    for (volatile int i = 0; i < 300; i++) sink += i;
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int main(void) {
    unsigned long state = 88172645463325252UL;
    for (;;) {
        for (int i = 0; i < COUNT; i++) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            values[i] = (int)state;
        }
        qsort(values, COUNT, sizeof values[0], compare_slowly);
        sink += values[0];
    }
}
"""

_FORK_SOURCE = (
    _RAW_SYSCALL
    + r"""
#include <stdio.h>
#include <sys/wait.h>

volatile unsigned long sink;

__attribute__((noipa)) double cpu_now(void) {
    struct timespec ts;
    raw_syscall2(SYS_clock_gettime, CLOCK_THREAD_CPUTIME_ID, (long)&ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noipa)) void child_work(double seconds) {
    double end = cpu_now() + seconds;
    while (cpu_now() < end) {
        for (volatile int i = 0; i < 20000; i++) sink += i;
    }
}

/* prog CHILDREN: forks CHILDREN children one after another, each busy for 30 ms of CPU time
   (a few at a time), then prints "done" and exits 0; exits 1 if a child failed. */
int main(int argc, char **argv) {
    int children = argc > 1 ? atoi(argv[1]) : 100, running = 0, failed = 0, status;
    for (int i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) { child_work(0.030); _exit(0); }
        if (++running == 4) {
            if (wait(&status) > 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) failed++;
            running--;
        }
    }
    while (wait(&status) > 0) if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) failed++;
    printf("done\n");
    return failed ? 1 : 0;
}
"""
)

PYTHON_SCRIPT = """
def antiprof_heavy():
    x = 0
    for i in range(200_000):
        x += i * i
    return x


def antiprof_light():
    x = 0
    for i in range(100_000):
        x += i * 3
    return x


while True:
    antiprof_heavy()
    antiprof_light()
"""


def compile_c_with(source: str, output: Path, flags: Sequence[str] = OMIT_FRAME_POINTER_CFLAGS) -> Path:
    """Compile one C file to ``output`` with ``flags``; returns ``output``."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise WorkloadBuildError("no C compiler: apt-get install gcc")
    output.parent.mkdir(parents=True, exist_ok=True)
    source_path = output.with_suffix(".c")
    source_path.write_text(source)
    result = subprocess.run([compiler, *flags, "-o", str(output), str(source_path)], capture_output=True, text=True,
                            check=False)  # fmt: skip
    if result.returncode != 0:
        raise WorkloadBuildError(f"cc failed on {source_path}: {result.stderr.strip()}")
    return output


def build_no_frame_pointer_workload(directory: Path) -> Path:
    """``prog [DEPTH]``, until killed: main -> [descend x DEPTH ->] middle -> alpha (2/3) | beta (1/3)."""
    return compile_c_with(_NO_FP_SOURCE, Path(directory) / "no_frame_pointers")


def build_qsort_workload(directory: Path) -> Path:
    """``prog``, until killed: libc's qsort over 20000 ints with a comparator that burns CPU."""
    return compile_c_with(_QSORT_SOURCE, Path(directory) / "qsort_callback")


def build_vdso_clock_workload(directory: Path) -> Path:
    """``prog``, until killed: main -> timing_middle -> read_clocks -> libc's clock_gettime -> the vDSO."""
    return compile_c_with(_VDSO_CLOCK_SOURCE, Path(directory) / "vdso_clock")


def build_fork_workload(directory: Path) -> Path:
    """``prog CHILDREN``: forks that many short busy children (30 ms of CPU each), then exits."""
    return compile_c_with(_FORK_SOURCE, Path(directory) / "fork_children")


_FUNCTION = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
_PROLOGUE = re.compile(r"\bmov\s+%rsp,%rbp\b")


def frame_pointer_functions(binary: Path, names: Sequence[str] = NO_FP_FUNCTIONS) -> dict[str, bool]:
    """For each function in ``names`` found in ``binary``: does it set up a frame pointer
    (``push %rbp; mov %rsp,%rbp``)? Read from ``objdump -d``."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    found: dict[str, bool] = {}
    current: str | None = None
    for line in listing.splitlines():
        header = _FUNCTION.match(line)
        if header:
            current = header.group(1) if header.group(1) in names else None
            if current is not None:
                found[current] = False
        elif current is not None and _PROLOGUE.search(line):
            found[current] = True
    return found


def python_two_functions(directory: Path) -> list[str]:
    """argv of Debian's python3.11 running two Python functions (2:1 by loop length) until killed."""
    script = Path(directory) / "two_functions.py"
    script.write_text(PYTHON_SCRIPT)
    return [DEBIAN_PYTHON, "-I", str(script)]


@contextlib.contextmanager
def xz_compressing(level: str = "-9", prefix: Sequence[str] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """Debian's ``xz`` compressing generated data from stdin, fed until the ``with`` block ends.

    ``prefix`` runs it through another command that execs it (``nice -n -20``): the pid stays xz's."""
    command = [*prefix, "xz", level, "-T1", "-c"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    stop = threading.Event()

    def feed() -> None:
        assert process.stdin is not None
        # Text-like data: half random, half repeats, so the match finder works as on real input.
        with contextlib.suppress(OSError, ValueError):
            while not stop.is_set():
                chunk = os.urandom(32768).hex().encode()
                process.stdin.write(chunk + chunk[: len(chunk) // 2])

    feeder = threading.Thread(target=feed, name="xz-feeder", daemon=True)
    feeder.start()
    try:
        yield process
    finally:
        stop.set()
        process.kill()
        process.wait()
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        feeder.join(timeout=5)
