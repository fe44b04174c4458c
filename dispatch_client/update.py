"""`new_fields` dict → `DispatchUpdate` + `FieldMask` for `Client.update`.

Keys name what changes; the mask lists exactly those fields, so the server
leaves everything else alone. Accepted keys:

- `start_time` (aware datetime, not in the past), `duration` (timedelta or
  seconds; `None` clears it), `target` (anything `to_target` takes),
  `active` / `is_active` (bool), `payload` (JSON-like dict; `None` clears it);
- `recurrence.<field>` for `freq` (alias `frequency`), `interval`,
  `end_criteria` (an `EndCriteria`, a count, an aware until-datetime or
  `None`), `byminutes`, `byhours`, `byweekdays`, `bymonthdays`, `bymonths`;
- `recurrence` with a whole `RecurrenceRule` (or `None` to stop recurring):
  it replaces every recurrence field, i.e. expands to all `recurrence.*` paths.

`type` and `dry_run` are fixed at creation; they and unknown keys raise
`ValueError` naming the key.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from ._proto.frequenz.api.dispatch.v1 import (
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    UpdateMicrogridDispatchRequestDispatchUpdate,
    UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate,
)
from ._proto.google.protobuf import FieldMask
from .targets import to_target
from .validation import (
    check_aware,
    check_bool,
    check_duration,
    check_recurrence,
    check_start_time,
    payload_to_struct,
    shown,
)

__all__ = ["ALLOWED_KEYS", "RECURRENCE_FIELDS", "build_update", "to_end_criteria"]

DispatchUpdate = UpdateMicrogridDispatchRequestDispatchUpdate
RecurrenceRuleUpdate = UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate

RECURRENCE_FIELDS = (
    "freq",
    "interval",
    "end_criteria",
    "byminutes",
    "byhours",
    "byweekdays",
    "bymonthdays",
    "bymonths",
)
"""The recurrence fields an update can set, in wire order."""

_TOP_LEVEL = ("start_time", "duration", "target", "is_active", "payload")
_ALIASES = {"active": "is_active", "recurrence.frequency": "recurrence.freq"}
_FIXED = {
    "type": "type is fixed when a dispatch is created; create a new dispatch instead",
    "dry_run": "dry_run is fixed when a dispatch is created; create a new dispatch instead",
    "is_dry_run": "is_dry_run is fixed when a dispatch is created; create a new dispatch instead",
}

ALLOWED_KEYS: tuple[str, ...] = (
    *_TOP_LEVEL,
    "active",
    "recurrence",
    *(f"recurrence.{name}" for name in RECURRENCE_FIELDS),
    "recurrence.frequency",
)
"""Every key `build_update` accepts."""

_E = TypeVar("_E", bound=enum.IntEnum)


def _to_enum(cls: type[_E], value: object, field: str, prefix: str) -> _E:
    if isinstance(value, str):
        name = value.strip().upper().removeprefix(prefix)
        try:
            member = cls[name]
        except KeyError:
            member = None
    elif isinstance(value, int) and not isinstance(value, bool):
        member = cls._value2member_map_.get(value)  # type: ignore[assignment]
    else:
        member = None
    if member is None:
        allowed = ", ".join(m.name for m in cls if m.value)
        raise ValueError(f"{field} {shown(value)} is not valid (allowed: {allowed})")
    return member


def _uint_list(value: object, field: str) -> list[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{field} must be a list of ints, got {type(value).__name__}")
    items = list(value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{field} must be a list of ints, got an item {shown(item)}")
    return items


def to_end_criteria(
    value: object, field: str = "recurrence.end_criteria"
) -> RecurrenceRuleEndCriteria | None:
    """Turn a recurrence end into an `EndCriteria`.

    Args:
        value: an `EndCriteria` (returned as is), a count of runs (int), an
            aware until-datetime, or None (no end).
        field: the name used in error messages.

    Returns:
        The end criteria, or None.

    Raises:
        ValueError: `value` is none of the above, or a naive datetime.
    """
    if value is None or isinstance(value, RecurrenceRuleEndCriteria):
        return value
    if isinstance(value, dt.datetime):
        return RecurrenceRuleEndCriteria(until_time=check_aware(value, f"{field}.until_time"))
    if isinstance(value, int) and not isinstance(value, bool):
        return RecurrenceRuleEndCriteria(count=value)
    raise ValueError(
        f"{field} must be an EndCriteria, a count, an aware datetime or None, got {shown(value)}"
    )


def _recurrence_value(name: str, value: object) -> Any:
    field = f"recurrence.{name}"
    if name == "freq":
        return _to_enum(RecurrenceRuleFrequency, value, field, "FREQUENCY_")
    if name == "interval":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field} must be an int, got {shown(value)}")
        return value
    if name == "end_criteria":
        return to_end_criteria(value, field)
    if name == "byweekdays":
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise ValueError(f"{field} must be a list of weekdays, got {type(value).__name__}")
        return [_to_enum(RecurrenceRuleWeekday, v, field, "WEEKDAY_") for v in value]
    return _uint_list(value, field)


def _whole_rule(value: object) -> dict[str, Any]:
    if value is None:
        # Stop recurring: every recurrence field back to its empty value.
        value = RecurrenceRule()
    elif not isinstance(value, RecurrenceRule):
        raise ValueError(f"recurrence must be a RecurrenceRule or None, got {type(value).__name__}")
    return {name: getattr(value, name) for name in RECURRENCE_FIELDS}


def _top_level(path: str, value: object, now: dt.datetime, allowance: dt.timedelta) -> Any:
    if path == "start_time":
        return check_start_time(value, now=now, allowance=allowance)
    if path == "duration":
        return check_duration(value)
    if path == "target":
        return to_target(value)  # type: ignore[arg-type]
    if path == "is_active":
        return check_bool(value, "is_active")
    return payload_to_struct(value)  # type: ignore[arg-type]


def build_update(
    new_fields: Mapping[str, object],
    *,
    now: dt.datetime | None = None,
    allowance: dt.timedelta = dt.timedelta(0),
) -> tuple[DispatchUpdate, FieldMask]:
    """Check `new_fields` and build the update message and its field mask.

    Args:
        new_fields: key → new value, with the keys listed in the module docstring.
        now: the time a new start time is checked against; the current time if None.
        allowance: how far in the past a new start time may be.

    Returns:
        The update message and the mask naming exactly the fields it sets
        (a whole `recurrence` names every recurrence field).

    Raises:
        ValueError: `new_fields` is empty or not a mapping, a key is unknown,
            fixed at creation (`type`, `dry_run`) or given twice (also via an
            alias), or a value is invalid; the message names the key.
    """
    if not isinstance(new_fields, Mapping):
        raise ValueError(f"new_fields must be a dict, got {type(new_fields).__name__}")
    if not new_fields:
        raise ValueError(f"new_fields is empty; name a field to change (allowed: {_allowed()})")
    now = now or dt.datetime.now(dt.UTC)
    top: dict[str, Any] = {}
    recurrence: dict[str, Any] = {}
    paths: list[str] = []

    def claim(path: str, key: str) -> None:
        if path in paths:
            raise ValueError(f"new_fields sets {path} twice (key {key!r})")
        paths.append(path)

    for key, value in new_fields.items():
        if not isinstance(key, str):
            raise ValueError(f"new_fields key {shown(key)} is not a str (allowed: {_allowed()})")
        if key in _FIXED:
            raise ValueError(_FIXED[key])
        path = _ALIASES.get(key, key)
        if path in _TOP_LEVEL:
            claim(path, key)
            top[path] = _top_level(path, value, now, allowance)
        elif path == "recurrence":
            for name, sub_value in _whole_rule(value).items():
                claim(f"recurrence.{name}", key)
                recurrence[name] = sub_value
        elif path.startswith("recurrence.") and path[11:] in RECURRENCE_FIELDS:
            claim(path, key)
            recurrence[path[11:]] = _recurrence_value(path[11:], value)
        else:
            raise ValueError(f"new_fields has an unknown key {key!r} (allowed: {_allowed()})")

    update = DispatchUpdate(**top)
    if recurrence:
        # Range-check the given fields the way a whole rule is checked; rules
        # spanning fields not in this update are left to the server.
        check_recurrence(
            RecurrenceRule(**{k: v for k, v in recurrence.items() if v is not None}),
            "recurrence",
        )
        end = recurrence.get("end_criteria")
        until_time = end.until_time if isinstance(end, RecurrenceRuleEndCriteria) else None
        start = top.get("start_time")
        if until_time is not None and start is not None and until_time < start:
            raise ValueError(
                f"recurrence.end_criteria.until_time {until_time.isoformat()} is before"
                f" start_time {start.isoformat()}: the recurrence could never run"
            )
        update.recurrence = RecurrenceRuleUpdate(**recurrence)
    return update, FieldMask(paths=paths)


def _allowed() -> str:
    return ", ".join(ALLOWED_KEYS)
