"""The new_fields → DispatchUpdate + FieldMask builder."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_client import (
    EndCriteria,
    Frequency,
    RecurrenceRule,
    Weekday,
    target_from_ids,
)
from dispatch_client.update import ALLOWED_KEYS, RECURRENCE_FIELDS, build_update
from dispatch_client.wire import UpdateMicrogridDispatchRequestDispatchUpdate

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_top_level_fields() -> None:
    start = NOW + dt.timedelta(hours=1)
    update, mask = build_update(
        {
            "start_time": start,
            "duration": dt.timedelta(minutes=15),
            "target": [4, 5],
            "active": False,
            "payload": {"a": [1, {"b": None}]},
        },
        now=NOW,
    )
    assert mask.paths == ["start_time", "duration", "target", "is_active", "payload"]
    assert update.start_time == start
    assert update.duration == 900
    assert update.target == target_from_ids(4, 5)
    assert update.is_active is False
    assert update.payload is not None
    assert update.payload.to_dict() == {"a": [1.0, {"b": None}]}


def test_duration_none_clears() -> None:
    update, mask = build_update({"duration": None}, now=NOW)
    assert mask.paths == ["duration"]
    assert update.duration is None
    # Present in the mask but absent on the wire: the server clears the field.
    assert UpdateMicrogridDispatchRequestDispatchUpdate.parse(bytes(update)).duration is None


def test_recurrence_fields_and_aliases() -> None:
    update, mask = build_update(
        {
            "recurrence.frequency": "daily",
            "recurrence.interval": 2,
            "recurrence.end_criteria": 10,
            "recurrence.byhours": [1, 23],
            "recurrence.byweekdays": [Weekday.MONDAY, "friday", 7],
            "recurrence.bymonths": (1, 12),
        },
        now=NOW,
    )
    assert mask.paths == [
        "recurrence.freq",
        "recurrence.interval",
        "recurrence.end_criteria",
        "recurrence.byhours",
        "recurrence.byweekdays",
        "recurrence.bymonths",
    ]
    rec = update.recurrence
    assert rec is not None
    assert rec.freq == Frequency.DAILY
    assert rec.interval == 2
    assert rec.end_criteria == EndCriteria(count=10)
    assert rec.byweekdays == [Weekday.MONDAY, Weekday.FRIDAY, Weekday.SUNDAY]
    assert rec.bymonths == [1, 12]


def test_end_criteria_until_and_clear() -> None:
    until = NOW + dt.timedelta(days=3)
    update, _ = build_update({"recurrence.end_criteria": until}, now=NOW)
    assert update.recurrence is not None
    assert update.recurrence.end_criteria == EndCriteria(until_time=until)
    update, mask = build_update({"recurrence.end_criteria": None}, now=NOW)
    assert mask.paths == ["recurrence.end_criteria"]
    assert update.recurrence is not None
    assert update.recurrence.end_criteria is None


def test_whole_recurrence_rule_replaces_every_field() -> None:
    rule = RecurrenceRule(freq=Frequency.WEEKLY, interval=3, byweekdays=[Weekday.TUESDAY])
    update, mask = build_update({"recurrence": rule}, now=NOW)
    assert mask.paths == [f"recurrence.{name}" for name in RECURRENCE_FIELDS]
    assert update.recurrence is not None
    assert update.recurrence.freq == Frequency.WEEKLY
    assert update.recurrence.byweekdays == [Weekday.TUESDAY]
    assert update.recurrence.bymonthdays == []
    cleared, mask = build_update({"recurrence": None}, now=NOW)
    assert len(mask.paths) == len(RECURRENCE_FIELDS)
    assert cleared.recurrence is not None
    assert cleared.recurrence.freq == Frequency.UNSPECIFIED


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "X"}, "type is fixed"),
        ({"dry_run": True}, "dry_run is fixed"),
        ({"is_dry_run": True}, "is_dry_run is fixed"),
        ({"colour": "red"}, "unknown key 'colour'.*allowed: start_time"),
        ({"recurrence.nope": 1}, "unknown key 'recurrence.nope'"),
        ({}, "empty"),
        ({"active": True, "is_active": False}, "is_active twice"),
        ({"recurrence.freq": 1, "recurrence.frequency": 2}, "recurrence.freq twice"),
        ({"recurrence": None, "recurrence.interval": 2}, "recurrence.interval twice"),
        ({"start_time": dt.datetime(2031, 1, 1)}, "timezone-aware"),
        ({"start_time": NOW - dt.timedelta(minutes=1)}, "in the past"),
        ({"duration": dt.timedelta(seconds=-1)}, "negative"),
        ({"active": "yes"}, "is_active must be True or False"),
        ({"payload": {"x": object()}}, "payload"),
        ({"payload": [1]}, "payload must be a dict"),
        ({"target": []}, "at least one"),
        ({"recurrence.freq": "fortnightly"}, "recurrence.freq 'fortnightly'"),
        ({"recurrence.interval": 10_001}, "interval 10001 is out of range"),
        ({"recurrence.end_criteria": 0}, "count 0 is out of range"),
        ({"recurrence.end_criteria": 4097}, "count 4097 is out of range"),
        ({"recurrence.end_criteria": dt.datetime(2031, 1, 1)}, "timezone-aware"),
        ({"recurrence.byminutes": [60]}, "byminutes value 60"),
        ({"recurrence.byhours": [24]}, "byhours value 24"),
        ({"recurrence.bymonthdays": [0]}, "bymonthdays value 0"),
        ({"recurrence.bymonths": [13]}, "bymonths value 13"),
        ({"recurrence.byweekdays": [0]}, "byweekdays"),
        ({"recurrence.byhours": "1,2"}, "list of ints"),
        ({"recurrence.freq": "weekly", "recurrence.bymonthdays": [1]}, "WEEKLY"),
        ({"recurrence": {"freq": 1}}, "RecurrenceRule or None"),
    ],
)
def test_bad_fields_raise_value_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_update(fields, now=NOW)


# -- property tests -------------------------------------------------------------

_weekdays = st.sampled_from([d for d in Weekday if d])
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "start_time": st.integers(0, 10**8).map(lambda s: NOW + dt.timedelta(seconds=s)),
    "duration": st.none() | st.integers(0, 2**32 - 1).map(lambda s: dt.timedelta(seconds=s)),
    "target": st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=5),
    "is_active": st.booleans(),
    "active": st.booleans(),
    "payload": st.none()
    | st.dictionaries(st.text(max_size=5), st.none() | st.booleans() | st.text(max_size=5)),
    "recurrence.freq": st.sampled_from(list(Frequency)),
    "recurrence.frequency": st.sampled_from(list(Frequency)),
    "recurrence.interval": st.integers(0, 10_000),
    "recurrence.end_criteria": st.none() | st.integers(1, 4096),
    "recurrence.byminutes": st.lists(st.integers(0, 59), max_size=5),
    "recurrence.byhours": st.lists(st.integers(0, 23), max_size=5),
    "recurrence.byweekdays": st.lists(_weekdays, max_size=7),
    "recurrence.bymonthdays": st.lists(st.integers(-31, 31).filter(bool), max_size=5),
    "recurrence.bymonths": st.lists(st.integers(1, 12), max_size=5),
}
_CANONICAL = {"active": "is_active", "recurrence.frequency": "recurrence.freq"}


@st.composite
def _valid_fields(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(_VALUES)), unique=True, min_size=1))
    # Aliases of one field cannot both be set.
    chosen: dict[str, Any] = {}
    for key in keys:
        if _CANONICAL.get(key, key) in {_CANONICAL.get(k, k) for k in chosen}:
            continue
        chosen[key] = draw(_VALUES[key])
    freq = chosen.get("recurrence.freq", chosen.get("recurrence.frequency"))
    if freq == Frequency.WEEKLY:
        chosen.pop("recurrence.bymonthdays", None)
    return chosen


@given(_valid_fields())
def test_mask_names_exactly_the_given_keys(fields: dict[str, Any]) -> None:
    update, mask = build_update(fields, now=NOW)
    assert mask.paths == [_CANONICAL.get(k, k) for k in fields]
    # Round trip through the wire keeps what the mask points at.
    parsed = UpdateMicrogridDispatchRequestDispatchUpdate.parse(bytes(update))
    for key, value in fields.items():
        path = _CANONICAL.get(key, key)
        if path.startswith("recurrence."):
            assert parsed.recurrence is not None
            got = getattr(parsed.recurrence, path.removeprefix("recurrence."))
            if path == "recurrence.end_criteria":
                assert got == (None if value is None else EndCriteria(count=value))
            else:
                assert got == value
        elif path == "duration":
            assert parsed.duration == (None if value is None else int(value.total_seconds()))
        elif path == "target":
            assert parsed.target == target_from_ids(value)
        elif path == "payload":
            assert (parsed.payload.to_dict() if parsed.payload else None) == (value or None)
        else:
            assert getattr(parsed, path) == value


@given(st.text(min_size=1, max_size=30).filter(lambda k: k not in ALLOWED_KEYS))
def test_every_other_key_is_rejected_by_name(key: str) -> None:
    with pytest.raises(ValueError) as info:
        build_update({key: 1}, now=NOW)
    assert repr(key) in str(info.value) or "fixed" in str(info.value)


@given(st.integers(-(2**40), 2**40))
def test_interval_rule(interval: int) -> None:
    if 0 <= interval <= 10_000:
        _, mask = build_update({"recurrence.interval": interval}, now=NOW)
        assert mask.paths == ["recurrence.interval"]
    else:
        with pytest.raises(ValueError, match="interval"):
            build_update({"recurrence.interval": interval}, now=NOW)


@given(st.integers(-(2**40), 2**40))
def test_count_rule(count: int) -> None:
    if 1 <= count <= 4096:
        update, _ = build_update({"recurrence.end_criteria": count}, now=NOW)
        assert update.recurrence is not None
        assert update.recurrence.end_criteria == EndCriteria(count=count)
    else:
        with pytest.raises(ValueError, match="count"):
            build_update({"recurrence.end_criteria": count}, now=NOW)


@given(st.integers(-100, 100), st.sampled_from(["byminutes", "byhours", "bymonthdays", "bymonths"]))
def test_by_rules(value: int, field: str) -> None:
    low, high = {
        "byminutes": (0, 59),
        "byhours": (0, 23),
        "bymonthdays": (-31, 31),
        "bymonths": (1, 12),
    }[field]
    valid = low <= value <= high and not (field == "bymonthdays" and value == 0)
    if valid:
        build_update({f"recurrence.{field}": [value]}, now=NOW)
    else:
        with pytest.raises(ValueError, match=field):
            build_update({f"recurrence.{field}": [value]}, now=NOW)
