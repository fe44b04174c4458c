"""Recurrence arithmetic: properties against a plain dateutil enumeration, plus hand-checked cases."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import pytest
from dateutil import rrule as du
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dispatch_client import (
    Dispatch,
    DispatchData,
    DispatchMetadata,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
)
from dispatch_client.recurrence import (
    is_running,
    next_run,
    runs,
    series_end,
    to_rrule,
    until,
)

F = RecurrenceRuleFrequency
W = RecurrenceRuleWeekday
BERLIN = ZoneInfo("Europe/Berlin")
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def make(
    start: datetime,
    rule: RecurrenceRule | None = None,
    duration: int | None = 3600,
    *,
    active: bool = True,
) -> DispatchData:
    return DispatchData(
        type="TEST", start_time=start, duration=duration, is_active=active, recurrence=rule
    )


# --- the reference: dateutil straight from dtstart, built here independently ---

DATEUTIL_FREQ: dict[RecurrenceRuleFrequency, Literal[0, 1, 2, 3, 4, 5, 6]] = {
    F.MINUTELY: du.MINUTELY,
    F.HOURLY: du.HOURLY,
    F.DAILY: du.DAILY,
    F.WEEKLY: du.WEEKLY,
    F.MONTHLY: du.MONTHLY,
    F.YEARLY: du.YEARLY,
}
PERIOD = {
    F.MINUTELY: MINUTE,
    F.HOURLY: HOUR,
    F.DAILY: DAY,
    F.WEEKLY: 7 * DAY,
    F.MONTHLY: 30 * DAY,
    F.YEARLY: 365 * DAY,
}
LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
REFERENCE_CAP = 20_000


def reference_starts(data: DispatchData, horizon: datetime) -> tuple[list[datetime], bool]:
    """All run starts up to `horizon` (and the first after it); whether that list is complete."""
    start = data.start_time
    assert start is not None
    rule = data.recurrence
    if rule is None or rule.freq == F.UNSPECIFIED:
        return [start], True
    end = rule.end_criteria
    try:
        rr = du.rrule(
            DATEUTIL_FREQ[rule.freq],
            dtstart=start,
            interval=rule.interval or 1,
            wkst=du.MO,
            count=end.count if end else None,
            until=end.until_time if end else None,
            byminute=rule.byminutes or None,
            byhour=rule.byhours or None,
            byweekday=[int(d) - 1 for d in rule.byweekdays] or None,
            bymonthday=rule.bymonthdays or None,
            bymonth=rule.bymonths or None,
        )
        found = []
        for whole in rr:
            # dateutil drops microseconds; a run keeps the start's.
            found.append(whole + timedelta(microseconds=start.microsecond))
            if found[-1] > horizon:
                return found, True
            if len(found) >= REFERENCE_CAP:
                return found, False
    except ValueError:  # dateutil: by* values unreachable with this interval
        return [], True
    return found, True


def reference_runs(
    data: DispatchData, starts: list[datetime], window_start: datetime, window_end: datetime
) -> list[tuple[datetime, datetime | None]]:
    if window_end <= window_start:
        return []
    if data.duration is None:
        return [(s, None) for s in starts if s < window_end]
    d = timedelta(seconds=data.duration)
    return [
        (s, s + d) for s in starts if s < window_end and (s >= window_start or s + d > window_start)
    ]


def containing(
    data: DispatchData, starts: list[datetime], at: datetime
) -> list[tuple[datetime, datetime | None]]:
    if data.duration is None:
        return [(s, None) for s in starts if s <= at]
    d = timedelta(seconds=data.duration)
    return [(s, s + d) for s in starts if s <= at < s + d]


# --- strategies ---


def maybe_list(values: st.SearchStrategy[int], max_size: int = 3) -> st.SearchStrategy[list[int]]:
    return st.one_of(
        st.just([]), st.just([]), st.lists(values, min_size=1, max_size=max_size, unique=True)
    )


def never_matches(rule: RecurrenceRule, start: datetime) -> bool:
    """Rules the plain reference would search up to year 9999 for (slow), so we skip them."""
    months = set(rule.bymonths or range(1, 13))
    if rule.bymonthdays and not any(
        abs(day) <= LONGEST_MONTH[m - 1] for m in months for day in rule.bymonthdays
    ):
        return True
    return rule.freq == F.MONTHLY and (rule.interval or 1) > 1 and bool(rule.bymonths)


@st.composite
def schedules(draw: st.DrawFn) -> tuple[DispatchData, timedelta]:
    freq = draw(st.sampled_from(list(DATEUTIL_FREQ)))
    interval = draw(st.sampled_from([0, 1, 1, 2, 3, 5] + ([] if freq == F.YEARLY else [12])))
    start = draw(
        st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31))
    ).replace(tzinfo=UTC)
    if draw(st.booleans()):
        start = start.replace(microsecond=0)
    period = PERIOD[freq] * max(interval, 1)
    end_kind = draw(st.sampled_from(["none", "count", "until"]))
    end = None
    if end_kind == "count":
        end = RecurrenceRuleEndCriteria(count=draw(st.integers(1, 60)))
    elif end_kind == "until":
        until_time = start + period * draw(st.floats(0, 120))
        end = RecurrenceRuleEndCriteria(until_time=until_time)
    rule = RecurrenceRule(
        freq=freq,
        interval=interval,
        end_criteria=end,
        byminutes=draw(maybe_list(st.integers(0, 59))),
        byhours=draw(maybe_list(st.integers(0, 23))),
        byweekdays=[W(d) for d in draw(maybe_list(st.integers(1, 7)))],
        bymonthdays=[]
        if freq == F.WEEKLY
        else draw(maybe_list(st.integers(-31, 31).filter(bool), max_size=2)),
        bymonths=draw(maybe_list(st.integers(1, 12))),
    )
    assume(not never_matches(rule, start))
    duration = draw(
        st.one_of(
            st.none(), st.just(0), st.sampled_from([1, 60, 3600, 86400]), st.integers(1, 10**6)
        )
    )
    return make(start, rule, duration), period


@st.composite
def windows(draw: st.DrawFn) -> tuple[DispatchData, datetime, datetime]:
    data, period = draw(schedules())
    assert data.start_time is not None
    window_start = data.start_time + period * draw(st.floats(-3, 60))
    window_end = window_start + period * draw(st.floats(0, 10))
    return data, window_start, window_end


PROPERTY = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


# --- properties ---


@PROPERTY
@given(windows())
def test_next_run_matches_reference(case: tuple[DispatchData, datetime, datetime]) -> None:
    data, after, _ = case
    starts, complete = reference_starts(data, after)
    assume(complete)
    expected = next((s for s in starts if s > after), None)
    assert next_run(data, after) == expected


@PROPERTY
@given(windows())
def test_runs_match_reference(case: tuple[DispatchData, datetime, datetime]) -> None:
    data, window_start, window_end = case
    starts, complete = reference_starts(data, window_end)
    assume(complete)
    got = list(runs(data, window_start, window_end))
    assert got == reference_runs(data, starts, window_start, window_end)
    run_starts = [s for s, _ in got]
    assert run_starts == sorted(set(run_starts))
    if data.duration is not None and len(got) > 1:
        smallest_gap = min(b - a for a, b in itertools.pairwise(run_starts))
        if timedelta(seconds=data.duration) <= smallest_gap:
            assert all(
                end is not None and end <= following
                for (_, end), following in zip(got, run_starts[1:], strict=False)
            )


@PROPERTY
@given(windows())
def test_is_running_and_until_match_runs(case: tuple[DispatchData, datetime, datetime]) -> None:
    data, window_start, window_end = case
    starts, complete = reference_starts(data, window_end)
    assume(complete)
    for at in (window_start, window_end, window_start + (window_end - window_start) / 3):
        live = containing(data, starts, at)
        assert is_running(data, at) == bool(live)
        # The same answer read off runs() over a window around `at`.
        around = runs(data, at - DAY, at + DAY)
        assert is_running(data, at) == any(
            s <= at and (e is None or at < e) for s, e in around if data.duration != 0
        )
        ends = [e for _, e in live if e is not None]
        expected_end = max(ends) if ends else None
        assert until(data, at) == expected_end


@PROPERTY
@given(schedules())
def test_series_end_is_end_of_last_run(case: tuple[DispatchData, timedelta]) -> None:
    data, _ = case
    assert data.recurrence is not None and data.start_time is not None
    if data.recurrence.end_criteria is None:
        starts, _ = reference_starts(data, data.start_time)
        assert series_end(data) == (None if starts else data.start_time)
        return
    starts, complete = reference_starts(data, datetime.max.replace(tzinfo=UTC))
    assume(complete)
    if not starts:
        expected = data.start_time
    elif data.duration is None:
        expected = None
    else:
        expected = starts[-1] + timedelta(seconds=data.duration)
    assert series_end(data) == expected


@settings(max_examples=40, deadline=None)
@given(windows())
def test_inactive_dispatch_never_runs(case: tuple[DispatchData, datetime, datetime]) -> None:
    data, window_start, window_end = case
    data.is_active = False
    assert next_run(data, window_start) is None
    assert list(runs(data, window_start, window_end)) == []
    assert not is_running(data, window_start)
    assert until(data, window_start) is None


# --- hand-checked cases ---


def test_weekdays_at_eight_for_one_hour() -> None:
    monday = utc(2025, 1, 6, 8)
    weekdays = [W.MONDAY, W.TUESDAY, W.WEDNESDAY, W.THURSDAY, W.FRIDAY]
    data = make(monday, RecurrenceRule(freq=F.DAILY, byweekdays=weekdays), 3600)

    week = list(runs(data, utc(2025, 1, 6), utc(2025, 1, 13)))
    assert week == [(monday + i * DAY, monday + i * DAY + HOUR) for i in range(5)]
    assert next_run(data, utc(2025, 1, 10, 9)) == utc(2025, 1, 13, 8)
    assert is_running(data, utc(2025, 1, 7, 8))  # runs are [start, end)
    assert is_running(data, utc(2025, 1, 7, 8, 59, 59))
    assert not is_running(data, utc(2025, 1, 7, 9))
    assert not is_running(data, utc(2025, 1, 11, 8, 30))  # Saturday
    assert until(data, utc(2025, 1, 7, 8, 30)) == utc(2025, 1, 7, 9)
    assert until(data, utc(2025, 1, 11, 8, 30)) is None
    assert series_end(data) is None


def test_last_day_of_each_month() -> None:
    data = make(utc(2024, 1, 31, 12), RecurrenceRule(freq=F.MONTHLY, bymonthdays=[-1]), 600)
    starts = [s for s, _ in runs(data, utc(2024, 1, 1), utc(2025, 3, 1))]
    assert starts == [
        utc(2024, month, day, 12)
        for month, day in [
            (1, 31), (2, 29), (3, 31), (4, 30), (5, 31), (6, 30),
            (7, 31), (8, 31), (9, 30), (10, 31), (11, 30), (12, 31),
        ]
    ] + [utc(2025, 1, 31, 12), utc(2025, 2, 28, 12)]  # fmt: skip


def test_every_15_minutes_count_4096() -> None:
    start = utc(2025, 1, 1)
    rule = RecurrenceRule(
        freq=F.MINUTELY, interval=15, end_criteria=RecurrenceRuleEndCriteria(count=4096)
    )
    data = make(start, rule, 300)
    last = start + 4095 * 15 * MINUTE
    began = time.perf_counter()
    assert series_end(data) == last + 5 * MINUTE
    assert next_run(data, last - MINUTE) == last
    assert next_run(data, last) is None
    assert is_running(data, last + 4 * MINUTE)
    assert not is_running(data, last + 5 * MINUTE)
    assert list(runs(data, last - 20 * MINUTE, utc(2100, 1, 1))) == [
        (last - 15 * MINUTE, last - 10 * MINUTE),
        (last, last + 5 * MINUTE),
    ]
    assert time.perf_counter() - began < 1.0


def test_until_time_in_the_middle_of_a_run() -> None:
    # until limits when runs may *start* (RFC 5545); a started run is not cut short.
    start = utc(2025, 3, 1, 10)
    until_time = utc(2025, 3, 3, 11)
    rule = RecurrenceRule(
        freq=F.DAILY, end_criteria=RecurrenceRuleEndCriteria(until_time=until_time)
    )
    data = make(start, rule, 2 * 3600)
    assert [s for s, _ in runs(data, start, utc(2025, 4, 1))] == [
        start,
        start + DAY,
        start + 2 * DAY,
    ]
    assert series_end(data) == utc(2025, 3, 3, 12)
    assert is_running(data, utc(2025, 3, 3, 11, 30))
    assert until(data, utc(2025, 3, 3, 11, 30)) == utc(2025, 3, 3, 12)
    assert next_run(data, until_time) is None

    before_third = RecurrenceRuleEndCriteria(until_time=utc(2025, 3, 3, 9, 59))
    data.recurrence = RecurrenceRule(freq=F.DAILY, end_criteria=before_third)
    assert series_end(data) == utc(2025, 3, 2, 12)


def test_local_time_is_converted_not_misread() -> None:
    # 08:00 in Berlin in January is 07:00 UTC; the rule repeats in UTC, so in
    # summer the run is still at 07:00 UTC (09:00 Berlin).
    data = make(datetime(2025, 1, 6, 8, tzinfo=BERLIN), RecurrenceRule(freq=F.DAILY), 1800)
    assert next_run(data, utc(2025, 1, 6)) == utc(2025, 1, 6, 7)
    assert next_run(data, datetime(2025, 7, 1, 8, 30, tzinfo=BERLIN)) == utc(2025, 7, 1, 7)
    assert is_running(data, datetime(2025, 7, 1, 9, 15, tzinfo=BERLIN))
    assert not is_running(data, datetime(2025, 7, 1, 8, 15, tzinfo=BERLIN))
    first = next(
        runs(data, datetime(2025, 1, 6, tzinfo=BERLIN), datetime(2025, 1, 7, tzinfo=BERLIN))
    )
    assert first == (utc(2025, 1, 6, 7), utc(2025, 1, 6, 7, 30))
    assert first[0].tzinfo is UTC
    rr = to_rrule(RecurrenceRule(freq=F.DAILY), datetime(2025, 1, 6, 8, tzinfo=BERLIN))
    assert rr is not None and rr[0] == utc(2025, 1, 6, 7)

    berlin_until = RecurrenceRuleEndCriteria(until_time=datetime(2025, 1, 8, 8, tzinfo=BERLIN))
    data.recurrence = RecurrenceRule(freq=F.DAILY, end_criteria=berlin_until)
    assert series_end(data) == utc(2025, 1, 8, 7, 30)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda d: next_run(d, datetime(2025, 1, 1)), "after"),
        (lambda d: list(runs(d, datetime(2025, 1, 1), utc(2025, 1, 2))), "start"),
        (lambda d: list(runs(d, utc(2025, 1, 1), datetime(2025, 1, 2))), "end"),
        (lambda d: is_running(d, datetime(2025, 1, 1)), "at"),
        (lambda d: until(d, datetime(2025, 1, 1)), "at"),
        (lambda d: to_rrule(RecurrenceRule(freq=F.DAILY), datetime(2025, 1, 1)), "start"),
    ],
)
def test_naive_argument_raises_naming_it(call, name: str) -> None:  # type: ignore[no-untyped-def]
    data = make(utc(2025, 1, 1), RecurrenceRule(freq=F.DAILY))
    with pytest.raises(ValueError, match=rf"^{name} must be timezone-aware"):
        call(data)


def test_naive_times_inside_the_dispatch_raise() -> None:
    with pytest.raises(ValueError, match="start_time must be timezone-aware"):
        next_run(make(datetime(2025, 1, 1)), utc(2025, 1, 1))
    naive_until = RecurrenceRuleEndCriteria(until_time=datetime(2025, 2, 1))
    data = make(utc(2025, 1, 1), RecurrenceRule(freq=F.DAILY, end_criteria=naive_until))
    with pytest.raises(ValueError, match="until_time must be timezone-aware"):
        series_end(data)


def test_runs_are_lazy_but_validate_eagerly() -> None:
    data = make(utc(2025, 1, 1), RecurrenceRule(freq=F.DAILY))
    with pytest.raises(ValueError):
        runs(data, datetime(2025, 1, 1), utc(2025, 2, 1))  # not even iterated
    assert list(runs(data, utc(2025, 2, 1), utc(2025, 1, 1))) == []  # empty window


def test_start_microseconds_are_kept() -> None:
    start = utc(2025, 1, 1, 12).replace(microsecond=250_000)
    data = make(
        start, RecurrenceRule(freq=F.HOURLY, end_criteria=RecurrenceRuleEndCriteria(count=3)), 60
    )
    assert [s for s, _ in runs(data, start, start + DAY)] == [start, start + HOUR, start + 2 * HOUR]
    assert next_run(data, start - timedelta(microseconds=1)) == start
    assert next_run(data, start) == start + HOUR
    assert series_end(data) == start + 2 * HOUR + MINUTE


def test_start_not_matching_the_rule_is_not_a_run() -> None:
    # As in dateutil: a Monday start with "every Friday" first runs on Friday.
    data = make(utc(2025, 1, 6, 8), RecurrenceRule(freq=F.WEEKLY, byweekdays=[W.FRIDAY]))
    assert next_run(data, utc(2025, 1, 1)) == utc(2025, 1, 10, 8)
    assert not is_running(data, utc(2025, 1, 6, 8, 30))


def test_instantaneous_runs() -> None:
    data = make(utc(2025, 1, 1, 6), RecurrenceRule(freq=F.DAILY), duration=0)
    assert not is_running(data, utc(2025, 1, 2, 6))
    assert until(data, utc(2025, 1, 2, 6)) is None
    assert list(runs(data, utc(2025, 1, 2, 6), utc(2025, 1, 3, 6))) == [
        (utc(2025, 1, 2, 6), utc(2025, 1, 2, 6))
    ]
    assert list(runs(data, utc(2025, 1, 2, 6, 0, 1), utc(2025, 1, 3, 6))) == []


def test_runs_forever_without_duration() -> None:
    data = make(
        utc(2025, 1, 1),
        RecurrenceRule(freq=F.DAILY, end_criteria=RecurrenceRuleEndCriteria(count=3)),
        None,
    )
    assert not is_running(data, utc(2024, 12, 31))
    assert is_running(data, utc(2030, 1, 1))
    assert until(data, utc(2030, 1, 1)) is None
    assert series_end(data) is None
    # Every earlier run still overlaps a later window.
    assert list(runs(data, utc(2030, 1, 1), utc(2030, 1, 2))) == [
        (utc(2025, 1, 1), None),
        (utc(2025, 1, 2), None),
        (utc(2025, 1, 3), None),
    ]


def test_one_off_dispatch() -> None:
    start = utc(2025, 5, 1, 10)
    for rule in (None, RecurrenceRule(freq=F.UNSPECIFIED, byhours=[3])):
        data = make(start, rule, 900)
        assert next_run(data, start - DAY) == start
        assert next_run(data, start) is None
        assert list(runs(data, start - DAY, start + DAY)) == [(start, start + 15 * MINUTE)]
        assert is_running(data, start + 14 * MINUTE)
        assert series_end(data) == start + 15 * MINUTE
        assert to_rrule(rule, start) is None
    assert series_end(make(start, None, None)) is None


def test_dispatch_and_dispatch_data_are_both_accepted() -> None:
    data = make(
        utc(2025, 1, 1),
        RecurrenceRule(freq=F.DAILY, end_criteria=RecurrenceRuleEndCriteria(count=2)),
    )
    dispatch = Dispatch(metadata=DispatchMetadata(dispatch_id=1), data=data)
    assert next_run(dispatch, utc(2025, 1, 1)) == next_run(data, utc(2025, 1, 1)) == utc(2025, 1, 2)
    assert series_end(dispatch) == series_end(data) == utc(2025, 1, 2, 1)
    with pytest.raises(ValueError, match="no data"):
        next_run(Dispatch(), utc(2025, 1, 1))
    with pytest.raises(TypeError):
        next_run("not a dispatch", utc(2025, 1, 1))  # type: ignore[arg-type]


def test_inactive_still_has_a_series_end() -> None:
    rule = RecurrenceRule(freq=F.DAILY, end_criteria=RecurrenceRuleEndCriteria(count=2))
    data = make(utc(2025, 1, 1), rule, 60, active=False)
    assert next_run(data, utc(2024, 1, 1)) is None
    assert series_end(data) == utc(2025, 1, 2, 0, 1)


def test_far_future_windows_are_fast() -> None:
    start = utc(2025, 1, 1, 0, 0, 30)
    minutely = make(start, RecurrenceRule(freq=F.MINUTELY), 20)
    every_7h = make(start, RecurrenceRule(freq=F.HOURLY, interval=7), 3600)
    weekly = make(start, RecurrenceRule(freq=F.WEEKLY, interval=3, byweekdays=[W.MONDAY]), 60)
    far = utc(2125, 6, 1, 12, 0, 40)
    began = time.perf_counter()

    assert next_run(minutely, far) == utc(2125, 6, 1, 12, 1, 30)
    assert is_running(minutely, utc(2125, 6, 1, 12, 0, 45))
    assert until(minutely, utc(2125, 6, 1, 12, 0, 45)) == utc(2125, 6, 1, 12, 0, 50)
    assert not is_running(minutely, utc(2125, 6, 1, 12, 0, 50))
    window = list(runs(minutely, far, far + 10 * MINUTE))
    # The run started at 12:00:30 still overlaps a window opening at 12:00:40.
    assert window[0] == (utc(2125, 6, 1, 12, 0, 30), utc(2125, 6, 1, 12, 0, 50))
    assert len(window) == 11

    k = -(-(far - start) // (7 * HOUR))  # first multiple of 7 h at or after `far`
    assert next_run(every_7h, far) == start + k * 7 * HOUR
    # Every 3rd week counts from the week of the start (Mon 2024-12-30, whose
    # Monday is before the start), so the first run is Monday 2025-01-20.
    first_monday = utc(2025, 1, 20, 0, 0, 30)
    assert next_run(weekly, start) == first_monday
    got = next_run(weekly, far)
    assert (
        got is not None and got.weekday() == 0 and (got - first_monday) % (21 * DAY) == timedelta(0)
    )
    assert got - far <= 21 * DAY
    assert time.perf_counter() - began < 0.5


def test_rules_that_never_run_are_answered_quickly() -> None:
    start = utc(2025, 1, 1)
    began = time.perf_counter()
    for rule in (
        RecurrenceRule(freq=F.MINUTELY, bymonths=[2], bymonthdays=[30]),
        RecurrenceRule(
            freq=F.DAILY, interval=7, byweekdays=[W.TUESDAY]
        ),  # 2025-01-01 is a Wednesday
        RecurrenceRule(freq=F.MONTHLY, interval=2, bymonths=[2, 4]),  # Jan, Mar, May, ...
        RecurrenceRule(freq=F.HOURLY, interval=2, byhours=[1]),
    ):
        data = make(start, rule, 60)
        assert next_run(data, start - DAY) is None
        assert list(runs(data, start, start + 365 * DAY)) == []
        assert not is_running(data, start)
        assert series_end(data) == start  # a series without runs ends at its start
    assert time.perf_counter() - began < 0.5


def test_rfc5545_examples_in_utc() -> None:
    # "Every other week on Tuesday and Thursday, for 8 occurrences" (RFC 5545 3.8.5.3).
    rule = RecurrenceRule(
        freq=F.WEEKLY,
        interval=2,
        byweekdays=[W.TUESDAY, W.THURSDAY],
        end_criteria=RecurrenceRuleEndCriteria(count=8),
    )
    data = make(utc(1997, 9, 2, 9), rule, 60)
    assert [s.date().isoformat() for s, _ in runs(data, utc(1997, 1, 1), utc(1998, 1, 1))] == [
        "1997-09-02", "1997-09-04", "1997-09-16", "1997-09-18",
        "1997-09-30", "1997-10-02", "1997-10-14", "1997-10-16",
    ]  # fmt: skip
    # "Monthly on the third-to-the-last day of the month, forever".
    data = make(utc(1997, 9, 28, 9), RecurrenceRule(freq=F.MONTHLY, bymonthdays=[-3]), 60)
    assert [s.date().isoformat() for s, _ in runs(data, utc(1997, 9, 1), utc(1998, 3, 1))] == [
        "1997-09-28", "1997-10-29", "1997-11-28", "1997-12-29", "1998-01-29", "1998-02-26",
    ]  # fmt: skip


def test_to_rrule() -> None:
    start = utc(2025, 1, 1, 8)
    assert to_rrule(None, start) is None
    assert to_rrule(RecurrenceRule(), start) is None
    rr = to_rrule(RecurrenceRule(freq=F.WEEKLY, interval=0, byweekdays=[W.MONDAY, W.SUNDAY]), start)
    assert rr is not None
    assert list(itertools.islice(rr, 3)) == [
        utc(2025, 1, 5, 8),
        utc(2025, 1, 6, 8),
        utc(2025, 1, 12, 8),
    ]
    with pytest.raises(ValueError, match="count"):
        to_rrule(
            RecurrenceRule(freq=F.DAILY, end_criteria=RecurrenceRuleEndCriteria(count=5000)), start
        )
    with pytest.raises(ValueError, match="never produces a run"):
        to_rrule(RecurrenceRule(freq=F.HOURLY, interval=2, byhours=[1]), start)
