"""CPython frames in pprof: functions with their file, locations with the line, read back by go tool pprof."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import TYPE_CHECKING

from antiprof_core.testing.python_windows import (
    MAIN_LINES,
    MODULE_LINE,
    START_LINES,
    SYNTHETIC_PYTHON_FILE,
    synthetic_python_window,
    synthetic_two_lambdas_window,
)
from antiprof_pprof import encode_profile, profile_pb2

if TYPE_CHECKING:  # conftest is pytest's, only mypy imports it
    from conftest import GoPprof

FILE = SYNTHETIC_PYTHON_FILE
LABEL = re.compile(r"^[\w ]+:\s")  # "pid:  4242" above each trace in -traces


def write(tmp_path: Path) -> Path:
    path = tmp_path / "python.pb.gz"
    path.write_bytes(encode_profile([synthetic_python_window()]))
    return path


def test_functions_have_their_file_and_locations_their_line(tmp_path: Path) -> None:
    profile = profile_pb2.Profile.FromString(gzip.decompress(write(tmp_path).read_bytes()))
    text = profile.string_table
    functions = {f.id: (text[f.name], text[f.filename]) for f in profile.function}
    assert list(functions.values()).count(("heavy_math", FILE)) == 1
    assert ("main", FILE) in functions.values() and ("main", "") in functions.values()  # Python's and C's
    heavy = sorted(
        (loc.mapping_id, loc.address, loc.line[0].line)
        for loc in profile.location
        if loc.line and functions[loc.line[0].function_id] == ("heavy_math", FILE)
    )
    assert heavy == [(0, 0, 12), (0, 0, 13)]  # one function, two lines: two locations, no mapping
    assert {text[f.name]: f.start_line for f in profile.function if f.filename} == START_LINES


def test_two_functions_of_one_name_in_one_file_stay_two() -> None:
    """Two lambdas in one module: same name, same file, told apart by the line each starts on."""
    profile = profile_pb2.Profile.FromString(gzip.decompress(encode_profile([synthetic_two_lambdas_window()])))
    text = profile.string_table
    assert sorted(f.start_line for f in profile.function if text[f.name] == "<lambda>") == [3, 7]


def test_go_tool_pprof_shows_python_functions_and_with_lines_their_file_and_line(
    tmp_path: Path, go_pprof: GoPprof
) -> None:
    path = str(write(tmp_path))
    by_function = go_pprof.top(path)
    assert by_function["heavy_math"].flat_percent == round(100 * 60 / 101, 2)  # both lines add up
    assert by_function["light_strings"].flat_percent == round(100 * 30 / 101, 2)
    assert by_function["hash_block"].cum_percent == round(100 * 10 / 101, 2)
    assert by_function["<module>"].cum_percent == 100  # not mistaken for a C++ template and erased
    by_line = go_pprof.top("-lines", path)
    assert by_line[f"heavy_math {FILE}:12"].flat_percent == round(100 * 40 / 101, 2)
    assert by_line[f"heavy_math {FILE}:13"].flat_percent == round(100 * 20 / 101, 2)
    assert by_line[f"main {FILE}:{MAIN_LINES['light_strings']}"].cum_percent == round(100 * 30 / 101, 2)
    traces = go_pprof.run("-traces", "-lines", "-sample_index=samples", path)
    assert traces.returncode == 0, traces.stderr
    heavy = next(block for block in traces.stdout.split("-----------+") if f"{FILE}:12" in block)
    lines = [line.strip() for line in heavy.splitlines()]
    frames = [line for line in lines if line and not line.startswith("-") and not LABEL.match(line)]
    count, leaf = frames[0].split(maxsplit=1)
    assert count == "40"
    assert [leaf, *frames[1:4]] == [
        f"heavy_math {FILE}:12",
        f"main {FILE}:{MAIN_LINES['heavy_math']}",
        f"<module> {FILE}:{MODULE_LINE}",
        "PyEval_EvalCode",
    ]
