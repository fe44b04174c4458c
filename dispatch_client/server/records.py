"""What a dispatch store deals in, independent of the database.

The query a list runs (`ListQuery`), the page it returns (`ListResult`), the
canonical forms stored next to the protobuf bytes (`to_micros`,
`target_key`, `is_recurring`) and the wire encoding of a message field, so
that a store can hand out encoded dispatches without re-encoding them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import betterproto2

from .._proto.frequenz.api.dispatch.v1 import (
    DispatchData,
    RecurrenceRuleFrequency,
    TargetComponents,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)

__all__ = [
    "SORT_COLUMNS",
    "ListQuery",
    "ListResult",
    "encode_message_field",
    "from_micros",
    "is_recurring",
    "target_key",
    "to_micros",
]

_D = TypeVar("_D")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Column names by which a list can be ordered; the service maps SortField to these.
SORT_COLUMNS = ("create_time", "start_time", "update_time")


def to_micros(value: dt.datetime) -> int:
    """Convert an aware datetime to integer microseconds since the Unix epoch.

    Args:
        value: an aware datetime.

    Returns:
        Microseconds since 1970-01-01T00:00:00Z (negative before it).
    """
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def from_micros(value: int) -> dt.datetime:
    """Convert microseconds since the Unix epoch to an aware UTC datetime.

    Args:
        value: microseconds since 1970-01-01T00:00:00Z.

    Returns:
        The instant, with `tzinfo=UTC`.
    """
    return _EPOCH + dt.timedelta(microseconds=value)


def target_key(target: TargetComponents | None) -> str:
    """Return a canonical text form of a target, equal for equal targets.

    Order and duplicates inside a set do not matter, so `[1, 2]` and `[2, 1, 1]`
    have the same key.

    Args:
        target: the target, or None.

    Returns:
        e.g. "ids:1,2", "cat:5" or "cattype:5/battery=1" (enum numbers); "" for none.
    """
    if target is None:
        return ""
    _, value = betterproto2.which_one_of(target, "components")
    if isinstance(value, TargetComponentsIdSet):
        return "ids:" + ",".join(str(i) for i in sorted(set(value.ids)))
    if isinstance(value, TargetComponentsCategorySet):
        return "cat:" + ",".join(str(c) for c in sorted({int(c) for c in value.categories}))
    if isinstance(value, TargetComponentsCategoryTypeSet):
        parts = set()
        for item in value.categories:
            kind, subtype = betterproto2.which_one_of(item, "type")
            suffix = f"/{kind}={int(subtype)}" if kind and subtype is not None else ""
            parts.add(f"{int(item.category)}{suffix}")
        return "cattype:" + ",".join(sorted(parts))
    return ""


def is_recurring(data: DispatchData) -> bool:
    """Tell whether a dispatch repeats.

    Args:
        data: the dispatch data.

    Returns:
        True when it has a recurrence rule with a frequency.
    """
    return (
        data.recurrence is not None and data.recurrence.freq != RecurrenceRuleFrequency.UNSPECIFIED
    )


@dataclass(frozen=True)
class ListQuery:
    """A validated list request, in storage terms (times in microseconds).

    Every criterion left as None matches everything; set criteria are AND-ed.
    `id_queries` and `type_queries` (from DispatchFilter.queries) are OR-ed
    with each other.
    """

    microgrid_id: int
    target_keys: Sequence[str] | None = None
    is_active: bool | None = None
    is_dry_run: bool | None = None
    is_recurring: bool | None = None
    start_from: int | None = None
    start_to: int | None = None
    end_from: int | None = None
    end_to: int | None = None
    update_from: int | None = None
    update_to: int | None = None
    dispatch_ids: Sequence[int] | None = None
    id_queries: Sequence[int] = ()
    type_queries: Sequence[str] = ()
    sort_column: str = "create_time"
    descending: bool = True
    after: tuple[int, int] | None = None
    """Sort key and id of the last row of the previous page."""
    limit: int = 100


@dataclass
class ListResult(Generic[_D]):
    """One page of a list, with what the next page needs."""

    dispatches: list[_D]
    """`Dispatch` messages, or their wire encoding (`list_encoded`)."""
    total_items: int
    last_key: tuple[int, int] | None = None
    """Sort key and id of the last row, set when more rows follow."""


def encode_message_field(number: int, encoded: bytes) -> bytes:
    """Return the wire bytes of a message field `number` holding the message `encoded`.

    Args:
        number: the field number (>= 1).
        encoded: the field's message, already encoded.

    Returns:
        Tag, length and `encoded`, as protobuf writes a length-delimited field.
    """
    wire_type_length_delimited = 2
    return (
        betterproto2.encode_varint(number << 3 | wire_type_length_delimited)
        + betterproto2.encode_varint(len(encoded))
        + encoded
    )
