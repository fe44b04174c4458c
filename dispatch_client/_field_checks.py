"""The single-value checks behind `dispatch_client.validation`: times, ints, bools, enums.

Re-exported by `validation`, which is where callers import them from; the
limits are documented there.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import reprlib
from collections.abc import Iterable
from typing import TypeVar

import betterproto2

from ._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
)

MAX_PAYLOAD_DEPTH = 5
MAX_PAYLOAD_BYTES = 50 * 1024
MAX_RECURRENCE_COUNT = 4096
MAX_RECURRENCE_INTERVAL = 10_000
MAX_DURATION_SECONDS = 2**32 - 1
MAX_UINT64 = 2**64 - 1
MAX_FILTER_ITEMS = 1000
"""Most items in one filter list of a list request: `dispatch_ids`, `queries`, `targets`."""
MIN_TIME = dt.datetime.min.replace(tzinfo=dt.UTC)
"""Earliest time a protobuf Timestamp (and so the API) holds: 0001-01-01T00:00:00Z."""
MAX_TIME = dt.datetime.max.replace(tzinfo=dt.UTC)
"""Latest time a Python datetime holds, within the Timestamp range (ends 9999-12-31)."""

_E = TypeVar("_E", bound=enum.IntEnum)

_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40


def shown(value: object) -> str:
    """Return a short repr of a value for an error message: bounded, and never raising.

    A payload nested thousands deep or a list of a million ids must not turn
    an error message into a RecursionError or a megabyte of text.

    Args:
        value: whatever the caller passed.

    Returns:
        e.g. `'abc'`, `[1, 2, 3, 4, 5, 6, ...]`, `{'k': {'k': {...}}}`, `a Struct`.
    """
    if isinstance(value, betterproto2.Message):
        return f"a {type(value).__name__}"
    try:
        return _SHORT.repr(value)
    except Exception:  # a broken or endlessly recursive __repr__
        return f"a {type(value).__name__}"


def check_aware(value: object, field: str) -> dt.datetime:
    """Return `value` if it is a timezone-aware datetime that exists in UTC.

    Args:
        value: the value to check.
        field: the argument's name, used in the error message.

    Returns:
        `value` unchanged (in its own zone).

    Raises:
        ValueError: `value` is not a datetime, is naive, or its UTC instant
            lies outside `MIN_TIME`..`MAX_TIME` (e.g. 9999-12-31T23:00-05:00).
    """
    if not isinstance(value, dt.datetime):
        raise ValueError(f"{field} must be a datetime, got {type(value).__name__}")
    try:
        offset = value.utcoffset()
    except (TypeError, ValueError) as error:  # a broken tzinfo
        raise ValueError(f"{field} has an unusable tzinfo: {error}") from None
    if offset is None:
        raise ValueError(f"{field} must be timezone-aware (e.g. tzinfo=UTC), got naive {value}")
    try:
        value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(
            f"{field} {value.isoformat()} is outside the representable range"
            f" ({MIN_TIME.isoformat()}..{MAX_TIME.isoformat()} UTC)"
        ) from None
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
        raise ValueError(f"{field} must be an int in 0..2**64-1, got {shown(value)}")
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
        raise ValueError(f"{field} must be a positive int, got {shown(value)}")
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
        raise ValueError(f"{field} must be True or False, got {shown(value)}")
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
    """Check a duration and return it in whole seconds (None means unlimited).

    Args:
        seconds: a `timedelta`, a number of seconds, or None.
        field: the argument's name, used in the error message.

    Returns:
        The duration rounded to whole seconds, or None.

    Raises:
        ValueError: not a timedelta/number/None, negative, not finite, or
            longer than `MAX_DURATION_SECONDS` (a uint32 on the wire).
    """
    if seconds is None:
        return None
    if isinstance(seconds, dt.timedelta):
        seconds = seconds.total_seconds()
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{field} must be a timedelta, seconds or None, got {shown(seconds)}")
    if isinstance(seconds, float) and math.isnan(seconds):
        raise ValueError(f"{field} must be a number of seconds, got {shown(seconds)}")
    if seconds < 0:
        raise ValueError(f"{field} must not be negative, got {seconds} s")
    if seconds > MAX_DURATION_SECONDS + 0.5:  # also catches inf before round() overflows
        raise ValueError(f"{field} must be at most {MAX_DURATION_SECONDS} s, got {seconds} s")
    whole = round(seconds)
    if whole > MAX_DURATION_SECONDS:
        raise ValueError(f"{field} must be at most {MAX_DURATION_SECONDS} s, got {whole} s")
    return whole


def _range_check(
    field: str, values: Iterable[object], low: int, high: int, *, no_zero: bool = False
) -> None:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"{field} must be a list of ints, got {type(values).__name__}")
    allowed = f"{low}..{high}" + (" except 0" if no_zero else "")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field} value {shown(value)} is not an int (allowed: {allowed})")
        if not low <= value <= high or (no_zero and value == 0):
            raise ValueError(f"{field} value {value} is out of range (allowed: {allowed})")


def known_member(enum_type: type[_E], value: object) -> _E | None:
    """Return the member of `enum_type` that `value` is, or None if the schema defines none.

    betterproto2 builds a placeholder member for any integer (e.g.
    `RecurrenceRuleFrequency(9)`, shown as `~UNKNOWN`); those, members of
    other enums and non-integers all give None.

    Args:
        enum_type: a generated enum class.
        value: a member, an int, or anything else.

    Returns:
        The defined member with that value, or None.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if isinstance(value, enum.Enum) and not isinstance(value, enum_type):
        return None
    return enum_type._value2member_map_.get(int(value))  # type: ignore[return-value]


def enum_label(enum_type: type[_E], value: object) -> str:
    """Return a member's name, or the raw value marked unknown, e.g. `"9 (unknown)"`.

    For showing values received from a newer server, which may use members
    this schema does not define.

    Args:
        enum_type: a generated enum class.
        value: the received value.

    Returns:
        `"DAILY"` for a defined member, `"<int> (unknown)"` otherwise.
    """
    member = known_member(enum_type, value)
    if member is not None:
        return member.name
    raw = int(value) if isinstance(value, int) and not isinstance(value, bool) else value
    return f"{shown(raw)} (unknown)"


def check_enum(
    enum_type: type[_E], value: object, field: str, *, allow_unspecified: bool = True
) -> _E:
    """Return the member of `enum_type` that `value` is; raise if the schema defines none.

    Args:
        enum_type: a generated enum class.
        value: a member of it or its integer value.
        field: the field's name, used in the error message.
        allow_unspecified: whether the 0 member (`UNSPECIFIED`) is accepted.

    Returns:
        The member.

    Raises:
        ValueError: `value` is not a defined member (placeholder members for
            unknown integers included), or is `UNSPECIFIED` when not allowed.
    """
    member = known_member(enum_type, value)
    if member is None or (member.value == 0 and not allow_unspecified):
        allowed = ", ".join(m.name for m in enum_type if allow_unspecified or m.value)
        raw = int(value) if isinstance(value, int) and not isinstance(value, bool) else value
        raise ValueError(
            f"{field} {shown(raw)} is not a known {enum_type.__name__} (allowed: {allowed})"
        )
    return member
