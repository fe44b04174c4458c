"""Export a dispatch's schedule as iCalendar (RFC 5545), for calendar apps.

Needs the optional `icalendar` package (``pip install 'dispatch_client[ical]'``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import betterproto2

from ._proto.frequenz.api.common.v1alpha8.microgrid.electrical_components import (
    ElectricalComponentCategory,
)
from ._proto.frequenz.api.dispatch.v1 import Dispatch, RecurrenceRuleFrequency, TargetComponents
from .recurrence import _FREQUENCIES, _Rule, _series
from .validation import enum_label

__all__ = ["to_ical"]

_PRODID = "-//dispatch_client//Frequenz Dispatch API//EN"
_DAY_CODES = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


def to_ical(dispatch: Dispatch) -> bytes:
    """Return a VCALENDAR with one VEVENT for the dispatch's schedule.

    The event has UID from the dispatch id, DTSTART at the first run, DTEND
    (one-off) or DURATION (recurring; none when the dispatch runs forever),
    the RRULE, SUMMARY = the dispatch type and a DESCRIPTION with target and
    payload. An inactive dispatch is exported with STATUS:CANCELLED. Times are
    UTC with whole seconds (iCalendar has no sub-second resolution).

    Args:
        dispatch: the dispatch, with metadata and data.

    Returns:
        The calendar, CRLF line endings, as bytes.

    Raises:
        ImportError: the `icalendar` package is not installed.
        ValueError: the dispatch lacks metadata or data, or its schedule
            cannot be evaluated (e.g. a frequency this schema does not know,
            sent by a newer server; the message names it).
    """
    try:
        import icalendar
    except ImportError as error:
        raise ImportError(
            "to_ical needs the optional 'icalendar' package: pip install 'dispatch_client[ical]'"
        ) from error

    data, metadata = dispatch.data, dispatch.metadata
    if data is None or metadata is None:
        raise ValueError("dispatch needs both metadata and data to be exported")
    series = _series(data)
    first = series.first()

    event = icalendar.Event()
    event.add("uid", f"dispatch-{metadata.dispatch_id}@dispatch-client")
    event.add("dtstamp", metadata.update_time or metadata.create_time or datetime.now(UTC))
    if metadata.create_time is not None:
        event.add("created", metadata.create_time)
    if metadata.update_time is not None:
        event.add("last-modified", metadata.update_time)
    # RFC 5545 counts DTSTART as the first occurrence even when it does not
    # match the rule (dateutil does not), so start at the first real run; the
    # rule's dtstart-derived defaults are the same there.
    dtstart = (first or series.start).replace(microsecond=0)
    event.add("dtstart", dtstart)
    if data.duration is not None:
        if series.rule is None:
            event.add("dtend", dtstart + timedelta(seconds=data.duration))
        else:
            event.add("duration", timedelta(seconds=data.duration))
    if data.recurrence is not None and series.rule is not None:
        rule = _Rule.from_proto(
            data.recurrence, _FREQUENCIES[RecurrenceRuleFrequency(data.recurrence.freq)]
        )
        event.add("rrule", icalendar.vRecur(_recur_parts(rule, series.start)))
    if first is None:
        # A series that never runs: exclude DTSTART, which RFC 5545 would
        # otherwise count as an occurrence.
        event.add("exdate", dtstart)
    event.add("summary", data.type)
    event.add("description", _description(dispatch))
    event.add("status", "CONFIRMED" if data.is_active else "CANCELLED")

    calendar = icalendar.Calendar()
    calendar.add("prodid", _PRODID)
    calendar.add("version", "2.0")
    calendar.add_component(event)
    result: bytes = calendar.to_ical()
    return result


def _recur_parts(rule: _Rule, start: datetime) -> dict[str, Any]:
    parts: dict[str, Any] = {"FREQ": _freq_name(rule.freq)}
    if rule.interval > 1:
        parts["INTERVAL"] = rule.interval
    if rule.count is not None:
        parts["COUNT"] = rule.count
    if rule.until is not None:
        # Runs start at whole seconds + the start's microseconds; iCalendar
        # runs at whole seconds, so move UNTIL back by the same amount.
        shift = timedelta(microseconds=start.microsecond)
        parts["UNTIL"] = (rule.until - shift).replace(microsecond=0)
    if rule.byminute:
        parts["BYMINUTE"] = list(rule.byminute)
    if rule.byhour:
        parts["BYHOUR"] = list(rule.byhour)
    if rule.byweekday:
        parts["BYDAY"] = [_DAY_CODES[day] for day in rule.byweekday]
    if rule.bymonthday:
        parts["BYMONTHDAY"] = list(rule.bymonthday)
    if rule.bymonth:
        parts["BYMONTH"] = list(rule.bymonth)
    # Matters for WEEKLY with an interval; RFC 5545's default, made explicit.
    parts["WKST"] = "MO"
    return parts


def _freq_name(freq: int) -> str:
    for proto_freq, dateutil_freq in _FREQUENCIES.items():
        if dateutil_freq == freq:
            return proto_freq.name
    raise ValueError(f"unknown frequency {freq}")


def _description(dispatch: Dispatch) -> str:
    assert dispatch.data is not None and dispatch.metadata is not None
    data = dispatch.data
    flags = ["active" if data.is_active else "inactive"]
    if data.is_dry_run:
        flags.append("dry run")
    if data.duration is None:
        flags.append("runs until stopped")
    lines = [
        f"Dispatch {dispatch.metadata.dispatch_id} ({', '.join(flags)})",
        f"Target: {_describe_target(data.target)}",
    ]
    if data.payload is not None and data.payload.fields:
        lines.append(f"Payload: {json.dumps(data.payload.to_dict(), sort_keys=True)}")
    return "\n".join(lines)


def _describe_target(target: TargetComponents | None) -> str:
    if target is None:
        return "none"
    if target.component_ids is not None:
        return "components " + ", ".join(str(i) for i in target.component_ids.ids)
    if target.component_categories is not None:
        return "categories " + ", ".join(
            _category(c) for c in target.component_categories.categories
        )
    if target.component_categories_types is not None:
        described = []
        for item in target.component_categories_types.categories:
            _, kind = betterproto2.which_one_of(item, "type")
            suffix = f" ({enum_label(type(kind), kind)})" if kind is not None else ""
            described.append(_category(item.category) + suffix)
        return "categories " + ", ".join(described)
    return "none"


def _category(category: int) -> str:
    return enum_label(ElectricalComponentCategory, category)
