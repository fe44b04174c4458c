"""`check_message`: every field of a message, nested ones included, checked against its schema.

Re-exported by `dispatch_client.validation`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, cast

import betterproto2

from ._field_checks import MAX_UINT64, check_aware, check_enum, shown

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
