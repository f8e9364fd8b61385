"""CPython frames in OTLP: function name, file and line, ``profile.frame.type = cpython``, no mapping."""

from __future__ import annotations

import antiprof_otlp
from antiprof_otlp.consumer import OtlpConsumer
from antiprof_otlp.reading import DecodedFrame, DecodedSample, decoded_samples, index_problems
from antiprof_otlp.testing import ProfilesReceiver, serve
from antiprof_otlp.transform import TransformOptions, encode_window
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest

from antiprof_core.testing import make_consumer, run_consumer
from antiprof_core.testing.python_windows import (
    HASH_LINE,
    MAIN_LINES,
    MODULE_LINE,
    START_LINES,
    SYNTHETIC_HASHLIB,
    SYNTHETIC_PYTHON_EXE,
    SYNTHETIC_PYTHON_FILE,
    synthetic_python_window,
    synthetic_two_lambdas_window,
)

FILE = SYNTHETIC_PYTHON_FILE


def request() -> ExportProfilesServiceRequest:
    [encoded] = encode_window(synthetic_python_window(), TransformOptions())
    return ExportProfilesServiceRequest.FromString(encoded.payload)


def view(frame: DecodedFrame) -> tuple[str, str, int, str, str]:
    return (frame.function, frame.file, frame.line, frame.frame_type, frame.mapping_path)


def by_count(decoded: list[DecodedSample]) -> dict[int, DecodedSample]:
    return {sample.count: sample for sample in decoded}


def test_python_frames_carry_function_file_line_and_the_cpython_frame_type() -> None:
    sent = request()
    assert index_problems(sent) == []
    samples = by_count(decoded_samples(sent))
    assert sum(samples) == 101
    heavy = samples[40]
    assert [view(f) for f in heavy.frames[:4]] == [
        ("heavy_math", FILE, 12, "cpython", ""),  # no mapping: index 0, the zero Mapping
        ("main", FILE, MAIN_LINES["heavy_math"], "cpython", ""),
        ("<module>", FILE, MODULE_LINE, "cpython", ""),
        ("PyEval_EvalCode", "", 0, "native", SYNTHETIC_PYTHON_EXE.path),
    ]
    assert [f.function for f in heavy.frames[4:]] == [
        "run_mod", "Py_RunMain", "Py_BytesMain", "main", "__libc_start_main", "_start"
    ]  # fmt: skip
    assert all(f.address == 0 for f in heavy.frames[:3])  # a code object's address is not an instruction's
    hashing = samples[10]  # C extension code runs above the Python function that called it
    assert [view(f) for f in hashing.frames[:3]] == [
        ("_sha256_update", "", 0, "native", SYNTHETIC_HASHLIB.path),
        ("_hashlib_HASH_update", "", 0, "native", SYNTHETIC_HASHLIB.path),
        ("hash_block", FILE, HASH_LINE, "cpython", ""),
    ]


def test_two_lines_of_one_function_are_two_locations_and_python_main_is_not_c_main() -> None:
    table = request().dictionary
    strings = table.string_table
    functions = [(strings[f.name_strindex], strings[f.filename_strindex]) for f in table.function_table]
    assert functions.count(("heavy_math", FILE)) == 1
    assert ("main", FILE) in functions and ("main", "") in functions
    heavy_lines = sorted(
        (location.mapping_index, location.lines[0].line)
        for location in table.location_table
        if location.lines and functions[location.lines[0].function_index] == ("heavy_math", FILE)
    )
    assert heavy_lines == [(0, 12), (0, 13)]
    assert len({loc.SerializeToString() for loc in table.location_table}) == len(table.location_table)


def test_python_functions_carry_the_line_they_start_on() -> None:
    table = request().dictionary
    strings = table.string_table
    starts = {strings[f.name_strindex]: f.start_line for f in table.function_table if f.filename_strindex}
    assert starts == START_LINES
    assert {f.start_line for f in table.function_table if not f.filename_strindex} == {0}  # native: unknown


def test_two_functions_of_one_name_in_one_file_stay_two() -> None:
    """Two lambdas in one module: same name, same file, told apart by the line each starts on."""
    window = synthetic_two_lambdas_window()
    [encoded] = encode_window(window, TransformOptions())
    table = ExportProfilesServiceRequest.FromString(encoded.payload).dictionary
    strings = table.string_table
    lambdas = sorted(f.start_line for f in table.function_table if strings[f.name_strindex] == "<lambda>")
    assert lambdas == [3, 7]


def test_a_python_frame_without_a_name_keeps_its_code_object_address() -> None:
    unnamed = by_count(decoded_samples(request()))[1].frames[0]
    assert (unnamed.function, unnamed.file, unnamed.frame_type, unnamed.mapping_path) == ("", "", "cpython", "")
    assert unnamed.address == 0x7F20_0000_9000


def test_python_frames_arrive_at_a_real_otlp_receiver() -> None:
    receiver = ProfilesReceiver()
    with serve(receiver) as port:
        exporter = make_consumer(antiprof_otlp, "otlp", {"endpoint": f"127.0.0.1:{port}", "insecure": True})
        assert isinstance(exporter, OtlpConsumer)
        run_consumer(exporter, [synthetic_python_window()])
    [received] = receiver.requests
    assert index_problems(received) == []
    light = by_count(decoded_samples(received))[30]
    assert [view(f) for f in light.frames[:3]] == [
        ("light_strings", FILE, 20, "cpython", ""),
        ("main", FILE, MAIN_LINES["light_strings"], "cpython", ""),
        ("<module>", FILE, MODULE_LINE, "cpython", ""),
    ]
