"""iCalendar export: parse the output back and expand it independently of `runs()`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
from dateutil.rrule import rrulestr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_client import (
    BatteryType,
    Dispatch,
    DispatchData,
    DispatchMetadata,
    ElectricalComponentCategory,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)
from dispatch_client.ical import to_ical
from dispatch_client.recurrence import runs
from dispatch_client.validation import payload_to_struct

F = RecurrenceRuleFrequency
W = RecurrenceRuleWeekday
DAY = timedelta(days=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def dispatch(
    start: datetime,
    rule: RecurrenceRule | None = None,
    duration: int | None = 3600,
    *,
    active: bool = True,
    **data: object,
) -> Dispatch:
    return Dispatch(
        metadata=DispatchMetadata(
            dispatch_id=42, create_time=utc(2024, 12, 1), update_time=utc(2024, 12, 2)
        ),
        data=DispatchData(
            type="CHARGE",
            start_time=start,
            duration=duration,
            is_active=active,
            recurrence=rule,
            **data,  # type: ignore[arg-type]
        ),
    )


def event_of(exported: bytes) -> icalendar.Event:
    calendar = icalendar.Calendar.from_ical(exported)
    events = calendar.walk("VEVENT")
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, icalendar.Event)
    return event


def expand(event: icalendar.Event, window_start: datetime, window_end: datetime) -> list[datetime]:
    """Occurrence starts in [window_start, window_end), as any RFC 5545 reader would compute."""
    dtstart: datetime = event.decoded("DTSTART")
    if "RRULE" not in event:
        return [dtstart] if window_start <= dtstart < window_end else []
    lines = [f"DTSTART:{dtstart:%Y%m%dT%H%M%SZ}", "RRULE:" + _text(event["RRULE"])]
    if "EXDATE" in event:
        lines.append("EXDATE:" + _text(event["EXDATE"]))
    try:
        rules = rrulestr("\n".join(lines), forceset=True)
    except ValueError:  # dateutil: the by* values are unreachable, the set is empty
        return []
    return [s for s in rules.between(window_start, window_end, inc=True) if s < window_end]


def _text(prop: Any) -> str:
    encoded: bytes = prop.to_ical()
    return encoded.decode()


def event_duration(event: icalendar.Event) -> timedelta | None:
    if "DURATION" in event:
        duration: timedelta = event.decoded("DURATION")
        return duration
    if "DTEND" in event:
        end: datetime = event.decoded("DTEND")
        start: datetime = event.decoded("DTSTART")
        return end - start
    return None


def assert_matches_runs(exported: Dispatch, window_start: datetime, window_end: datetime) -> None:
    assert exported.data is not None
    event = event_of(to_ical(exported))
    schedule = [
        (s, e) for s, e in runs(exported.data, window_start, window_end) if s >= window_start
    ]
    assert expand(event, window_start, window_end) == [s for s, _ in schedule]
    duration = event_duration(event)
    for start, end in schedule:
        assert end == (None if duration is None else start + duration)


def test_weekly_schedule_round_trips() -> None:
    rule = RecurrenceRule(
        freq=F.WEEKLY,
        interval=2,
        byweekdays=[W.MONDAY, W.FRIDAY],
        byhours=[8, 17],
        end_criteria=RecurrenceRuleEndCriteria(count=20),
    )
    exported = dispatch(utc(2025, 1, 6, 8), rule, 1800)
    event = event_of(to_ical(exported))
    assert event["UID"] == "dispatch-42@dispatch-client"
    assert event["SUMMARY"] == "CHARGE"
    assert event.decoded("DURATION") == timedelta(minutes=30)
    assert "DTEND" not in event
    assert event["RRULE"].to_ical() == (
        b"FREQ=WEEKLY;COUNT=20;INTERVAL=2;BYHOUR=8,17;BYDAY=MO,FR;WKST=MO"
    )
    assert event.decoded("DTSTAMP") == utc(2024, 12, 2)
    assert str(event["STATUS"]) == "CONFIRMED"
    assert_matches_runs(exported, utc(2025, 1, 1), utc(2025, 6, 1))


def test_until_and_last_day_of_month() -> None:
    rule = RecurrenceRule(
        freq=F.MONTHLY,
        bymonthdays=[-1],
        end_criteria=RecurrenceRuleEndCriteria(until_time=utc(2025, 9, 30, 12)),
    )
    exported = dispatch(utc(2025, 1, 31, 12), rule, 600)
    event = event_of(to_ical(exported))
    assert b"UNTIL=20250930T120000Z" in event["RRULE"].to_ical()
    assert_matches_runs(exported, utc(2025, 1, 1), utc(2026, 1, 1))
    assert len(expand(event, utc(2025, 1, 1), utc(2026, 1, 1))) == 9


def test_one_off_uses_dtend() -> None:
    exported = dispatch(utc(2025, 3, 1, 10), None, 5400)
    event = event_of(to_ical(exported))
    assert "RRULE" not in event and "DURATION" not in event
    assert event.decoded("DTSTART") == utc(2025, 3, 1, 10)
    assert event.decoded("DTEND") == utc(2025, 3, 1, 11, 30)
    assert_matches_runs(exported, utc(2025, 1, 1), utc(2026, 1, 1))


def test_runs_until_stopped_has_no_end() -> None:
    exported = dispatch(utc(2025, 3, 1, 10), RecurrenceRule(freq=F.DAILY), None)
    event = event_of(to_ical(exported))
    assert "DTEND" not in event and "DURATION" not in event
    assert "runs until stopped" in str(event["DESCRIPTION"])


def test_start_not_matching_the_rule_starts_at_the_first_run() -> None:
    # RFC 5545 would count a Monday DTSTART as a run of "every Friday"; dateutil
    # and runs() do not, so the export starts at the first real run.
    exported = dispatch(utc(2025, 1, 6, 8), RecurrenceRule(freq=F.WEEKLY, byweekdays=[W.FRIDAY]))
    event = event_of(to_ical(exported))
    assert event.decoded("DTSTART") == utc(2025, 1, 10, 8)
    assert_matches_runs(exported, utc(2025, 1, 1), utc(2025, 4, 1))


def test_series_without_runs_excludes_its_start() -> None:
    # Daily at 09:00, from 10:00, until 11:00 the same day: not a single run.
    until_time = RecurrenceRuleEndCriteria(until_time=utc(2025, 1, 6, 11))
    rule = RecurrenceRule(freq=F.DAILY, byhours=[9], end_criteria=until_time)
    exported = dispatch(utc(2025, 1, 6, 10), rule)
    event = event_of(to_ical(exported))
    assert event.decoded("DTSTART") == utc(2025, 1, 6, 10)
    assert "EXDATE" in event
    assert expand(event, utc(2025, 1, 1), utc(2030, 1, 1)) == []


def test_local_and_sub_second_start_exported_in_whole_utc_seconds() -> None:
    start = datetime(2025, 1, 6, 8, 0, 0, 500_000, tzinfo=ZoneInfo("Europe/Berlin"))
    exported = dispatch(
        start, RecurrenceRule(freq=F.DAILY, end_criteria=RecurrenceRuleEndCriteria(count=3))
    )
    event = event_of(to_ical(exported))
    assert event.decoded("DTSTART") == utc(2025, 1, 6, 7)
    assert b"DTSTART:20250106T070000Z" in to_ical(exported)


def test_inactive_is_cancelled_and_description_has_target_and_payload() -> None:
    target = TargetComponents(
        component_categories_types=TargetComponentsCategoryTypeSet(
            categories=[
                TargetComponentsCategoryAndType(
                    category=ElectricalComponentCategory.BATTERY, battery=BatteryType.LI_ION
                )
            ]
        )
    )
    exported = dispatch(
        utc(2025, 1, 6, 8),
        active=False,
        is_dry_run=True,
        target=target,
        payload=payload_to_struct({"power_w": -5000}),
    )
    event = event_of(to_ical(exported))
    assert str(event["STATUS"]) == "CANCELLED"
    description = str(event["DESCRIPTION"])
    assert "Dispatch 42 (inactive, dry run)" in description
    assert "Target: categories BATTERY (LI_ION)" in description
    assert 'Payload: {"power_w": -5000.0}' in description

    ids = dispatch(
        utc(2025, 1, 6, 8), target=TargetComponents(component_ids=TargetComponentsIdSet(ids=[3, 5]))
    )
    assert "Target: components 3, 5" in str(event_of(to_ical(ids))["DESCRIPTION"])


def test_needs_metadata_and_data() -> None:
    with pytest.raises(ValueError, match="metadata and data"):
        to_ical(Dispatch(data=DispatchData(type="X", start_time=utc(2025, 1, 1))))


def test_missing_icalendar_explains_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "icalendar", None)
    with pytest.raises(ImportError, match=r"dispatch_client\[ical\]"):
        to_ical(dispatch(utc(2025, 1, 1)))


@st.composite
def exportable(draw: st.DrawFn) -> Dispatch:
    freq = draw(st.sampled_from([F.UNSPECIFIED, F.HOURLY, F.DAILY, F.WEEKLY, F.MONTHLY, F.YEARLY]))
    start = draw(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31)))
    start = start.replace(microsecond=0, tzinfo=UTC)
    end = draw(
        st.one_of(
            st.none(),
            st.builds(RecurrenceRuleEndCriteria, count=st.integers(1, 40)),
            st.builds(
                RecurrenceRuleEndCriteria,
                until_time=st.integers(0, 400).map(lambda days: start + days * DAY),
            ),
        )
    )
    few = {"max_size": 2, "unique": True}
    rule = RecurrenceRule(
        freq=freq,
        interval=draw(st.integers(0, 3)),
        end_criteria=end,
        byhours=draw(st.lists(st.integers(0, 23), **few)),  # type: ignore[arg-type]
        byweekdays=[W(d) for d in draw(st.lists(st.integers(1, 7), **few))],  # type: ignore[arg-type]
        bymonthdays=[]
        if freq == F.WEEKLY
        else draw(st.lists(st.sampled_from([1, 15, 28, -1]), **few)),  # type: ignore[arg-type]
    )
    duration = draw(st.one_of(st.none(), st.integers(0, 3 * 86400)))
    return dispatch(start, rule, duration)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exportable(), st.integers(0, 500))
def test_export_expands_to_the_same_runs(exported: Dispatch, offset_days: int) -> None:
    assert exported.data is not None and exported.data.start_time is not None
    window_start = exported.data.start_time - DAY + offset_days * DAY
    assert_matches_runs(exported, window_start, window_start + 60 * DAY)
