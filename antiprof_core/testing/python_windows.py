"""A hand-made window of a CPython process, shaped as the sampler delivers Python frames, for sink tests.

Everything is made up (``synthetic_`` names) but follows the Python-frame contract: CPython frames
have ``kind = CPYTHON``, the code object's address, a bytecode offset, ``file`` and ``line``, no
mapping; stacks are leaf first with the interpreter's native frames below the Python ones, a C
extension's native frames above the Python caller, and one function sampled on two lines.
"""

from __future__ import annotations

import attrs

from antiprof_core.model import Counters, Frame, FrameKind, Mapping, Process, ProfileWindow, Sample
from antiprof_core.sources.synthetic import synthetic_host

SYNTHETIC_PYTHON_PID = 4242
SYNTHETIC_PYTHON_FILE = "/srv/synthetic_app/two_functions.py"
SYNTHETIC_PYTHON_EXE = Mapping(0x5555_0000_0000, 0x5555_0040_0000, 0x1000, "/usr/bin/python3.11", "3b" * 20, 901)
SYNTHETIC_HASHLIB = Mapping(
    0x7F10_0000_0000, 0x7F10_0010_0000, 0x2000, "/usr/lib/python3.11/lib-dynload/_hashlib.so", "5a" * 20, 902
)
HEAVY_LINES = (12, 13)  # heavy_math is sampled on both lines: one function, two places
LIGHT_LINE = 20
HASH_LINE = 25
MAIN_LINES = {"heavy_math": 30, "light_strings": 31, "hash_block": 32}  # main's call sites
MODULE_LINE = 35


# Where each function begins (CPython's co_firstlineno; a module's code starts at line 1).
START_LINES = {"<module>": 1, "heavy_math": 11, "light_strings": 19, "hash_block": 24, "main": 29}


def _python(address: int, qualname: str | None, line: int | None, offset: int = 8) -> Frame:
    if qualname is None:
        return Frame(address, FrameKind.CPYTHON, None, offset)
    return Frame(address, FrameKind.CPYTHON, qualname, offset, None, SYNTHETIC_PYTHON_FILE, line, START_LINES[qualname])


def _native(name: str, offset: int, mapping: Mapping = SYNTHETIC_PYTHON_EXE) -> Frame:
    return Frame(mapping.start + offset, FrameKind.NATIVE, name, 4, mapping)


def synthetic_python_window(start_ns: int = 1_700_000_000_000_000_000, frequency_hz: int = 100) -> ProfileWindow:
    """One ``python3.11`` process: ``heavy_math`` 60 samples (40 on line 12, 20 on line 13),
    ``light_strings`` 30, ``hash_block`` -> ``_sha256`` C code 10, and 1 sample whose Python
    frame could not be named (symbol, file and line None), 101 in all, every one under
    ``<module> -> main`` and above the interpreter's ``main``. Python's ``main`` and the
    interpreter's C ``main`` share a name but not a file: sinks must keep them apart.
    """
    interpreter = tuple(
        _native(name, offset)
        for name, offset in (
            ("PyEval_EvalCode", 0x1000),
            ("run_mod", 0x1100),
            ("Py_RunMain", 0x1200),
            ("Py_BytesMain", 0x1300),
            ("main", 0x1400),
            ("__libc_start_main", 0x1500),
            ("_start", 0x1600),
        )
    )
    code_module, code_main, code_heavy, code_light, code_hash = (0x7F20_0000_0000 + 0x1000 * i for i in range(5))
    module = _python(code_module, "<module>", MODULE_LINE)
    main_calls = {callee: _python(code_main, "main", line, 40 + line) for callee, line in MAIN_LINES.items()}
    heavy = [_python(code_heavy, "heavy_math", line, 2 * line) for line in HEAVY_LINES]
    light = _python(code_light, "light_strings", LIGHT_LINE)
    hash_block = _python(code_hash, "hash_block", HASH_LINE)
    sha256 = (
        _native("_sha256_update", 0x400, SYNTHETIC_HASHLIB),
        _native("_hashlib_HASH_update", 0x800, SYNTHETIC_HASHLIB),
    )
    unnamed = _python(0x7F20_0000_9000, None, None)
    below_main = (module, *interpreter)

    def sample(cpu: int, count: int, *frames: Frame) -> Sample:
        pid = SYNTHETIC_PYTHON_PID
        return Sample(pid, pid, cpu, "python3", (*frames, *below_main), count)

    samples = (
        sample(0, 40, heavy[0], main_calls["heavy_math"]),
        sample(1, 20, heavy[1], main_calls["heavy_math"]),
        sample(0, 30, light, main_calls["light_strings"]),
        sample(1, 10, *sha256, hash_block, main_calls["hash_block"]),
        sample(0, 1, unnamed, main_calls["heavy_math"]),
    )
    process = Process(
        SYNTHETIC_PYTHON_PID,
        "python3",
        SYNTHETIC_PYTHON_EXE.path,
        ("python3", SYNTHETIC_PYTHON_FILE),
        None,
        (SYNTHETIC_PYTHON_EXE, SYNTHETIC_HASHLIB),
    )
    return ProfileWindow(
        start_ns=start_ns,
        end_ns=start_ns + 1_000_000_000,
        frequency_hz=frequency_hz,
        host=synthetic_host(),
        samples=samples,
        processes={SYNTHETIC_PYTHON_PID: process},
        counters=Counters(samples_seen=sum(sample.count for sample in samples)),
    )


def synthetic_two_lambdas_window() -> ProfileWindow:
    """Two ``<lambda>`` functions of one file, starting on lines 3 and 7, 5 samples each under
    ``<module>``: sinks that key functions by name and file alone merge them into one."""
    window = synthetic_python_window()
    module = Frame(0x7F20_0000_0000, FrameKind.CPYTHON, "<module>", 8, None, SYNTHETIC_PYTHON_FILE, 9, 1)
    lambdas = (
        Frame(0x7F20_0000_A000 + 0x1000 * n, FrameKind.CPYTHON, "<lambda>", 4, None, SYNTHETIC_PYTHON_FILE, line, line)
        for n, line in enumerate((3, 7))
    )
    pid = SYNTHETIC_PYTHON_PID
    samples = tuple(Sample(pid, pid, 0, "python3", (frame, module), 5) for frame in lambdas)
    return attrs.evolve(window, samples=samples, counters=Counters(samples_seen=10))
