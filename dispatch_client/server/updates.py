"""Applying an update request's field mask to stored dispatch data (no I/O).

Every check raises `ValueError` naming the request field; the service answers
it with INVALID_ARGUMENT.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from .._proto.frequenz.api.dispatch.v1 import (
    DispatchData,
    RecurrenceRule,
    RecurrenceRuleFrequency,
    UpdateMicrogridDispatchRequestDispatchUpdate,
)
from ..update import RECURRENCE_FIELDS
from ..validation import check_duration, check_payload, check_recurrence, check_start_time

__all__ = ["FIXED_PATHS", "UPDATABLE_PATHS", "apply_update", "check_mask", "round_to_second"]

UPDATABLE_PATHS = (
    "start_time",
    "duration",
    "target",
    "is_active",
    "payload",
    "recurrence",
    *(f"recurrence.{name}" for name in RECURRENCE_FIELDS),
)
"""The `update_mask` paths the service accepts."""

FIXED_PATHS = ("type", "is_dry_run", "dry_run")
"""Fields fixed at creation: named in a mask, they get their own error message."""


def round_to_second(value: dt.datetime) -> dt.datetime:
    """Round to the nearest whole second (half a second rounds up), as the live service stores.

    Args:
        value: an aware datetime.

    Returns:
        `value` with `microsecond=0`, one second later when it had >= 500 ms,
        except in the last second of 9999-12-31, which has no later second to
        round to and is rounded down.
    """
    whole = value.replace(microsecond=0)
    if value.microsecond < 500_000:
        return whole
    try:
        return whole + dt.timedelta(seconds=1)
    except OverflowError:
        return whole


def check_mask(paths: list[str]) -> None:
    """Check the paths of an `update_mask`.

    Args:
        paths: the mask's paths, in request order.

    Raises:
        ValueError: the mask is empty, or a path is fixed or unknown (the
            message names the path and lists the allowed ones).
    """
    if not paths:
        raise ValueError("update_mask must name at least one field to update")
    for path in paths:
        if path in FIXED_PATHS:
            raise ValueError(
                f"update_mask path '{path}' cannot be updated: it is fixed at creation"
            )
        if path not in UPDATABLE_PATHS:
            raise ValueError(
                f"update_mask path '{path}' is not an updatable field"
                f" (allowed: {', '.join(UPDATABLE_PATHS)})"
            )


def apply_update(
    current: DispatchData,
    paths: Iterable[str],
    update: UpdateMicrogridDispatchRequestDispatchUpdate,
    *,
    now: dt.datetime,
    allowance: dt.timedelta,
) -> DispatchData:
    """Return a copy of `current` with exactly the masked fields taken from `update`.

    A masked field unset in `update` takes its proto default, except
    `start_time`, which must be set. `recurrence` alone replaces the whole rule.

    Args:
        current: the stored data; not changed.
        paths: the mask's paths, already checked with `check_mask`.
        update: the new values.
        now: the server's clock, for the start-time check.
        allowance: how far in the past a new start time may be.

    Returns:
        The new data, its start time rounded to the second.

    Raises:
        ValueError: a new value breaks a rule of `dispatch_client.validation`
            (start in the past, negative duration, payload or recurrence limits,
            a recurrence `until_time` before the start).
    """
    data = DispatchData.parse(bytes(current))  # a deep copy
    for path in paths:
        if path == "start_time":
            if update.start_time is None:
                raise ValueError("update.start_time must be set when the mask has 'start_time'")
            start = check_start_time(update.start_time, now=now, allowance=allowance)
            data.start_time = round_to_second(start)
        elif path == "duration":
            data.duration = check_duration(update.duration)
        elif path == "target":
            data.target = update.target
        elif path == "is_active":
            data.is_active = bool(update.is_active)
        elif path == "payload":
            if update.payload is not None:
                check_payload(update.payload)
            data.payload = update.payload
        elif path == "recurrence":
            data.recurrence = _recurrence_from_update(update, RECURRENCE_FIELDS)
        else:
            name = path.removeprefix("recurrence.")
            rule = data.recurrence or RecurrenceRule()
            new_values = _recurrence_from_update(update, (name,)) or RecurrenceRule()
            setattr(rule, name, getattr(new_values, name))
            data.recurrence = rule
    if data.recurrence is not None:
        check_recurrence(data.recurrence, start=data.start_time)
    return data


def _recurrence_from_update(
    update: UpdateMicrogridDispatchRequestDispatchUpdate, names: Iterable[str]
) -> RecurrenceRule | None:
    source = update.recurrence
    if source is None:
        return None
    rule = RecurrenceRule()
    for name in names:
        value = getattr(source, name)
        if name == "freq":
            value = RecurrenceRuleFrequency.UNSPECIFIED if value is None else value
        elif name == "interval":
            value = value or 0
        elif name != "end_criteria":
            value = list(value)
        setattr(rule, name, value)
    return rule
