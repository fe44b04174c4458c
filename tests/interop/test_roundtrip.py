"""Bytes produced by our betterproto2 model are read identically by the official
protobuf classes, and the other way round.

Every example is checked four ways: our bytes parsed officially must equal the
expected proto-JSON; an official message built independently from that JSON
must equal the one parsed from our bytes; and both official messages must
parse back with betterproto2 to a value equal to the original.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import betterproto2
import pytest
from frequenz.api.common.v1alpha8.microgrid.electrical_components import (
    electrical_components_pb2 as official_components,
)
from frequenz.api.common.v1alpha8.pagination import pagination_info_pb2 as official_pagination_info
from frequenz.api.common.v1alpha8.pagination import (
    pagination_params_pb2 as official_pagination_params,
)
from frequenz.api.dispatch.v1 import dispatch_pb2 as official
from google.protobuf import message as protobuf_message
from google.protobuf.json_format import MessageToDict, ParseDict
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import json_values

from dispatch_client import (
    BatteryType,
    Dispatch,
    DispatchData,
    DispatchMetadata,
    ElectricalComponentCategory,
    EvChargerType,
    Event,
    InverterType,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    SortField,
    SortOptions,
    SortOrder,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)
from dispatch_client._proto.google.protobuf import FieldMask, Struct
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    CreateMicrogridDispatchResponse,
    DeleteMicrogridDispatchRequest,
    DeleteMicrogridDispatchResponse,
    DispatchFilter,
    DispatchFilterRecurrenceFilter,
    GetMicrogridDispatchRequest,
    GetMicrogridDispatchResponse,
    Interval,
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    PaginationInfo,
    PaginationParams,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
    UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate,
    UpdateMicrogridDispatchResponse,
)

UTC = dt.UTC
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def to_json(message: protobuf_message.Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def assert_both_ways(
    ours: betterproto2.Message,
    official_cls: type[protobuf_message.Message],
    expected: dict[str, Any],
) -> protobuf_message.Message:
    parsed = official_cls.FromString(bytes(ours))
    assert to_json(parsed) == expected
    independent = ParseDict(expected, official_cls())
    assert parsed == independent
    ours_cls = type(ours)
    assert ours_cls.parse(parsed.SerializeToString()) == ours
    assert ours_cls.parse(independent.SerializeToString()) == ours
    return parsed


# ---------------------------------------------------------------- shared examples

NESTED_PAYLOAD: dict[str, Any] = {
    "power_w": -5000.5,
    "mode": "peak-shaving",
    "enabled": True,
    "disabled": False,
    "limit": None,
    "zero": 0,
    "big": 2**53,
    "unicode": "Grüße ⚡",
    "steps": [
        {"at": 0, "soc": [10, 20.5, None]},
        {"nested": {"deeper": [True, False, "x", {}], "empty_list": []}},
        [1, [2, [3]]],
    ],
    "meta": {},
}

START = at(2024, 5, 6, 7, 8, 9, 123456)
START_JSON = "2024-05-06T07:08:09.123456Z"
BEFORE_EPOCH = at(1969, 7, 20, 20, 17, 40, 500000)
BEFORE_EPOCH_JSON = "1969-07-20T20:17:40.500Z"


def full_data() -> DispatchData:
    return DispatchData(
        type="BATTERY_CHARGE",
        start_time=START,
        duration=7200,
        target=TargetComponents(component_ids=TargetComponentsIdSet(ids=[1, 2, U64_MAX])),
        is_active=True,
        is_dry_run=True,
        payload=Struct.from_dict(NESTED_PAYLOAD),
        recurrence=RecurrenceRule(
            freq=RecurrenceRuleFrequency.WEEKLY,
            interval=2,
            end_criteria=RecurrenceRuleEndCriteria(count=10),
            byminutes=[0, 30],
            byhours=[8, 17],
            byweekdays=[
                RecurrenceRuleWeekday.MONDAY,
                RecurrenceRuleWeekday.FRIDAY,
                RecurrenceRuleWeekday.SUNDAY,
            ],
            bymonthdays=[-1, 1, 15],
            bymonths=[1, 12],
        ),
    )


FULL_DATA_JSON: dict[str, Any] = {
    "type": "BATTERY_CHARGE",
    "start_time": START_JSON,
    "duration": 7200,
    "target": {"component_ids": {"ids": ["1", "2", str(U64_MAX)]}},
    "is_active": True,
    "is_dry_run": True,
    "payload": NESTED_PAYLOAD,
    "recurrence": {
        "freq": "FREQUENCY_WEEKLY",
        "interval": 2,
        "end_criteria": {"count": 10},
        "byminutes": [0, 30],
        "byhours": [8, 17],
        "byweekdays": ["WEEKDAY_MONDAY", "WEEKDAY_FRIDAY", "WEEKDAY_SUNDAY"],
        "bymonthdays": [-1, 1, 15],
        "bymonths": [1, 12],
    },
}


def minimal_data() -> DispatchData:
    """Every scalar at its zero value, but the optional ones explicitly set."""
    return DispatchData(
        type="",
        start_time=BEFORE_EPOCH,
        duration=0,
        target=TargetComponents(
            component_categories=TargetComponentsCategorySet(
                categories=[
                    ElectricalComponentCategory.BATTERY,
                    ElectricalComponentCategory.INVERTER,
                    ElectricalComponentCategory.EV_CHARGER,
                    ElectricalComponentCategory.UNSPECIFIED,
                ]
            )
        ),
        is_active=False,
        is_dry_run=False,
        payload=Struct(),
        recurrence=RecurrenceRule(
            freq=RecurrenceRuleFrequency.MINUTELY,
            end_criteria=RecurrenceRuleEndCriteria(until_time=at(2030, 1, 1, 0, 0, 0, 1)),
        ),
    )


MINIMAL_DATA_JSON: dict[str, Any] = {
    "start_time": BEFORE_EPOCH_JSON,
    "duration": 0,
    "target": {
        "component_categories": {
            "categories": [
                "ELECTRICAL_COMPONENT_CATEGORY_BATTERY",
                "ELECTRICAL_COMPONENT_CATEGORY_INVERTER",
                "ELECTRICAL_COMPONENT_CATEGORY_EV_CHARGER",
                "ELECTRICAL_COMPONENT_CATEGORY_UNSPECIFIED",
            ]
        }
    },
    "payload": {},
    "recurrence": {
        "freq": "FREQUENCY_MINUTELY",
        "end_criteria": {"until_time": "2030-01-01T00:00:00.000001Z"},
    },
}


def category_types_target() -> TargetComponents:
    return TargetComponents(
        component_categories_types=TargetComponentsCategoryTypeSet(
            categories=[
                TargetComponentsCategoryAndType(
                    category=ElectricalComponentCategory.BATTERY, battery=BatteryType.LI_ION
                ),
                TargetComponentsCategoryAndType(
                    category=ElectricalComponentCategory.BATTERY, battery=BatteryType.UNSPECIFIED
                ),
                TargetComponentsCategoryAndType(
                    category=ElectricalComponentCategory.INVERTER, inverter=InverterType.PV
                ),
                TargetComponentsCategoryAndType(
                    category=ElectricalComponentCategory.EV_CHARGER, ev_charger=EvChargerType.DC
                ),
                TargetComponentsCategoryAndType(category=ElectricalComponentCategory.METER),
            ]
        )
    )


CATEGORY_TYPES_JSON: dict[str, Any] = {
    "component_categories_types": {
        "categories": [
            {"category": "ELECTRICAL_COMPONENT_CATEGORY_BATTERY", "battery": "BATTERY_TYPE_LI_ION"},
            {
                "category": "ELECTRICAL_COMPONENT_CATEGORY_BATTERY",
                "battery": "BATTERY_TYPE_UNSPECIFIED",
            },
            {"category": "ELECTRICAL_COMPONENT_CATEGORY_INVERTER", "inverter": "INVERTER_TYPE_PV"},
            {
                "category": "ELECTRICAL_COMPONENT_CATEGORY_EV_CHARGER",
                "ev_charger": "EV_CHARGER_TYPE_DC",
            },
            {"category": "ELECTRICAL_COMPONENT_CATEGORY_METER"},
        ]
    }
}


def full_dispatch(dispatch_id: int = 7) -> Dispatch:
    return Dispatch(
        metadata=DispatchMetadata(
            dispatch_id=dispatch_id,
            create_time=at(2024, 1, 1, 0, 0, 0, 1),
            update_time=at(2024, 1, 2, 3, 4, 5, 999999),
            end_time=at(2024, 12, 31, 23, 59, 59),
        ),
        data=full_data(),
    )


def full_dispatch_json(dispatch_id: int = 7) -> dict[str, Any]:
    return {
        "metadata": {
            "dispatch_id": str(dispatch_id),
            "create_time": "2024-01-01T00:00:00.000001Z",
            "update_time": "2024-01-02T03:04:05.999999Z",
            "end_time": "2024-12-31T23:59:59Z",
        },
        "data": FULL_DATA_JSON,
    }


# ---------------------------------------------------------------- one case per shape


def _cases() -> list[Any]:
    update_paths = [
        "start_time",
        "duration",
        "target",
        "is_active",
        "payload",
        "recurrence.freq",
        "recurrence.interval",
        "recurrence.end_criteria",
        "recurrence.byweekdays",
    ]
    cases = [
        (
            "create_full",
            CreateMicrogridDispatchRequest(
                microgrid_id=42, dispatch_data=full_data(), start_immediately=False
            ),
            official.CreateMicrogridDispatchRequest,
            {"microgrid_id": "42", "dispatch_data": FULL_DATA_JSON, "start_immediately": False},
        ),
        (
            "create_zero_values",
            CreateMicrogridDispatchRequest(
                microgrid_id=U64_MAX, dispatch_data=minimal_data(), start_immediately=True
            ),
            official.CreateMicrogridDispatchRequest,
            {
                "microgrid_id": str(U64_MAX),
                "dispatch_data": MINIMAL_DATA_JSON,
                "start_immediately": True,
            },
        ),
        (
            "create_category_types",
            CreateMicrogridDispatchRequest(
                dispatch_data=DispatchData(type="CURTAIL", target=category_types_target())
            ),
            official.CreateMicrogridDispatchRequest,
            {"dispatch_data": {"type": "CURTAIL", "target": CATEGORY_TYPES_JSON}},
        ),
        (
            "create_empty_oneof_sets",
            CreateMicrogridDispatchRequest(
                dispatch_data=DispatchData(
                    target=TargetComponents(component_ids=TargetComponentsIdSet()),
                    recurrence=RecurrenceRule(end_criteria=RecurrenceRuleEndCriteria(count=0)),
                )
            ),
            official.CreateMicrogridDispatchRequest,
            {
                "dispatch_data": {
                    "target": {"component_ids": {}},
                    "recurrence": {"end_criteria": {"count": 0}},
                }
            },
        ),
        (
            "create_response",
            CreateMicrogridDispatchResponse(dispatch=full_dispatch()),
            official.CreateMicrogridDispatchResponse,
            {"dispatch": full_dispatch_json()},
        ),
        (
            "list_request_is_recurring",
            ListMicrogridDispatchesRequest(
                microgrid_id=1,
                filter=DispatchFilter(
                    targets=[
                        TargetComponents(component_ids=TargetComponentsIdSet(ids=[5])),
                        TargetComponents(
                            component_categories=TargetComponentsCategorySet(
                                categories=[ElectricalComponentCategory.CHP]
                            )
                        ),
                        category_types_target(),
                    ],
                    is_active=False,
                    is_dry_run=False,
                    is_recurring=False,
                    start_time_interval=Interval(start_time=START, end_time=at(2024, 6, 1)),
                    end_time_interval=Interval(start_time=BEFORE_EPOCH),
                    update_time_interval=Interval(),
                    dispatch_ids=[1, 2, U64_MAX],
                    queries=["#3", "CHARGE", ""],
                ),
                sort_options=SortOptions(
                    sort_field=SortField.LAST_UPDATE_TIME, sort_order=SortOrder.DESCENDING
                ),
                pagination_params=PaginationParams(page_size=0),
            ),
            official.ListMicrogridDispatchesRequest,
            {
                "microgrid_id": "1",
                "filter": {
                    "targets": [
                        {"component_ids": {"ids": ["5"]}},
                        {
                            "component_categories": {
                                "categories": ["ELECTRICAL_COMPONENT_CATEGORY_CHP"]
                            }
                        },
                        CATEGORY_TYPES_JSON,
                    ],
                    "is_active": False,
                    "is_dry_run": False,
                    "is_recurring": False,
                    "start_time_interval": {
                        "start_time": START_JSON,
                        "end_time": "2024-06-01T00:00:00Z",
                    },
                    "end_time_interval": {"start_time": BEFORE_EPOCH_JSON},
                    "update_time_interval": {},
                    "dispatch_ids": ["1", "2", str(U64_MAX)],
                    "queries": ["#3", "CHARGE", ""],
                },
                "sort_options": {
                    "sort_field": "SORT_FIELD_LAST_UPDATE_TIME",
                    "sort_order": "SORT_ORDER_DESCENDING",
                },
                "pagination_params": {"page_size": 0},
            },
        ),
        (
            "list_request_filter_branch",
            ListMicrogridDispatchesRequest(
                microgrid_id=2,
                filter=DispatchFilter(filter=DispatchFilterRecurrenceFilter(), is_active=True),
                sort_options=SortOptions(),
                pagination_params=PaginationParams(page_token="opaque/+=token"),
            ),
            official.ListMicrogridDispatchesRequest,
            {
                "microgrid_id": "2",
                "filter": {"filter": {}, "is_active": True},
                "sort_options": {},
                "pagination_params": {"page_token": "opaque/+=token"},
            },
        ),
        (
            "list_request_zero_branches",
            ListMicrogridDispatchesRequest(
                filter=DispatchFilter(is_recurring=True),
                pagination_params=PaginationParams(page_token=""),
            ),
            official.ListMicrogridDispatchesRequest,
            {"filter": {"is_recurring": True}, "pagination_params": {"page_token": ""}},
        ),
        (
            "list_response",
            ListMicrogridDispatchesResponse(
                dispatches=[full_dispatch(1), full_dispatch(2)],
                pagination_info=PaginationInfo(total_items=9, next_page_token="next"),
            ),
            official.ListMicrogridDispatchesResponse,
            {
                "dispatches": [full_dispatch_json(1), full_dispatch_json(2)],
                "pagination_info": {"total_items": 9, "next_page_token": "next"},
            },
        ),
        (
            "list_response_last_page",
            ListMicrogridDispatchesResponse(
                pagination_info=PaginationInfo(total_items=0, next_page_token="")
            ),
            official.ListMicrogridDispatchesResponse,
            {"pagination_info": {"next_page_token": ""}},
        ),
        (
            "update_request",
            UpdateMicrogridDispatchRequest(
                microgrid_id=3,
                dispatch_id=4,
                update_mask=FieldMask(paths=update_paths),
                update=UpdateMicrogridDispatchRequestDispatchUpdate(
                    start_time=START,
                    duration=0,
                    target=category_types_target(),
                    is_active=False,
                    payload=Struct.from_dict({"k": [None, {"v": 1}]}),
                    recurrence=UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate(
                        freq=RecurrenceRuleFrequency.UNSPECIFIED,
                        interval=0,
                        end_criteria=RecurrenceRuleEndCriteria(until_time=BEFORE_EPOCH),
                        byhours=[0],
                        byweekdays=[RecurrenceRuleWeekday.SATURDAY, RecurrenceRuleWeekday.SUNDAY],
                        bymonthdays=[-31],
                        bymonths=[2],
                    ),
                ),
            ),
            official.UpdateMicrogridDispatchRequest,
            {
                "microgrid_id": "3",
                "dispatch_id": "4",
                # proto-JSON spells a FieldMask as one camelCase string.
                "update_mask": "startTime,duration,target,isActive,payload,recurrence.freq,"
                "recurrence.interval,recurrence.endCriteria,recurrence.byweekdays",
                "update": {
                    "start_time": START_JSON,
                    "duration": 0,
                    "target": CATEGORY_TYPES_JSON,
                    "is_active": False,
                    "payload": {"k": [None, {"v": 1}]},
                    "recurrence": {
                        "freq": "FREQUENCY_UNSPECIFIED",
                        "interval": 0,
                        "end_criteria": {"until_time": BEFORE_EPOCH_JSON},
                        "byhours": [0],
                        "byweekdays": ["WEEKDAY_SATURDAY", "WEEKDAY_SUNDAY"],
                        "bymonthdays": [-31],
                        "bymonths": [2],
                    },
                },
            },
        ),
        (
            "update_request_clear_duration",
            UpdateMicrogridDispatchRequest(
                microgrid_id=3,
                dispatch_id=4,
                update_mask=FieldMask(paths=["duration"]),
                update=UpdateMicrogridDispatchRequestDispatchUpdate(),
            ),
            official.UpdateMicrogridDispatchRequest,
            {"microgrid_id": "3", "dispatch_id": "4", "update_mask": "duration", "update": {}},
        ),
        (
            "update_response",
            UpdateMicrogridDispatchResponse(dispatch=full_dispatch()),
            official.UpdateMicrogridDispatchResponse,
            {"dispatch": full_dispatch_json()},
        ),
        (
            "get_request",
            GetMicrogridDispatchRequest(microgrid_id=U64_MAX, dispatch_id=1),
            official.GetMicrogridDispatchRequest,
            {"microgrid_id": str(U64_MAX), "dispatch_id": "1"},
        ),
        (
            "get_response",
            GetMicrogridDispatchResponse(microgrid_id=5, dispatch=full_dispatch()),
            official.GetMicrogridDispatchResponse,
            {"microgrid_id": "5", "dispatch": full_dispatch_json()},
        ),
        (
            "delete_request",
            DeleteMicrogridDispatchRequest(microgrid_id=5, dispatch_id=U64_MAX),
            official.DeleteMicrogridDispatchRequest,
            {"microgrid_id": "5", "dispatch_id": str(U64_MAX)},
        ),
        (
            "delete_response",
            DeleteMicrogridDispatchResponse(microgrid_id=5, dispatch_id=6),
            official.DeleteMicrogridDispatchResponse,
            {"microgrid_id": "5", "dispatch_id": "6"},
        ),
        (
            "stream_request",
            StreamMicrogridDispatchesRequest(microgrid_id=11),
            official.StreamMicrogridDispatchesRequest,
            {"microgrid_id": "11"},
        ),
        (
            "empty_request",
            StreamMicrogridDispatchesRequest(),
            official.StreamMicrogridDispatchesRequest,
            {},
        ),
    ]
    for event in (Event.CREATED, Event.UPDATED, Event.DELETED):
        cases.append(
            (
                f"stream_response_{event.name.lower()}",
                StreamMicrogridDispatchesResponse(dispatch=full_dispatch(), event=event),
                official.StreamMicrogridDispatchesResponse,
                {"dispatch": full_dispatch_json(), "event": f"EVENT_{event.name}"},
            )
        )
    return [pytest.param(ours, cls, expected, id=name) for name, ours, cls, expected in cases]


@pytest.mark.parametrize(("ours", "official_cls", "expected"), _cases())
def test_round_trip(
    ours: betterproto2.Message,
    official_cls: type[protobuf_message.Message],
    expected: dict[str, Any],
) -> None:
    assert_both_ways(ours, official_cls, expected)


def test_every_service_message_has_a_case() -> None:
    service = official.DESCRIPTOR.services_by_name["MicrogridDispatchService"]
    used = {m.input_type.name for m in service.methods} | {
        m.output_type.name for m in service.methods
    }
    covered = {p.values[1].DESCRIPTOR.name for p in _cases()}
    assert used == covered


def test_field_mask_paths_arrive_verbatim() -> None:
    paths = ["start_time", "recurrence.end_criteria", "recurrence.byweekdays", "is_active"]
    ours = UpdateMicrogridDispatchRequest(update_mask=FieldMask(paths=paths))
    parsed = official.UpdateMicrogridDispatchRequest.FromString(bytes(ours))
    assert list(parsed.update_mask.paths) == paths


# ---------------------------------------------------------------- presence and oneofs


OPTIONAL_ZERO = [
    pytest.param(
        DispatchData(duration=0), official.DispatchData, "duration", id="DispatchData.duration"
    ),
    pytest.param(
        CreateMicrogridDispatchRequest(start_immediately=False),
        official.CreateMicrogridDispatchRequest,
        "start_immediately",
        id="Create.start_immediately",
    ),
    pytest.param(
        DispatchFilter(is_active=False), official.DispatchFilter, "is_active", id="Filter.is_active"
    ),
    pytest.param(
        DispatchFilter(is_dry_run=False),
        official.DispatchFilter,
        "is_dry_run",
        id="Filter.is_dry_run",
    ),
    pytest.param(
        UpdateMicrogridDispatchRequestDispatchUpdate(duration=0),
        official.UpdateMicrogridDispatchRequest.DispatchUpdate,
        "duration",
        id="DispatchUpdate.duration",
    ),
    pytest.param(
        UpdateMicrogridDispatchRequestDispatchUpdate(is_active=False),
        official.UpdateMicrogridDispatchRequest.DispatchUpdate,
        "is_active",
        id="DispatchUpdate.is_active",
    ),
    pytest.param(
        UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate(
            freq=RecurrenceRuleFrequency.UNSPECIFIED
        ),
        official.UpdateMicrogridDispatchRequest.DispatchUpdate.RecurrenceRuleUpdate,
        "freq",
        id="RecurrenceRuleUpdate.freq",
    ),
    pytest.param(
        UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate(interval=0),
        official.UpdateMicrogridDispatchRequest.DispatchUpdate.RecurrenceRuleUpdate,
        "interval",
        id="RecurrenceRuleUpdate.interval",
    ),
    pytest.param(
        PaginationInfo(next_page_token=""),
        official_pagination_info.PaginationInfo,
        "next_page_token",
        id="PaginationInfo.next_page_token",
    ),
]


@pytest.mark.parametrize(("ours", "official_cls", "field"), OPTIONAL_ZERO)
def test_optional_zero_is_present_and_none_is_absent(
    ours: betterproto2.Message, official_cls: type[protobuf_message.Message], field: str
) -> None:
    parsed = official_cls.FromString(bytes(ours))
    assert parsed.HasField(field)
    back = type(ours).parse(parsed.SerializeToString())
    assert getattr(back, field) is not None
    assert getattr(back, field) == getattr(ours, field)

    unset = type(ours)()
    assert getattr(unset, field) is None
    assert bytes(unset) == b""
    assert not official_cls.FromString(bytes(unset)).HasField(field)
    assert getattr(type(ours).parse(b""), field) is None


def _and_type(**branch: Any) -> TargetComponentsCategoryAndType:
    return TargetComponentsCategoryAndType(category=ElectricalComponentCategory.BATTERY, **branch)


ONEOF_BRANCHES = [
    (TargetComponents(component_ids=TargetComponentsIdSet(ids=[1])), "components", "component_ids"),
    (TargetComponents(component_ids=TargetComponentsIdSet()), "components", "component_ids"),
    (
        TargetComponents(component_categories=TargetComponentsCategorySet()),
        "components",
        "component_categories",
    ),
    (
        TargetComponents(component_categories_types=TargetComponentsCategoryTypeSet()),
        "components",
        "component_categories_types",
    ),
    (_and_type(battery=BatteryType.NA_ION), "type", "battery"),
    (_and_type(battery=BatteryType.UNSPECIFIED), "type", "battery"),
    (_and_type(inverter=InverterType.HYBRID), "type", "inverter"),
    (_and_type(inverter=InverterType.UNSPECIFIED), "type", "inverter"),
    (_and_type(ev_charger=EvChargerType.AC), "type", "ev_charger"),
    (_and_type(ev_charger=EvChargerType.UNSPECIFIED), "type", "ev_charger"),
    (_and_type(), "type", None),
    (RecurrenceRuleEndCriteria(count=5), "count_or_until", "count"),
    (RecurrenceRuleEndCriteria(count=0), "count_or_until", "count"),
    (RecurrenceRuleEndCriteria(until_time=START), "count_or_until", "until_time"),
    (RecurrenceRuleEndCriteria(until_time=at(1970, 1, 1)), "count_or_until", "until_time"),
    (RecurrenceRuleEndCriteria(), "count_or_until", None),
    (PaginationParams(page_size=20), "params", "page_size"),
    (PaginationParams(page_size=0), "params", "page_size"),
    (PaginationParams(page_token="t"), "params", "page_token"),
    (PaginationParams(page_token=""), "params", "page_token"),
    (PaginationParams(), "params", None),
    (DispatchFilter(is_recurring=True), "recurrence", "is_recurring"),
    (DispatchFilter(is_recurring=False), "recurrence", "is_recurring"),
    (DispatchFilter(filter=DispatchFilterRecurrenceFilter()), "recurrence", "filter"),
    (DispatchFilter(), "recurrence", None),
]


def _official_class_of(ours: betterproto2.Message) -> type[protobuf_message.Message]:
    return {
        TargetComponents: official.TargetComponents,
        TargetComponentsCategoryAndType: official.TargetComponents.CategoryAndType,
        RecurrenceRuleEndCriteria: official.RecurrenceRule.EndCriteria,
        PaginationParams: official_pagination_params.PaginationParams,
        DispatchFilter: official.DispatchFilter,
    }[type(ours)]


@pytest.mark.parametrize(
    ("ours", "group", "branch"),
    ONEOF_BRANCHES,
    ids=[f"{type(o).__name__}-{b}-{i}" for i, (o, _, b) in enumerate(ONEOF_BRANCHES)],
)
def test_oneof_branch_survives(ours: betterproto2.Message, group: str, branch: str | None) -> None:
    parsed = _official_class_of(ours).FromString(bytes(ours))
    assert parsed.WhichOneof(group) == branch
    back = type(ours).parse(parsed.SerializeToString())
    assert back == ours
    assert betterproto2.which_one_of(back, group)[0] == (branch or "")


# ---------------------------------------------------------------- official first


def test_official_built_messages_survive_betterproto2() -> None:
    """Official message → our model → official message, for values built officially."""
    message = official.ListMicrogridDispatchesResponse()
    for dispatch_id in (1, 2):
        dispatch = message.dispatches.add()
        dispatch.metadata.dispatch_id = dispatch_id
        dispatch.metadata.create_time.FromDatetime(START)
        dispatch.data.type = "T"
        dispatch.data.duration = 0
        dispatch.data.is_active = True
        dispatch.data.payload.update(NESTED_PAYLOAD)
        dispatch.data.target.component_categories_types.categories.add(
            category=official_components.ELECTRICAL_COMPONENT_CATEGORY_INVERTER,
            inverter=official_components.INVERTER_TYPE_BATTERY,
        )
        dispatch.data.recurrence.freq = official.RecurrenceRule.FREQUENCY_DAILY
        dispatch.data.recurrence.end_criteria.until_time.FromDatetime(BEFORE_EPOCH)
        dispatch.data.recurrence.byweekdays.extend(
            [official.RecurrenceRule.WEEKDAY_TUESDAY, official.RecurrenceRule.WEEKDAY_TUESDAY]
        )
    message.pagination_info.next_page_token = ""

    ours = ListMicrogridDispatchesResponse.parse(message.SerializeToString())
    assert [d.metadata.dispatch_id for d in ours.dispatches] == [1, 2]
    data = ours.dispatches[0].data
    assert data.duration == 0
    assert data.payload is not None
    assert data.payload.to_dict() == NESTED_PAYLOAD
    assert data.recurrence.end_criteria.until_time == BEFORE_EPOCH
    assert data.recurrence.byweekdays == [RecurrenceRuleWeekday.TUESDAY] * 2
    assert data.target.component_categories_types.categories[0].inverter == InverterType.BATTERY
    assert ours.pagination_info.next_page_token == ""
    assert official.ListMicrogridDispatchesResponse.FromString(bytes(ours)) == message


def test_unknown_enum_values_are_kept() -> None:
    """A newer server may send enum values we do not know yet; they must survive a re-send."""
    message = official.StreamMicrogridDispatchesResponse(event=42)
    message.dispatch.data.target.component_categories.categories.extend([5, 99])
    message.dispatch.data.recurrence.byweekdays.append(8)
    ours = StreamMicrogridDispatchesResponse.parse(message.SerializeToString())
    assert int(ours.event) == 42
    assert [int(c) for c in ours.dispatch.data.target.component_categories.categories] == [5, 99]
    assert official.StreamMicrogridDispatchesResponse.FromString(bytes(ours)) == message


def test_timestamps_are_truncated_to_microseconds() -> None:
    """betterproto2 maps Timestamp to datetime, so nanoseconds below 1 µs are lost."""
    message = official.DispatchMetadata()
    message.create_time.seconds = 1_700_000_000
    message.create_time.nanos = 123_456_789
    ours = DispatchMetadata.parse(message.SerializeToString())
    assert ours.create_time == at(2023, 11, 14, 22, 13, 20, 123456)
    assert official.DispatchMetadata.FromString(bytes(ours)).create_time.nanos == 123_456_000


def test_non_utc_datetimes_arrive_as_the_same_instant() -> None:
    local = dt.datetime(
        2024, 3, 31, 2, 30, 0, 250, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
    )
    parsed = official.DispatchData.FromString(bytes(DispatchData(start_time=local)))
    assert parsed.start_time.ToDatetime(tzinfo=UTC) == local
    back = DispatchData.parse(parsed.SerializeToString())
    assert back.start_time == local
    assert back.start_time.utcoffset() == dt.timedelta(0)


def test_betterproto2_does_not_enforce_oneof_exclusivity() -> None:
    """Pins a hazard: setting two members of a oneof sends both.

    betterproto2 0.10 neither clears the sibling on assignment nor on parse; a
    protobuf reader then keeps the member that comes last on the wire. Code
    building messages must set exactly one member (betterproto2.which_one_of
    raises on such a message).
    """
    target = TargetComponents(component_ids=TargetComponentsIdSet(ids=[1]))
    target.component_categories = TargetComponentsCategorySet(
        categories=[ElectricalComponentCategory.BATTERY]
    )
    parsed = official.TargetComponents.FromString(bytes(target))
    assert parsed.WhichOneof("components") == "component_categories"
    with pytest.raises(RuntimeError):
        betterproto2.which_one_of(target, "components")


# ---------------------------------------------------------------- properties

JSON_VALUES = json_values(max_text=8, max_key=4)
PAYLOADS = st.none() | st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)
TIMESTAMPS = st.datetimes(
    min_value=dt.datetime(1, 1, 1),
    max_value=dt.datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
)
U32 = st.integers(0, U32_MAX)
U64 = st.integers(0, U64_MAX)
CATEGORIES = st.sampled_from([int(c) for c in ElectricalComponentCategory])
TYPE_ENUMS = {"battery": BatteryType, "inverter": InverterType, "ev_charger": EvChargerType}
CATEGORY_AND_TYPE = st.tuples(
    CATEGORIES,
    st.sampled_from([None, *TYPE_ENUMS]).flatmap(
        lambda branch: st.tuples(
            st.just(branch),
            st.sampled_from([int(v) for v in TYPE_ENUMS[branch]]) if branch else st.just(0),
        )
    ),
)
TARGETS = st.one_of(
    st.tuples(st.just("ids"), st.lists(U64, max_size=4)),
    st.tuples(st.just("categories"), st.lists(CATEGORIES, max_size=4)),
    st.tuples(st.just("types"), st.lists(CATEGORY_AND_TYPE, max_size=3)),
)
RECURRENCES = st.fixed_dictionaries(
    {
        "freq": st.sampled_from([int(f) for f in RecurrenceRuleFrequency]),
        "interval": U32,
        "end": st.none()
        | st.tuples(st.just("count"), U32)
        | st.tuples(st.just("until"), TIMESTAMPS),
        "byminutes": st.lists(U32, max_size=3),
        "byhours": st.lists(U32, max_size=3),
        "byweekdays": st.lists(
            st.sampled_from([int(w) for w in RecurrenceRuleWeekday]), max_size=3
        ),
        "bymonthdays": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3),
        "bymonths": st.lists(U32, max_size=3),
    }
)
DATA_SPECS = st.fixed_dictionaries(
    {
        "type": st.text(max_size=12),
        "start_time": st.none() | TIMESTAMPS,
        "duration": st.none() | U32,
        "target": st.none() | TARGETS,
        "is_active": st.booleans(),
        "is_dry_run": st.booleans(),
        "payload": PAYLOADS,
        "recurrence": st.none() | RECURRENCES,
    }
)


def ours_target(spec: tuple[str, list[Any]]) -> TargetComponents:
    kind, items = spec
    if kind == "ids":
        return TargetComponents(component_ids=TargetComponentsIdSet(ids=list(items)))
    if kind == "categories":
        return TargetComponents(
            component_categories=TargetComponentsCategorySet(
                categories=[ElectricalComponentCategory(c) for c in items]
            )
        )
    entries = []
    for category, (branch, value) in items:
        extra = {branch: TYPE_ENUMS[branch](value)} if branch else {}
        entries.append(
            TargetComponentsCategoryAndType(category=ElectricalComponentCategory(category), **extra)
        )
    return TargetComponents(
        component_categories_types=TargetComponentsCategoryTypeSet(categories=entries)
    )


def official_target(spec: tuple[str, list[Any]], out: Any) -> None:
    kind, items = spec
    if kind == "ids":
        out.component_ids.SetInParent()
        out.component_ids.ids.extend(items)
    elif kind == "categories":
        out.component_categories.SetInParent()
        out.component_categories.categories.extend(items)
    else:
        out.component_categories_types.SetInParent()
        for category, (branch, value) in items:
            entry = out.component_categories_types.categories.add(category=category)
            if branch:
                setattr(entry, branch, value)


def ours_data(spec: dict[str, Any]) -> DispatchData:
    recurrence = None
    if (rule := spec["recurrence"]) is not None:
        end = None
        if rule["end"] is not None:
            kind, value = rule["end"]
            end = (
                RecurrenceRuleEndCriteria(count=value)
                if kind == "count"
                else RecurrenceRuleEndCriteria(until_time=value)
            )
        recurrence = RecurrenceRule(
            freq=RecurrenceRuleFrequency(rule["freq"]),
            interval=rule["interval"],
            end_criteria=end,
            byminutes=rule["byminutes"],
            byhours=rule["byhours"],
            byweekdays=[RecurrenceRuleWeekday(w) for w in rule["byweekdays"]],
            bymonthdays=rule["bymonthdays"],
            bymonths=rule["bymonths"],
        )
    return DispatchData(
        type=spec["type"],
        start_time=spec["start_time"],
        duration=spec["duration"],
        target=None if spec["target"] is None else ours_target(spec["target"]),
        is_active=spec["is_active"],
        is_dry_run=spec["is_dry_run"],
        payload=None if spec["payload"] is None else Struct.from_dict(spec["payload"]),
        recurrence=recurrence,
    )


def official_data(spec: dict[str, Any]) -> Any:
    out = official.DispatchData(
        type=spec["type"], is_active=spec["is_active"], is_dry_run=spec["is_dry_run"]
    )
    if spec["start_time"] is not None:
        out.start_time.FromDatetime(spec["start_time"])
    if spec["duration"] is not None:
        out.duration = spec["duration"]
    if spec["target"] is not None:
        out.target.SetInParent()
        official_target(spec["target"], out.target)
    if spec["payload"] is not None:
        out.payload.SetInParent()
        out.payload.update(spec["payload"])
    if (rule := spec["recurrence"]) is not None:
        out.recurrence.SetInParent()
        out.recurrence.freq = rule["freq"]
        out.recurrence.interval = rule["interval"]
        if rule["end"] is not None:
            kind, value = rule["end"]
            if kind == "count":
                out.recurrence.end_criteria.count = value
            else:
                out.recurrence.end_criteria.until_time.FromDatetime(value)
        for name in ("byminutes", "byhours", "byweekdays", "bymonthdays", "bymonths"):
            getattr(out.recurrence, name).extend(rule[name])
    return out


@settings(max_examples=80, deadline=None)
@given(DATA_SPECS)
def test_random_dispatch_data_round_trips(spec: dict[str, Any]) -> None:
    ours = ours_data(spec)
    expected = official_data(spec)
    assert official.DispatchData.FromString(bytes(ours)) == expected
    assert DispatchData.parse(expected.SerializeToString()) == ours
    assert DispatchData.parse(bytes(ours)) == ours


INTERVALS = st.none() | st.tuples(st.none() | TIMESTAMPS, st.none() | TIMESTAMPS)
LIST_SPECS = st.fixed_dictionaries(
    {
        "microgrid_id": U64,
        "targets": st.lists(TARGETS, max_size=3),
        "is_active": st.none() | st.booleans(),
        "is_dry_run": st.none() | st.booleans(),
        "recurrence": st.none()
        | st.tuples(st.just("is_recurring"), st.booleans())
        | st.just(("filter",)),
        "intervals": st.tuples(INTERVALS, INTERVALS, INTERVALS),
        "dispatch_ids": st.lists(U64, max_size=3),
        "queries": st.lists(st.text(max_size=6), max_size=3),
        "sort": st.none()
        | st.tuples(
            st.sampled_from([int(f) for f in SortField]),
            st.sampled_from([int(o) for o in SortOrder]),
        ),
        "page": st.none()
        | st.tuples(st.just("page_size"), U32)
        | st.tuples(st.just("page_token"), st.text(max_size=8)),
    }
)
INTERVAL_FIELDS = ("start_time_interval", "end_time_interval", "update_time_interval")


def ours_list_request(spec: dict[str, Any]) -> ListMicrogridDispatchesRequest:
    recurrence: dict[str, Any] = {}
    if spec["recurrence"] == ("filter",):
        recurrence["filter"] = DispatchFilterRecurrenceFilter()
    elif spec["recurrence"] is not None:
        recurrence["is_recurring"] = spec["recurrence"][1]
    intervals = {
        name: Interval(start_time=value[0], end_time=value[1])
        for name, value in zip(INTERVAL_FIELDS, spec["intervals"], strict=True)
        if value is not None
    }
    sort = spec["sort"]
    page = spec["page"]
    return ListMicrogridDispatchesRequest(
        microgrid_id=spec["microgrid_id"],
        filter=DispatchFilter(
            targets=[ours_target(t) for t in spec["targets"]],
            is_active=spec["is_active"],
            is_dry_run=spec["is_dry_run"],
            dispatch_ids=spec["dispatch_ids"],
            queries=spec["queries"],
            **recurrence,
            **intervals,
        ),
        sort_options=None
        if sort is None
        else SortOptions(sort_field=SortField(sort[0]), sort_order=SortOrder(sort[1])),
        pagination_params=None if page is None else PaginationParams(**{page[0]: page[1]}),
    )


def official_list_request(spec: dict[str, Any]) -> Any:
    out = official.ListMicrogridDispatchesRequest(microgrid_id=spec["microgrid_id"])
    flt = out.filter
    flt.SetInParent()
    for target in spec["targets"]:
        official_target(target, flt.targets.add())
    if spec["is_active"] is not None:
        flt.is_active = spec["is_active"]
    if spec["is_dry_run"] is not None:
        flt.is_dry_run = spec["is_dry_run"]
    if spec["recurrence"] == ("filter",):
        flt.filter.SetInParent()
    elif spec["recurrence"] is not None:
        flt.is_recurring = spec["recurrence"][1]
    for name, value in zip(INTERVAL_FIELDS, spec["intervals"], strict=True):
        if value is not None:
            interval = getattr(flt, name)
            interval.SetInParent()
            if value[0] is not None:
                interval.start_time.FromDatetime(value[0])
            if value[1] is not None:
                interval.end_time.FromDatetime(value[1])
    flt.dispatch_ids.extend(spec["dispatch_ids"])
    flt.queries.extend(spec["queries"])
    if spec["sort"] is not None:
        out.sort_options.sort_field, out.sort_options.sort_order = spec["sort"]
        out.sort_options.SetInParent()
    if spec["page"] is not None:
        setattr(out.pagination_params, *spec["page"])
    return out


@settings(max_examples=60, deadline=None)
@given(LIST_SPECS)
def test_random_list_requests_round_trip(spec: dict[str, Any]) -> None:
    ours = ours_list_request(spec)
    expected = official_list_request(spec)
    assert official.ListMicrogridDispatchesRequest.FromString(bytes(ours)) == expected
    assert ListMicrogridDispatchesRequest.parse(expected.SerializeToString()) == ours
