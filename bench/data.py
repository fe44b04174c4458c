"""Deterministic, realistic dispatches for populating the server and for the decode benchmark.

Only the orchestrator and our own side import this module (it builds our
generated messages); the official side only ever sees the wire bytes.
"""

from __future__ import annotations

import datetime as dt

from dispatch_client import (
    BatteryType,
    Dispatch,
    DispatchData,
    DispatchMetadata,
    ElectricalComponentCategory,
    EvChargerType,
    InverterType,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
)
from dispatch_client.targets import target_from_categories, target_from_ids, target_from_types
from dispatch_client.validation import payload_to_struct
from dispatch_client.wire import (
    ListMicrogridDispatchesResponse,
    PaginationInfo,
)

TYPES = ("BATTERY_CHARGE", "PV_CURTAIL", "EV_LIMIT", "LOAD_SHIFT", "GRID_SUPPORT")


def _target(i: int):  # type: ignore[no-untyped-def]
    kind = i % 5
    if kind < 3:  # most real dispatches name component ids
        return target_from_ids(*range(i % 50 + 1, i % 50 + 1 + (i % 4) + 1))
    if kind == 3:
        return target_from_categories(
            ElectricalComponentCategory.BATTERY, ElectricalComponentCategory.INVERTER
        )
    return target_from_types(BatteryType.LI_ION, InverterType.PV, EvChargerType.DC)


def _payload(i: int) -> dict[str, object]:
    if i % 2:
        return {"power_w": float(1000 + i % 9000)}
    return {
        "power_w": float(-5000 + i % 10000),
        "mode": "peak_shaving" if i % 4 else "charge",
        "limits": {"soc_min": 10.0, "soc_max": 90.0},
        "tags": ["bench", f"site-{i % 7}"],
    }


def _recurrence(i: int) -> RecurrenceRule | None:
    kind = i % 10
    if kind < 7:
        return None
    if kind < 9:
        return RecurrenceRule(
            freq=RecurrenceRuleFrequency.DAILY,
            interval=1,
            end_criteria=RecurrenceRuleEndCriteria(count=30),
            byhours=[8, 17],
        )
    return RecurrenceRule(
        freq=RecurrenceRuleFrequency.WEEKLY,
        interval=2,
        end_criteria=RecurrenceRuleEndCriteria(count=20),
        byweekdays=[
            RecurrenceRuleWeekday.MONDAY,
            RecurrenceRuleWeekday.WEDNESDAY,
            RecurrenceRuleWeekday.FRIDAY,
        ],
    )


def dispatch_data(i: int, now: dt.datetime) -> DispatchData:
    """The i-th sample dispatch: a mix of targets, payload sizes and recurrences."""
    return DispatchData(
        type=TYPES[i % len(TYPES)],
        start_time=(now + dt.timedelta(hours=1, minutes=i)).replace(microsecond=0),
        duration=None if i % 11 == 0 else 900 + 60 * (i % 60),
        target=_target(i),
        is_active=i % 13 != 0,
        is_dry_run=i % 17 == 0,
        payload=payload_to_struct(_payload(i)),
        recurrence=_recurrence(i),
    )


def list_response(count: int, now: dt.datetime) -> ListMicrogridDispatchesResponse:
    """A full list page of `count` dispatches, as the server would send it."""
    created = now.replace(microsecond=123456)
    dispatches = []
    for i in range(count):
        data = dispatch_data(i, now)
        assert data.start_time is not None
        end = None if data.duration is None else data.start_time + dt.timedelta(seconds=900)
        dispatches.append(
            Dispatch(
                metadata=DispatchMetadata(
                    dispatch_id=i + 1,
                    create_time=created,
                    update_time=created,
                    end_time=end,
                ),
                data=data,
            )
        )
    return ListMicrogridDispatchesResponse(
        dispatches=dispatches,
        pagination_info=PaginationInfo(total_items=count * 10, next_page_token="bench-next"),
    )
