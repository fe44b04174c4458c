"""The upb decode path gives exactly the objects betterproto2's own parse gives."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import betterproto2
import pytest
from fresh_python import run_python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_client import (
    BatteryType,
    Client,
    Dispatch,
    DispatchData,
    DispatchMetadata,
    ElectricalComponentCategory,
    EvChargerType,
    Event,
    InverterType,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    SortField,
    SortOptions,
    SortOrder,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
    _fastdecode,
    target_from_categories,
    target_from_ids,
    target_from_types,
)
from dispatch_client._fastdecode import (
    ENV_VAR,
    Decoder,
    ResponseCodec,
    _pool,
    _set_members,
    decoder,
)
from dispatch_client._proto.google.protobuf import ListValue, NullValue, Struct, Value
from dispatch_client._upb_source import Fallback, SourceCompiler
from dispatch_client.testing import RunningServer, running_server
from dispatch_client.validation import payload_to_struct
from dispatch_client.wire import (
    CreateMicrogridDispatchResponse,
    DeleteMicrogridDispatchResponse,
    DispatchFilter,
    DispatchFilterRecurrenceFilter,
    GetMicrogridDispatchResponse,
    Interval,
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    PaginationInfo,
    PaginationParams,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchResponse,
)

needs_upb = pytest.mark.skipif(
    not _fastdecode.available(), reason="protobuf with the upb backend is not installed"
)

MAX_ID = 2**64 - 1
FIRST = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
LAST = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def state(value: Any) -> Any:
    """Everything an object holds, types and attribute order included (NaN equal to NaN)."""
    if isinstance(value, betterproto2.Message):
        return (type(value), [(k, state(v)) for k, v in vars(value).items()])
    if isinstance(value, list):
        return [state(v) for v in value]
    if isinstance(value, dict):
        return [(k, state(v)) for k, v in value.items()]
    return (type(value), repr(value))


def assert_same(fast: Any, slow: Any) -> None:
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert state(fast) == state(slow)


def assert_fast_and_same(message: betterproto2.Message) -> None:
    """The fast path takes `message`'s encoding and gives what betterproto2 gives."""
    raw = bytes(message)
    cls = type(message)
    parse = decoder(cls)
    assert isinstance(parse, Decoder)
    fast = parse.parse_fast(raw)
    assert fast is not None, "the fast path fell back to betterproto2"
    assert_same(fast, cls.parse(raw))
    assert bytes(fast) == raw


def assert_decodes_same(cls: type[betterproto2.Message], raw: bytes) -> None:
    """Whichever path it takes, the decoder gives what betterproto2 gives (or raises alike)."""
    try:
        slow = cls.parse(raw)
    except Exception as exc:
        with pytest.raises(type(exc)):
            decoder(cls)(raw)
        return
    assert_same(decoder(cls)(raw), slow)


# -- fixed cases ------------------------------------------------------------------

PAYLOAD = {
    "z": 0.0,
    "neg": -1.5,
    "big": 1e308,
    "f": False,
    "t": True,
    "n": None,
    "e": {},
    "l": [],
    "s": "",
    "": "empty key",
    "u": "ü✓\x00",
    "a": [1, "x", None, [[]], {"k": [True, {}]}],
}


def page(count: int) -> ListMicrogridDispatchesResponse:
    """A list page like the server sends: every kind of target, payload and recurrence."""
    now = dt.datetime(2030, 5, 17, 12, 30, tzinfo=dt.UTC)
    targets = [
        target_from_ids(1, 2, 3),
        target_from_categories(ElectricalComponentCategory.BATTERY),
        target_from_types(BatteryType.LI_ION, InverterType.PV, EvChargerType.DC),
    ]
    dispatches = []
    for i in range(count):
        dispatches.append(
            Dispatch(
                metadata=DispatchMetadata(
                    dispatch_id=i + 1,
                    create_time=now.replace(microsecond=i % 1000),
                    update_time=now,
                    end_time=None if i % 3 else now + dt.timedelta(hours=i),
                ),
                data=DispatchData(
                    type=f"TYPE_{i % 7}",
                    start_time=now + dt.timedelta(minutes=i),
                    duration=None if i % 11 == 0 else 60 * (i % 90),
                    target=targets[i % 3],
                    is_active=i % 2 == 0,
                    is_dry_run=i % 5 == 0,
                    payload=payload_to_struct(
                        {"power_w": float(i), "tags": ["a", str(i)], "limits": {"max": i}}
                    ),
                    recurrence=None
                    if i % 4
                    else RecurrenceRule(
                        freq=RecurrenceRuleFrequency.DAILY,
                        interval=1 + i % 3,
                        end_criteria=RecurrenceRuleEndCriteria(count=10),
                        byhours=[8, 17],
                    ),
                ),
            )
        )
    return ListMicrogridDispatchesResponse(
        dispatches=dispatches,
        pagination_info=PaginationInfo(total_items=10 * count, next_page_token="next"),
    )


def extremes() -> Dispatch:
    return Dispatch(
        metadata=DispatchMetadata(
            dispatch_id=MAX_ID, create_time=FIRST, update_time=LAST, end_time=EPOCH
        ),
        data=DispatchData(
            type="ü✓",
            start_time=dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
            duration=2**32 - 1,
            target=target_from_ids(0, MAX_ID),
            payload=payload_to_struct(PAYLOAD),
            recurrence=RecurrenceRule(
                freq=RecurrenceRuleFrequency.MONTHLY,
                interval=10_000,
                end_criteria=RecurrenceRuleEndCriteria(until_time=LAST),
                byminutes=[0, 59],
                byhours=[0, 23],
                byweekdays=[RecurrenceRuleWeekday.MONDAY, RecurrenceRuleWeekday.SUNDAY],
                bymonthdays=[-31, -1, 1, 31],
                bymonths=[1, 12],
            ),
        ),
    )


def zeroes() -> list[Dispatch]:
    """Unset against zero: optional fields and oneof members set to their defaults."""
    return [
        Dispatch(),
        Dispatch(metadata=DispatchMetadata(), data=DispatchData()),
        Dispatch(metadata=DispatchMetadata(dispatch_id=0, create_time=EPOCH)),
        Dispatch(
            data=DispatchData(
                duration=0,
                start_time=EPOCH,
                target=TargetComponents(),
                payload=Struct(),
                recurrence=RecurrenceRule(end_criteria=RecurrenceRuleEndCriteria()),
            )
        ),
        Dispatch(
            data=DispatchData(
                target=TargetComponents(component_ids=TargetComponentsIdSet()),
                recurrence=RecurrenceRule(end_criteria=RecurrenceRuleEndCriteria(count=0)),
            )
        ),
        Dispatch(
            data=DispatchData(
                target=TargetComponents(component_categories=TargetComponentsCategorySet()),
                recurrence=RecurrenceRule(end_criteria=RecurrenceRuleEndCriteria(until_time=EPOCH)),
            )
        ),
        Dispatch(
            data=DispatchData(
                target=TargetComponents(
                    component_categories_types=TargetComponentsCategoryTypeSet(
                        categories=[TargetComponentsCategoryAndType()]
                    )
                )
            )
        ),
    ]


def every_value_kind() -> Struct:
    return Struct(
        fields={
            "null": Value(null_value=NullValue.NULL_VALUE),
            "number": Value(number_value=0.0),
            "nan": Value(number_value=math.nan),
            "string": Value(string_value=""),
            "false": Value(bool_value=False),
            "struct": Value(struct_value=Struct()),
            "list": Value(list_value=ListValue(values=[Value(), Value(bool_value=True)])),
            "no kind": Value(),
        }
    )


def unknown_enums() -> Dispatch:
    category = ElectricalComponentCategory(1234)
    return Dispatch(
        data=DispatchData(
            target=TargetComponents(
                component_categories_types=TargetComponentsCategoryTypeSet(
                    categories=[
                        TargetComponentsCategoryAndType(category=category),
                        TargetComponentsCategoryAndType(category=category, battery=BatteryType(77)),
                        TargetComponentsCategoryAndType(inverter=InverterType(-3)),
                        TargetComponentsCategoryAndType(ev_charger=EvChargerType(2**31 - 1)),
                    ]
                )
            ),
            recurrence=RecurrenceRule(
                freq=RecurrenceRuleFrequency(77),
                byweekdays=[RecurrenceRuleWeekday(42), RecurrenceRuleWeekday.FRIDAY],
            ),
        )
    )


@needs_upb
def test_a_full_page_decodes_identically() -> None:
    assert_fast_and_same(page(1000))


@needs_upb
@pytest.mark.parametrize(
    "message",
    [
        StreamMicrogridDispatchesResponse(dispatch=extremes(), event=Event.DELETED),
        StreamMicrogridDispatchesResponse(dispatch=unknown_enums(), event=Event(99)),
        StreamMicrogridDispatchesResponse(),
        GetMicrogridDispatchResponse(microgrid_id=MAX_ID, dispatch=extremes()),
        CreateMicrogridDispatchResponse(dispatch=Dispatch()),
        UpdateMicrogridDispatchResponse(dispatch=unknown_enums()),
        DeleteMicrogridDispatchResponse(microgrid_id=MAX_ID, dispatch_id=MAX_ID),
        ListMicrogridDispatchesResponse(dispatches=[*zeroes(), extremes()]),
        ListMicrogridDispatchesResponse(pagination_info=PaginationInfo()),
        every_value_kind(),
    ],
    ids=lambda message: type(message).__name__,
)
def test_edge_cases_decode_identically(message: betterproto2.Message) -> None:
    assert_fast_and_same(message)


@needs_upb
@pytest.mark.parametrize("index", range(len(zeroes())))
def test_unset_and_zero_stay_apart(index: int) -> None:
    assert_fast_and_same(zeroes()[index])


@needs_upb
@pytest.mark.parametrize(
    "message",
    [
        # The oneofs of request messages, which a server decodes.
        ListMicrogridDispatchesRequest(
            microgrid_id=MAX_ID,
            filter=DispatchFilter(
                targets=[target_from_ids(1), TargetComponents()],
                is_active=False,
                is_dry_run=True,
                is_recurring=False,
                start_time_interval=Interval(start_time=FIRST),
                end_time_interval=Interval(end_time=LAST),
                update_time_interval=Interval(),
                dispatch_ids=[0, MAX_ID],
                queries=["", "#1"],
            ),
            sort_options=SortOptions(sort_field=SortField(9), sort_order=SortOrder.DESCENDING),
            pagination_params=PaginationParams(page_size=0),
        ),
        ListMicrogridDispatchesRequest(
            filter=DispatchFilter(filter=DispatchFilterRecurrenceFilter()),
            pagination_params=PaginationParams(page_token=""),
        ),
    ],
)
def test_request_oneofs_decode_identically(message: betterproto2.Message) -> None:
    assert_fast_and_same(message)


# -- what the fast path leaves to betterproto2 ----------------------------------------


def _tag(number: int, wire_type: int) -> bytes:
    return betterproto2.encode_varint(number << 3 | wire_type)


def _varint(number: int, value: int) -> bytes:
    return _tag(number, 0) + betterproto2.encode_varint(value)


def _nested(number: int, body: bytes) -> bytes:
    return _tag(number, 2) + betterproto2.encode_varint(len(body)) + body


def _unknown(number: int) -> bytes:
    return _varint(number, 1)


@needs_upb
def test_unknown_fields_are_kept_as_betterproto2_keeps_them() -> None:
    data = DispatchData(type="x", is_active=True)
    data._unknown_fields = _unknown(111)
    message = ListMicrogridDispatchesResponse(dispatches=[Dispatch(data=data)])
    raw = bytes(message) + _unknown(99)
    parse = decoder(ListMicrogridDispatchesResponse)
    assert isinstance(parse, Decoder)
    assert parse.parse_fast(raw) is None
    decoded = parse(raw)
    assert_same(decoded, ListMicrogridDispatchesResponse.parse(raw))
    assert decoded._unknown_fields == _unknown(99)
    assert decoded.dispatches[0].data is not None
    assert decoded.dispatches[0].data._unknown_fields == _unknown(111)


# Field numbers: Dispatch.metadata 1, .data 2; DispatchMetadata.dispatch_id 1, .create_time 2;
# DispatchData.type 1, .duration 3, .is_active 5, .recurrence 8; RecurrenceRule.byhours 5.
ODD_ENCODINGS = {
    # A message field twice: upb merges the two, betterproto2 keeps the last.
    "message twice": bytes(Dispatch(metadata=DispatchMetadata(dispatch_id=1, create_time=EPOCH)))
    + bytes(Dispatch(metadata=DispatchMetadata(dispatch_id=2))),
    "scalar twice": _nested(1, _varint(1, 1) + _varint(1, 2)),
    "default written out": _nested(2, _nested(1, b"x") + _varint(5, 0)),
    "unpacked repeated": _nested(2, _nested(8, _varint(5, 5) + _varint(5, 6))),
    "bool 2": _nested(2, _varint(5, 2)),
    "uint32 overflow": _nested(2, _varint(3, 2**40 + 7)),
    "truncated": bytes(extremes())[:-3],
    "invalid UTF-8": _nested(2, _nested(1, b"\xff")),
    "timestamp beyond datetime": _nested(1, _nested(2, _varint(1, 2**40))),
}


@needs_upb
@pytest.mark.parametrize("raw", ODD_ENCODINGS.values(), ids=ODD_ENCODINGS.keys())
def test_what_the_fast_path_cannot_take_decodes_as_betterproto2(raw: bytes) -> None:
    parse = decoder(Dispatch)
    assert isinstance(parse, Decoder)
    assert parse.parse_fast(raw) is None
    assert_decodes_same(Dispatch, raw)


@needs_upb
def test_a_class_without_descriptor_decodes_with_betterproto2() -> None:
    entry = Struct._betterproto.cls_by_field["fields"]  # a map entry class, never registered
    assert decoder(entry) == entry.parse


# -- the codec ------------------------------------------------------------------------


def test_the_env_var_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "0")
    assert not _fastdecode.enabled()
    assert not ResponseCodec().fast
    monkeypatch.setenv(ENV_VAR, "1")
    assert ResponseCodec().fast == _fastdecode.available()
    monkeypatch.delenv(ENV_VAR)
    assert ResponseCodec().fast == _fastdecode.available()


def test_without_upb_the_codec_decodes_with_betterproto2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fastdecode, "available", lambda: False)
    monkeypatch.setattr(_fastdecode, "decoder", None)  # must not be reached
    codec = ResponseCodec()
    assert not codec.fast
    message = page(3)
    assert_same(codec.decode(bytes(message), ListMicrogridDispatchesResponse), message)
    with pytest.raises(RuntimeError, match=r"dispatch-client\[fast\]"):
        ResponseCodec(fast=True)


@needs_upb
def test_the_codec_decodes_through_upb() -> None:
    codec = ResponseCodec(fast=True)
    message = page(3)
    decoded = codec.decode(bytes(message), ListMicrogridDispatchesResponse)
    assert_same(decoded, ListMicrogridDispatchesResponse.parse(bytes(message)))
    assert isinstance(decoder(ListMicrogridDispatchesResponse), Decoder)


# -- generated dispatches -------------------------------------------------------------

uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, MAX_ID)
int32 = st.integers(-(2**31), 2**31 - 1)
times = st.datetimes(
    min_value=FIRST.replace(tzinfo=None),
    max_value=LAST.replace(tzinfo=None),
    timezones=st.just(dt.UTC),
)


def enums(cls: type[betterproto2.Enum]) -> st.SearchStrategy[Any]:
    return st.sampled_from(list(cls)) | st.integers(-2, 300).map(cls)


def json_values() -> st.SearchStrategy[Value]:
    leaves = st.one_of(
        st.builds(Value, null_value=st.just(NullValue.NULL_VALUE)),
        st.builds(Value, number_value=st.floats()),
        st.builds(Value, string_value=st.text(max_size=8)),
        st.builds(Value, bool_value=st.booleans()),
        st.just(Value()),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(Value, list_value=st.builds(ListValue, values=st.lists(inner, max_size=3))),
            st.builds(
                Value,
                struct_value=st.builds(
                    Struct, fields=st.dictionaries(st.text(max_size=4), inner, max_size=3)
                ),
            ),
        ),
        max_leaves=8,
    )


category_and_type = st.one_of(
    st.builds(TargetComponentsCategoryAndType, category=enums(ElectricalComponentCategory)),
    st.builds(
        TargetComponentsCategoryAndType,
        category=enums(ElectricalComponentCategory),
        battery=enums(BatteryType),
    ),
    st.builds(TargetComponentsCategoryAndType, inverter=enums(InverterType)),
    st.builds(TargetComponentsCategoryAndType, ev_charger=enums(EvChargerType)),
)
targets = st.one_of(
    st.none(),
    st.just(TargetComponents()),
    st.builds(
        TargetComponents,
        component_ids=st.builds(TargetComponentsIdSet, ids=st.lists(uint64, max_size=4)),
    ),
    st.builds(
        TargetComponents,
        component_categories=st.builds(
            TargetComponentsCategorySet,
            categories=st.lists(enums(ElectricalComponentCategory), max_size=3),
        ),
    ),
    st.builds(
        TargetComponents,
        component_categories_types=st.builds(
            TargetComponentsCategoryTypeSet, categories=st.lists(category_and_type, max_size=3)
        ),
    ),
)
recurrences = st.builds(
    RecurrenceRule,
    freq=enums(RecurrenceRuleFrequency),
    interval=uint32,
    end_criteria=st.one_of(
        st.none(),
        st.just(RecurrenceRuleEndCriteria()),
        st.builds(RecurrenceRuleEndCriteria, count=uint32),
        st.builds(RecurrenceRuleEndCriteria, until_time=times),
    ),
    byminutes=st.lists(uint32, max_size=3),
    byhours=st.lists(uint32, max_size=3),
    byweekdays=st.lists(enums(RecurrenceRuleWeekday), max_size=3),
    bymonthdays=st.lists(int32, max_size=3),
    bymonths=st.lists(uint32, max_size=3),
)
dispatches = st.builds(
    Dispatch,
    metadata=st.none()
    | st.builds(
        DispatchMetadata,
        dispatch_id=uint64,
        create_time=st.none() | times,
        update_time=st.none() | times,
        end_time=st.none() | times,
    ),
    data=st.none()
    | st.builds(
        DispatchData,
        type=st.text(max_size=10),
        start_time=st.none() | times,
        duration=st.none() | uint32,
        target=targets,
        is_active=st.booleans(),
        is_dry_run=st.booleans(),
        payload=st.none()
        | st.builds(Struct, fields=st.dictionaries(st.text(max_size=6), json_values(), max_size=4)),
        recurrence=st.none() | recurrences,
    ),
)


@needs_upb
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.builds(
        ListMicrogridDispatchesResponse,
        dispatches=st.lists(dispatches, max_size=4),
        pagination_info=st.none()
        | st.builds(PaginationInfo, total_items=uint32, next_page_token=st.text(max_size=5)),
    )
)
def test_generated_dispatches_decode_identically(message: ListMicrogridDispatchesResponse) -> None:
    assert_fast_and_same(message)


# -- end to end ------------------------------------------------------------------------

pytest_anyio = pytest.mark.anyio


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server() as srv:
        yield srv


async def _everything(url: str, microgrid_id: int, ids: list[int]) -> tuple[Any, ...]:
    async with Client(url) as client:
        pages = [page async for page in client.list(microgrid_id, page_size=2)]
        got = [await client.get(microgrid_id, i) for i in ids]
        codec = client.channel._codec  # grpclib keeps it private; the test must know
    return pages, got, codec


@needs_upb
@pytest_anyio
async def test_the_client_returns_the_same_objects_either_way(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    async with Client(server.url) as client:
        created = [
            await client.create(
                7, "A", start, dt.timedelta(minutes=5), [1, MAX_ID], payload=PAYLOAD
            ),
            await client.create(7, "B", "NOW", None, target_from_types(BatteryType.LI_ION)),
            await client.create(
                7,
                "C",
                start,
                None,
                target_from_categories(ElectricalComponentCategory.INVERTER),
                active=False,
                dry_run=True,
                payload={},
                recurrence=RecurrenceRule(
                    freq=RecurrenceRuleFrequency.MONTHLY,
                    end_criteria=RecurrenceRuleEndCriteria(count=3),
                    bymonthdays=[-1, 15],
                ),
            ),
        ]
    ids = [d.metadata.dispatch_id for d in created if d.metadata is not None]

    monkeypatch.setenv(ENV_VAR, "1")
    fast = await _everything(server.url, 7, ids)
    monkeypatch.setenv(ENV_VAR, "0")
    slow = await _everything(server.url, 7, ids)

    assert fast[2].fast and not slow[2].fast
    assert sum(len(p) for p in fast[0]) == 3
    for fast_part, slow_part in zip(fast[:2], slow[:2], strict=True):
        assert_same(fast_part, slow_part)


WITHOUT_PROTOBUF = """
import asyncio, datetime as dt, sys

class NoProtobuf:
    def find_spec(self, name, path=None, target=None):
        if name == "google.protobuf" or name.startswith(("google.protobuf.", "google.rpc")):
            raise ImportError(f"blocked {name}")
        return None

sys.meta_path.insert(0, NoProtobuf())

from dispatch_client import Client
from dispatch_client.testing import running_server

async def main():
    async with running_server() as server, Client(server.url) as client:
        created = await client.create(1, "T", "NOW", dt.timedelta(minutes=1), [1], payload={"a": [1]})
        listed = [d async for d in client.dispatches(1)]
        assert listed == [created], listed
        assert not client.channel._codec.fast
    assert not any(name.startswith("google.protobuf") for name in sys.modules)
    print("ok")

asyncio.run(main())
"""


def test_the_client_works_without_protobuf() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PROTOBUF], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@needs_upb
def test_the_fast_pool_holds_our_files_with_map_entries_plain() -> None:
    from google.protobuf import descriptor_pb2

    proto = resources.files("dispatch_client._proto")
    original = descriptor_pb2.FileDescriptorSet.FromString(
        proto.joinpath("descriptors.binpb").read_bytes()
    )
    members = list(_set_members(proto.joinpath("fast_descriptors.binpb").read_bytes()))
    assert [descriptor_pb2.FileDescriptorProto.FromString(m).name for m in members] == [
        file.name for file in original.file
    ]
    pool = _pool()
    for file in original.file:
        assert pool.FindFileByName(file.name).name == file.name
    fields = pool.FindMessageTypeByName("google.protobuf.Struct").fields_by_name["fields"]
    # A plain entry message, not a map: upb keeps wire order (see _fastdecode).
    assert fields.message_type.name == "FieldsEntry"
    assert not fields.message_type.GetOptions().map_entry


@pytest.mark.parametrize(
    "data",
    [b"\x12\x00", b"\x0a\x05ab", b"\x0a\x80", b"\x0a" + b"\xff" * 12],
    ids=["another field", "cut short", "length cut short", "endless varint"],
)
def test_a_broken_descriptor_set_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a serialized FileDescriptorSet"):
        list(_set_members(data))


@needs_upb
def test_the_fast_path_loads_neither_descriptor_pb2_nor_message_factory() -> None:
    # They cost ~20 ms of a client's first call; upb's own pool does the job.
    loaded = run_python(
        """
        import sys
        from dispatch_client._fastdecode import decoder, encoder
        from dispatch_client.wire import (
            ListMicrogridDispatchesResponse, StreamMicrogridDispatchesRequest,
        )
        request = StreamMicrogridDispatchesRequest(microgrid_id=7)
        assert encoder(StreamMicrogridDispatchesRequest)(request) == bytes(request)
        assert decoder(ListMicrogridDispatchesResponse)(b"") == ListMicrogridDispatchesResponse()
        print(" ".join(sorted(m for m in sys.modules if m.startswith("google.protobuf"))))
        """
    ).split()
    assert "google.protobuf.message" in loaded
    for module in ("descriptor_pb2", "message_factory", "descriptor_pool", "text_format"):
        assert f"google.protobuf.{module}" not in loaded


@needs_upb
def test_a_part_compiles_on_first_use() -> None:
    # An empty page, the usual first answer of a new stream's catch-up list,
    # needs no dispatch conversion: that is written once a dispatch comes.
    compiled = run_python(
        f"""
        from dispatch_client import Dispatch
        from dispatch_client._fastdecode import decoder
        from dispatch_client._upb_source import converters
        from dispatch_client.wire import ListMicrogridDispatchesResponse
        decode = decoder(ListMicrogridDispatchesResponse)
        assert decode(b"") == ListMicrogridDispatchesResponse()
        dispatch = converters._names[Dispatch]
        print(dispatch in converters._uncompiled)
        data = bytes.fromhex("{bytes(page(3)).hex()}")
        assert decode(data) == ListMicrogridDispatchesResponse.parse(data)
        print(dispatch in converters._uncompiled)
        """,
    )
    assert compiled.split() == ["True", "False"]


class _Part:
    pass


class _Whole:
    pass


class _Compiler(SourceCompiler):
    """Writes `whole(x)` calling its part's function, whose writing raises `Fallback`."""

    def __init__(self) -> None:
        super().__init__("test", "_test_", {})
        self.written: list[type[Any]] = []

    def _source(self, name: str, cls: type[Any], descriptor: Any) -> str:
        self.written.append(cls)
        if cls is _Part:
            raise Fallback("part")
        return f"def {name}(x):\n    return {self._ref(_Part, None)}(x)"


def test_a_part_that_cannot_take_the_fast_path_falls_back_at_every_call() -> None:
    compiler = _Compiler()
    whole = compiler.function(_Whole, None)
    assert compiler.written == [_Whole]
    for _ in range(3):
        with pytest.raises(Fallback):
            whole(1)
    # Written once; from then on its function falls back at once.
    assert compiler.written == [_Whole, _Part]
    with pytest.raises(Fallback, match="_Part"):
        compiler.function(_Part, None)


class _FailingCompiler(SourceCompiler):
    """Writes `whole(x)` calling its part's function, whose writing raises `error` (once)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__("test", "_test_", {})
        self.error: BaseException | None = error
        self.written: list[type[Any]] = []

    def _source(self, name: str, cls: type[Any], descriptor: Any) -> str:
        self.written.append(cls)
        if cls is _Part:
            if isinstance(self.error, KeyboardInterrupt):
                error, self.error = self.error, None
                raise error
            if self.error is not None:
                raise self.error
            return f"def {name}(x):\n    return x + 1"
        return f"def {name}(x):\n    return {self._ref(_Part, None)}(x)"


WRITING_ERRORS = {
    "KeyError": KeyError(7),
    "AttributeError": AttributeError("containing_oneof"),
    "RecursionError": RecursionError(),
    "MemoryError": MemoryError(),
}


@pytest.mark.parametrize("error", WRITING_ERRORS.values(), ids=WRITING_ERRORS.keys())
def test_a_part_whose_writing_fails_falls_back_at_every_call(error: Exception) -> None:
    # The part's name stayed bound to its compile-on-first-call stub, which then
    # called itself: a RecursionError (1,000 frames) at every later call.
    compiler = _FailingCompiler(error)
    whole = compiler.function(_Whole, None)
    for _ in range(3):
        with pytest.raises(Fallback):
            whole(1)
    assert compiler.written == [_Whole, _Part]


def test_a_part_whose_writing_is_interrupted_is_written_at_its_next_call() -> None:
    compiler = _FailingCompiler(KeyboardInterrupt())
    whole = compiler.function(_Whole, None)
    with pytest.raises(KeyboardInterrupt):
        whole(1)
    assert whole(1) == 2
    assert compiler.written == [_Whole, _Part, _Part]


def test_a_part_whose_source_does_not_compile_falls_back() -> None:
    class BadSource(SourceCompiler):
        def _source(self, name: str, cls: type[Any], descriptor: Any) -> str:
            return (
                f"def {name}(x):\n    return {self._ref(_Part, None)}(x)"
                if cls is _Whole
                else "def ("
            )

    whole = BadSource("test", "_test_", {}).function(_Whole, None)
    for _ in range(2):
        with pytest.raises(Fallback):
            whole(1)
