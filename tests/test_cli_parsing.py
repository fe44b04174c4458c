"""Unit tests of dispatch-cli's input parsers (times, durations, targets, ids, lists)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_client import (
    BatteryType,
    ElectricalComponentCategory,
    EvChargerType,
    InverterType,
    RecurrenceRuleWeekday,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)
from dispatch_client.cli.output import describe_target
from dispatch_client.cli.parsing import (
    format_duration,
    parse_duration,
    parse_id_ranges,
    parse_int_list,
    parse_json_object,
    parse_months,
    parse_target,
    parse_time,
    parse_uint64,
    parse_weekdays,
)

UTC = dt.UTC
NOW = dt.datetime(2025, 1, 31, 13, 0, 7, tzinfo=UTC)

# --- times ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-02-01T14:00:00Z", dt.datetime(2025, 2, 1, 14, tzinfo=UTC)),
        ("2025-02-01T14:00+02:00", dt.datetime(2025, 2, 1, 12, tzinfo=UTC)),
        ("2025-02-01 14:00", dt.datetime(2025, 2, 1, 14, tzinfo=UTC)),  # naive means UTC
        ("2025-02-01", dt.datetime(2025, 2, 1, tzinfo=UTC)),
        ("now", NOW),
        ("  NOW ", NOW),
        ("in 10 min", NOW + dt.timedelta(minutes=10)),
        ("in 2 hours", NOW + dt.timedelta(hours=2)),
        ("tomorrow 08:00", dt.datetime(2025, 2, 1, 8, tzinfo=UTC)),
        ("tomorrow 08:00 CET", dt.datetime(2025, 2, 1, 7, tzinfo=UTC)),
        ("monday 9:00", dt.datetime(2025, 2, 3, 9, tzinfo=UTC)),  # the next one, not the last
    ],
)
def test_parse_time_accepts(text: str, expected: dt.datetime) -> None:
    parsed = parse_time(text, now=NOW)
    assert parsed == expected
    assert parsed.tzinfo == UTC


def test_parse_time_phrases_against_the_real_clock() -> None:
    before = dt.datetime.now(UTC)
    parsed = parse_time("in 10 minutes")
    after = dt.datetime.now(UTC)
    assert before + dt.timedelta(minutes=10) - dt.timedelta(seconds=1) <= parsed
    assert parsed <= after + dt.timedelta(minutes=10) + dt.timedelta(seconds=1)
    # A bare time of day means its next occurrence.
    at_eight = parse_time("08:00")
    assert (at_eight.hour, at_eight.minute) == (8, 0)
    assert dt.timedelta(0) < at_eight - before <= dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("now", "text", "expected"),
    [
        # dateparser's own "future" answers were 1 November, 1 December 2027,
        # 1 February and 1 January: the 1st of the month being ended.
        pytest.param(
            dt.datetime(2026, 11, 30, 8, 15, tzinfo=UTC),
            "08:00",
            dt.datetime(2026, 12, 1, 8, tzinfo=UTC),
            id="month-end",
        ),
        pytest.param(
            dt.datetime(2026, 12, 31, 23, tzinfo=UTC),
            "08:00",
            dt.datetime(2027, 1, 1, 8, tzinfo=UTC),
            id="year-end",
        ),
        pytest.param(
            dt.datetime(2027, 2, 28, 10, tzinfo=UTC),
            "9am",
            dt.datetime(2027, 3, 1, 9, tzinfo=UTC),
            id="february",
        ),
        pytest.param(
            dt.datetime(2026, 1, 31, 12, tzinfo=UTC),
            "midnight",
            dt.datetime(2026, 2, 1, tzinfo=UTC),
            id="midnight",
        ),
        pytest.param(
            dt.datetime(2026, 11, 30, 8, 15, tzinfo=UTC),
            "08:00 CET",
            dt.datetime(2026, 12, 1, 7, tzinfo=UTC),
            id="zone",
        ),
        pytest.param(
            dt.datetime(2026, 11, 30, 8, 15, tzinfo=UTC),
            "23:30",
            dt.datetime(2026, 11, 30, 23, 30, tzinfo=UTC),
            id="later-today",
        ),
        pytest.param(
            dt.datetime(2026, 11, 30, 8, 15, tzinfo=UTC),
            "today 08:00",
            dt.datetime(2026, 11, 30, 8, tzinfo=UTC),
            id="today-as-said",
        ),
    ],
)
def test_a_time_of_day_is_its_next_occurrence(
    now: dt.datetime, text: str, expected: dt.datetime
) -> None:
    assert parse_time(text, now=now) == expected


@settings(max_examples=40, deadline=None)
@given(
    now=st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 30), timezones=st.just(UTC)),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    form=st.sampled_from(["{h:02d}:{m:02d}", "{h}:{m:02d}", "{h12}:{m:02d} {ampm}"]),
)
def test_every_time_of_day_is_read_as_its_next_occurrence(
    now: dt.datetime, hour: int, minute: int, form: str
) -> None:
    """Any day (month and year ends included), any time of day: the first one after `now`."""
    text = form.format(h=hour, m=minute, h12=(hour - 1) % 12 + 1, ampm="am" if hour < 12 else "pm")
    parsed = parse_time(text, now=now)
    assert (parsed.hour, parsed.minute, parsed.second) == (hour, minute, 0), text
    assert now < parsed <= now + dt.timedelta(days=1), (now, text, parsed)


@settings(max_examples=40, deadline=None)
@given(
    now=st.datetimes(dt.datetime(2000, 1, 2), dt.datetime(2099, 12, 30), timezones=st.just(UTC)),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    day=st.sampled_from([("yesterday", -1), ("today", 0), ("tomorrow", 1)]),
)
def test_a_day_word_keeps_its_day(
    now: dt.datetime, hour: int, minute: int, day: tuple[str, int]
) -> None:
    """'yesterday 08:00' is yesterday's 08:00 even when that is past (was: the next 08:00)."""
    word, offset = day
    parsed = parse_time(f"{word} {hour:02d}:{minute:02d}", now=now)
    on = (now + dt.timedelta(days=offset)).date()
    assert parsed == dt.datetime.combine(on, dt.time(hour, minute), tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yesterday 08:00", dt.datetime(2026, 11, 29, 8, tzinfo=UTC)),
        ("yesterday 23:00", dt.datetime(2026, 11, 29, 23, tzinfo=UTC)),
        ("tomorrow 08:00", dt.datetime(2026, 12, 1, 8, tzinfo=UTC)),
    ],
)
def test_named_day_word_cases(text: str, expected: dt.datetime) -> None:
    assert parse_time(text, now=dt.datetime(2026, 11, 30, 8, 15, tzinfo=UTC)) == expected


@settings(max_examples=30, deadline=None)
@given(
    zone=st.sampled_from(["UTC", "GMT", "CET", "PST"]),
    sign=st.sampled_from("+-"),
    number=st.integers(15, 99),
    day=st.sampled_from(["", "tomorrow "]),
)
def test_a_zone_with_an_unreadable_offset_is_refused(
    zone: str, sign: str, number: int, day: str
) -> None:
    """'08:00 UTC+15' was 08:00 UTC on the 15th (dateparser took 'UTC+' and read 15 as the day)."""
    with pytest.raises(ValueError, match=re.escape(f"'{zone}{sign}{number}'")):
        parse_time(f"{day}08:00 {zone}{sign}{number}", now=NOW)


@pytest.mark.parametrize("offset", range(-12, 15))
def test_a_utc_offset_zone_is_read(offset: int) -> None:
    parsed = parse_time(f"tomorrow 08:00 UTC{offset:+d}", now=NOW)
    assert parsed.astimezone(dt.timezone(dt.timedelta(hours=offset))).time() == dt.time(8)


@pytest.mark.parametrize("text", ["", "   ", "blah", "5", "12.5", "the day after never"])
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time(text, now=NOW)


@given(st.datetimes(timezones=st.just(UTC)))
def test_parse_time_round_trips_iso(value: dt.datetime) -> None:
    assert parse_time(value.isoformat(), now=NOW) == value


# --- durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("15min", 900),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("1 hour 30 minutes", 5400),
        ("2d", 172_800),
        ("1w", 604_800),
        ("1.5h", 5400),
        ("PT1H30M", 5400),
        ("pt90s", 90),
        ("P1DT2H", 93_600),
        ("PT0.5H", 1800),
        ("P2W", 1_209_600),
        ("0s", 0),
    ],
)
def test_parse_duration_accepts(text: str, seconds: int) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("abc", "not a duration"),
        ("5x", "unknown unit"),
        ("1h1h", "twice"),
        ("-5m", "not a duration"),
        ("P1M", "years/months"),
        ("P1Y", "years/months"),
        ("PT", "not a duration"),
        ("PT0.5S", "whole number"),
        ("99999999999s", "too long"),
    ],
)
def test_parse_duration_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == dt.timedelta(seconds=seconds)


@given(st.integers(0, 40), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_iso_and_compact_durations_agree(days: int, hours: int, minutes: int, secs: int) -> None:
    iso = f"P{days}DT{hours}H{minutes}M{secs}S"
    compact = f"{days}d{hours}h{minutes}m{secs}s"
    assert parse_duration(iso) == parse_duration(compact)
    assert parse_duration(iso).total_seconds() == days * 86400 + hours * 3600 + minutes * 60 + secs


# --- targets ------------------------------------------------------------------


def test_parse_target_ids() -> None:
    assert parse_target("1, 2,3,2") == TargetComponents(
        component_ids=TargetComponentsIdSet(ids=[1, 2, 3])
    )


def test_parse_target_categories() -> None:
    assert parse_target("battery,INVERTER,ev-charger") == TargetComponents(
        component_categories=TargetComponentsCategorySet(
            categories=[
                ElectricalComponentCategory.BATTERY,
                ElectricalComponentCategory.INVERTER,
                ElectricalComponentCategory.EV_CHARGER,
            ]
        )
    )


def test_parse_target_category_types() -> None:
    # LI_ION and the inverter type BATTERY are both 1: neither may swallow the other.
    assert parse_target("BATTERY:LI_ION,INVERTER:BATTERY,EV_CHARGER:dc,METER") == TargetComponents(
        component_categories_types=TargetComponentsCategoryTypeSet(
            categories=[
                TargetComponentsCategoryAndType(
                    category=ElectricalComponentCategory.BATTERY, battery=BatteryType.LI_ION
                ),
                TargetComponentsCategoryAndType(
                    category=ElectricalComponentCategory.INVERTER, inverter=InverterType.BATTERY
                ),
                TargetComponentsCategoryAndType(
                    category=ElectricalComponentCategory.EV_CHARGER, ev_charger=EvChargerType.DC
                ),
                TargetComponentsCategoryAndType(category=ElectricalComponentCategory.METER),
            ]
        )
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty item"),
        ("1,,2", "empty item"),
        ("1,BATTERY", "mixes"),
        ("BATTERY:FOO", "unknown BATTERY type"),
        ("METER:LI_ION", "has no types"),
        ("SPACESHIP", "unknown component category"),
        ("UNSPECIFIED", "unknown component category"),
        ("-1", "unknown component category"),
    ],
)
def test_parse_target_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_target(text)


@given(st.lists(st.integers(0, 2**63), min_size=1, max_size=20, unique=True))
def test_target_ids_round_trip_through_describe(ids: list[int]) -> None:
    text = ",".join(map(str, ids))
    target = parse_target(text)
    assert describe_target(target) == text


@given(
    st.lists(
        st.sampled_from(
            ["BATTERY", "BATTERY:LI_ION", "BATTERY:NA_ION", "INVERTER:PV", "EV_CHARGER:AC", "CHP"]
        ),
        min_size=1,
        max_size=6,
        unique=True,
    )
)
def test_target_categories_round_trip_through_describe(items: list[str]) -> None:
    assert describe_target(parse_target(",".join(items))) == ",".join(items)


# --- ids, lists, payload --------------------------------------------------------


def test_parse_id_ranges() -> None:
    assert parse_id_ranges(["5-9"]) == [5, 6, 7, 8, 9]
    assert parse_id_ranges(["3,5", "4-6", "12"]) == [3, 5, 4, 6, 12]
    assert parse_id_ranges(["7-7"]) == [7]
    # The official CLI's spelling (its help: "1", "1,2,3", "1-3", "1..3").
    assert parse_id_ranges(["1..3"]) == [1, 2, 3]
    assert parse_id_ranges(["1..3,7"]) == [1, 2, 3, 7]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("9-5", "backwards"),
        ("9..5", "backwards"),
        ("x", "not an id"),
        ("1-", "not an id"),
        ("1...3", "not an id"),
        ("1.3", "not an id"),
        ("0-20000", "more than"),
    ],
)
def test_parse_id_ranges_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_id_ranges([text])


@given(st.integers(0, 10**12), st.integers(0, 500), st.sampled_from(["-", "..", " - ", " .. "]))
def test_id_range_is_inclusive(low: int, span: int, separator: str) -> None:
    expected = list(range(low, low + span + 1))
    assert parse_id_ranges([f"{low}{separator}{low + span}"]) == expected


def test_parse_lists() -> None:
    assert parse_int_list(["0,30", "15"], 0, 59, "minutes") == [0, 30, 15]
    assert parse_int_list(["-1,15"], -31, 31, "days") == [-1, 15]
    with pytest.raises(ValueError, match="out of range"):
        parse_int_list(["60"], 0, 59, "minutes")
    with pytest.raises(ValueError, match="out of range"):
        parse_int_list(["0"], -31, 31, "days")
    with pytest.raises(ValueError, match="whole number"):
        parse_int_list(["x"], 0, 59, "minutes")
    assert parse_months(["jan,3", "December"]) == [1, 3, 12]
    assert parse_weekdays(["mo,TUE", "friday", "mo"]) == [
        RecurrenceRuleWeekday.MONDAY,
        RecurrenceRuleWeekday.TUESDAY,
        RecurrenceRuleWeekday.FRIDAY,
    ]
    with pytest.raises(ValueError, match="unknown weekday"):
        parse_weekdays(["m"])  # Monday? Maybe. Refuse rather than guess.


def test_parse_json_object() -> None:
    assert parse_json_object('{"power": 5, "nested": {"a": [1, 2]}}') == {
        "power": 5,
        "nested": {"a": [1, 2]},
    }
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json_object("{power: 5}")
    with pytest.raises(ValueError, match="JSON object"):
        parse_json_object("[1, 2]")


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_parse_uint64_accepts_every_wire_id(value: int) -> None:
    assert parse_uint64(str(value)) == value
    assert parse_id_ranges([str(value)]) == [value]


@given(st.integers(min_value=2**64, max_value=2**80) | st.integers(max_value=-1))
def test_parse_uint64_refuses_what_the_wire_cannot_carry(value: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.2\*\*64-1"):
        parse_uint64(str(value))


@settings(max_examples=40, deadline=None)
@given(
    day=st.dates(dt.date(2001, 1, 1), dt.date(2098, 12, 31)),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    separator=st.sampled_from(["-", "/"]),
    zone=st.sampled_from([("UTC", 0), ("JST", 9), ("EST", -5)]),
)
def test_a_numeric_date_with_a_time_and_a_zone_is_read(
    day: dt.date, hour: int, minute: int, separator: str, zone: tuple[str, int]
) -> None:
    """The date's digits are no time of day ('2026' was checked as 20:26 and refused)."""
    name, offset = zone
    text = f"{day:%Y}{separator}{day:%m}{separator}{day:%d} {hour:02d}:{minute:02d} {name}"
    expected = dt.datetime.combine(
        day, dt.time(hour, minute), dt.timezone(dt.timedelta(hours=offset))
    )
    assert parse_time(text, now=NOW) == expected.astimezone(UTC)


def test_a_numeric_date_with_an_impossible_time_is_refused() -> None:
    with pytest.raises(ValueError, match="2026-12-03 25:00 CET"):
        parse_time("2026-12-03 25:00 CET", now=NOW)


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("03.12.2026", "ambiguous: 2026-12-03 \\(day first\\) or 2026-03-12 \\(month first\\)"),
        ("03/12/2026 08:00", "ambiguous"),
        ("3-12-2026", "ambiguous"),
        ("03.12.26", "no four-digit year"),  # was 2126-03-12
        ("13/12/26", "no four-digit year"),
        ("26-12-03", "no four-digit year"),
    ],
)
def test_a_numeric_date_read_two_ways_is_refused(text: str, refusal: str) -> None:
    """Named cases: dateparser read 03.12.2026 as 12 March and 03.12.26 as 2126-03-12."""
    with pytest.raises(ValueError, match=refusal):
        parse_time(text, now=NOW)


@settings(max_examples=60, deadline=None)
@given(
    day=st.dates(dt.date(2001, 1, 1), dt.date(2098, 12, 31)),
    separator=st.sampled_from(["-", "/", "."]),
    order=st.sampled_from(["ymd", "dmy", "mdy"]),
    padded=st.booleans(),
    clock=st.sampled_from(["", " 08:00", " 23:59 CET"]),
)
def test_a_numeric_date_is_read_as_written_or_refused_as_ambiguous(
    day: dt.date, separator: str, order: str, padded: bool, clock: str
) -> None:
    """Year first is ISO 8601's order; year last is read only when day and month cannot swap."""
    width = "02" if padded else ""
    fields = {"y": f"{day.year:04d}", "m": f"{day.month:{width}}", "d": f"{day.day:{width}}"}
    text = separator.join(fields[part] for part in order) + clock
    ambiguous = order != "ymd" and day.day != day.month and day.day <= 12
    if ambiguous:
        with pytest.raises(ValueError, match="ambiguous"):
            parse_time(text, now=NOW)
    else:
        assert (
            parse_time(text, now=NOW)
            .astimezone(dt.timezone(dt.timedelta(hours=1)) if "CET" in clock else UTC)
            .date()
            == day
        )


@settings(max_examples=30, deadline=None)
@given(
    day=st.dates(dt.date(2001, 1, 1), dt.date(2098, 12, 31)),
    separator=st.sampled_from(["-", "/", "."]),
    order=st.sampled_from(["ymd", "dmy", "mdy"]),
)
def test_a_numeric_date_with_a_two_digit_year_is_refused(
    day: dt.date, separator: str, order: str
) -> None:
    fields = {"y": f"{day.year % 100:02d}", "m": f"{day.month:02d}", "d": f"{day.day:02d}"}
    with pytest.raises(ValueError, match="no four-digit year"):
        parse_time(separator.join(fields[part] for part in order), now=NOW)
