"""Property tests: which `create` arguments are refused before anything is sent."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import json_values

from dispatch_client import (
    EndCriteria,
    Frequency,
    RecurrenceRule,
    Weekday,
    _fastdecode,
    _payload,
    requests,
    validation,
)
from dispatch_client._payload import _Converter, _TooDeep
from dispatch_client._proto.frequenz.api.dispatch.v1 import DispatchData
from dispatch_client._proto.google.protobuf import ListValue, NullValue, Struct, Value
from dispatch_client.requests import START_TIME_GRACE
from dispatch_client.validation import (
    MAX_PAYLOAD_BYTES,
    check_dispatch_data,
    payload_measure,
    payload_to_struct,
)

NOW = dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)


def build(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "microgrid_id": 1,
        "type": "T",
        "start_time": NOW + dt.timedelta(hours=1),
        "duration": None,
        "target": [1],
    }
    args.update(overrides)
    return requests.create(**args, now=NOW).request


def nested(depth: int) -> dict[str, Any]:
    payload: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        payload = {"k": payload}
    return payload


@given(st.integers(1, 12))
def test_payload_depth_limit(depth: int) -> None:
    if depth <= 5:
        request = build(payload=nested(depth))
        assert request.dispatch_data.payload.to_dict() == nested(depth)
    else:
        with pytest.raises(ValueError, match=f"nested {depth} levels"):
            build(payload=nested(depth))


@given(st.integers(0, 80_000))
def test_payload_size_limit(size: int) -> None:
    payload = {"s": "x" * size}
    # Encoded size: the string plus a few bytes of field tags and lengths.
    if size < 50 * 1024 - 16:
        build(payload=payload)
    elif size > 50 * 1024:
        with pytest.raises(ValueError, match="bytes encoded"):
            build(payload=payload)


# Long strings (lengths past one-byte varints) and wide containers, for the size arithmetic.
JSON = json_values(max_text=300, max_key=20, max_items=6, max_leaves=40)


def json_depth(obj: Any) -> int:
    """Nesting depth the way the service counts it: a flat object is 1."""
    if isinstance(obj, dict):
        return 1 + max((json_depth(v) for v in obj.values()), default=0)
    if isinstance(obj, list):
        return 1 + max((json_depth(v) for v in obj), default=0)
    return 0


@given(st.dictionaries(st.text(max_size=20), JSON, max_size=8))
def test_payload_measure_matches_the_encoding(payload: dict[str, Any]) -> None:
    struct = Struct.from_dict(payload)
    assert payload_measure(struct) == (json_depth(payload), len(bytes(struct)))


@pytest.mark.parametrize(
    "value",
    [
        Value(),
        Value(null_value=NullValue.NULL_VALUE),
        Value(number_value=0.0),
        Value(string_value=""),
        Value(bool_value=False),
        Value(struct_value=Struct()),
        Value(list_value=ListValue()),
        Value(list_value=ListValue(values=[Value(), Value(string_value="é" * 200)])),
    ],
)
def test_payload_measure_counts_default_members(value: Value) -> None:
    # Oneof members and map entries are written even when they hold defaults.
    struct = Struct(fields={"": value, "k": value})
    assert payload_measure(struct)[1] == len(bytes(struct))


@given(st.dictionaries(st.text(max_size=20), JSON, max_size=8))
def test_the_size_bound_of_a_conversion_is_never_below_the_encoding(
    payload: dict[str, Any],
) -> None:
    # payload_to_struct skips the exact size only when this bound is under the limit.
    converter = _Converter("payload")
    try:
        struct = converter.struct(payload, (), 1)
    except _TooDeep:
        assume(False)  # refused before any size matters
    assert struct == Struct.from_dict(payload)
    assert converter.bound >= len(bytes(struct))


@pytest.mark.parametrize("extra", [0, 1])
def test_payload_size_limit_is_exact(extra: int) -> None:
    # {"s": "x" * n} encodes to n plus 15 bytes of tags and lengths at this size.
    payload = {"s": "x" * (MAX_PAYLOAD_BYTES - 15 + extra)}
    assert len(bytes(Struct.from_dict(payload))) == MAX_PAYLOAD_BYTES + extra
    if extra:
        with pytest.raises(ValueError, match=f"{MAX_PAYLOAD_BYTES + 1} bytes encoded"):
            payload_to_struct(payload)
    else:
        assert payload_to_struct(payload) == Struct.from_dict(payload)


@given(st.integers(-(10**6), 10**6))
def test_duration_sign(seconds: int) -> None:
    if seconds >= 0:
        assert build(duration=dt.timedelta(seconds=seconds)).dispatch_data.duration == seconds
    else:
        with pytest.raises(ValueError, match="negative"):
            build(duration=dt.timedelta(seconds=seconds))


@given(st.integers(-(10**7), 10**7))
def test_start_time_not_in_the_past(offset_ms: int) -> None:
    start = NOW + dt.timedelta(milliseconds=offset_ms)
    if start >= NOW - START_TIME_GRACE:
        assert build(start_time=start).dispatch_data.start_time == start
    else:
        with pytest.raises(ValueError, match="in the past"):
            build(start_time=start)


@given(st.sampled_from(["NOW", "now", "Now"]))
def test_now_means_start_immediately(word: str) -> None:
    request = build(start_time=word)
    assert request.start_immediately is True
    assert request.dispatch_data.start_time is None


@given(
    freq=st.sampled_from(list(Frequency)),
    interval=st.integers(0, 20_000),
    count=st.none() | st.integers(0, 5000),
    byhours=st.lists(st.integers(0, 30), max_size=3),
    bymonthdays=st.lists(st.integers(-40, 40), max_size=3),
    byweekdays=st.lists(st.sampled_from(list(Weekday)), max_size=3),
)
def test_recurrence_rules(
    freq: Frequency,
    interval: int,
    count: int | None,
    byhours: list[int],
    bymonthdays: list[int],
    byweekdays: list[Weekday],
) -> None:
    rule = RecurrenceRule(
        freq=freq,
        interval=interval,
        end_criteria=None if count is None else EndCriteria(count=count),
        byhours=byhours,
        bymonthdays=bymonthdays,
        byweekdays=byweekdays,
    )
    valid = (
        interval <= 10_000
        and (count is None or 1 <= count <= 4096)
        and all(h <= 23 for h in byhours)
        and all(1 <= abs(d) <= 31 for d in bymonthdays)
        and Weekday.UNSPECIFIED not in byweekdays
        and not (bymonthdays and freq == Frequency.WEEKLY)
    )
    if valid:
        assert build(recurrence=rule).dispatch_data.recurrence == rule
    else:
        with pytest.raises(ValueError, match="recurrence"):
            build(recurrence=rule)


def test_the_payload_is_checked_once_without_encoding_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # betterproto2's encoding is left to the call itself. The conversion bounds
    # the size; only a payload whose bound is over the limit is measured, once:
    # through upb when it is installed (microseconds), else by the walk.
    encoded: list[object] = []
    measured: list[object] = []
    original_bytes = Struct.__bytes__
    original_measure = validation.payload_measure
    original_encoder = _fastdecode.encoder

    def counting_bytes(self: Struct) -> bytes:
        encoded.append(self)
        return original_bytes(self)

    def counting_measure(payload: Struct) -> tuple[int, int]:
        measured.append(payload)
        return original_measure(payload)

    def counting_encoder(cls: type[Any]) -> Any:
        encode = original_encoder(cls)
        return lambda message: measured.append(message) or encode(message)

    monkeypatch.setattr(Struct, "__bytes__", counting_bytes)
    monkeypatch.setattr(_payload, "payload_measure", counting_measure)
    monkeypatch.setattr(_fastdecode, "encoder", counting_encoder)
    request = build(payload={"power_w": 5000.0, "mode": "charge"})
    assert encoded == []
    assert measured == []  # its bound is far under the limit
    assert request.dispatch_data.payload.to_dict() == {"power_w": 5000.0, "mode": "charge"}
    near = {"s": "x" * (MAX_PAYLOAD_BYTES - 15)}  # exactly the limit: the bound is over it
    assert build(payload=near).dispatch_data.payload.to_dict() == near
    assert encoded == []
    assert len(measured) == 1


def test_without_upb_the_payload_size_comes_from_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[object] = []
    original_measure = validation.payload_measure

    def counting_measure(payload: Struct) -> tuple[int, int]:
        measured.append(payload)
        return original_measure(payload)

    monkeypatch.setattr(_fastdecode, "available", lambda: False)
    monkeypatch.setattr(_payload, "payload_measure", counting_measure)
    build(payload={"power_w": 5000.0})
    assert measured == []  # bounded under the limit
    build(payload={"s": "x" * (MAX_PAYLOAD_BYTES - 15)})
    assert len(measured) == 1
    with pytest.raises(ValueError, match=f"{MAX_PAYLOAD_BYTES + 1} bytes encoded"):
        build(payload={"s": "x" * (MAX_PAYLOAD_BYTES - 15 + 1)})


def _values() -> st.SearchStrategy[Value]:
    """Any Value a Struct may hold on the wire: kindless ones and every double included."""
    leaves = st.one_of(
        st.just(Value()),
        st.just(Value(null_value=NullValue.NULL_VALUE)),
        st.booleans().map(lambda b: Value(bool_value=b)),
        st.floats().map(lambda f: Value(number_value=f)),  # NaN and +-inf too
        st.text(max_size=5).map(lambda s: Value(string_value=s)),
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3).map(lambda v: Value(list_value=ListValue(values=v)))
            | st.dictionaries(st.text(max_size=3), inner, max_size=3).map(
                lambda f: Value(struct_value=Struct(fields=f))
            )
        ),
        max_leaves=10,
    )


@given(st.dictionaries(st.text(max_size=3), _values(), max_size=3))
def test_an_accepted_struct_payload_is_json(fields: dict[str, Value]) -> None:
    # The kind: a ready Struct (the client's argument, the server's request) holding a
    # Value JSON has no form for (no kind set, NaN, +-inf) was accepted, stored, and then
    # broke every reader (to_dict() raising, NaN in --json output).
    payload = Struct(fields=fields)
    try:
        validation.check_payload(payload)
    except ValueError as error:
        assert str(error).startswith("payload")
        return
    json.dumps(payload.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Value(), r"payload\['k'\] is a Value with no kind set"),
        (Value(number_value=float("nan")), r"payload\['k'\] is nan; JSON numbers must be finite"),
        (Value(number_value=float("-inf")), r"payload\['k'\] is -inf"),
        (
            Value(list_value=ListValue(values=[Value(string_value="a"), Value()])),
            r"payload\['k'\]\[1\] is a Value with no kind set",
        ),
    ],
)
def test_struct_payloads_json_cannot_hold_are_refused_before_sending(
    value: Value, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(payload=Struct(fields={"k": value}))


# -- create: the argument checks cover the whole-message check ----------------------

_create_starts = st.sampled_from(["NOW", "now"]) | st.builds(
    lambda minutes, aware: (NOW + dt.timedelta(minutes=minutes)).replace(
        tzinfo=dt.UTC if aware else None
    ),
    st.integers(-5, 10_000),
    st.booleans(),
)
_create_rules = st.none() | st.builds(
    lambda freq, interval, until_minutes: RecurrenceRule(
        freq=freq,
        interval=interval,
        end_criteria=None
        if until_minutes is None
        else EndCriteria(until_time=NOW + dt.timedelta(minutes=until_minutes)),
    ),
    st.sampled_from(list(Frequency)),
    st.integers(0, 20),
    st.none() | st.integers(-10, 10_000),
)


@given(
    type_=st.text(max_size=4) | st.integers(),
    start=_create_starts,
    duration=st.none() | st.builds(dt.timedelta, seconds=st.integers(-5, 2**33)),
    active=st.booleans() | st.integers(0, 1),
    recurrence=_create_rules,
    payload=st.none() | st.dictionaries(st.text(max_size=3), json_values(), max_size=3),
)
def test_a_create_request_passes_the_whole_dispatch_check(
    type_: Any, start: Any, duration: Any, active: Any, recurrence: Any, payload: Any
) -> None:
    """`requests.create` checks each argument and not the built message again: the same verdict.

    Whatever it accepts, `check_dispatch_data` (the whole-message check, every
    field walked) accepts too; what it refuses it refuses with that check's words.
    """
    args = {"type": type_, "start_time": start, "duration": duration, "active": active}
    try:
        request = build(**args, recurrence=recurrence, payload=payload)
    except ValueError as exc:
        if recurrence is not None and "recurrence" in str(exc):
            with pytest.raises(ValueError, match="recurrence") as whole:
                check_dispatch_data(
                    DispatchData(
                        type="T",
                        start_time=None if isinstance(start, str) else start,
                        recurrence=recurrence,
                    ),
                    now=NOW,
                    allowance=START_TIME_GRACE,
                    start_immediately=isinstance(start, str),
                )
            assert str(whole.value) == str(exc)
        return
    check_dispatch_data(
        request.dispatch_data,
        now=NOW,
        allowance=START_TIME_GRACE,
        start_immediately=request.start_immediately is True,
    )


@pytest.mark.parametrize("type_", ["\ud800", "a\udfffb"])
def test_a_create_type_that_is_not_unicode_text_is_refused(type_: str) -> None:
    with pytest.raises(ValueError, match="type is not valid Unicode text") as mine:
        build(type=type_)
    with pytest.raises(ValueError) as whole:
        check_dispatch_data(DispatchData(type=type_, start_time=NOW), now=NOW)
    assert str(mine.value) == str(whole.value)
