"""Small C programs whose CPU profile is known in advance, built on demand for real-BPF tests.

They are compiled with the system ``cc`` with frame pointers on, inlining off and symbols kept,
so a frame-pointer unwinder sees every function and the symbolizer can name it. Time is split
by the clock, not by loop counts, so the truth holds on any CPU speed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "SYSCALL_FUNCTION",
    "TWO_FUNCTION_CALLERS",
    "TWO_FUNCTION_SHARES",
    "build_jit_workload",
    "build_many_stacks_workload",
    "build_syscall_workload",
    "build_two_function_workload",
    "compile_c",
    "started",
]

TWO_FUNCTION_SHARES: dict[str, float] = {"work_heavy": 2 / 3, "work_light": 1 / 3}
"""Share of the two-function workload's CPU time spent in each leaf function."""

TWO_FUNCTION_CALLERS: tuple[str, ...] = ("cycle", "main")
"""Callers above both leaves, nearest first."""

SYSCALL_FUNCTION = "call_getppid"
"""The syscall workload's function that enters the kernel."""

CFLAGS = (
    "-O0",  # every function, leaves too, keeps its frame pointer
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fno-inline",
    "-fno-optimize-sibling-calls",
)

# Syscalls are made with an inline `syscall` instruction from our own frame-pointer function:
# libc's wrappers have no frame pointer, and a sample taken inside one would hide its caller.
_RAW_SYSCALL = r"""
#define _GNU_SOURCE
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
static inline __attribute__((always_inline)) long raw_syscall2(long number, long a, long b) {
    long result;
    __asm__ volatile ("syscall" : "=a"(result) : "a"(number), "D"(a), "S"(b) : "rcx", "r11", "memory");
    return result;
}
#else
static inline long raw_syscall2(long number, long a, long b) { return syscall(number, a, b); }
#endif

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
"""

_TWO_FUNCTION_SOURCE = (
    _RAW_SYSCALL
    + r"""
volatile unsigned long sink;

/* The split is by this thread's CPU time, so it holds even when other processes compete. */
__attribute__((noinline)) double cpu_now(void) {
    struct timespec ts;
    raw_syscall2(SYS_clock_gettime, CLOCK_THREAD_CPUTIME_ID, (long)&ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void work_heavy(double end) {
    unsigned long x = 0;
    while (cpu_now() < end) {
        for (int i = 0; i < 20000; i++) x += i * 3;
    }
    sink = x;
}

__attribute__((noinline)) void work_light(double end) {
    unsigned long x = 0;
    while (cpu_now() < end) {
        for (int i = 0; i < 20000; i++) x += i * 5;
    }
    sink = x;
}

__attribute__((noinline)) void cycle(void) {
    double start = cpu_now();
    work_heavy(start + 0.020);
    work_light(start + 0.030);
}

int main(int argc, char **argv) {
    /* No argument (or 0): run until killed, so a test on a busy host never outlives its workload. */
    double seconds = argc > 1 ? atof(argv[1]) : 0.0;
    double end = wall_now() + seconds;
    while (seconds <= 0 || wall_now() < end) cycle();
    return 0;
}
"""
)

_SYSCALL_SOURCE = (
    _RAW_SYSCALL
    + r"""
volatile long sink;

__attribute__((noinline)) void call_getppid(void) {
    for (int i = 0; i < 1000; i++) sink += raw_syscall2(SYS_getppid, 0, 0);
}

int main(int argc, char **argv) {
    /* No argument (or 0): run until killed, so a test on a busy host never outlives its workload. */
    double seconds = argc > 1 ? atof(argv[1]) : 0.0;
    double end = wall_now() + seconds;
    while (seconds <= 0 || wall_now() < end) call_getppid();
    return 0;
}
"""
)


_MANY_STACKS_SOURCE = (
    _RAW_SYSCALL
    + r"""
volatile unsigned long sink;
static unsigned long random_state = 88172645463325252UL;

static unsigned long next_random(void) {
    random_state ^= random_state << 13;
    random_state ^= random_state >> 7;
    random_state ^= random_state << 17;
    return random_state;
}

__attribute__((noinline)) void leaf_spin(void) {
    unsigned long x = 0;
    for (int i = 0; i < 2000; i++) x += i;
    sink += x;
}

void branch_a(unsigned long bits, int depth);
void branch_b(unsigned long bits, int depth);

/* One random walk of DEPTH levels through branch_a/branch_b: 2^DEPTH distinct stacks. */
__attribute__((noinline)) void step(unsigned long bits, int depth) {
    if (depth == 0) {
        leaf_spin();
        return;
    }
    if (bits & 1) branch_a(bits >> 1, depth - 1);
    else branch_b(bits >> 1, depth - 1);
}

__attribute__((noinline)) void branch_a(unsigned long bits, int depth) { step(bits, depth); }
__attribute__((noinline)) void branch_b(unsigned long bits, int depth) { step(bits, depth); }

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 0.0;  /* no argument: until killed */
    random_state ^= (unsigned long)getpid() << 32;
    double end = wall_now() + seconds;
    while (seconds <= 0 || wall_now() < end) {
        for (int i = 0; i < 100; i++) step(next_random(), MANY_STACKS_DEPTH);
    }
    return 0;
}
"""
)

MANY_STACKS_DEPTH = 16
"""The many-stacks workload walks this many random branches: up to 2**16 distinct stacks."""


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
    """``prog [SECONDS]`` (default: until killed): of each 30 ms of CPU time, 20 go to work_heavy, 10 to work_light."""
    return compile_c(_TWO_FUNCTION_SOURCE, Path(directory) / "two_functions")


def build_many_stacks_workload(directory: Path) -> Path:
    """``prog [SECONDS]`` (default: until killed): random call paths, so nearly every sample has a stack of its own."""
    source = _MANY_STACKS_SOURCE.replace("MANY_STACKS_DEPTH", str(MANY_STACKS_DEPTH))
    return compile_c(source, Path(directory) / "many_stacks")


def build_syscall_workload(directory: Path) -> Path:
    """``prog [SECONDS]`` (default: until killed): getppid() in a loop, entered from ``call_getppid`` itself."""
    return compile_c(_SYSCALL_SOURCE, Path(directory) / "syscall_loop")


# A counting loop copied into anonymous executable memory, as a JIT would place code.
_JIT_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
static const unsigned char code[] = {0xB9, 0x00, 0x00, 0x1E, 0x00, 0xFF, 0xC9, 0x75, 0xFC, 0xC3};
#elif defined(__aarch64__)
static const unsigned int code[] = {0x52A003C0, 0x71000400, 0x54FFFFE1, 0xD65F03C0};
#else
#error "x86_64 or aarch64 only"
#endif

__attribute__((noinline)) void run_jit(void (*jit)(void)) { jit(); }

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 60;
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return 1;
    memcpy(page, code, sizeof code);
    __builtin___clear_cache((char *)page, (char *)page + sizeof code);
    printf("%lx\n", (unsigned long)page);
    fflush(stdout);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        run_jit((void (*)(void))page);
        usleep(1000);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < seconds);
    return 0;
}
"""


def build_jit_workload(directory: Path, name: str = "jit_spin") -> Path:
    """``prog SECONDS``: prints the address of its "JIT" page in hex, then calls the code there
    (about 1 ms) once a millisecond; samples land in anonymous memory that only a perf map names."""
    return compile_c(_JIT_SOURCE, Path(directory) / name)


@contextlib.contextmanager
def started(*command: str | Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a workload until the ``with`` block ends (then kill it): its life is the test's, not a guess."""
    process = subprocess.Popen([str(part) for part in command])
    try:
        yield process
    finally:
        process.kill()
        process.wait()
