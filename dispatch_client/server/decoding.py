"""Strict decoding of request bytes: anything malformed is a `ValueError` naming where.

betterproto2's parser is lenient in ways a server cannot afford: a field sent
with the wrong wire type ends up holding the raw value (`10 01` makes
`CreateMicrogridDispatchRequest.dispatch_data` the integer 1), a timestamp
outside what `datetime` holds raises `OverflowError`, and deep nesting
recurses without bound. So the bytes are walked first, guided by the generated
classes' own field metadata, and only bytes that pass reach the parser:

- the framing is sound: tags, varints (at most 10 bytes, below 2**64), lengths
  within the message, no groups, field numbers 1..2**29-1;
- every known field has its declared wire type (or packed, for repeated
  scalars), integers fit their type (a uint32 below 2**32, an int32 or enum
  sign-extended from 32 bits), strings are UTF-8, and at most one member of
  each oneof is set;
- Timestamps lie within 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z
  with nanos in 0..999999999;
- messages nest at most `MAX_MESSAGE_DEPTH` deep.

Unknown field numbers are allowed (a newer client may send them) but must be
well framed. After parsing, `validation.check_message` checks what the bytes
cannot say: enum values are members the schema defines.

The small requests a client sends most (a stream's or a get's ids, a list
without filters: `08 b1 ea 01 12 00`) take a short path (`_decode_simple`)
that builds the message straight from the bytes: unsigned integers in range
and empty messages, each field once, nothing else. It answers the same as the
walk, the parser and the checks (tests/test_server_decoding.py holds them side
by side over any bytes); whatever else it meets, it hands to them.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import betterproto2

from .._proto.google.protobuf import Timestamp
from ..validation import check_message

__all__ = ["MAX_MESSAGE_DEPTH", "decode_request"]

MAX_MESSAGE_DEPTH = 32
"""Most messages nested inside one another in a request.

A request with a payload at the deepest allowed level (5) nests about 18.
"""

_M = TypeVar("_M", bound=betterproto2.Message)

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_INT32_TYPES = frozenset({"int32", "enum"})
_WIRE_TYPES: dict[str, int] = {
    **dict.fromkeys(
        ("int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "enum"), _VARINT
    ),
    **dict.fromkeys(("fixed64", "sfixed64", "double"), _FIXED64),
    **dict.fromkeys(("fixed32", "sfixed32", "float"), _FIXED32),
    **dict.fromkeys(("string", "bytes", "message", "map"), _LENGTH),
}
_WIRE_NAMES = {
    _VARINT: "varint",
    _FIXED64: "64-bit",
    _LENGTH: "length-delimited",
    _FIXED32: "32-bit",
}
_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_FIELD_NUMBER = 2**29 - 1


class _Malformed(ValueError):
    pass


def decode_request(message_type: type[_M], data: bytes) -> _M:
    """Decode `data` as a `message_type`, refusing anything malformed or out of range.

    Args:
        message_type: the generated request class.
        data: the request's wire bytes.

    Returns:
        The parsed message, every enum field holding a defined member.

    Raises:
        ValueError: naming the message or the field path and what is wrong,
            e.g. `dispatch_data.start_time: 253402300800 s is after
            9999-12-31T23:59:59Z`.
    """
    shape = _SHAPES.get(message_type)
    if shape is None:
        shape = _SHAPES[message_type] = _simple_shape(message_type)
    if shape:
        simple = _decode_simple(message_type, shape, data)
        if simple is not None:
            return simple
    return _decode_checked(message_type, data)


def _decode_checked(message_type: type[_M], data: bytes) -> _M:
    """`decode_request` without its short path: walk, parse, check."""
    try:
        _walk(message_type, memoryview(data), "", 1)
    except _Malformed as error:
        raise ValueError(f"malformed {message_type.__name__}: {error}") from None
    try:
        message = message_type.parse(bytes(data))
    except Exception as error:  # the walk should have caught it: still never a 500
        raise ValueError(f"{message_type.__name__} cannot be decoded: {error}") from None
    check_message(message, "")
    return message


# A field the short path reads: its name, and the largest value of an unsigned
# integer, or the class of a message sent empty.
_SimpleField = tuple[str, int, type[betterproto2.Message] | None]
_Shape = dict[int, _SimpleField]
_SHAPES: dict[type[Any], _Shape | None] = {}
_UINT_LIMITS = {"uint64": 2**64 - 1, "uint32": 2**32 - 1}


def _simple_shape(message_type: type[betterproto2.Message]) -> _Shape | None:
    """The fields of `message_type` the short path reads, by their one-byte key; None for none.

    Unsigned integers (any value in range is valid) and messages that are
    valid empty, outside oneofs, not repeated and numbered 1..15 (a one-byte
    key). A type whose defaults fail `check_message` gets no short path: the
    fields the bytes leave out would have to be checked.
    """
    meta: Any = cast(Any, message_type)._betterproto
    try:
        check_message(message_type(), "")
    except ValueError:
        return None
    shape: _Shape = {}
    for number, name in meta.field_name_by_number.items():
        fmeta = meta.meta_by_field_name[name]
        if number > 15 or fmeta.repeated or fmeta.group is not None:
            continue
        limit = _UINT_LIMITS.get(fmeta.proto_type)
        if limit is not None:
            shape[number << 3 | _VARINT] = (name, limit, None)
            continue
        field_cls = meta.cls_by_field[name]
        if (
            fmeta.proto_type != "message"
            or fmeta.unwrap
            or not isinstance(field_cls, type)
            or not issubclass(field_cls, betterproto2.Message)
            or field_cls is Timestamp
        ):
            continue
        try:
            check_message(field_cls(), name)
        except ValueError:
            continue
        shape[number << 3 | _LENGTH] = (name, 0, field_cls)
    return shape or None


def _decode_simple(message_type: type[_M], shape: _Shape, data: bytes) -> _M | None:
    """`data` as a `message_type` if it holds only fields of `shape`, each once; else None.

    None also for anything the general path might refuse or read otherwise
    (a varint past 64 bits, a message that is not empty, a field repeated):
    the caller then takes that path.
    """
    values: dict[str, Any] = {}
    pos, end = 0, len(data)
    while pos < end:
        field = shape.get(data[pos])
        if field is None:
            return None
        name, limit, field_cls = field
        if name in values:
            return None
        pos += 1
        if field_cls is not None:
            if pos >= end or data[pos]:
                return None
            values[name] = field_cls()
            pos += 1
            continue
        value = shift = 0
        while True:
            if pos >= end or shift > 63:
                return None
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        if value > limit:
            return None
        values[name] = value
    return message_type(**values)


def _varint(data: memoryview, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        if pos >= len(data):
            raise _Malformed(f"{where}: the message ends inside a varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >= 2**64:
                raise _Malformed(f"{where}: varint does not fit in 64 bits")
            return result, pos
        shift += 7
    raise _Malformed(f"{where}: varint longer than 10 bytes")


def _check_varint(proto_type: str, value: int, where: str) -> None:
    if proto_type in _INT32_TYPES:
        signed = value - 2**64 if value >= 2**63 else value
        if not -(2**31) <= signed < 2**31:
            raise _Malformed(f"{where}: {signed} does not fit in 32 bits")
    elif proto_type in ("uint32", "sint32") and value >= 2**32:
        raise _Malformed(f"{where}: {value} does not fit in 32 bits")


def _walk(cls: type[betterproto2.Message], data: memoryview, path: str, depth: int) -> None:
    """Check the bytes of one message; `path` is its field path ("" for the request)."""
    here = path or "the message"
    if depth > MAX_MESSAGE_DEPTH:
        raise _Malformed(f"{here}: messages nested more than {MAX_MESSAGE_DEPTH} deep")
    meta: Any = cast(Any, cls)._betterproto
    oneof_members: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos, here)
        number, wire = key >> 3, key & 7
        if not 1 <= number <= _MAX_FIELD_NUMBER:
            raise _Malformed(f"{here}: invalid field number {number}")
        name = meta.field_name_by_number.get(number)
        if name is None:
            where = f"{here} (unknown field {number})"
        else:
            where = f"{path}.{name}" if path else name
        start = pos
        if wire == _VARINT:
            value, pos = _varint(data, pos, where)
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            if pos > len(data):
                raise _Malformed(f"{where}: the message ends inside a fixed-size value")
        elif wire == _LENGTH:
            length, start = _varint(data, pos, where)
            pos = start + length
            if pos > len(data):
                raise _Malformed(f"{where}: length {length} runs past the end of the message")
        else:
            raise _Malformed(f"{where}: wire type {wire} (groups or invalid) is not supported")
        if name is None:
            continue
        fmeta = meta.meta_by_field_name[name]
        if fmeta.group is not None:
            # Protobuf lets the last member win; betterproto2 keeps them all,
            # which its own which_one_of() then refuses. Refuse it here, by name.
            other = oneof_members.setdefault(fmeta.group, name)
            if other != name:
                raise _Malformed(
                    f"{here}: both {other} and {name} are set, but they are one of"
                    f" '{fmeta.group}' (set at most one)"
                )
        proto_type = fmeta.proto_type
        expected = _WIRE_TYPES.get(proto_type)
        if wire == _LENGTH and expected != _LENGTH and fmeta.repeated:
            _check_packed(proto_type, expected, data[start:pos], where)
        elif wire != expected:
            raise _Malformed(
                f"{where}: sent as {_WIRE_NAMES[wire]}, but a {proto_type} is"
                f" {_WIRE_NAMES.get(expected or -1, '?')}"
            )
        elif wire == _VARINT:
            _check_varint(proto_type, value, where)
        elif proto_type == "string":
            try:
                str(data[start:pos], "utf-8")
            except UnicodeDecodeError:
                raise _Malformed(f"{where}: not valid UTF-8") from None
        elif proto_type in ("message", "map"):
            field_cls = fmeta.unwrap() if fmeta.unwrap else meta.cls_by_field[name]
            _walk(field_cls, data[start:pos], where, depth + 1)
            if field_cls is Timestamp:
                _check_timestamp(data[start:pos], where)


def _check_packed(proto_type: str, expected: int | None, data: memoryview, where: str) -> None:
    if expected == _VARINT:
        pos = 0
        while pos < len(data):
            value, pos = _varint(data, pos, where)
            _check_varint(proto_type, value, where)
    elif expected in (_FIXED64, _FIXED32):
        if len(data) % (8 if expected == _FIXED64 else 4):
            raise _Malformed(f"{where}: packed length {len(data)} is not a whole number of items")
    else:
        raise _Malformed(f"{where}: sent as length-delimited, but a {proto_type} is not")


def _check_timestamp(data: memoryview, where: str) -> None:
    stamp = Timestamp.parse(bytes(data))  # well framed: checked by the walk
    if not _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS:
        raise _Malformed(
            f"{where}: {stamp.seconds} s is outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z"
        )
    if not 0 <= stamp.nanos <= 999_999_999:
        raise _Malformed(f"{where}: nanos {stamp.nanos} is outside 0..999999999")
