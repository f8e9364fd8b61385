"""Small C programs whose CPU profile is known in advance, built on demand for real-BPF tests.

They are compiled with the system ``cc`` with frame pointers on, inlining off and symbols kept,
so a frame-pointer unwinder sees every function and the symbolizer can name it. Time is split
by the clock, not by loop counts, so the truth holds on any CPU speed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = [
    "SYSCALL_FUNCTION",
    "TWO_FUNCTION_CALLERS",
    "TWO_FUNCTION_SHARES",
    "build_syscall_workload",
    "build_two_function_workload",
    "compile_c",
]

TWO_FUNCTION_SHARES: dict[str, float] = {"work_heavy": 2 / 3, "work_light": 1 / 3}
"""Share of the two-function workload's CPU time spent in each leaf function."""

TWO_FUNCTION_CALLERS: tuple[str, ...] = ("cycle", "main")
"""Callers above both leaves, nearest first."""

SYSCALL_FUNCTION = "call_getppid"
"""The syscall workload's function that enters the kernel."""

CFLAGS = (
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fno-inline",
    "-fno-optimize-sibling-calls",
)

_TWO_FUNCTION_SOURCE = r"""
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

volatile unsigned long sink;

__attribute__((noinline)) void work_heavy(double end) {
    unsigned long x = 0;
    while (now() < end) {
        for (int i = 0; i < 1000; i++) x += i * 3;
    }
    sink = x;
}

__attribute__((noinline)) void work_light(double end) {
    unsigned long x = 0;
    while (now() < end) {
        for (int i = 0; i < 1000; i++) x += i * 5;
    }
    sink = x;
}

__attribute__((noinline)) void cycle(void) {
    double start = now();
    work_heavy(start + 0.020);
    work_light(start + 0.030);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    double end = now() + seconds;
    while (now() < end) cycle();
    return 0;
}
"""

_SYSCALL_SOURCE = r"""
#define _GNU_SOURCE
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

volatile long sink;

__attribute__((noinline)) void call_getppid(void) {
    for (int i = 0; i < 1000; i++) sink += syscall(SYS_getppid);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double end = ts.tv_sec + ts.tv_nsec / 1e9 + seconds;
    for (;;) {
        call_getppid();
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (ts.tv_sec + ts.tv_nsec / 1e9 >= end) break;
    }
    return 0;
}
"""


class WorkloadBuildError(RuntimeError):
    """The C compiler is missing or rejected the source."""


def compile_c(source: str, output: Path) -> Path:
    """Compile one C file to ``output`` with frame pointers and symbols; returns ``output``."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise WorkloadBuildError("no C compiler: apt-get install gcc")
    output.parent.mkdir(parents=True, exist_ok=True)
    source_path = output.with_suffix(".c")
    source_path.write_text(source)
    result = subprocess.run(
        [compiler, *CFLAGS, "-o", str(output), str(source_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise WorkloadBuildError(f"cc failed on {source_path}: {result.stderr.strip()}")
    return output


def build_two_function_workload(directory: Path) -> Path:
    """``prog SECONDS``: each 30 ms cycle spends 20 ms in work_heavy and 10 ms in work_light."""
    return compile_c(_TWO_FUNCTION_SOURCE, Path(directory) / "two_functions")


def build_syscall_workload(directory: Path) -> Path:
    """``prog SECONDS``: getppid() through syscall(2) in a loop from ``call_getppid``."""
    return compile_c(_SYSCALL_SOURCE, Path(directory) / "syscall_loop")
