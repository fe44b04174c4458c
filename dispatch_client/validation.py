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
from collections.abc import Iterable

import betterproto2

from ._field_checks import (
    MAX_DURATION_SECONDS,
    MAX_FILTER_ITEMS,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    MAX_RECURRENCE_COUNT,
    MAX_RECURRENCE_INTERVAL,
    MAX_TIME,
    MAX_UINT64,
    MIN_TIME,
    _range_check,
    check_aware,
    check_bool,
    check_duration,
    check_enum,
    check_positive_int,
    check_start_time,
    check_uint64,
    dispatch_id_of,
    enum_label,
    known_member,
    shown,
    to_utc,
)
from ._message_walk import check_message
from ._payload import check_payload, payload_measure, payload_to_struct
from ._proto.frequenz.api.dispatch.v1 import (
    DispatchData,
    DispatchFilter,
    RecurrenceRule,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    SortOptions,
)

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
