"""The server's replies as wire bytes: the very bytes betterproto2 writes, at a fraction of its cost.

betterproto2 encodes in pure Python, at ~150 µs for one dispatch's reply:
most of the server's CPU for a get. Here a reply is put together from parts:

- a dispatch's `DispatchData` as stored (the store keeps it encoded), or
  encoded once through upb (`encode`: `dispatch_client._fastdecode.encoder`,
  with the `fast` extra and unless `DISPATCH_CLIENT_FAST_DECODE=0`; else
  betterproto2);
- its `DispatchMetadata` written here from the stored integers (ids and
  microseconds), without building datetimes or messages;
- the reply's own few fields written here.

Written as betterproto2 writes them: fields in number order, a scalar equal
to its default left out, a sub-message that is set written even when empty,
negative integers as ten-byte varints. `tests/test_server_replies.py` checks
each against `bytes(message)`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .. import _fastdecode
from .._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    DispatchMetadata,
    StreamMicrogridDispatchesResponse,
)
from .records import to_micros

__all__ = [
    "delete_reply",
    "dispatch_reply",
    "encode",
    "encode_dispatch",
    "encode_event",
    "get_reply",
    "message_field",
    "metadata",
    "stream_event",
    "varint",
]

_ONE_BYTE = [bytes([value]) for value in range(128)]
_LENGTH_DELIMITED = 2
_UINT64 = 1 << 64


def varint(value: int) -> bytes:
    """Return the varint of `value`; a negative one as its 64-bit two's complement (10 bytes)."""
    if 0 <= value < 128:
        return _ONE_BYTE[value]
    if value < 0:
        value += _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    """Return an integer (or enum) field: nothing when `value` is 0, as proto3 leaves it out."""
    if not value:
        return b""
    return varint(number << 3) + varint(value)


def message_field(number: int, encoded: bytes) -> bytes:
    """Return a message field `number` holding the message `encoded` (written even when empty)."""
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(len(encoded)) + encoded


def _timestamp(micros: int) -> bytes:
    # As betterproto2's Timestamp.from_datetime: floor seconds, non-negative nanos.
    seconds, us = divmod(micros, 1_000_000)
    return varint_field(1, seconds) + varint_field(2, us * 1000)


def metadata(dispatch_id: int, create_us: int, update_us: int, end_us: int | None) -> bytes:
    """Return the `DispatchMetadata` of a stored dispatch, encoded.

    Args:
        dispatch_id: its id.
        create_us: its create time, microseconds since the epoch.
        update_us: its update time, microseconds since the epoch.
        end_us: the end of its series, microseconds since the epoch; None when it never ends.

    Returns:
        `bytes(DispatchMetadata(...))` of those values, their times as `from_micros` gives them.
    """
    # DispatchMetadata: dispatch_id = 1, create_time = 2, update_time = 3, end_time = 4.
    parts = [
        varint_field(1, dispatch_id),
        message_field(2, _timestamp(create_us)),
        message_field(3, _timestamp(update_us)),
    ]
    if end_us is not None:
        parts.append(message_field(4, _timestamp(end_us)))
    return b"".join(parts)


def _metadata_of(message: DispatchMetadata) -> bytes:
    parts = [varint_field(1, message.dispatch_id)]
    times: tuple[tuple[int, dt.datetime | None], ...] = (
        (2, message.create_time),
        (3, message.update_time),
        (4, message.end_time),
    )
    for number, value in times:
        if value is not None:
            parts.append(message_field(number, _timestamp(to_micros(value))))
    return b"".join(parts)


def encode(message: Any) -> bytes:
    """Return `bytes(message)`: through upb when the fast path is on, else by betterproto2.

    Args:
        message: a generated message.

    Returns:
        Its encoding, byte for byte what betterproto2 writes.
    """
    if _fastdecode.enabled():
        return _fastdecode.encoder(type(message))(message)
    return bytes(message)


def encode_dispatch(dispatch: Dispatch) -> bytes:
    """Return `bytes(dispatch)`: its metadata written here, its data through `encode`.

    Args:
        dispatch: a dispatch, as a store returns it.

    Returns:
        Its encoding, byte for byte what betterproto2 writes.
    """
    meta = dispatch.metadata
    if dispatch._unknown_fields or (meta is not None and meta._unknown_fields):
        return encode(dispatch)  # never from a store; kept as they came
    # Dispatch: metadata = 1, data = 2.
    parts = []
    if meta is not None:
        parts.append(message_field(1, _metadata_of(meta)))
    if dispatch.data is not None:
        parts.append(message_field(2, encode(dispatch.data)))
    return b"".join(parts)


def get_reply(microgrid_id: int, dispatch: bytes) -> bytes:
    """Return the encoded `GetMicrogridDispatchResponse` of an encoded dispatch."""
    # GetMicrogridDispatchResponse: microgrid_id = 1, dispatch = 2.
    return varint_field(1, microgrid_id) + message_field(2, dispatch)


def dispatch_reply(dispatch: bytes) -> bytes:
    """Return the encoded `CreateMicrogridDispatchResponse` (or `Update...`) of an encoded dispatch."""
    # Both hold only dispatch = 1.
    return message_field(1, dispatch)


def delete_reply(microgrid_id: int, dispatch_id: int) -> bytes:
    """Return the encoded `DeleteMicrogridDispatchResponse` of these ids."""
    # DeleteMicrogridDispatchResponse: microgrid_id = 1, dispatch_id = 2.
    return varint_field(1, microgrid_id) + varint_field(2, dispatch_id)


def stream_event(dispatch: bytes, kind: int) -> bytes:
    """Return the encoded `StreamMicrogridDispatchesResponse` of an encoded dispatch and event kind."""
    # StreamMicrogridDispatchesResponse: dispatch = 1, event = 2.
    return message_field(1, dispatch) + varint_field(2, kind)


def encode_event(event: StreamMicrogridDispatchesResponse) -> bytes:
    """Return `bytes(event)`, its dispatch through `encode_dispatch`."""
    if event.dispatch is None or event._unknown_fields:
        return encode(event)
    return stream_event(encode_dispatch(event.dispatch), int(event.event))
