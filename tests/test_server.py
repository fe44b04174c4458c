"""Reference server: create / get / update / delete, validation, over a real channel."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from test_server_support import (
    Status,
    create,
    expect_error,
    future,
    get,
    list_all,
    make_data,
)

from dispatch_client import (
    Dispatch,
    DispatchData,
    ElectricalComponentCategory,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    TargetComponents,
    TargetComponentsCategorySet,
)
from dispatch_client._proto.google.protobuf import FieldMask, Struct, Value
from dispatch_client.validation import payload_to_struct
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    GetMicrogridDispatchRequest,
    MicrogridDispatchServiceStub,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
    UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

Update = UpdateMicrogridDispatchRequestDispatchUpdate
RecurrenceUpdate = UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"inner": value}
    return value


def _unchecked_struct(obj: dict[str, Any]) -> Struct:
    # Builds payloads the client-side checks would refuse, to test the server's.
    def value(v: Any) -> Value:
        if isinstance(v, dict):
            return Value(struct_value=_unchecked_struct(v))
        if isinstance(v, str):
            return Value(string_value=v)
        return Value(number_value=float(v))

    return Struct(fields={k: value(v) for k, v in obj.items()})


def _as_bytes(dispatch: Dispatch) -> bytes:
    return bytes(dispatch)


# Create / get ---------------------------------------------------------------------


async def test_create_sets_metadata_and_get_returns_it(stub: MicrogridDispatchServiceStub) -> None:
    before = dt.datetime.now(dt.UTC)
    start = future(600).replace(microsecond=0)
    created = await create(
        stub, 7, start_time=start, duration=90, payload=payload_to_struct({"a": 1})
    )
    after = dt.datetime.now(dt.UTC)
    meta = created.metadata
    assert meta is not None and created.data is not None
    assert meta.dispatch_id >= 1
    assert meta.create_time is not None and before <= meta.create_time <= after
    assert meta.update_time == meta.create_time
    assert meta.end_time == start + dt.timedelta(seconds=90)
    assert created.data.type == "BATTERY_CHARGE"
    assert created.data.payload == payload_to_struct({"a": 1})
    assert _as_bytes(await get(stub, 7, meta.dispatch_id)) == _as_bytes(created)


async def test_ids_are_unique_and_increasing_across_microgrids(
    stub: MicrogridDispatchServiceStub,
) -> None:
    made = [await create(stub, microgrid_id) for microgrid_id in (1, 2, 1, 3)]
    numbers = [d.metadata.dispatch_id for d in made if d.metadata]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4


@pytest.mark.parametrize(
    ("micros", "rounded_up"), [(400_000, False), (500_000, True), (900_000, True)]
)
async def test_start_time_is_rounded_to_the_nearest_second(
    stub: MicrogridDispatchServiceStub, micros: int, rounded_up: bool
) -> None:
    start = future(600).replace(microsecond=micros)
    created = await create(stub, start_time=start)
    assert created.data is not None
    expected = start.replace(microsecond=0) + dt.timedelta(seconds=int(rounded_up))
    assert created.data.start_time == expected


async def test_start_immediately_uses_the_server_clock(stub: MicrogridDispatchServiceStub) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    created = await create(stub, start_time=None, start_immediately=True)
    after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert created.data is not None and created.data.start_time is not None
    assert before <= created.data.start_time <= after
    assert created.data.start_time.microsecond == 0


async def test_start_time_slightly_in_the_past_is_accepted(
    stub: MicrogridDispatchServiceStub,
) -> None:
    await create(stub, start_time=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=20))


async def test_uint64_microgrid_ids_work(stub: MicrogridDispatchServiceStub) -> None:
    biggest = 2**64 - 1
    created = await create(stub, biggest)
    assert created.metadata is not None
    await get(stub, biggest, created.metadata.dispatch_id)
    assert len(await list_all(stub, biggest)) == 1
    assert await list_all(stub, 2**63 - 1) == []


@pytest.mark.parametrize(
    ("data", "recurrence", "expected_end"),
    [
        # one run: start + duration
        ({"duration": 60}, None, dt.timedelta(seconds=60)),
        # no duration: never ends
        ({"duration": None}, None, None),
        # three daily runs: last run starts two days later
        (
            {"duration": 60},
            RecurrenceRule(
                freq=RecurrenceRuleFrequency.DAILY,
                end_criteria=RecurrenceRuleEndCriteria(count=3),
            ),
            dt.timedelta(days=2, seconds=60),
        ),
        # repeats forever
        ({"duration": 60}, RecurrenceRule(freq=RecurrenceRuleFrequency.HOURLY), None),
    ],
)
async def test_end_time_follows_duration_and_recurrence(
    stub: MicrogridDispatchServiceStub,
    data: dict[str, Any],
    recurrence: RecurrenceRule | None,
    expected_end: dt.timedelta | None,
) -> None:
    start = future(3600).replace(microsecond=0)
    created = await create(stub, start_time=start, recurrence=recurrence, **data)
    assert created.metadata is not None
    expected = None if expected_end is None else start + expected_end
    assert created.metadata.end_time == expected


# Create validation ----------------------------------------------------------------

_BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("missing type", {"type": ""}, "type"),
    ("start in the past", {"start_time": future(-3600)}, "start_time"),
    ("no start time", {"start_time": None}, "start_time"),
    ("payload too deep", {"payload": _unchecked_struct(_nested(6))}, "payload"),
    ("payload too large", {"payload": _unchecked_struct({"x": "y" * 60_000})}, "payload"),
    (
        "count 0",
        {
            "recurrence": RecurrenceRule(
                freq=RecurrenceRuleFrequency.DAILY,
                end_criteria=RecurrenceRuleEndCriteria(count=0),
            )
        },
        "recurrence.end_criteria.count",
    ),
    (
        "count 4097",
        {
            "recurrence": RecurrenceRule(
                freq=RecurrenceRuleFrequency.DAILY,
                end_criteria=RecurrenceRuleEndCriteria(count=4097),
            )
        },
        "recurrence.end_criteria.count",
    ),
    (
        "interval too big",
        {"recurrence": RecurrenceRule(freq=RecurrenceRuleFrequency.DAILY, interval=10_001)},
        "recurrence.interval",
    ),
    (
        "byminutes 60",
        {"recurrence": RecurrenceRule(freq=RecurrenceRuleFrequency.HOURLY, byminutes=[60])},
        "recurrence.byminutes",
    ),
    (
        "byhours 24",
        {"recurrence": RecurrenceRule(freq=RecurrenceRuleFrequency.DAILY, byhours=[24])},
        "recurrence.byhours",
    ),
    (
        "bymonths 13",
        {"recurrence": RecurrenceRule(freq=RecurrenceRuleFrequency.YEARLY, bymonths=[13])},
        "recurrence.bymonths",
    ),
    (
        "bymonthdays 0",
        {"recurrence": RecurrenceRule(freq=RecurrenceRuleFrequency.MONTHLY, bymonthdays=[0])},
        "recurrence.bymonthdays",
    ),
    (
        "bymonthdays with weekly",
        {"recurrence": RecurrenceRule(freq=RecurrenceRuleFrequency.WEEKLY, bymonthdays=[1])},
        "recurrence.bymonthdays",
    ),
    (
        "byweekdays unspecified",
        {
            "recurrence": RecurrenceRule(
                freq=RecurrenceRuleFrequency.WEEKLY, byweekdays=[RecurrenceRuleWeekday.UNSPECIFIED]
            )
        },
        "recurrence.byweekdays",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [pytest.param(o, f, id=name) for name, o, f in _BAD_CREATES],
)
async def test_invalid_create_is_rejected_and_stores_nothing(
    stub: MicrogridDispatchServiceStub, overrides: dict[str, Any], field: str
) -> None:
    with expect_error(Status.INVALID_ARGUMENT, field):
        await create(stub, **overrides)
    assert await list_all(stub) == []


async def test_create_without_dispatch_data_is_rejected(stub: MicrogridDispatchServiceStub) -> None:
    with expect_error(Status.INVALID_ARGUMENT, "dispatch_data"):
        await stub.create_microgrid_dispatch(CreateMicrogridDispatchRequest(microgrid_id=1))


# Not found ------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", ["get", "delete", "update"])
async def test_unknown_or_foreign_id_is_not_found(
    stub: MicrogridDispatchServiceStub, rpc: str
) -> None:
    mine = await create(stub, 1)
    assert mine.metadata is not None
    for microgrid_id, dispatch_id in ((1, 999), (2, mine.metadata.dispatch_id), (1, 2**64 - 1)):
        with expect_error(Status.NOT_FOUND, str(dispatch_id)):
            if rpc == "get":
                await stub.get_microgrid_dispatch(
                    GetMicrogridDispatchRequest(microgrid_id=microgrid_id, dispatch_id=dispatch_id)
                )
            elif rpc == "delete":
                await stub.delete_microgrid_dispatch(
                    DeleteMicrogridDispatchRequest(
                        microgrid_id=microgrid_id, dispatch_id=dispatch_id
                    )
                )
            else:
                await _update(
                    stub, dispatch_id, ["is_active"], Update(is_active=False), microgrid_id
                )
    assert _as_bytes(await get(stub, 1, mine.metadata.dispatch_id)) == _as_bytes(mine)


# Delete ---------------------------------------------------------------------------


async def test_delete_removes_the_dispatch(stub: MicrogridDispatchServiceStub) -> None:
    keep, gone = await create(stub), await create(stub)
    assert keep.metadata is not None and gone.metadata is not None
    response = await stub.delete_microgrid_dispatch(
        DeleteMicrogridDispatchRequest(microgrid_id=1, dispatch_id=gone.metadata.dispatch_id)
    )
    assert (response.microgrid_id, response.dispatch_id) == (1, gone.metadata.dispatch_id)
    with expect_error(Status.NOT_FOUND):
        await get(stub, 1, gone.metadata.dispatch_id)
    assert [d.metadata.dispatch_id for d in await list_all(stub) if d.metadata] == [
        keep.metadata.dispatch_id
    ]


# Update ---------------------------------------------------------------------------


async def _update(
    stub: MicrogridDispatchServiceStub,
    dispatch_id: int,
    paths: list[str],
    update: Update,
    microgrid_id: int = 1,
) -> Dispatch:
    response = await stub.update_microgrid_dispatch(
        UpdateMicrogridDispatchRequest(
            microgrid_id=microgrid_id,
            dispatch_id=dispatch_id,
            update_mask=FieldMask(paths=paths),
            update=update,
        )
    )
    assert response.dispatch is not None
    return response.dispatch


async def test_update_applies_only_the_masked_paths(stub: MicrogridDispatchServiceStub) -> None:
    original = await create(stub, duration=60, payload=payload_to_struct({"p": 1}))
    assert original.metadata is not None and original.data is not None
    new_start = future(7200).replace(microsecond=0)
    # Every field of the update is set, but only two paths are in the mask.
    update = Update(
        start_time=new_start,
        duration=5,
        target=TargetComponents(
            component_categories=TargetComponentsCategorySet(
                categories=[ElectricalComponentCategory.BATTERY]
            )
        ),
        is_active=False,
        payload=payload_to_struct({"q": 2}),
    )
    updated = await _update(
        stub, original.metadata.dispatch_id, ["start_time", "is_active"], update
    )
    assert updated.data is not None and updated.metadata is not None
    assert updated.data.start_time == new_start
    assert updated.data.is_active is False
    assert updated.data.duration == 60
    assert updated.data.target == original.data.target
    assert updated.data.payload == payload_to_struct({"p": 1})
    assert updated.metadata.create_time == original.metadata.create_time
    assert updated.metadata.update_time is not None and original.metadata.update_time is not None
    assert updated.metadata.update_time > original.metadata.update_time
    assert updated.metadata.end_time == new_start + dt.timedelta(seconds=60)
    assert _as_bytes(await get(stub, 1, original.metadata.dispatch_id)) == _as_bytes(updated)


async def test_update_target_payload_and_clear_duration(stub: MicrogridDispatchServiceStub) -> None:
    original = await create(stub, duration=60, payload=payload_to_struct({"p": 1}))
    assert original.metadata is not None
    target = TargetComponents(
        component_categories=TargetComponentsCategorySet(
            categories=[ElectricalComponentCategory.BATTERY]
        )
    )
    updated = await _update(
        stub,
        original.metadata.dispatch_id,
        ["duration", "target", "payload"],
        Update(duration=None, target=target, payload=payload_to_struct({"q": [1, 2]})),
    )
    assert updated.data is not None and updated.metadata is not None
    assert updated.data.duration is None
    assert updated.metadata.end_time is None
    assert updated.data.target == target
    assert updated.data.payload == payload_to_struct({"q": [1, 2]})


async def test_update_recurrence_fields_one_by_one(stub: MicrogridDispatchServiceStub) -> None:
    rule = RecurrenceRule(
        freq=RecurrenceRuleFrequency.DAILY,
        interval=2,
        end_criteria=RecurrenceRuleEndCriteria(count=5),
        byhours=[8],
    )
    original = await create(stub, recurrence=rule)
    assert original.metadata is not None
    updated = await _update(
        stub,
        original.metadata.dispatch_id,
        ["recurrence.interval", "recurrence.byminutes", "recurrence.end_criteria"],
        Update(
            recurrence=RecurrenceUpdate(
                freq=RecurrenceRuleFrequency.WEEKLY,  # not in the mask: ignored
                interval=3,
                byminutes=[15, 45],
                end_criteria=None,
            )
        ),
    )
    assert updated.data is not None and updated.data.recurrence is not None
    new_rule = updated.data.recurrence
    assert new_rule.freq == RecurrenceRuleFrequency.DAILY
    assert new_rule.interval == 3
    assert new_rule.byminutes == [15, 45]
    assert new_rule.byhours == [8]
    assert new_rule.end_criteria is None
    assert updated.metadata is not None and updated.metadata.end_time is None


async def test_update_adds_recurrence_to_a_one_off(stub: MicrogridDispatchServiceStub) -> None:
    original = await create(stub, recurrence=None)
    assert original.metadata is not None
    updated = await _update(
        stub,
        original.metadata.dispatch_id,
        ["recurrence.freq"],
        Update(recurrence=RecurrenceUpdate(freq=RecurrenceRuleFrequency.HOURLY)),
    )
    assert updated.data is not None and updated.data.recurrence is not None
    assert updated.data.recurrence.freq == RecurrenceRuleFrequency.HOURLY


async def test_update_whole_recurrence_replaces_it(stub: MicrogridDispatchServiceStub) -> None:
    original = await create(
        stub, recurrence=RecurrenceRule(freq=RecurrenceRuleFrequency.DAILY, byhours=[8])
    )
    assert original.metadata is not None
    updated = await _update(
        stub,
        original.metadata.dispatch_id,
        ["recurrence"],
        Update(recurrence=RecurrenceUpdate(freq=RecurrenceRuleFrequency.MINUTELY, interval=5)),
    )
    assert updated.data is not None and updated.data.recurrence is not None
    assert updated.data.recurrence.freq == RecurrenceRuleFrequency.MINUTELY
    assert updated.data.recurrence.interval == 5
    assert updated.data.recurrence.byhours == []


_BAD_UPDATES: list[tuple[str, list[str], Update, str]] = [
    ("empty mask", [], Update(is_active=False), "update_mask"),
    ("type", ["type"], Update(), "'type'"),
    ("is_dry_run", ["is_dry_run"], Update(), "'is_dry_run'"),
    ("unknown path", ["colour"], Update(), "'colour'"),
    ("unknown recurrence path", ["recurrence.colour"], Update(), "'recurrence.colour'"),
    ("start in the past", ["start_time"], Update(start_time=future(-3600)), "start_time"),
    ("start missing", ["start_time"], Update(), "start_time"),
    (
        "payload too deep",
        ["payload"],
        Update(payload=_unchecked_struct(_nested(6))),
        "payload",
    ),
    (
        "interval out of range",
        ["recurrence.interval"],
        Update(recurrence=RecurrenceUpdate(interval=10_001)),
        "recurrence.interval",
    ),
    (
        "monthdays with weekly",
        ["recurrence.freq", "recurrence.bymonthdays"],
        Update(recurrence=RecurrenceUpdate(freq=RecurrenceRuleFrequency.WEEKLY, bymonthdays=[3])),
        "recurrence.bymonthdays",
    ),
    (
        "valid path before an invalid one",
        ["is_active", "recurrence.byhours"],
        Update(is_active=False, recurrence=RecurrenceUpdate(byhours=[25])),
        "recurrence.byhours",
    ),
]


@pytest.mark.parametrize(
    ("paths", "update", "field"),
    [pytest.param(p, u, f, id=name) for name, p, u, f in _BAD_UPDATES],
)
async def test_invalid_update_is_rejected_and_changes_nothing(
    stub: MicrogridDispatchServiceStub, paths: list[str], update: Update, field: str
) -> None:
    original = await create(stub)
    assert original.metadata is not None
    with expect_error(Status.INVALID_ARGUMENT, field):
        await _update(stub, original.metadata.dispatch_id, paths, update)
    assert _as_bytes(await get(stub, 1, original.metadata.dispatch_id)) == _as_bytes(original)


async def test_stored_data_round_trips_every_field(stub: MicrogridDispatchServiceStub) -> None:
    data = make_data(
        is_dry_run=True,
        payload=payload_to_struct({"s": "x", "n": 1.5, "b": True, "l": [None, {"k": "v"}]}),
        recurrence=RecurrenceRule(
            freq=RecurrenceRuleFrequency.WEEKLY,
            interval=2,
            end_criteria=RecurrenceRuleEndCriteria(
                until_time=future(86400 * 30).replace(microsecond=0)
            ),
            byweekdays=[RecurrenceRuleWeekday.MONDAY, RecurrenceRuleWeekday.FRIDAY],
            byhours=[6, 18],
            byminutes=[0, 30],
        ),
    )
    data.start_time = data.start_time.replace(microsecond=0) if data.start_time else None
    response = await stub.create_microgrid_dispatch(
        CreateMicrogridDispatchRequest(
            microgrid_id=1, dispatch_data=DispatchData.parse(bytes(data))
        )
    )
    assert response.dispatch is not None and response.dispatch.metadata is not None
    fetched = await get(stub, 1, response.dispatch.metadata.dispatch_id)
    assert fetched.data is not None
    assert bytes(fetched.data) == bytes(data)
