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
from ..validation import check_uint64
from ._times import DURATION_HELP as DURATION_HELP
from ._times import TIME_HELP as TIME_HELP
from ._times import format_duration, parse_duration, parse_time

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
    """Expand `5`, `5-9` (or `5..9`) and `5,7,9-11` (in any number of arguments) to unique ids.

    `5..9` is the official client's CLI's range spelling, so its commands work
    here unchanged.

    Args:
        values: the arguments as typed.

    Returns:
        The ids, in first occurrence order, without duplicates.

    Raises:
        ValueError: an item is not an id or range, an id is above 2**64-1, a
            range runs backwards or spans more than `MAX_ID_RANGE` ids.
    """
    ids: list[int] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            match = re.fullmatch(r"(\d+)(?:\s*(?:-|\.\.)\s*(\d+))?", item)
            if match is None:
                raise ValueError(
                    f"{item!r} is not an id or a range; use e.g. 5, 5-9, 5..9 or 5,7,9-11"
                )
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
