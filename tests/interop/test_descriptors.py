"""Our protos/ must describe exactly the wire contract of the official API.

Both sides are reduced to "facts" (one flat dict per named thing: service
method, message, field, enum, enum value), starting from the service and
following every type it can reach. Comparing two such dicts gives a readable
list of mismatches, and because the reduction works on plain
FileDescriptorProtos the comparison itself can be tested by mutating a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc_tools
import pytest
from frequenz.api.dispatch.v1 import dispatch_pb2 as official_dispatch_pb2
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

SERVICE = "frequenz.api.dispatch.v1.MicrogridDispatchService"
PROTOS = Path(__file__).resolve().parents[2] / "protos"
WELL_KNOWN_INCLUDES = Path(grpc_tools.__file__).parent / "_proto"

FieldProto = descriptor_pb2.FieldDescriptorProto
Facts = dict[str, dict[str, object]]


# ---------------------------------------------------------------- the pure part


def _walk_definitions(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> Iterator[
    tuple[str, str, descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto, str]
]:
    """Yield (full name, package, definition, syntax) for every message and enum."""

    def nested(
        prefix: str, message: descriptor_pb2.DescriptorProto, package: str, syntax: str
    ) -> Iterator[
        tuple[str, str, descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto, str]
    ]:
        name = f"{prefix}.{message.name}"
        yield name, package, message, syntax
        for enum in message.enum_type:
            yield f"{name}.{enum.name}", package, enum, syntax
        for inner in message.nested_type:
            yield from nested(name, inner, package, syntax)

    for file in files:
        syntax = file.syntax or "proto2"
        for enum in file.enum_type:
            yield f"{file.package}.{enum.name}", file.package, enum, syntax
        for message in file.message_type:
            yield from nested(file.package, message, file.package, syntax)


def _field_facts(
    message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> dict[str, object]:
    oneof: str | None = None
    if field.HasField("oneof_index") and not field.proto3_optional:
        oneof = message.oneof_decl[field.oneof_index].name
    return {
        "number": field.number,
        "type": FieldProto.Type.Name(field.type),
        "label": FieldProto.Label.Name(field.label),
        "proto3_optional": field.proto3_optional,
        "oneof": oneof,
        "type_name": field.type_name or None,
        "packed": field.options.packed if field.options.HasField("packed") else None,
    }


def contract_facts(files: Iterable[descriptor_pb2.FileDescriptorProto], service: str) -> Facts:
    """Reduce the part of `files` reachable from `service` to comparable facts.

    Keys are full names (`pkg.Message`, `pkg.Message.field`, `pkg.Enum.VALUE`,
    `pkg.Service.Method`); values are dicts of the properties that shape the wire.
    """
    files = list(files)
    definitions = {
        name: (package, d, syntax) for name, package, d, syntax in _walk_definitions(files)
    }
    services = {f"{file.package}.{svc.name}": svc for file in files for svc in file.service}
    if service not in services:
        return {service: {"kind": "missing service"}}

    facts: Facts = {}
    pending: list[str] = []
    svc = services[service]
    facts[service] = {"kind": "service", "methods": sorted(m.name for m in svc.method)}
    for method in svc.method:
        facts[f"{service}.{method.name}"] = {
            "kind": "method",
            "input_type": method.input_type,
            "output_type": method.output_type,
            "client_streaming": method.client_streaming,
            "server_streaming": method.server_streaming,
        }
        pending += [method.input_type.lstrip("."), method.output_type.lstrip(".")]

    while pending:
        name = pending.pop()
        if name in facts:
            continue
        if name not in definitions:
            facts[name] = {"kind": "undefined"}
            continue
        package, definition, syntax = definitions[name]
        if isinstance(definition, descriptor_pb2.EnumDescriptorProto):
            facts[name] = {
                "kind": "enum",
                "package": package,
                "syntax": syntax,
                "values": sorted(v.name for v in definition.value),
            }
            for value in definition.value:
                facts[f"{name}.{value.name}"] = {"kind": "enum value", "number": value.number}
            continue
        facts[name] = {
            "kind": "message",
            "package": package,
            "syntax": syntax,
            "map_entry": definition.options.map_entry,
            "fields": sorted(f.name for f in definition.field),
            "oneofs": sorted(
                {
                    definition.oneof_decl[f.oneof_index].name
                    for f in definition.field
                    if f.HasField("oneof_index") and not f.proto3_optional
                }
            ),
            "nested_types": sorted(n.name for n in definition.nested_type),
            "nested_enums": sorted(e.name for e in definition.enum_type),
        }
        for field in definition.field:
            facts[f"{name}.{field.name}"] = {"kind": "field", **_field_facts(definition, field)}
            if field.type_name:
                pending.append(field.type_name.lstrip("."))
        # Nested definitions are part of the contract even when no field uses them.
        pending += [f"{name}.{n.name}" for n in definition.nested_type]
        pending += [f"{name}.{e.name}" for e in definition.enum_type]
    return facts


def diff_facts(ours: Facts, theirs: Facts) -> list[str]:
    """List every mismatch as `path: property ours != theirs`, sorted by path."""
    problems: list[str] = []
    for path in sorted(ours.keys() | theirs.keys()):
        if path not in theirs:
            problems.append(f"{path}: only in ours ({ours[path]['kind']})")
        elif path not in ours:
            problems.append(f"{path}: missing in ours ({theirs[path]['kind']})")
        else:
            mine, other = ours[path], theirs[path]
            for key in sorted(mine.keys() | other.keys()):
                if mine.get(key) != other.get(key):
                    problems.append(f"{path}: {key} {mine.get(key)} != {other.get(key)}")
    return problems


# ---------------------------------------------------------------- the two sides


@pytest.fixture(scope="module")
def our_files(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    out = tmp_path_factory.mktemp("descriptors") / "ours.pb"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    assert sources, f"no .proto files under {PROTOS}"
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTOS}",
            f"-I{WELL_KNOWN_INCLUDES}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *sources,
        ]
    )
    assert status == 0, "protoc failed on protos/"
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


@pytest.fixture(scope="module")
def official_files() -> list[descriptor_pb2.FileDescriptorProto]:
    seen: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    todo = [official_dispatch_pb2.DESCRIPTOR]
    while todo:
        file = todo.pop()
        if file.name in seen:
            continue
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        seen[file.name] = proto
        todo += list(file.dependencies)
    return list(seen.values())


@pytest.fixture(scope="module")
def official_facts(official_files: list[descriptor_pb2.FileDescriptorProto]) -> Facts:
    return contract_facts(official_files, SERVICE)


# ---------------------------------------------------------------- conformance


def test_our_protos_match_the_official_contract(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    problems = diff_facts(contract_facts(our_files, SERVICE), official_facts)
    assert not problems, "protos/ drifted from the official contract:\n" + "\n".join(problems)


def test_walk_reaches_the_whole_contract(official_facts: Facts) -> None:
    """Guard against a vacuous pass: the walk must see every part of the service."""
    kinds: dict[str, set[str]] = {}
    for path, fact in official_facts.items():
        kinds.setdefault(str(fact["kind"]), set()).add(path)
    assert len(kinds["method"]) == 6
    assert {
        "frequenz.api.dispatch.v1.UpdateMicrogridDispatchRequest.DispatchUpdate.RecurrenceRuleUpdate",
        "frequenz.api.dispatch.v1.DispatchFilter.RecurrenceFilter",
        "frequenz.api.dispatch.v1.TargetComponents.CategoryAndType",
        "frequenz.api.common.v1alpha8.pagination.PaginationParams",
        "frequenz.api.common.v1alpha8.pagination.PaginationInfo",
        "frequenz.api.common.v1alpha8.types.Interval",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Timestamp",
        "google.protobuf.FieldMask",
    } <= kinds["message"]
    assert {
        "frequenz.api.common.v1alpha8.microgrid.electrical_components.ElectricalComponentCategory",
        "frequenz.api.common.v1alpha8.microgrid.electrical_components.BatteryType",
        "frequenz.api.common.v1alpha8.microgrid.electrical_components.InverterType",
        "frequenz.api.common.v1alpha8.microgrid.electrical_components.EvChargerType",
        "frequenz.api.common.v1alpha8.streaming.Event",
        "frequenz.api.dispatch.v1.RecurrenceRule.Weekday",
        "frequenz.api.dispatch.v1.RecurrenceRule.Frequency",
        "frequenz.api.dispatch.v1.SortField",
        "frequenz.api.dispatch.v1.SortOrder",
        "google.protobuf.NullValue",
    } <= kinds["enum"]
    assert (
        official_facts["frequenz.api.dispatch.v1.DispatchData.duration"]["proto3_optional"] is True
    )
    assert (
        official_facts["frequenz.api.dispatch.v1.TargetComponents.component_ids"]["oneof"]
        == "components"
    )
    assert official_facts[f"{SERVICE}.StreamMicrogridDispatches"]["server_streaming"] is True


# ---------------------------------------------------------------- the comparison can fail


def _mutated(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> tuple[list[descriptor_pb2.FileDescriptorProto], descriptor_pb2.FileDescriptorProto]:
    copies = [copy.deepcopy(f) for f in files]
    (dispatch,) = [f for f in copies if f.name == "frequenz/api/dispatch/v1/dispatch.proto"]
    return copies, dispatch


def _message(
    container: descriptor_pb2.FileDescriptorProto | descriptor_pb2.DescriptorProto, name: str
) -> descriptor_pb2.DescriptorProto:
    items = (
        container.message_type
        if isinstance(container, descriptor_pb2.FileDescriptorProto)
        else container.nested_type
    )
    (found,) = [m for m in items if m.name == name]
    return found


def _field(
    message: descriptor_pb2.DescriptorProto, name: str
) -> descriptor_pb2.FieldDescriptorProto:
    (found,) = [f for f in message.field if f.name == name]
    return found


def _diff_after(
    files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> list[str]:
    return diff_facts(contract_facts(files, SERVICE), official_facts)


def test_detects_a_changed_field_number(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files, dispatch = _mutated(our_files)
    _field(_message(dispatch, "DispatchData"), "duration").number = 4
    assert _diff_after(files, official_facts) == [
        "frequenz.api.dispatch.v1.DispatchData.duration: number 4 != 3"
    ]


def test_detects_a_changed_nested_field_number(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files, dispatch = _mutated(our_files)
    and_type = _message(_message(dispatch, "TargetComponents"), "CategoryAndType")
    _field(and_type, "ev_charger").number = 5
    assert _diff_after(files, official_facts) == [
        "frequenz.api.dispatch.v1.TargetComponents.CategoryAndType.ev_charger: number 5 != 4"
    ]


def test_detects_a_changed_enum_value_number(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files, dispatch = _mutated(our_files)
    (weekday,) = [e for e in _message(dispatch, "RecurrenceRule").enum_type if e.name == "Weekday"]
    (monday,) = [v for v in weekday.value if v.name == "WEEKDAY_MONDAY"]
    monday.number = 8
    assert _diff_after(files, official_facts) == [
        "frequenz.api.dispatch.v1.RecurrenceRule.Weekday.WEEKDAY_MONDAY: number 8 != 1"
    ]


def test_detects_a_changed_enum_value_in_a_common_file(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files = [copy.deepcopy(f) for f in our_files]
    (event_file,) = [f for f in files if f.package == "frequenz.api.common.v1alpha8.streaming"]
    (event,) = event_file.enum_type
    (deleted,) = [v for v in event.value if v.name == "EVENT_DELETED"]
    deleted.number = 4
    assert _diff_after(files, official_facts) == [
        "frequenz.api.common.v1alpha8.streaming.Event.EVENT_DELETED: number 4 != 3"
    ]


def test_detects_a_lost_proto3_optional(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    """`optional uint32 duration` written as plain `uint32 duration`."""
    files, dispatch = _mutated(our_files)
    data = _message(dispatch, "DispatchData")
    duration = _field(data, "duration")
    synthetic = data.oneof_decl[duration.oneof_index]
    assert synthetic.name == "_duration"
    duration.proto3_optional = False
    duration.ClearField("oneof_index")
    data.oneof_decl.remove(synthetic)
    assert _diff_after(files, official_facts) == [
        "frequenz.api.dispatch.v1.DispatchData.duration: proto3_optional False != True"
    ]


def test_detects_a_changed_label(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files, dispatch = _mutated(our_files)
    _field(_message(dispatch, "DispatchFilter"), "queries").label = FieldProto.LABEL_OPTIONAL
    assert _diff_after(files, official_facts) == [
        "frequenz.api.dispatch.v1.DispatchFilter.queries: label LABEL_OPTIONAL != LABEL_REPEATED"
    ]


def test_detects_a_field_moved_out_of_its_oneof(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files, dispatch = _mutated(our_files)
    end_criteria = _message(_message(dispatch, "RecurrenceRule"), "EndCriteria")
    _field(end_criteria, "until_time").ClearField("oneof_index")
    assert _diff_after(files, official_facts) == [
        "frequenz.api.dispatch.v1.RecurrenceRule.EndCriteria.until_time: oneof None != count_or_until"
    ]


def test_detects_a_changed_field_type_and_type_name(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files, dispatch = _mutated(our_files)
    field = _field(_message(dispatch, "StreamMicrogridDispatchesResponse"), "event")
    field.type = FieldProto.TYPE_UINT32
    field.ClearField("type_name")
    problems = _diff_after(files, official_facts)
    path = "frequenz.api.dispatch.v1.StreamMicrogridDispatchesResponse.event"
    # The enum is no longer reachable from our side either.
    assert f"{path}: type TYPE_UINT32 != TYPE_ENUM" in problems
    assert f"{path}: type_name None != .frequenz.api.common.v1alpha8.streaming.Event" in problems
    assert "frequenz.api.common.v1alpha8.streaming.Event: missing in ours (enum)" in problems


def test_detects_missing_and_extra_definitions(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files, dispatch = _mutated(our_files)
    data = _message(dispatch, "DispatchData")
    data.field.remove(_field(data, "is_dry_run"))
    extra = data.field.add()
    extra.CopyFrom(_field(data, "type"))
    extra.name, extra.number = "comment", 99
    assert _diff_after(files, official_facts) == [
        "frequenz.api.dispatch.v1.DispatchData: fields "
        "['comment', 'duration', 'is_active', 'payload', 'recurrence', 'start_time', 'target', 'type'] != "
        "['duration', 'is_active', 'is_dry_run', 'payload', 'recurrence', 'start_time', 'target', 'type']",
        "frequenz.api.dispatch.v1.DispatchData.comment: only in ours (field)",
        "frequenz.api.dispatch.v1.DispatchData.is_dry_run: missing in ours (field)",
    ]


def test_detects_a_changed_method(
    our_files: list[descriptor_pb2.FileDescriptorProto], official_facts: Facts
) -> None:
    files, dispatch = _mutated(our_files)
    (service,) = dispatch.service
    (stream,) = [m for m in service.method if m.name == "StreamMicrogridDispatches"]
    stream.server_streaming = False
    stream.client_streaming = True
    assert _diff_after(files, official_facts) == [
        f"{SERVICE}.StreamMicrogridDispatches: client_streaming True != False",
        f"{SERVICE}.StreamMicrogridDispatches: server_streaming False != True",
    ]


def test_reports_a_missing_service(official_facts: Facts) -> None:
    problems = diff_facts(contract_facts([], SERVICE), official_facts)
    assert f"{SERVICE}: kind missing service != service" in problems
    assert f"{SERVICE}.GetMicrogridDispatch: missing in ours (method)" in problems
