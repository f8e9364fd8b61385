"""The committed profile_pb2.py/.pyi are what protoc makes of profile.proto today.

The generated module is committed so installing the plugin needs no protoc; this test keeps it
honest. Run this file as a script to regenerate both files after editing profile.proto.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import antiprof_pprof

PACKAGE = Path(antiprof_pprof.__file__).parent
GENERATED = ("profile_pb2.py", "profile_pb2.pyi")


def generate(into: Path) -> None:
    from grpc_tools import protoc  # the test extra: protoc as a wheel, same version everywhere

    # Compiled as antiprof_pprof/profile.proto: the name it is registered under in protobuf's
    # process-wide descriptor pool, where a bare "profile.proto" from another package would collide.
    status = protoc.main(
        ["protoc", f"-I{PACKAGE.parent}", f"--python_out={into}", f"--pyi_out={into}", str(PACKAGE / "profile.proto")]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed on {PACKAGE / 'profile.proto'} (status {status})")


def test_generated_module_matches_the_proto(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in GENERATED:
        fresh, committed = (tmp_path / PACKAGE.name / name).read_text(), (PACKAGE / name).read_text()
        assert fresh == committed, f"{name} is stale: run python {Path(__file__)}"


def test_schema_has_the_field_numbers_readers_expect() -> None:
    """The wire contract, spelled out: a renumbered field would decode as garbage in go tool pprof."""
    from antiprof_pprof import profile_pb2

    expected = {
        "Profile": {"sample_type": 1, "sample": 2, "mapping": 3, "location": 4, "function": 5, "string_table": 6,
                    "drop_frames": 7, "keep_frames": 8, "time_nanos": 9, "duration_nanos": 10, "period_type": 11,
                    "period": 12, "comment": 13, "default_sample_type": 14},
        "ValueType": {"type": 1, "unit": 2},
        "Sample": {"location_id": 1, "value": 2, "label": 3},
        "Label": {"key": 1, "str": 2, "num": 3, "num_unit": 4},
        "Mapping": {"id": 1, "memory_start": 2, "memory_limit": 3, "file_offset": 4, "filename": 5, "build_id": 6,
                    "has_functions": 7, "has_filenames": 8, "has_line_numbers": 9, "has_inline_frames": 10},
        "Location": {"id": 1, "mapping_id": 2, "address": 3, "line": 4, "is_folded": 5},
        "Line": {"function_id": 1, "line": 2, "column": 3},
        "Function": {"id": 1, "name": 2, "system_name": 3, "filename": 4, "start_line": 5},
    }  # fmt: skip
    for message, fields in expected.items():
        descriptor = getattr(profile_pb2, message).DESCRIPTOR
        assert {f.name: f.number for f in descriptor.fields} == fields, message


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as temp:
        generate(Path(temp))
        for name in GENERATED:
            (PACKAGE / name).write_text((Path(temp) / PACKAGE.name / name).read_text())
            print(f"wrote {PACKAGE / name}", file=sys.stderr)
