"""Reading a request back: every dictionary index checked, samples flattened to named stacks.

Used by the tests and handy in a receiver: a request that passes ``index_problems`` can be walked
without an IndexError, and ``decoded_samples`` is what a human would check.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attrs import frozen
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.profiles.v1development import profiles_pb2


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def index_problems(request: ExportProfilesServiceRequest) -> list[str]:
    """Every out-of-range index and every non-zero zero entry, one line each; empty when valid."""
    table = request.dictionary
    problems: list[str] = []
    sizes = {
        "string": len(table.string_table),
        "attribute": len(table.attribute_table),
        "function": len(table.function_table),
        "mapping": len(table.mapping_table),
        "location": len(table.location_table),
        "stack": len(table.stack_table),
        "link": len(table.link_table),
    }

    def check(kind: str, index: int, where: str) -> None:
        if not 0 <= index < sizes[kind]:
            problems.append(f"{where}: {kind} index {index} out of range [0, {sizes[kind]})")

    if not table.string_table or table.string_table[0] != "":
        problems.append("string_table[0] is not the empty string")
    zero_tables: dict[str, Iterable[Any]] = {
        "mapping_table": table.mapping_table,
        "location_table": table.location_table,
        "function_table": table.function_table,
        "link_table": table.link_table,
        "attribute_table": table.attribute_table,
        "stack_table": table.stack_table,
    }
    for name, entries in zero_tables.items():
        first = next(iter(entries), None)
        if first is None or first.ByteSize() != 0:
            problems.append(f"{name}[0] is not the zero value")
    for i, attribute in enumerate(table.attribute_table):
        check("string", attribute.key_strindex, f"attribute_table[{i}].key_strindex")
        check("string", attribute.unit_strindex, f"attribute_table[{i}].unit_strindex")
    for i, function in enumerate(table.function_table):
        for name in ("name_strindex", "system_name_strindex", "filename_strindex"):
            check("string", getattr(function, name), f"function_table[{i}].{name}")
    for i, mapping in enumerate(table.mapping_table):
        check("string", mapping.filename_strindex, f"mapping_table[{i}].filename_strindex")
        for index in mapping.attribute_indices:
            check("attribute", index, f"mapping_table[{i}].attribute_indices")
    for i, location in enumerate(table.location_table):
        check("mapping", location.mapping_index, f"location_table[{i}].mapping_index")
        for index in location.attribute_indices:
            check("attribute", index, f"location_table[{i}].attribute_indices")
        for line in location.lines:
            check("function", line.function_index, f"location_table[{i}].lines.function_index")
    for i, stack in enumerate(table.stack_table):
        for index in stack.location_indices:
            check("location", index, f"stack_table[{i}].location_indices")
    for r, resource_profiles in enumerate(request.resource_profiles):
        for s, scope_profiles in enumerate(resource_profiles.scope_profiles):
            for p, profile in enumerate(scope_profiles.profiles):
                where = f"resource_profiles[{r}].scope_profiles[{s}].profiles[{p}]"
                for value_type in ("sample_type", "period_type"):
                    check("string", getattr(profile, value_type).type_strindex, f"{where}.{value_type}")
                    check("string", getattr(profile, value_type).unit_strindex, f"{where}.{value_type}")
                for index in profile.attribute_indices:
                    check("attribute", index, f"{where}.attribute_indices")
                for n, sample in enumerate(profile.samples):
                    check("stack", sample.stack_index, f"{where}.samples[{n}].stack_index")
                    check("link", sample.link_index, f"{where}.samples[{n}].link_index")
                    for index in sample.attribute_indices:
                        check("attribute", index, f"{where}.samples[{n}].attribute_indices")
    return problems


@frozen
class DecodedFrame:
    function: str  # "" when the location has no line
    address: int
    frame_type: str
    mapping_path: str
    build_id: str
    file: str = ""  # the function's source file, for interpreted frames
    line: int = 0  # the line being run, 0 when unknown


@frozen
class DecodedSample:
    resource: dict[str, Any]
    attributes: dict[str, Any]
    frames: tuple[DecodedFrame, ...]  # leaf first
    count: int
    timestamps: tuple[int, ...]


def decoded_samples(request: ExportProfilesServiceRequest) -> list[DecodedSample]:
    """Every sample with its resource, attributes and frames resolved through the dictionary."""
    table = request.dictionary
    strings = table.string_table

    def attributes(indices: Iterable[int]) -> dict[str, Any]:
        return {strings[table.attribute_table[i].key_strindex]: _plain(table.attribute_table[i].value) for i in indices}

    def frame(index: int) -> DecodedFrame:
        location = table.location_table[index]
        mapping: profiles_pb2.Mapping = table.mapping_table[location.mapping_index]
        functions = [table.function_table[line.function_index] for line in location.lines]
        names = [strings[function.name_strindex] for function in functions]
        return DecodedFrame(
            function=names[0] if names else "",
            address=location.address,
            frame_type=str(attributes(location.attribute_indices).get("profile.frame.type", "")),
            mapping_path=strings[mapping.filename_strindex],
            build_id=str(attributes(mapping.attribute_indices).get("process.executable.build_id.gnu", "")),
            file=strings[functions[0].filename_strindex] if functions else "",
            line=location.lines[0].line if location.lines else 0,
        )

    out = []
    for resource_profiles in request.resource_profiles:
        resource = {kv.key: _plain(kv.value) for kv in resource_profiles.resource.attributes}
        for scope_profiles in resource_profiles.scope_profiles:
            for profile in scope_profiles.profiles:
                for sample in profile.samples:
                    stack = table.stack_table[sample.stack_index]
                    count = sum(sample.values) if sample.values else len(sample.timestamps_unix_nano)
                    out.append(
                        DecodedSample(
                            resource=resource,
                            attributes=attributes(sample.attribute_indices),
                            frames=tuple(frame(i) for i in stack.location_indices),
                            count=count,
                            timestamps=tuple(sample.timestamps_unix_nano),
                        )
                    )
    return out
