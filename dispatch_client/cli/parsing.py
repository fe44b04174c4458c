"""Human input for dispatch-cli: times, durations, targets, id ranges, recurrence parts.

Every parser is a plain function raising `ValueError` with a message that says
what is allowed; `ParamType` wrappers at the bottom turn that into click's
"Invalid value for 'X': ..." (exit code 2).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, cast

import asyncclick as click

from .._proto.frequenz.api.common.v1alpha8.microgrid.electrical_components import (
    BatteryType,
    ElectricalComponentCategory,
    EvChargerType,
    InverterType,
)
from .._proto.frequenz.api.dispatch.v1 import (
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    TargetComponents,
)
from ..targets import to_target
from ..validation import MAX_DURATION_SECONDS, check_uint64, to_utc

__all__ = [
    "duration_param",
    "format_duration",
    "id_range_param",
    "json_object_param",
    "parse_duration",
    "parse_enum",
    "parse_frequency",
    "parse_id_ranges",
    "parse_int_list",
    "parse_json_object",
    "parse_months",
    "parse_target",
    "parse_time",
    "parse_weekdays",
    "target_param",
    "time_param",
]

TIME_HELP = "ISO 8601 (2025-01-31T14:00Z), 'now', or a phrase like 'in 10 min' / 'tomorrow 08:00'"
DURATION_HELP = "e.g. 90s, 15m, 1h30m, 2d or ISO 8601 like PT1H30M"
TARGET_HELP = (
    "component ids (1,2,3), categories (BATTERY,INVERTER) or category:type (BATTERY:LI_ION)"
)

# Ranges beyond this are almost certainly typos (5-90000), not intent.
MAX_ID_RANGE = 10_000

E = TypeVar("E", bound=enum.Enum)


def _names(enum_type: type[enum.Enum]) -> list[str]:
    return [m.name for m in enum_type if m.name != "UNSPECIFIED"]


def parse_enum(text: str, enum_type: type[E], what: str) -> E:
    """Parse an enum member by name, case-insensitively; `-` and spaces count as `_`.

    Args:
        text: the name as typed.
        enum_type: the enum to look in (its UNSPECIFIED member is never matched).
        what: what the value is, for the error message (e.g. "frequency").

    Returns:
        The member.

    Raises:
        ValueError: no member has that name; the message lists the allowed names.
    """
    key = re.sub(r"[\s-]+", "_", text.strip()).upper()
    for member in enum_type:
        if member.name != "UNSPECIFIED" and key == member.name:
            return member
    raise ValueError(f"unknown {what} {text!r}; allowed: {', '.join(_names(enum_type))}")


# --- time -----------------------------------------------------------------

_ONLY_DIGITS = re.compile(r"\s*[+-]?\d+(\.\d+)?\s*")


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """Parse a point in time to an aware UTC datetime.

    Accepts ISO 8601, `now`, and English phrases via dateparser (`in 10 min`,
    `tomorrow 08:00`, `friday 9am CET`). Times without an offset are UTC;
    ambiguous phrases resolve to the future.

    Args:
        text: the time as typed.
        now: the aware instant phrases are relative to; None for the clock.

    Returns:
        The instant, with `tzinfo=UTC`.

    Raises:
        ValueError: empty text, a bare number (ambiguous) or text that is not a
            time; the message shows the accepted forms.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty time; use {TIME_HELP}")
    now = now or dt.datetime.now(dt.UTC)
    if stripped.lower() == "now":
        return to_utc(now, "now")
    # A bare number is ambiguous (a day? an hour? epoch seconds?) and dateparser
    # guesses wildly (`5` -> May 5th), so refuse it.
    if _ONLY_DIGITS.fullmatch(stripped):
        raise ValueError(f"{text!r} is ambiguous; use {TIME_HELP}")
    parsed: dt.datetime | None
    try:
        parsed = dt.datetime.fromisoformat(stripped)
    except ValueError:
        parsed = _parse_phrase(stripped, now)
    if parsed is None:
        raise ValueError(f"could not understand {text!r} as a time; use {TIME_HELP}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return to_utc(parsed, "time")


def _parse_phrase(text: str, now: dt.datetime) -> dt.datetime | None:
    # Imported here: dateparser is slow to import and only phrases need it.
    import dateparser

    settings: dict[str, Any] = {
        "TIMEZONE": "UTC",
        "TO_TIMEZONE": "UTC",
        "RETURN_AS_TIMEZONE_AWARE": True,
        "PREFER_DATES_FROM": "future",
    }
    # dateparser resolves bare times ("08:00") to January 1st when given a
    # RELATIVE_BASE, so only pass one when the caller pinned `now` explicitly
    # far from the real clock (tests); otherwise dateparser's own clock is right.
    real_now = dt.datetime.now(dt.UTC)
    if abs(now - real_now) > dt.timedelta(seconds=5):
        settings["RELATIVE_BASE"] = now.astimezone(dt.UTC).replace(tzinfo=None)
    result = dateparser.parse(text, languages=["en"], settings=settings)
    if not isinstance(result, dt.datetime):
        return None
    _check_understood(text, result)
    return result


# A time of day as written: 8:00, 08:00:30, 9.30, 9am, 9:30 p.m., 25h. Only
# counted as one with minutes, am/pm or "h"; "10" in "in 10 min" is no time.
_CLOCK = re.compile(
    r"(?<![\w:.+-])(?P<h>\d{1,2})(?:[:.](?P<m>\d{2}))?(?::(?P<s>\d{2}))?"
    r"(?:\s*(?P<suffix>[ap]\.?m\.?|h))?(?![\w:])",
    re.IGNORECASE,
)
# 0830 / 2500: a bare 3-4 digit number next to a day word reads as a time too.
_BARE_CLOCK = re.compile(r"(?<![\w:.+-])(?P<h>\d{1,2})(?P<m>\d{2})(?![\w:.])")
_MONTH_WORD = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b", re.IGNORECASE
)
_SIGNED = re.compile(r"(?<![\w:.])[+-]\d")


def _check_understood(text: str, result: dt.datetime) -> None:
    """Refuse a phrase dateparser did not understand exactly.

    dateparser drops what it cannot read and answers anyway: "tomorrow 25:00"
    is tomorrow at the current time, "tomorrow 8:00 PST" is 08:00 UTC. So
    every time of day written must be valid and be the result's time of day
    in the zone the phrase names (UTC when none), and a zone needs a time.

    Raises:
        ValueError: naming the part of the phrase that was not understood.
    """
    from dateparser.timezone_parser import pop_tz_offset_from_string

    rest, zone = pop_tz_offset_from_string(text)
    clocks = [(m.group(0), m.groupdict()) for m in _CLOCK.finditer(rest) if _is_clock(m)]
    if not _MONTH_WORD.search(rest):
        clocks += [
            (m.group(0), {**m.groupdict(), "s": None, "suffix": None})
            for m in _BARE_CLOCK.finditer(rest)
        ]
    signed = _SIGNED.search(rest)
    if signed is not None:
        token = rest[signed.start() :].split()[0]
        raise ValueError(f"could not understand {token!r} in {text!r}; use {TIME_HELP}")
    if zone is not None and not clocks:
        raise ValueError(f"{text!r} names a time zone but no time of day; use {TIME_HELP}")
    local = result.astimezone(zone) if zone is not None else result.astimezone(dt.UTC)
    for token, parts in clocks:
        wanted = _time_of_day(token.strip(), parts)
        if wanted is None:
            raise ValueError(f"{token.strip()!r} in {text!r} is not a time of day (00:00..23:59)")
        if (local.hour, local.minute, local.second) != wanted:
            raise ValueError(
                f"could not understand {token.strip()!r} in {text!r} exactly; use {TIME_HELP}"
            )


def _is_clock(match: re.Match[str]) -> bool:
    return match.group("m") is not None or match.group("suffix") is not None


def _time_of_day(token: str, parts: dict[str, str | None]) -> tuple[int, int, int] | None:
    hour, minute, second = (int(parts[k] or 0) for k in ("h", "m", "s"))
    suffix = (parts.get("suffix") or "").replace(".", "").lower()
    if suffix in ("am", "pm"):
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if suffix == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    return hour, minute, second


# --- duration -------------------------------------------------------------

_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_UNIT_ALIASES = {
    "w": "w",
    "wk": "w",
    "week": "w",
    "weeks": "w",
    "d": "d",
    "day": "d",
    "days": "d",
    "h": "h",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "m": "m",
    "min": "m",
    "mins": "m",
    "minute": "m",
    "minutes": "m",
    "s": "s",
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
}
_COMPACT_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
_ISO_DURATION = re.compile(
    r"P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.IGNORECASE,
)


def parse_duration(text: str) -> dt.timedelta:
    """Parse a duration to a whole number of seconds.

    Accepts `90` (seconds), `90s`, `15m`, `1h30m`, `1h 30min`, `2d` and ISO 8601
    (`PT1H30M`, `P1DT2H`). Years and months are refused: their length varies.

    Args:
        text: the duration as typed.

    Returns:
        The duration, a whole number of seconds.

    Raises:
        ValueError: not a duration, years or months, a unit given twice, a
            fraction of a second, or longer than 2**32-1 s.
    """
    stripped = text.strip()
    allowed = f"use {DURATION_HELP}"
    if not stripped:
        raise ValueError(f"empty duration; {allowed}")
    if stripped.isdigit():
        seconds = float(stripped)
    elif stripped[0] in "pP":
        seconds = _parse_iso_duration(stripped, allowed)
    else:
        seconds = _parse_compact_duration(stripped.lower(), allowed)
    if seconds != int(seconds):
        raise ValueError(f"{text!r} is not a whole number of seconds; {allowed}")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is too long (at most {MAX_DURATION_SECONDS} s)")
    return dt.timedelta(seconds=int(seconds))


def _parse_iso_duration(text: str, allowed: str) -> float:
    upper = text.upper()
    if re.search(r"\d[YM]", upper[1:].partition("T")[0]):
        raise ValueError(f"{text!r} uses years/months, which vary in length; {allowed}")
    match = _ISO_DURATION.fullmatch(text)
    if match is None or not any(match.groupdict().values()) or upper.endswith("T"):
        raise ValueError(f"{text!r} is not a duration; {allowed}")
    return sum(float(v) * _UNIT_SECONDS[k] for k, v in match.groupdict().items() if v)


def _parse_compact_duration(text: str, allowed: str) -> float:
    total = 0.0
    seen: set[str] = set()
    position = 0
    while position < len(text):
        match = _COMPACT_PART.match(text, position)
        if match is None:
            raise ValueError(f"{text!r} is not a duration; {allowed}")
        unit = _UNIT_ALIASES.get(match.group(2))
        if unit is None:
            raise ValueError(
                f"unknown unit {match.group(2)!r} in {text!r}; units: w, d, h, m, s; {allowed}"
            )
        if unit in seen:
            raise ValueError(f"unit {unit!r} given twice in {text!r}; {allowed}")
        seen.add(unit)
        total += float(match.group(1)) * _UNIT_SECONDS[unit]
        position = match.end()
    return total


def format_duration(seconds: int | None) -> str:
    """Format seconds the way `parse_duration` reads them.

    Args:
        seconds: the duration in whole seconds, or None for unlimited.

    Returns:
        e.g. "1h30m" or "0s"; "∞" for None.
    """
    if seconds is None:
        return "∞"
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        amount, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


# --- targets --------------------------------------------------------------

_TYPES_OF: dict[ElectricalComponentCategory, type[BatteryType | InverterType | EvChargerType]] = {
    ElectricalComponentCategory.BATTERY: BatteryType,
    ElectricalComponentCategory.INVERTER: InverterType,
    ElectricalComponentCategory.EV_CHARGER: EvChargerType,
}


def parse_target(text: str) -> TargetComponents:
    """Parse `1,2,3`, `BATTERY,INVERTER` or `BATTERY:LI_ION,INVERTER:PV` into TargetComponents.

    Ids and categories cannot be mixed; a list where any item has a `:type`
    becomes a category-and-type set (items without one match any type).

    Args:
        text: the target as typed.

    Returns:
        The target; duplicates dropped, order kept.

    Raises:
        ValueError: an empty item, ids mixed with categories, an unknown
            category or type, or a type on a category that has none.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ValueError(f"empty item in {text!r}; use {TARGET_HELP}")
    numeric = [item.isdigit() for item in items]
    if all(numeric):
        return to_target(_unique(int(item) for item in items))
    if any(numeric):
        raise ValueError(f"{text!r} mixes component ids and categories; use {TARGET_HELP}")
    # Keyed by (enum class, member): members of different enums compare equal as ints.
    kinds = {(type(k), k): k for k in map(_parse_category_item, items)}
    return to_target(list(kinds.values()))


def _parse_category_item(
    item: str,
) -> ElectricalComponentCategory | BatteryType | InverterType | EvChargerType:
    name, _, type_name = item.partition(":")
    category = parse_enum(name, ElectricalComponentCategory, "component category")
    if not type_name:
        return category
    type_enum = _TYPES_OF.get(category)
    if type_enum is None:
        typed = ", ".join(c.name for c in _TYPES_OF)
        raise ValueError(f"category {category.name} has no types; only {typed} do")
    return parse_enum(type_name, type_enum, f"{category.name} type")


T = TypeVar("T")


def _unique(values: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(values))


# --- ids, lists, payload --------------------------------------------------


def parse_id_ranges(values: Iterable[str]) -> list[int]:
    """Expand `5`, `5-9` and `5,7,9-11` (in any number of arguments) to unique ids, in order.

    Args:
        values: the arguments as typed.

    Returns:
        The ids, first occurrence order, without duplicates.

    Raises:
        ValueError: an item is not an id or range, an id is above 2**64-1, a
            range runs backwards or spans more than `MAX_ID_RANGE` ids.
    """
    ids: list[int] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
            if match is None:
                raise ValueError(f"{item!r} is not an id or a range; use e.g. 5, 5-9 or 5,7,9-11")
            low = int(match.group(1))
            high = int(match.group(2) or low)
            if high < low:
                raise ValueError(f"range {item!r} runs backwards; write {high}-{low}")
            check_uint64(high, "id")
            if high - low >= MAX_ID_RANGE:
                raise ValueError(f"range {item!r} spans more than {MAX_ID_RANGE} ids")
            ids.extend(range(low, high + 1))
    return _unique(ids)


def parse_int_list(values: Iterable[str], low: int, high: int, what: str) -> list[int]:
    """Parse repeated or comma-separated integers, each within low..high.

    Args:
        values: the arguments as typed.
        low: the smallest allowed value; when negative, 0 is not allowed.
        high: the largest allowed value.
        what: what the numbers are, for the error message (e.g. "hours").

    Returns:
        The numbers, first occurrence order, without duplicates.

    Raises:
        ValueError: an item is not a whole number or is out of range.
    """
    result: list[int] = []
    for value in values:
        for item in value.split(","):
            try:
                number = int(item.strip())
            except ValueError:
                raise ValueError(f"{item.strip()!r} is not a whole number ({what})") from None
            if not low <= number <= high or (low < 0 and number == 0):
                zero = " except 0" if low < 0 else ""
                raise ValueError(f"{number} is out of range for {what} ({low}..{high}{zero})")
            result.append(number)
    return _unique(result)


_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def parse_months(values: Iterable[str]) -> list[int]:
    """Parse months given as 1..12 or names (jan, February), repeated or comma-separated.

    Args:
        values: the arguments as typed.

    Returns:
        Month numbers 1..12, without duplicates.

    Raises:
        ValueError: an item is neither a month name nor a number in 1..12.
    """
    numbers: list[str] = []
    for value in values:
        for item in value.split(","):
            key = item.strip().lower()[:3]
            numbers.append(str(_MONTHS.index(key) + 1) if key in _MONTHS else item)
    return parse_int_list(numbers, 1, 12, "months")


def parse_weekdays(values: Iterable[str]) -> list[RecurrenceRuleWeekday]:
    """Parse weekdays given as `mo`, `mon`, `monday` (any case), repeated or comma-separated.

    Args:
        values: the arguments as typed.

    Returns:
        The weekdays, without duplicates.

    Raises:
        ValueError: an item is not an unambiguous weekday prefix of 2+ letters.
    """
    days: list[RecurrenceRuleWeekday] = []
    names = _names(RecurrenceRuleWeekday)
    for value in values:
        for item in value.split(","):
            key = item.strip().upper()
            matches = [
                RecurrenceRuleWeekday[name]
                for name in names
                if len(key) >= 2 and name.startswith(key)
            ]
            if len(matches) != 1:
                raise ValueError(
                    f"unknown weekday {item.strip()!r}; allowed: mo, tu, we, th, fr, sa, su "
                    "or full names"
                )
            days.append(matches[0])
    return _unique(days)


def parse_uint64(text: str) -> int:
    """Parse an id as the API takes it: a whole number in 0..2**64-1.

    Args:
        text: the number as typed.

    Returns:
        The number.

    Raises:
        ValueError: not a whole number, or out of range.
    """
    stripped = text.strip()
    if not stripped.isdigit():
        raise ValueError(f"{text!r} is not a whole number in 0..2**64-1")
    return check_uint64(int(stripped), "id")


def parse_frequency(text: str) -> RecurrenceRuleFrequency:
    """Parse a recurrence frequency name (`daily`, `WEEKLY`...).

    Args:
        text: the name as typed.

    Returns:
        The frequency.

    Raises:
        ValueError: not a frequency name.
    """
    return parse_enum(text, RecurrenceRuleFrequency, "frequency")


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse a JSON object (the payload); anything else is refused.

    Args:
        text: the JSON text.

    Returns:
        The object.

    Raises:
        ValueError: invalid JSON (with the position) or JSON that is not an object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at char {error.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"must be a JSON object like '{{\"power\": 5}}', got {type(value).__name__}"
        )
    return value


# --- click parameter types ------------------------------------------------


class _ParserType(click.ParamType[T]):
    """A ParamType running one of the parsers above; its ValueError becomes a usage error."""

    def __init__(self, name: str, parse: Callable[[str], T]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> T:
        """Parse the text; values that are not text were converted already (defaults)."""
        if not isinstance(value, str):
            return cast("T", value)
        try:
            return self._parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def _time_or_now(text: str) -> dt.datetime | Literal["NOW"]:
    return "NOW" if text.strip().lower() == "now" else parse_time(text)


def time_param(*, allow_now: bool = False) -> click.ParamType[Any]:
    """Accept a point in time (see `parse_time`).

    Args:
        allow_now: keep `now` as the string "NOW" (start immediately) instead of
            the current time.

    Returns:
        A click parameter type converting to an aware UTC datetime (or "NOW").
    """
    if allow_now:
        return _ParserType[dt.datetime | Literal["NOW"]]("time", _time_or_now)
    return _ParserType[dt.datetime]("time", parse_time)


def duration_param() -> click.ParamType[dt.timedelta]:
    """Accept a duration such as `1h30m` or `PT1H30M` (see `parse_duration`).

    Returns:
        A click parameter type converting to a `timedelta`.
    """
    return _ParserType("duration", parse_duration)


def target_param() -> click.ParamType[TargetComponents]:
    """Accept target components: ids, categories or category:type pairs (see `parse_target`).

    Returns:
        A click parameter type converting to `TargetComponents`.
    """
    return _ParserType("target", parse_target)


def id_range_param() -> click.ParamType[list[int]]:
    """Accept one or more dispatch ids: `5`, `5-9`, `5,7` (see `parse_id_ranges`).

    Returns:
        A click parameter type converting to a list of ids.
    """
    return _ParserType("id", lambda text: parse_id_ranges([text]))


def uint64_param() -> click.ParamType[int]:
    """Accept one id, a whole number in 0..2**64-1 (see `parse_uint64`).

    Returns:
        A click parameter type converting to an int.
    """
    return _ParserType("integer", parse_uint64)


def json_object_param() -> click.ParamType[dict[str, Any]]:
    """Accept a JSON object, the payload (see `parse_json_object`).

    Returns:
        A click parameter type converting to a dict.
    """
    return _ParserType("json", parse_json_object)
