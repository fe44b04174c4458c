"""The request decoder's short path answers exactly as its general path, on any bytes.

`decode_request` reads the small requests (ids, an empty filter) straight from
the bytes; everything else is walked, parsed and checked. These properties hold
the two side by side: the same message (fields, wire bytes, unknown fields) or
the same refusal, whatever the bytes. The fleet's requests are named cases that
must take the short path, so that the properties are not vacuous.
"""

from __future__ import annotations

from typing import Any

import betterproto2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dispatch_client import DispatchData, RecurrenceRule
from dispatch_client.server import decoding
from dispatch_client.server.decoding import decode_request
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    DispatchFilter,
    GetMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    StreamMicrogridDispatchesRequest,
    UpdateMicrogridDispatchRequest,
)

REQUEST_TYPES: list[type[betterproto2.Message]] = [
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    GetMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    StreamMicrogridDispatchesRequest,
    UpdateMicrogridDispatchRequest,
    DispatchData,
    DispatchFilter,
    RecurrenceRule,
]


def outcome(decode: Any, message_type: type[betterproto2.Message], data: bytes) -> object:
    """What decoding answers, comparable: the message's class, fields, bytes and unknown fields, or the error."""
    try:
        message = decode(message_type, data)
    except ValueError as error:
        return ("refused", str(error))
    return (
        type(message),
        message.to_dict(),
        bytes(message),
        message._unknown_fields,
        [getattr(message, name) for name in message._betterproto.meta_by_field_name],
    )


def varint(value: int, padding: int = 0) -> bytes:
    """`value` as a varint, with `padding` extra zero groups (a non-minimal encoding)."""
    groups = []
    while True:
        groups.append(value & 0x7F)
        value >>= 7
        if not value:
            break
    groups += [0] * padding
    return bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])


# Bytes near the short path's shapes: its keys, other keys, varints of any size
# (minimal or not), empty and non-empty lengths, and random runs.
CHUNKS = st.one_of(
    st.sampled_from([b"\x08", b"\x10", b"\x12", b"\x1a", b"\x22", b"\x0a", b"\x18", b"\x78"]),
    st.builds(
        varint,
        st.one_of(st.integers(0, 2**16), st.integers(2**31, 2**33), st.integers(2**63, 2**71)),
        st.integers(0, 2),
    ),
    st.sampled_from([b"\x00", b"\x01", b"\x80", b"\xff"]),
    st.binary(max_size=4),
)
NEAR_SIMPLE = st.lists(CHUNKS, max_size=8).map(b"".join)
# Whole fields of the shapes the short path reads (ids, empty messages), now and then broken.
FIELDS = st.one_of(
    st.builds(
        bytes.__add__,
        st.sampled_from([b"\x08", b"\x10", b"\x18"]),
        st.builds(
            varint,
            st.sampled_from([2**32 - 1, 2**32, 2**64 - 1, 2**64]) | st.integers(0, 2**65),
            st.integers(0, 10),
        ),
    ),
    st.sampled_from([b"\x12\x00", b"\x1a\x00", b"\x22\x00", b"\x42\x00", b"\x12\x01", b"\x12"]),
)
SIMPLE = st.lists(FIELDS, max_size=4).map(b"".join)


FLEET_REQUESTS = {
    "stream": (StreamMicrogridDispatchesRequest, bytes(StreamMicrogridDispatchesRequest(30001))),
    "stream_microgrid_0": (StreamMicrogridDispatchesRequest, b""),
    "list_all": (
        ListMicrogridDispatchesRequest,
        bytes(ListMicrogridDispatchesRequest(30001, filter=DispatchFilter())),
    ),
    "list_bare": (ListMicrogridDispatchesRequest, bytes(ListMicrogridDispatchesRequest(7))),
    "get": (GetMicrogridDispatchRequest, bytes(GetMicrogridDispatchRequest(2**64 - 1, 5))),
    "delete": (DeleteMicrogridDispatchRequest, bytes(DeleteMicrogridDispatchRequest(1, 2))),
}


@pytest.mark.parametrize("name", list(FLEET_REQUESTS))
def test_the_fleets_requests_take_the_short_path(name: str) -> None:
    message_type, data = FLEET_REQUESTS[name]
    shape = decoding._simple_shape(message_type)
    assert shape is not None
    fast = decoding._decode_simple(message_type, shape, data)
    assert fast is not None
    assert outcome(lambda _t, _d: fast, message_type, data) == outcome(
        decoding._decode_checked, message_type, data
    )
    assert bytes(fast) == data


REFUSED = {
    # Each goes past the short path to the general one, which refuses it by name.
    "truncated_varint": (StreamMicrogridDispatchesRequest, b"\x08\xff", "ends inside a varint"),
    "varint_past_64_bits": (
        StreamMicrogridDispatchesRequest,
        b"\x08" + b"\xff" * 9 + b"\x7f",
        "does not fit in 64 bits",
    ),
    "uint32_too_big": (
        ListMicrogridDispatchesRequest,
        b"\x22\x05\x08" + varint(2**32),
        "pagination_params.page_size",
    ),
    "id_as_length": (GetMicrogridDispatchRequest, b"\x0a\x00", "microgrid_id: sent as"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_the_short_path_leaves_is_refused_by_name(name: str) -> None:
    message_type, data, expected = REFUSED[name]
    with pytest.raises(ValueError, match=expected):
        decode_request(message_type, data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(REQUEST_TYPES), st.one_of(SIMPLE, NEAR_SIMPLE, st.binary(max_size=24)))
@example(StreamMicrogridDispatchesRequest, b"\x08\x80\x00")  # a non-minimal varint
@example(StreamMicrogridDispatchesRequest, b"\x08\x01\x08\x02")  # a field twice: last wins
@example(ListMicrogridDispatchesRequest, b"\x12\x00\x12\x00")  # an empty message twice
@example(ListMicrogridDispatchesRequest, b"\x12\x02\x10\x01")  # a filter that is not empty
@example(GetMicrogridDispatchRequest, b"\x08" + b"\xff" * 9 + b"\x01")  # exactly 2**64 - 1
@example(StreamMicrogridDispatchesRequest, b"\x08\x01\x78\x00")  # an unknown field
@example(StreamMicrogridDispatchesRequest, b"\x08" + varint(2**64))  # one past uint64
@example(DispatchData, b"\x18" + varint(2**32))  # one past uint32
@example(DispatchData, b"\x18" + varint(2**32 - 1, 5))
@example(StreamMicrogridDispatchesRequest, b"\x08" + varint(1, 9))  # 10 bytes: still a varint
@example(StreamMicrogridDispatchesRequest, b"\x08" + varint(1, 10))  # 11 bytes: refused
def test_short_and_general_paths_agree_on_any_bytes(
    message_type: type[betterproto2.Message], data: bytes
) -> None:
    general = outcome(decoding._decode_checked, message_type, data)
    assert outcome(decode_request, message_type, data) == general
    shape = decoding._simple_shape(message_type)
    if shape is not None:
        fast = decoding._decode_simple(message_type, shape, data)
        if fast is not None:
            assert outcome(lambda _t, _d: fast, message_type, data) == general


def test_an_empty_filter_passes_the_checks_the_listing_skips_for_it() -> None:
    """The listing checks a request's filter unless it is empty: empty must then be valid."""
    from dispatch_client.validation import check_dispatch_filter

    check_dispatch_filter(DispatchFilter())
