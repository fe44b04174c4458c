"""Payloads: JSON-like mapping -> `Struct` conversion, depth and encoded size measured without encoding.

Re-exported by `dispatch_client.validation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import betterproto2

from ._field_checks import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH, shown
from ._message_walk import check_message
from ._proto.google.protobuf import ListValue, NullValue, Struct, Value

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


# Where a value sits in the payload: the keys and indexes leading to it. Kept
# as a tuple and formatted only for an error message, as most payloads have none.
_Where = tuple[Any, ...]


def _path(field: str, where: _Where) -> str:
    return field + "".join(f"[{i}]" if isinstance(i, int) else f"[{shown(i)}]" for i in where)


# Upper bounds of the encoded size of each piece (tags one byte, lengths at
# most 5 bytes), text and key bytes added as met: a map entry is a tag and
# length around a key field and a value field (each a tag and length); a Value
# is at most a tag and length (its wrapper as a list element) plus its kind's
# tag and either a double or a length (a str, Struct or ListValue).
_ENTRY_BOUND = 3 * (1 + 5)
_VALUE_BOUND = (1 + 5) + (1 + 8)


class _Converter:
    """One conversion: the payload's field name and a bound on its encoded size."""

    __slots__ = ("bound", "field")

    def __init__(self, field: str) -> None:
        self.field = field
        self.bound = 0

    def value(self, obj: Any, where: _Where, level: int) -> Value:
        self.bound += _VALUE_BOUND
        if obj is None:
            return Value(null_value=NullValue.NULL_VALUE)
        if isinstance(obj, bool):
            return Value(bool_value=obj)
        if isinstance(obj, int | float):
            try:
                number = float(obj)
            except OverflowError:
                raise ValueError(
                    f"{_path(self.field, where)} is {shown(obj)}, too large for a JSON number"
                ) from None
            if not math.isfinite(number):
                raise ValueError(
                    f"{_path(self.field, where)} is {shown(obj)}; JSON numbers must be finite"
                )
            return Value(number_value=number)
        if isinstance(obj, str):
            self.bound += self.text(obj, where, "")
            return Value(string_value=obj)
        # A container one level further down: refuse before recursing, so a
        # payload nested hundreds deep (or containing itself) is a ValueError.
        if isinstance(obj, Mapping | list | tuple) and level >= MAX_PAYLOAD_DEPTH:
            raise _TooDeep
        if isinstance(obj, Mapping):
            return Value(struct_value=self.struct(obj, where, level + 1))
        if isinstance(obj, list | tuple):
            values = [self.value(v, (*where, i), level + 1) for i, v in enumerate(obj)]
            return Value(list_value=ListValue(values=values))
        raise ValueError(
            f"{_path(self.field, where)} has type {type(obj).__name__};"
            " allowed: dict, list, str, int, float, bool, None"
        )

    def text(self, text: str, where: _Where, what: str) -> int:
        """Check that `text` encodes as UTF-8 and return its encoded length."""
        try:
            return len(text.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{_path(self.field, where)}{what} is not valid Unicode text: {error.reason}"
            ) from None

    def struct(self, obj: Mapping[Any, Any], where: _Where, level: int) -> Struct:
        fields: dict[str, Value] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"{_path(self.field, where)} has a key {shown(key)} of type"
                    f" {type(key).__name__}; keys must be str"
                )
            self.bound += _ENTRY_BOUND + self.text(key, where, " key")
            fields[key] = self.value(value, (*where, key), level)
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
    converter = _Converter(field)
    try:
        struct = converter.struct(payload, (), 1)
    except _TooDeep:
        raise _too_deep(payload, field) from None
    # Every value was typed and the depth bounded as it was converted: only
    # the size is left to check, exactly only when its bound is over the limit.
    if converter.bound <= MAX_PAYLOAD_BYTES:
        return struct
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
