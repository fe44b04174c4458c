"""Checks on dispatch values, shared by the client (before sending) and the server.

Every check raises `ValueError` with a message that names the field, the value
and what is allowed. The client runs them before anything goes on the wire; the
reference server runs the same ones and answers INVALID_ARGUMENT, so both sides
agree on one set of rules.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import betterproto2

from ._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    DispatchData,
    RecurrenceRule,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
)
from ._proto.google.protobuf import ListValue, NullValue, Struct, Value

MAX_PAYLOAD_DEPTH = 5
MAX_PAYLOAD_BYTES = 50 * 1024
MAX_RECURRENCE_COUNT = 4096
MAX_RECURRENCE_INTERVAL = 10_000
MAX_DURATION_SECONDS = 2**32 - 1
MAX_UINT64 = 2**64 - 1

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "MAX_UINT64",
    "check_aware",
    "check_bool",
    "check_dispatch_data",
    "check_duration",
    "check_payload",
    "check_positive_int",
    "check_recurrence",
    "check_start_time",
    "check_uint64",
    "dispatch_id_of",
    "payload_measure",
    "payload_to_struct",
    "to_utc",
]


def check_aware(value: object, field: str) -> dt.datetime:
    """Return `value` if it is a timezone-aware datetime, else raise ValueError."""
    if not isinstance(value, dt.datetime):
        raise ValueError(f"{field} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware (e.g. tzinfo=UTC), got naive {value}")
    return value


def to_utc(value: object, field: str) -> dt.datetime:
    """Return an aware datetime converted to UTC.

    Args:
        value: the datetime to convert.
        field: the argument's name, used in the error message.

    Returns:
        The same instant with `tzinfo=UTC`.

    Raises:
        ValueError: `value` is not a timezone-aware datetime.
    """
    return check_aware(value, field).astimezone(dt.UTC)


def check_uint64(value: object, field: str) -> int:
    """Return `value` if it is an int in 0..2**64-1 (an id on the wire).

    Args:
        value: the value to check.
        field: the argument's name, used in the error message.

    Returns:
        `value` unchanged.

    Raises:
        ValueError: `value` is not an int (bool is refused) or is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UINT64:
        raise ValueError(f"{field} must be an int in 0..2**64-1, got {value!r}")
    return value


def check_positive_int(value: object, field: str) -> int:
    """Return `value` if it is an int >= 1.

    Args:
        value: the value to check.
        field: the argument's name, used in the error message.

    Returns:
        `value` unchanged.

    Raises:
        ValueError: `value` is not an int (bool is refused) or is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive int, got {value!r}")
    return value


def check_bool(value: object, field: str) -> bool:
    """Return `value` if it is a bool (ints such as 0/1 are refused, so no guess is made).

    Args:
        value: the value to check.
        field: the argument's name, used in the error message.

    Returns:
        `value` unchanged.

    Raises:
        ValueError: `value` is not a bool.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be True or False, got {value!r}")
    return value


def dispatch_id_of(dispatch: Dispatch) -> int:
    """Return the dispatch id of a `Dispatch` (0 when it carries no metadata).

    Args:
        dispatch: a dispatch as received from the service.

    Returns:
        `dispatch.metadata.dispatch_id`, or 0 when `metadata` is unset.
    """
    return dispatch.metadata.dispatch_id if dispatch.metadata is not None else 0


def check_start_time(
    start_time: object,
    *,
    now: dt.datetime,
    allowance: dt.timedelta = dt.timedelta(0),
    field: str = "start_time",
) -> dt.datetime:
    """Check that a start time is aware and not in the past (beyond `allowance`)."""
    start = check_aware(start_time, field)
    if start < now - allowance:
        raise ValueError(
            f"{field} {start.isoformat()} is in the past (now is {now.isoformat()}); "
            'use a future time or "NOW"'
        )
    return start


def check_duration(seconds: object, field: str = "duration") -> int | None:
    """Check a duration in whole seconds (None means unlimited)."""
    if seconds is None:
        return None
    if isinstance(seconds, dt.timedelta):
        seconds = seconds.total_seconds()
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{field} must be a timedelta, seconds or None, got {seconds!r}")
    if seconds < 0:
        raise ValueError(f"{field} must not be negative, got {seconds} s")
    whole = round(seconds)
    if whole > MAX_DURATION_SECONDS:
        raise ValueError(f"{field} must be at most {MAX_DURATION_SECONDS} s, got {whole} s")
    return whole


def _range_check(
    field: str, values: list[int], low: int, high: int, *, no_zero: bool = False
) -> None:
    for value in values:
        if not low <= value <= high or (no_zero and value == 0):
            allowed = f"{low}..{high}" + (" except 0" if no_zero else "")
            raise ValueError(f"{field} value {value} is out of range (allowed: {allowed})")


def check_recurrence(rule: RecurrenceRule, field: str = "recurrence") -> None:
    """Check a recurrence rule against the limits the service enforces."""
    try:
        freq = RecurrenceRuleFrequency(rule.freq)
    except ValueError:
        raise ValueError(f"{field}.freq {rule.freq!r} is not a known frequency") from None
    if rule.interval and not 1 <= rule.interval <= MAX_RECURRENCE_INTERVAL:
        raise ValueError(
            f"{field}.interval {rule.interval} is out of range "
            f"(allowed: 1..{MAX_RECURRENCE_INTERVAL}, or 0/unset for 1)"
        )
    if rule.end_criteria is not None:
        which, value = betterproto2.which_one_of(rule.end_criteria, "count_or_until")
        if which == "count" and isinstance(value, int) and not 1 <= value <= MAX_RECURRENCE_COUNT:
            raise ValueError(
                f"{field}.end_criteria.count {value} is out of range "
                f"(allowed: 1..{MAX_RECURRENCE_COUNT})"
            )
        if which == "until_time":
            check_aware(value, f"{field}.end_criteria.until_time")
    _range_check(f"{field}.byminutes", list(rule.byminutes), 0, 59)
    _range_check(f"{field}.byhours", list(rule.byhours), 0, 23)
    _range_check(f"{field}.bymonthdays", list(rule.bymonthdays), -31, 31, no_zero=True)
    _range_check(f"{field}.bymonths", list(rule.bymonths), 1, 12)
    for day in rule.byweekdays:
        if day == 0 or day not in RecurrenceRuleWeekday._value2member_map_:
            raise ValueError(
                f"{field}.byweekdays value {day!r} is not a weekday (allowed: MONDAY..SUNDAY)"
            )
    if rule.bymonthdays and freq == RecurrenceRuleFrequency.WEEKLY:
        raise ValueError(f"{field}.bymonthdays cannot be used with a WEEKLY frequency")


# Encoded sizes of the pieces of a Struct. Every field number in struct.proto is
# below 16, so each tag is one byte; map entries and oneof members are always
# written, even when they hold a default value.
_FIXED64_FIELD = 1 + 8
_BOOL_FIELD = 1 + 1


def _varint_size(number: int) -> int:
    if number < 0:
        return 10  # negative int32/enum values are sign-extended to 64 bits
    return max(1, (number.bit_length() + 6) // 7)


def _length_delimited(size: int) -> int:
    return 1 + _varint_size(size) + size


def _measure_value(value: Value) -> tuple[int, int]:
    """Return the nesting depth of `value` and its encoded size (without its own tag)."""
    which, inner = betterproto2.which_one_of(value, "kind")
    if isinstance(inner, Struct):
        depth, size = _measure_struct(inner)
        return 1 + depth, _length_delimited(size)
    if isinstance(inner, ListValue):
        depth, size = 0, 0
        for item in inner.values:
            item_depth, item_size = _measure_value(item)
            depth = max(depth, item_depth)
            size += _length_delimited(item_size)
        return 1 + depth, _length_delimited(size)
    if isinstance(inner, str):
        return 0, _length_delimited(len(inner.encode("utf-8")))
    if which == "number_value":
        return 0, _FIXED64_FIELD
    if which == "bool_value":
        return 0, _BOOL_FIELD
    if which == "null_value" and inner is not None:
        return 0, 1 + _varint_size(int(inner))
    return 0, 0


def _measure_struct(struct: Struct) -> tuple[int, int]:
    depth, size = 0, 0
    for key, value in struct.fields.items():
        value_depth, value_size = _measure_value(value)
        depth = max(depth, value_depth)
        entry = _length_delimited(len(key.encode("utf-8"))) + _length_delimited(value_size)
        size += _length_delimited(entry)
    return depth, size


def payload_measure(payload: Struct) -> tuple[int, int]:
    """Return a payload's nesting depth (a flat object is 1) and its encoded size in bytes.

    Computed by walking the message rather than by encoding it: encoding a
    Struct with betterproto2 costs as much as encoding the whole request.
    """
    depth, size = _measure_struct(payload)
    return 1 + depth, size


def check_payload(payload: Struct, field: str = "payload") -> None:
    """Check a payload's nesting depth and encoded size."""
    depth, size = payload_measure(payload)
    if depth > MAX_PAYLOAD_DEPTH:
        raise ValueError(
            f"{field} is nested {depth} levels deep (allowed: at most {MAX_PAYLOAD_DEPTH})"
        )
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"{field} is {size} bytes encoded (allowed: at most {MAX_PAYLOAD_BYTES})")


def _to_value(obj: Any, path: str) -> Value:
    if obj is None:
        return Value(null_value=NullValue.NULL_VALUE)
    if isinstance(obj, bool):
        return Value(bool_value=obj)
    if isinstance(obj, int | float):
        if isinstance(obj, float) and not math.isfinite(obj):
            raise ValueError(f"{path} is {obj!r}; JSON numbers must be finite")
        return Value(number_value=float(obj))
    if isinstance(obj, str):
        return Value(string_value=obj)
    if isinstance(obj, Mapping):
        return Value(struct_value=_to_struct(obj, path))
    if isinstance(obj, list | tuple):
        return Value(
            list_value=ListValue(values=[_to_value(v, f"{path}[{i}]") for i, v in enumerate(obj)])
        )
    raise ValueError(
        f"{path} has type {type(obj).__name__}; allowed: dict, list, str, int, float, bool, None"
    )


def _to_struct(obj: Mapping[Any, Any], path: str) -> Struct:
    fields: dict[str, Value] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(
                f"{path} has a key {key!r} of type {type(key).__name__}; keys must be str"
            )
        fields[key] = _to_value(value, f"{path}[{key!r}]")
    return Struct(fields=fields)


def payload_to_struct(
    payload: Mapping[str, Any] | Struct | None, field: str = "payload"
) -> Struct | None:
    """Convert a JSON-like mapping to a `Struct`, checking type, depth and size."""
    if payload is None:
        return None
    if isinstance(payload, Struct):
        struct = payload
    elif isinstance(payload, Mapping):
        struct = _to_struct(payload, field)
    else:
        raise ValueError(f"{field} must be a dict (JSON object), got {type(payload).__name__}")
    check_payload(struct, field)
    return struct


def check_dispatch_data(
    data: DispatchData,
    *,
    now: dt.datetime,
    allowance: dt.timedelta = dt.timedelta(0),
    start_immediately: bool = False,
    payload_checked: bool = False,
) -> None:
    """Check a whole `DispatchData` as it would be created.

    `payload_checked=True` skips the payload, for a caller that built it with
    `payload_to_struct`, which checked it already: the size check encodes it.
    """
    if not data.type:
        raise ValueError("type must be a non-empty string")
    if not start_immediately:
        if data.start_time is None:
            raise ValueError('start_time is required (or use "NOW")')
        check_start_time(data.start_time, now=now, allowance=allowance)
    check_duration(data.duration)
    if data.payload is not None and not payload_checked:
        check_payload(data.payload)
    if data.recurrence is not None:
        check_recurrence(data.recurrence)
