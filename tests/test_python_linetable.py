"""Our location-table decoder gives CPython's own line for every instruction of the stdlib.

The decoder is plain Python with no imports, so it runs inside each interpreter under test and
is compared there with ``code.co_positions()``, the interpreter's own reading of the same table.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

import antiprof_core.symbolize.python.linetable as linetable
from antiprof_core.symbolize.python.linetable import line_for_offset
from antiprof_core.testing.python_workloads import cpython_interpreters

COMPARE = r"""
import importlib.util, sys, types, compileall, os
spec = importlib.util.spec_from_file_location("linetable", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
import threading, argparse, typing, dataclasses
checked = mismatched = 0
def codes(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from codes(const)
for mod in (threading, argparse, typing, dataclasses):
    source = open(mod.__file__).read()
    for code in codes(compile(source, mod.__file__, "exec")):
        for unit, position in enumerate(code.co_positions()):
            checked += 1
            if module.line_for_offset(code.co_linetable, code.co_firstlineno, 2 * unit) != position[0]:
                mismatched += 1
print(checked, mismatched)
"""


@pytest.mark.parametrize(
    "python", [i.path for i in cpython_interpreters() if i.version >= (3, 11)], ids=lambda path: Path(path).name
)
def test_lines_match_cpython_for_the_stdlib(python: str) -> None:
    result = subprocess.run(
        [python, "-c", COMPARE, linetable.__file__], capture_output=True, text=True, timeout=300, check=True
    )
    checked, mismatched = map(int, result.stdout.split())
    assert checked > 50_000
    assert mismatched == 0


def test_garbage_tables_give_none_or_a_line_never_an_error() -> None:
    rng = random.Random(12)
    for _ in range(5000):
        table = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        line = line_for_offset(table, 10, rng.randrange(200))
        assert line is None or isinstance(line, int)
    assert line_for_offset(b"", 5, 0) is None
    assert line_for_offset(b"\x00\x01", 5, 0) is None  # not an entry start
    assert line_for_offset(bytes([0x80 | (14 << 3)]) + b"\x7f" * 20, 5, 0) is None  # endless varint
