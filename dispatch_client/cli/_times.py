"""Times and durations for dispatch-cli: ISO 8601, 'now', phrases like 'in 10 min', '1h30m'.

Re-exported by `dispatch_client.cli.parsing`, which is where callers import them from.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from ..validation import MAX_DURATION_SECONDS, to_utc

_ONLY_DIGITS = re.compile(r"\s*[+-]?\d+(\.\d+)?\s*")

TIME_HELP = "ISO 8601 (2025-01-31T14:00Z), 'now', or a phrase like 'in 10 min' / 'tomorrow 08:00'"
DURATION_HELP = "e.g. 90s, 15m, 1h30m, 2d or ISO 8601 like PT1H30M"


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
    _check_numeric_dates(text)
    result = _dateparser(text, now.astimezone(dt.UTC).replace(tzinfo=None), "future")
    if result is None:
        return None
    _check_understood(text, result)
    if _names_a_time_of_day_only(text) and not _TODAY.search(text):
        # dateparser's "future" moves a past time of day to the next day by
        # adding one to the day of the month, which at a month's end wraps to
        # the 1st of the same month (08:00 on 30 November at 08:15 gave
        # 1 November; on 31 December, 1 December of next year).
        result = _next_occurrence(text, now)
    return result


def _dateparser(text: str, base: dt.datetime, prefer: str) -> dt.datetime | None:
    """Dateparser's reading of `text` relative to `base` (naive UTC), aware UTC, or None."""
    # Imported here: dateparser is slow to import and only phrases need it.
    import dateparser

    settings: dict[str, Any] = {
        "TIMEZONE": "UTC",
        "TO_TIMEZONE": "UTC",
        "RETURN_AS_TIMEZONE_AWARE": True,
        "PREFER_DATES_FROM": prefer,
        "RELATIVE_BASE": base,
    }
    result = dateparser.parse(text, languages=["en"], settings=settings)
    return result if isinstance(result, dt.datetime) else None


# Probe days in the middle of a month, far from any month's or year's end.
_PROBE = dt.datetime(2001, 1, 10, 12)
_TODAY = re.compile(r"\btoday\b", re.IGNORECASE)


def _names_a_time_of_day_only(text: str) -> bool:
    """Whether `text` is a time of day on the day it is read ("08:00", "9am CET", "midnight").

    Such a phrase does not move with the hour it is read at, and moves by
    exactly a day with the day; relative phrases ("in 10 min") move with the
    hour, weekdays and dates do not move by a day. A phrase with a day word
    ("yesterday 08:00", "tomorrow 9am") moves with the day too, but names its
    day: only a time of day alone is read a day apart when dateparser prefers
    the future or the past (at one of two probes: the time of a probe itself
    is the same either way).
    """
    same_day = _dateparser(text, _PROBE, "current_period")
    later_hour = _dateparser(text, _PROBE + dt.timedelta(hours=1), "current_period")
    next_day = _dateparser(text, _PROBE + dt.timedelta(days=1), "current_period")
    return (
        same_day is not None
        and same_day == later_hour
        and next_day is not None
        and next_day - same_day == dt.timedelta(days=1)
        and any(_either_day(text, _PROBE + dt.timedelta(hours=h)) for h in (0, 1))
    )


def _either_day(text: str, base: dt.datetime) -> bool:
    future = _dateparser(text, base, "future")
    past = _dateparser(text, base, "past")
    return future is not None and past is not None and future - past == dt.timedelta(days=1)


def _next_occurrence(text: str, now: dt.datetime) -> dt.datetime | None:
    """The first instant after `now` that `text` names when read on `now`'s day or a later one."""
    base = now.astimezone(dt.UTC).replace(tzinfo=None)
    # Two days later at most: in the phrase's own zone (01:00 in Tokyo) the
    # day may already be UTC's tomorrow.
    for days in range(3):
        candidate = _dateparser(text, base + dt.timedelta(days=days), "current_period")
        if candidate is not None and candidate > now:
            return candidate
    return None


# A time of day as written: 8:00, 08:00:30, 9.30, 9am, 9:30 p.m., 25h. Only
# counted as one with minutes, am/pm or "h"; "10" in "in 10 min" is no time.
_CLOCK = re.compile(
    r"(?<![\w:.+-])(?P<h>\d{1,2})(?:[:.](?P<m>\d{2}))?(?::(?P<s>\d{2}))?"
    r"(?:\s*(?P<suffix>[ap]\.?m\.?|h))?(?![\w:])",
    re.IGNORECASE,
)
# 0830 / 2500: a bare 3-4 digit number next to a day word reads as a time too.
_NUMERIC_DATE = re.compile(r"(?<![\w.:])\d{1,4}([-/.])\d{1,2}\1\d{1,4}(?![\w.:])")
_BARE_CLOCK = re.compile(r"(?<![\w:.+-])(?P<h>\d{1,2})(?P<m>\d{2})(?![\w:.])")
_MONTH_WORD = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b", re.IGNORECASE
)
_SIGNED = re.compile(r"(?<![\w:.])[+-]\d")
# A zone name with an offset written after it: UTC+14, GMT-3, CET+5:30.
_ZONE_OFFSET = re.compile(r"\b[A-Za-z]+[+-](?P<n>\d[\d:]*)")


def _check_numeric_dates(text: str) -> None:
    """Refuse a numeric date that can be read two ways, or without a four-digit year.

    dateparser reads 03.12.2026 month first (3 December to most of Europe, 12
    March to it) and 03.12.26 as 2126-03-12: a guess either way. A date is
    read only as year-month-day (ISO 8601 order: 2026-12-03, 2026/12/03), or
    with the year last when its first two numbers can only be one way round
    (13.12.2026, 12.13.2026, or the same number twice).

    Raises:
        ValueError: naming the date, both readings, and the ISO 8601 form.
    """
    for match in _NUMERIC_DATE.finditer(text):
        written = match.group(0)
        parts = re.split(r"[-/.]", written)
        if len(parts[0]) == 4:
            continue
        if len(parts[2]) != 4:
            raise ValueError(
                f"{written!r} in {text!r} has no four-digit year; write the date as"
                f" YYYY-MM-DD (ISO 8601)"
            )
        first, second, year = (int(part) for part in parts)
        if first != second and 1 <= first <= 12 and 1 <= second <= 12:
            raise ValueError(
                f"{written!r} in {text!r} is ambiguous: {year:04d}-{second:02d}-{first:02d}"
                f" (day first) or {year:04d}-{first:02d}-{second:02d} (month first);"
                f" write the date as YYYY-MM-DD (ISO 8601)"
            )


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
    # A numeric date's parts (2026-12-03, 2026/12/03, 03.12.2026) are no times of day.
    rest = _NUMERIC_DATE.sub(" ", rest)
    for offset in _ZONE_OFFSET.finditer(text):
        # dateparser takes "UTC+" of an offset it cannot read ("UTC+15",
        # "CET+5") as the zone and reads the number left behind as a day.
        if re.search(rf"(?<![\w:.]){offset.group('n')}(?![\w:])", rest):
            raise ValueError(
                f"{offset.group(0)!r} in {text!r} is not a time zone (offsets are -12..+14);"
                f" use {TIME_HELP}"
            )
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
