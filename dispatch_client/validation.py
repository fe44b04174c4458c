"""Checks on dispatch values, shared by the client (before sending) and the server.

Every check raises `ValueError` with a message that names the field, the value
and what is allowed. The client runs them before anything goes on the wire; the
reference server runs the same ones and answers INVALID_ARGUMENT, so both sides
agree on one set of rules.

Limits (the same on both sides):

- enum fields hold only the members the schema defines (`check_enum`, and
  `check_message` for every enum field of a message): betterproto2 turns any
  integer into a placeholder member, so membership is checked explicitly;
- times lie within 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999Z
  (`MIN_TIME`..`MAX_TIME`), the range of a protobuf Timestamp;
- a filter list (`dispatch_ids`, `queries`, `targets`) holds at most
  `MAX_FILTER_ITEMS` (1000) items;
- a payload holds only what JSON can (every `Value` has a kind set, numbers
  are finite), is nested at most `MAX_PAYLOAD_DEPTH` (5) levels and encodes to
  at most `MAX_PAYLOAD_BYTES` (50 KiB);
- recurrence: `count` 1..4096, `interval` 1..10000 (0 means 1), by* values in
  their calendar ranges, and an `until_time` not before the start;
- a duration is at most `MAX_DURATION_SECONDS` (2**32-1 s, a uint32).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

import betterproto2

from ._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    DispatchData,
    DispatchFilter,
    RecurrenceRule,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    SortOptions,
)
from ._proto.google.protobuf import ListValue, NullValue, Struct, Value

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

__all__ = [
    "MAX_DURATION_SECONDS",
    "MAX_FILTER_ITEMS",
    "MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "MAX_RECURRENCE_COUNT",
    "MAX_RECURRENCE_INTERVAL",
    "MAX_TIME",
    "MAX_UINT64",
    "MIN_TIME",
    "check_aware",
    "check_bool",
    "check_dispatch_data",
    "check_dispatch_filter",
    "check_duration",
    "check_enum",
    "check_message",
    "check_payload",
    "check_positive_int",
    "check_recurrence",
    "check_sort_options",
    "check_start_time",
    "check_uint64",
    "dispatch_id_of",
    "enum_label",
    "known_member",
    "payload_measure",
    "payload_to_struct",
    "shown",
    "to_utc",
]

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


_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "sint32": (-(2**31), 2**31 - 1),
    "sfixed32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "sint64": (-(2**63), 2**63 - 1),
    "sfixed64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "fixed32": (0, 2**32 - 1),
    "uint64": (0, MAX_UINT64),
    "fixed64": (0, MAX_UINT64),
}


def _check_scalar(
    proto_type: str, value: object, field: str, cls: Any
) -> betterproto2.Message | None:
    """Check one non-repeated value; return a message to walk into, if any."""
    if proto_type == "enum":
        check_enum(cls, value, field)
    elif proto_type in _INT_RANGES:
        low, high = _INT_RANGES[proto_type]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field} must be an int, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{field} {value} is out of range for a {proto_type} ({low}..{high})")
    elif proto_type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{field} must be a bool, got {type(value).__name__}")
    elif proto_type in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{field} must be a number, got {type(value).__name__}")
    elif proto_type == "string":
        if not isinstance(value, str):
            raise ValueError(f"{field} must be a str, got {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"{field} is not valid Unicode text: {error.reason}") from None
    elif proto_type == "bytes":
        if not isinstance(value, bytes):
            raise ValueError(f"{field} must be bytes, got {type(value).__name__}")
    elif proto_type == "message":
        if cls is dt.datetime:
            check_aware(value, field)
        elif not isinstance(value, cls):
            raise ValueError(f"{field} must be a {cls.__name__}, got {type(value).__name__}")
        else:
            return cast(betterproto2.Message, value)
    return None


def _check_one_of(message: betterproto2.Message, meta: Any, path: str) -> None:
    """Refuse a message with two members of one oneof set (betterproto2 lets you build it)."""
    for group, fields in meta.oneof_field_by_group.items():
        members = sorted(f.name for f in fields if getattr(message, f.name, None) is not None)
        if len(members) > 1:
            prefix = f"{path}: " if path else ""
            raise ValueError(
                f"{prefix}{' and '.join(members)} are both set, but they are one of"
                f" '{group}' (set at most one)"
            )


def check_message(message: betterproto2.Message, field: str, *, skip: Iterable[str] = ()) -> None:
    """Check that every field of `message`, nested ones included, holds what the schema says.

    The one check behind every enum field (a defined member, see
    `check_enum`), every integer field (its protobuf range), every
    Timestamp (aware, within `MIN_TIME`..`MAX_TIME`) and every nested
    message (of the declared class). Walks iteratively, so any nesting depth
    is safe; limits on depth are the callers' (see `check_payload`).

    Args:
        message: the message to check.
        field: its name, used as the prefix of the field paths in errors.
        skip: names of top-level fields not to walk (already checked).

    Raises:
        ValueError: naming the first field path whose value does not fit,
            e.g. `recurrence.freq 9 is not a known RecurrenceRuleFrequency`,
            or two members of one oneof that are both set.
    """
    skipped = frozenset(skip)
    stack: list[tuple[betterproto2.Message, str]] = [(message, field)]
    while stack:
        current, path = stack.pop()
        meta: Any = cast(Any, current)._betterproto
        _check_one_of(current, meta, path)
        for name, fmeta in meta.meta_by_field_name.items():
            if current is message and name in skipped:
                continue
            value = getattr(current, name)
            if value is None:
                continue
            where = f"{path}.{name}" if path else name
            cls: Any = meta.cls_by_field[name]
            if fmeta.proto_type == "map":
                value_cls = cls._betterproto.cls_by_field["value"]
                if not isinstance(value, dict):
                    raise ValueError(f"{where} must be a dict, got {type(value).__name__}")
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise ValueError(f"{where} has a key {shown(key)} that is not a str")
                    if not isinstance(item, value_cls):
                        raise ValueError(
                            f"{where}[{shown(key)}] must be a {value_cls.__name__},"
                            f" got {type(item).__name__}"
                        )
                    stack.append((item, f"{where}[{shown(key)}]"))
                continue
            if fmeta.repeated:
                if not isinstance(value, list | tuple):
                    raise ValueError(f"{where} must be a list, got {type(value).__name__}")
                items = [(item, f"{where}[{index}]") for index, item in enumerate(value)]
            else:
                items = [(value, where)]
            for item, item_path in items:
                nested = _check_scalar(fmeta.proto_type, item, item_path, cls)
                if nested is not None:
                    stack.append((nested, item_path))


def check_recurrence(
    rule: RecurrenceRule, field: str = "recurrence", *, start: dt.datetime | None = None
) -> None:
    """Check a recurrence rule against the limits the service enforces.

    Args:
        rule: the rule to check.
        field: its name, used as the prefix in error messages.
        start: the dispatch's start time, when known: an `until_time` before
            it means the rule can never run, which is refused.

    Raises:
        ValueError: naming the field: a value of the wrong type, an unknown
            enum value, an out-of-range count/interval/by* value, `bymonthdays`
            with a weekly frequency, or an `until_time` before `start`.
    """
    if not isinstance(rule, RecurrenceRule):
        raise ValueError(f"{field} must be a RecurrenceRule, got {type(rule).__name__}")
    freq = check_enum(RecurrenceRuleFrequency, rule.freq, f"{field}.freq")
    interval = rule.interval
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise ValueError(f"{field}.interval must be an int, got {shown(interval)}")
    if interval and not 1 <= interval <= MAX_RECURRENCE_INTERVAL:
        raise ValueError(
            f"{field}.interval {interval} is out of range "
            f"(allowed: 1..{MAX_RECURRENCE_INTERVAL}, or 0/unset for 1)"
        )
    _range_check(f"{field}.byminutes", rule.byminutes, 0, 59)
    _range_check(f"{field}.byhours", rule.byhours, 0, 23)
    _range_check(f"{field}.bymonthdays", rule.bymonthdays, -31, 31, no_zero=True)
    _range_check(f"{field}.bymonths", rule.bymonths, 1, 12)
    if isinstance(rule.byweekdays, str | bytes) or not isinstance(rule.byweekdays, Iterable):
        raise ValueError(f"{field}.byweekdays must be a list of weekdays")
    for day in rule.byweekdays:
        check_enum(RecurrenceRuleWeekday, day, f"{field}.byweekdays value", allow_unspecified=False)
    # Anything else (a wrong type in end_criteria, say) is found by the generic walk.
    check_message(rule, field)
    if rule.end_criteria is not None:
        which, value = betterproto2.which_one_of(rule.end_criteria, "count_or_until")
        if which == "count" and isinstance(value, int) and not 1 <= value <= MAX_RECURRENCE_COUNT:
            raise ValueError(
                f"{field}.end_criteria.count {value} is out of range "
                f"(allowed: 1..{MAX_RECURRENCE_COUNT})"
            )
        if (
            which == "until_time"
            and start is not None
            and freq != RecurrenceRuleFrequency.UNSPECIFIED
        ):
            until_time = check_aware(value, f"{field}.end_criteria.until_time")
            if until_time < check_aware(start, "start_time"):
                raise ValueError(
                    f"{field}.end_criteria.until_time {until_time.isoformat()} is before"
                    f" start_time {start.isoformat()}: the recurrence could never run"
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


def _value_size(value: Value, sizes: dict[int, int]) -> int:
    """Encoded size of `value` without its own tag; nested containers are in `sizes`."""
    which, inner = betterproto2.which_one_of(value, "kind")
    if isinstance(inner, Struct | ListValue):
        return _length_delimited(sizes[id(inner)])
    if isinstance(inner, str):
        return _length_delimited(len(inner.encode("utf-8")))
    if which == "number_value":
        return _FIXED64_FIELD
    if which == "bool_value":
        return _BOOL_FIELD
    if which == "null_value" and inner is not None:
        return 1 + _varint_size(int(inner))
    return 0


def payload_measure(payload: Struct) -> tuple[int, int]:
    """Return a payload's nesting depth (a flat object is 1) and its encoded size in bytes.

    Computed by walking the message rather than by encoding it: encoding a
    Struct with betterproto2 costs as much as encoding the whole request.
    The walk is iterative, so a payload nested thousands of levels deep is
    measured (and then refused), not a RecursionError.

    Args:
        payload: a well-typed Struct (see `check_message`).

    Returns:
        `(depth, size)`: objects and lists each count one level; `size` is
        `len(bytes(payload))`.
    """
    order: list[Struct | ListValue | Value] = []
    stack: list[tuple[Struct | ListValue | Value, int]] = [(payload, 1)]
    depth = 1
    while stack:
        node, level = stack.pop()
        order.append(node)
        if isinstance(node, Struct):
            depth = max(depth, level)
            stack.extend((value, level) for value in node.fields.values())
        elif isinstance(node, ListValue):
            depth = max(depth, level)
            stack.extend((value, level) for value in node.values)
        else:
            _, inner = betterproto2.which_one_of(node, "kind")
            if isinstance(inner, Struct | ListValue):
                stack.append((inner, level + 1))
    # Children come after their parent in `order`: walking it backwards sizes
    # every child before the container that holds it.
    sizes: dict[int, int] = {}
    for node in reversed(order):
        if isinstance(node, Struct):
            size = 0
            for key, value in node.fields.items():
                entry = _length_delimited(len(key.encode("utf-8"))) + _length_delimited(
                    sizes[id(value)]
                )
                size += _length_delimited(entry)
        elif isinstance(node, ListValue):
            size = sum(_length_delimited(sizes[id(value)]) for value in node.values)
        else:
            size = _value_size(node, sizes)
        sizes[id(node)] = size
    return depth, sizes[id(payload)]


def _check_json_values(payload: Struct, field: str) -> None:
    """Refuse Values JSON cannot hold: one with no kind set, or a NaN/infinite number.

    Either would be stored and then break every reader: betterproto2's
    `to_dict()` raises on a Value without a kind, and JSON has no NaN.
    Iterative, like `payload_measure`, so the depth is no concern here.
    """
    stack: list[tuple[Struct | ListValue, str]] = [(payload, field)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Struct):
            items = [(f"{path}[{shown(key)}]", value) for key, value in node.fields.items()]
        else:
            items = [(f"{path}[{index}]", value) for index, value in enumerate(node.values)]
        for where, value in items:
            which, inner = betterproto2.which_one_of(value, "kind")
            if not which:
                raise ValueError(f"{where} is a Value with no kind set (null, bool, number, ...)")
            if isinstance(inner, float) and not math.isfinite(inner):
                raise ValueError(f"{where} is {inner}; JSON numbers must be finite")
            if isinstance(inner, Struct | ListValue):
                stack.append((inner, where))


def check_payload(payload: Struct, field: str = "payload") -> None:
    """Check a payload's types, nesting depth and encoded size.

    Args:
        payload: the payload as a Struct.
        field: its name, used in error messages.

    Raises:
        ValueError: a value of the wrong type, a Value with no kind set, a
            NaN or infinite number, nesting deeper than `MAX_PAYLOAD_DEPTH` or
            more than `MAX_PAYLOAD_BYTES` encoded.
    """
    if not isinstance(payload, Struct):
        raise ValueError(f"{field} must be a Struct, got {type(payload).__name__}")
    check_message(payload, field)
    _check_json_values(payload, field)
    _check_payload_extent(payload, field)


def _check_payload_extent(payload: Struct, field: str) -> None:
    depth, size = payload_measure(payload)
    if depth > MAX_PAYLOAD_DEPTH:
        raise ValueError(
            f"{field} is nested {depth} levels deep (allowed: at most {MAX_PAYLOAD_DEPTH})"
        )
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"{field} is {size} bytes encoded (allowed: at most {MAX_PAYLOAD_BYTES})")


_DEPTH_REPORT_CAP = 1000


def _json_depth(obj: object) -> int | None:
    """Depth of a JSON-like value (a flat object is 1), None past `_DEPTH_REPORT_CAP`.

    Level by level and without recursion; a value containing itself
    (a cycle) has no depth and ends at the cap.
    """
    frontier: list[object] = [obj]
    depth = 0
    while frontier:
        depth += 1
        if depth > _DEPTH_REPORT_CAP:
            return None
        children: dict[int, object] = {}
        for node in frontier:
            items = node.values() if isinstance(node, Mapping) else node
            for child in items:  # type: ignore[attr-defined]
                if isinstance(child, Mapping | list | tuple):
                    children[id(child)] = child
        frontier = list(children.values())
    return depth


def _too_deep(payload: object, field: str) -> ValueError:
    depth = _json_depth(payload)
    shown = f"more than {_DEPTH_REPORT_CAP}" if depth is None else str(depth)
    return ValueError(
        f"{field} is nested {shown} levels deep (allowed: at most {MAX_PAYLOAD_DEPTH})"
    )


class _TooDeep(Exception):
    """Raised inside the conversion; `payload_to_struct` turns it into a ValueError."""


def _to_value(obj: Any, path: str, level: int) -> Value:
    if obj is None:
        return Value(null_value=NullValue.NULL_VALUE)
    if isinstance(obj, bool):
        return Value(bool_value=obj)
    if isinstance(obj, int | float):
        try:
            number = float(obj)
        except OverflowError:
            raise ValueError(f"{path} is {shown(obj)}, too large for a JSON number") from None
        if not math.isfinite(number):
            raise ValueError(f"{path} is {shown(obj)}; JSON numbers must be finite")
        return Value(number_value=number)
    if isinstance(obj, str):
        _check_text(obj, path)
        return Value(string_value=obj)
    # A container one level further down: refuse before recursing, so a
    # payload nested hundreds deep (or containing itself) is a ValueError.
    if isinstance(obj, Mapping | list | tuple) and level >= MAX_PAYLOAD_DEPTH:
        raise _TooDeep
    if isinstance(obj, Mapping):
        return Value(struct_value=_to_struct(obj, path, level + 1))
    if isinstance(obj, list | tuple):
        return Value(
            list_value=ListValue(
                values=[_to_value(v, f"{path}[{i}]", level + 1) for i, v in enumerate(obj)]
            )
        )
    raise ValueError(
        f"{path} has type {type(obj).__name__}; allowed: dict, list, str, int, float, bool, None"
    )


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{path} is not valid Unicode text: {error.reason}") from None


def _to_struct(obj: Mapping[Any, Any], path: str, level: int) -> Struct:
    fields: dict[str, Value] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(
                f"{path} has a key {shown(key)} of type {type(key).__name__}; keys must be str"
            )
        _check_text(key, f"{path} key")
        fields[key] = _to_value(value, f"{path}[{shown(key)}]", level)
    return Struct(fields=fields)


def payload_to_struct(
    payload: Mapping[str, Any] | Struct | None, field: str = "payload"
) -> Struct | None:
    """Convert a JSON-like mapping to a `Struct`, checking type, depth and size.

    Args:
        payload: a dict of JSON values (dict, list, str, int, float, bool,
            None), a ready `Struct`, or None.
        field: the argument's name, used in error messages.

    Returns:
        The Struct, or None for None.

    Raises:
        ValueError: a value JSON cannot hold (non-str keys, NaN, other
            types), nesting deeper than `MAX_PAYLOAD_DEPTH` or more than
            `MAX_PAYLOAD_BYTES` encoded.
    """
    if payload is None:
        return None
    if isinstance(payload, Struct):
        check_payload(payload, field)
        return payload
    if not isinstance(payload, Mapping):
        raise ValueError(f"{field} must be a dict (JSON object), got {type(payload).__name__}")
    try:
        struct = _to_struct(payload, field, 1)
    except _TooDeep:
        raise _too_deep(payload, field) from None
    # Every value was typed and the depth bounded as it was converted: only
    # the size is left to check.
    size = _encoded_size(struct)
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"{field} is {size} bytes encoded (allowed: at most {MAX_PAYLOAD_BYTES})")
    return struct


def _encoded_size(struct: Struct) -> int:
    """`len(bytes(struct))`: upb encodes it in microseconds, else the walk measures it."""
    from . import _fastdecode

    if _fastdecode.available():
        return len(_fastdecode.encoder(Struct)(struct))
    return payload_measure(struct)[1]


def check_dispatch_data(
    data: DispatchData,
    *,
    now: dt.datetime,
    allowance: dt.timedelta = dt.timedelta(0),
    start_immediately: bool = False,
    payload_checked: bool = False,
    target_checked: bool = False,
) -> None:
    """Check a whole `DispatchData` as it would be created.

    Args:
        data: the dispatch's data.
        now: the current time (aware), for the past-start check.
        allowance: how far in the past `start_time` may be.
        start_immediately: the start is "now" (`start_time` may be unset).
        payload_checked: skip the payload, for a caller that built it with
            `payload_to_struct`, which checked it already.
        target_checked: skip the target, for a caller that built it with
            `targets.to_target`, which checked it already.

    Raises:
        ValueError: naming the first field that is wrong (see the module
            docstring for the limits).
    """
    if not isinstance(data.type, str) or not data.type:
        raise ValueError("type must be a non-empty string")
    start = now if start_immediately else data.start_time
    if not start_immediately:
        if data.start_time is None:
            raise ValueError('start_time is required (or use "NOW")')
        check_start_time(data.start_time, now=now, allowance=allowance)
    check_duration(data.duration)
    if data.payload is not None and not payload_checked:
        check_payload(data.payload)
    if data.recurrence is not None:
        check_recurrence(data.recurrence, start=start)
    check_message(
        data,
        "",
        skip=("payload", "recurrence", "target") if target_checked else ("payload", "recurrence"),
    )


def check_sort_options(sort: SortOptions, field: str = "sort_options") -> None:
    """Check that a sort names a known field and order.

    Args:
        sort: the sort options.
        field: their name, used in error messages.

    Raises:
        ValueError: an unknown `sort_field` or `sort_order` value.
    """
    check_message(sort, field)


def check_dispatch_filter(filter_: DispatchFilter, field: str = "filter") -> None:
    """Check a list filter: value types, enum members, times and list lengths.

    Args:
        filter_: the filter of a list request.
        field: its name, used in error messages.

    Raises:
        ValueError: a list (`dispatch_ids`, `queries`, `targets`) longer than
            `MAX_FILTER_ITEMS`, or a value that does not fit its field.
    """
    for name in ("dispatch_ids", "queries", "targets"):
        items = getattr(filter_, name)
        if isinstance(items, list | tuple) and len(items) > MAX_FILTER_ITEMS:
            raise ValueError(
                f"{field}.{name} has {len(items)} items (allowed: at most {MAX_FILTER_ITEMS})"
            )
    check_message(filter_, field)
