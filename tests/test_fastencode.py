"""Requests encoded through upb are byte for byte what betterproto2 writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import betterproto2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import json_values as json_like
from test_fastdecode import (
    MAX_ID,
    dispatches,
    enums,
    json_values,
    needs_upb,
    recurrences,
    targets,
    times,
    uint32,
    uint64,
)

from dispatch_client import (
    RecurrenceRule,
    RecurrenceRuleFrequency,
    SortField,
    SortOptions,
    SortOrder,
    TargetComponents,
    TargetComponentsIdSet,
    _fastdecode,
    requests,
)
from dispatch_client._fastdecode import Encoder, ResponseCodec, encoder
from dispatch_client._proto.google.protobuf import Struct, Value
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    DispatchFilter,
    DispatchFilterRecurrenceFilter,
    FieldMask,
    GetMicrogridDispatchRequest,
    Interval,
    ListMicrogridDispatchesRequest,
    PaginationParams,
    StreamMicrogridDispatchesRequest,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
    UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate,
)

REQUEST_TYPES = (
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    GetMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    StreamMicrogridDispatchesRequest,
    UpdateMicrogridDispatchRequest,
)


def assert_encodes_same(message: betterproto2.Message) -> None:
    """The upb path takes `message` and writes exactly betterproto2's bytes."""
    encode = encoder(type(message))
    assert isinstance(encode, Encoder)
    assert encode.encode_fast(message) == bytes(message)
    assert encode(message) == bytes(message)


# -- requests with every field generated -------------------------------------------


intervals = st.none() | st.builds(
    Interval, start_time=st.none() | times, end_time=st.none() | times
)
filters = st.builds(
    DispatchFilter,
    targets=st.lists(targets.filter(lambda t: t is not None), max_size=2),
    is_active=st.none() | st.booleans(),
    is_dry_run=st.none() | st.booleans(),
    is_recurring=st.none() | st.booleans(),
    start_time_interval=intervals,
    end_time_interval=intervals,
    update_time_interval=intervals,
    dispatch_ids=st.lists(uint64, max_size=3),
    queries=st.lists(st.text(max_size=5), max_size=3),
)
list_requests = st.builds(
    ListMicrogridDispatchesRequest,
    microgrid_id=uint64,
    filter=st.none() | filters,
    sort_options=st.none()
    | st.builds(SortOptions, sort_field=enums(SortField), sort_order=enums(SortOrder)),
    pagination_params=st.none()
    | st.builds(PaginationParams, page_size=uint32)
    | st.builds(PaginationParams, page_token=st.text(max_size=6)),
)
create_requests = st.builds(
    CreateMicrogridDispatchRequest,
    microgrid_id=uint64,
    dispatch_data=dispatches.map(lambda d: d.data),
    start_immediately=st.none() | st.booleans(),
)
recurrence_updates = st.builds(
    UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate,
    freq=st.none() | enums(RecurrenceRuleFrequency),
    interval=st.none() | uint32,
    byhours=st.lists(uint32, max_size=2),
)
update_requests = st.builds(
    UpdateMicrogridDispatchRequest,
    microgrid_id=uint64,
    dispatch_id=uint64,
    update_mask=st.none() | st.builds(FieldMask, paths=st.lists(st.text(max_size=8), max_size=3)),
    update=st.none()
    | st.builds(
        UpdateMicrogridDispatchRequestDispatchUpdate,
        start_time=st.none() | times,
        duration=st.none() | uint32,
        target=targets,
        is_active=st.none() | st.booleans(),
        payload=st.none()
        | st.builds(Struct, fields=st.dictionaries(st.text(max_size=4), json_values(), max_size=3)),
        recurrence=st.none() | recurrence_updates,
    ),
)
id_requests = st.one_of(
    *(
        st.builds(cls, microgrid_id=uint64, dispatch_id=uint64)
        for cls in (GetMicrogridDispatchRequest, DeleteMicrogridDispatchRequest)
    ),
    st.builds(StreamMicrogridDispatchesRequest, microgrid_id=uint64),
)


@needs_upb
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(list_requests, create_requests, update_requests, id_requests))
def test_generated_requests_encode_identically(message: betterproto2.Message) -> None:
    assert_encodes_same(message)


@needs_upb
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.none() | st.dictionaries(st.text(max_size=6), json_like(), max_size=4),
    recurrence=st.none() | recurrences,
    duration=st.none() | st.integers(0, 10**6).map(lambda s: dt.timedelta(seconds=s)),
    start_in=st.none() | st.integers(60, 10**8).map(lambda s: dt.timedelta(seconds=s)),
)
def test_what_the_builders_make_encodes_identically(
    payload: dict[str, Any] | None,
    recurrence: RecurrenceRule | None,
    duration: dt.timedelta | None,
    start_in: dt.timedelta | None,
) -> None:
    now = dt.datetime.now(dt.UTC)
    start = "NOW" if start_in is None else now + start_in
    try:
        call = requests.create(
            1, "T", start, duration, [1, 2], payload=payload, recurrence=recurrence, now=now
        )
    except ValueError:
        return  # a recurrence the client refuses never reaches the encoder
    assert_encodes_same(call.request)
    fields: dict[str, Any] = {"duration": duration, "payload": payload or {}}
    assert_encodes_same(requests.update(1, 2, fields, now=now).request)


# -- named cases ---------------------------------------------------------------------


@needs_upb
@pytest.mark.parametrize(
    "message",
    [
        GetMicrogridDispatchRequest(),
        GetMicrogridDispatchRequest(microgrid_id=MAX_ID, dispatch_id=MAX_ID),
        # Present but empty sub-messages are written (tag and length 0).
        CreateMicrogridDispatchRequest(
            dispatch_data=requests.create(1, "T", "NOW", None, [5]).request.dispatch_data
        ),
        ListMicrogridDispatchesRequest(
            filter=DispatchFilter(), pagination_params=PaginationParams()
        ),
        ListMicrogridDispatchesRequest(
            filter=DispatchFilter(filter=DispatchFilterRecurrenceFilter())
        ),
        # Explicit presence: zero and empty values that are set are written.
        ListMicrogridDispatchesRequest(pagination_params=PaginationParams(page_size=0)),
        ListMicrogridDispatchesRequest(pagination_params=PaginationParams(page_token="")),
        CreateMicrogridDispatchRequest(start_immediately=False),
        # Each JSON kind, zeroes and a negative zero included.
        CreateMicrogridDispatchRequest(
            dispatch_data=requests.create(
                1,
                "T",
                "NOW",
                None,
                [5],
                payload={"n": None, "z": 0.0, "m": -0.0, "b": False, "s": "", "l": [], "o": {}},
            ).request.dispatch_data
        ),
        # Repeated enums and ints, packed, negative values included.
        CreateMicrogridDispatchRequest(
            dispatch_data=requests.create(
                1,
                "T",
                "NOW",
                None,
                [5],
                recurrence=RecurrenceRule(
                    freq=RecurrenceRuleFrequency.MONTHLY, bymonthdays=[-1, 1, 31], byhours=[0]
                ),
            ).request.dispatch_data
        ),
    ],
)
def test_edge_cases_encode_identically(message: betterproto2.Message) -> None:
    assert_encodes_same(message)


def _two_oneof_members() -> Value:
    value = Value(number_value=1.0)
    object.__setattr__(value, "string_value", "x")  # what betterproto2's setter would undo
    return value


@needs_upb
@pytest.mark.parametrize(
    "message",
    [
        # betterproto2 keeps unknown fields and writes them back.
        GetMicrogridDispatchRequest.parse(b"\x08\x01\xf8\x01\x05"),
        # Two oneof members set: betterproto2 writes both, upb would keep one.
        Struct(fields={"a": _two_oneof_members()}),
        # Types upb would convert (a bool as a number, an int as a bool).
        GetMicrogridDispatchRequest(microgrid_id=True),  # type: ignore[arg-type]
        Value(bool_value=2),  # type: ignore[arg-type]
        TargetComponents(component_ids=TargetComponentsIdSet(ids=[1, True])),  # type: ignore[list-item]
    ],
    ids=["unknown fields", "two oneof members", "bool as int", "int as bool", "bool in ids"],
)
def test_what_upb_might_write_differently_goes_to_betterproto2(
    message: betterproto2.Message,
) -> None:
    encode = encoder(type(message))
    assert isinstance(encode, Encoder)
    assert encode.encode_fast(message) is None
    assert encode(message) == bytes(message)


@needs_upb
def test_values_out_of_range_fail_as_betterproto2_fails() -> None:
    message = GetMicrogridDispatchRequest(microgrid_id=2**64)
    encode = encoder(GetMicrogridDispatchRequest)
    assert encode.encode_fast(message) is None  # type: ignore[union-attr]
    try:
        expected: bytes | type[BaseException] = bytes(message)
    except Exception as exc:  # whatever betterproto2 raises, the codec raises
        expected = type(exc)
    if isinstance(expected, bytes):
        assert encode(message) == expected
    else:
        with pytest.raises(expected):
            encode(message)


@needs_upb
@pytest.mark.parametrize("cls", REQUEST_TYPES)
def test_every_request_type_has_a_upb_encoder(cls: type[betterproto2.Message]) -> None:
    assert isinstance(encoder(cls), Encoder)


@needs_upb
def test_the_codec_encodes_through_upb_and_checks_the_type() -> None:
    codec = ResponseCodec(fast=True)
    message = requests.get(3, 4).request
    assert codec.encode(message, GetMicrogridDispatchRequest) == bytes(message)
    with pytest.raises(TypeError):
        codec.encode(message, DeleteMicrogridDispatchRequest)


def test_without_the_fast_path_the_codec_encodes_with_betterproto2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codec = ResponseCodec(fast=False)
    message = requests.get(3, 4).request
    monkeypatch.setattr(_fastdecode, "encoder", lambda cls: pytest.fail("upb used"))
    assert codec.encode(message, GetMicrogridDispatchRequest) == bytes(message)
