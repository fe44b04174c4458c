"""The server's replies, built from stored bytes or encoded once, are betterproto2's bytes.

A client receives, for every get, create, update and delete and every stream
event, exactly `bytes()` of the message the service's Python API gives for
the same call (random dispatch data: payloads, recurrences, targets; SQLite
and PostgreSQL stores; with and without the upb fast path). The pieces
(`dispatch_client.server.replies`) are checked against betterproto2 over
every value a field can hold.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from grpclib.client import Channel
from grpclib.const import Cardinality
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import json_values
from test_fastdecode import FIRST, LAST, MAX_ID, dispatches, needs_upb

from dispatch_client import (
    BatteryType,
    ElectricalComponentCategory,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    _fastdecode,
    target_from_categories,
    target_from_ids,
    target_from_types,
)
from dispatch_client._proto.frequenz.api.common.v1alpha8.streaming import Event
from dispatch_client._proto.frequenz.api.dispatch.v1 import (
    CreateMicrogridDispatchRequest,
    CreateMicrogridDispatchResponse,
    DeleteMicrogridDispatchRequest,
    DeleteMicrogridDispatchResponse,
    Dispatch,
    DispatchData,
    DispatchMetadata,
    GetMicrogridDispatchRequest,
    GetMicrogridDispatchResponse,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
    UpdateMicrogridDispatchResponse,
)
from dispatch_client._proto.google.protobuf import FieldMask, Struct
from dispatch_client.server import DispatchService, replies
from dispatch_client.server.fanout import Fanout, StreamEvent
from dispatch_client.server.records import from_micros, to_micros
from dispatch_client.testing import running_server

SERVICE = "/frequenz.api.dispatch.v1.MicrogridDispatchService/"
MICROS = st.integers(to_micros(FIRST), to_micros(LAST))


@pytest.fixture(params=[True, False], ids=["upb", "betterproto2"])
def fast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Encode through upb (skipped without it) or, with the fast path off, by betterproto2."""
    if request.param and not _fastdecode.available():
        pytest.skip("protobuf with the upb backend is not installed")
    monkeypatch.setenv(_fastdecode.ENV_VAR, "1" if request.param else "0")
    assert _fastdecode.enabled() is request.param
    yield request.param


# -- the pieces ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    dispatch_id=st.integers(0, MAX_ID),
    create_us=MICROS,
    update_us=MICROS,
    end_us=st.none() | MICROS,
)
def test_metadata_from_stored_values_is_betterproto2s(
    dispatch_id: int, create_us: int, update_us: int, end_us: int | None
) -> None:
    message = DispatchMetadata(
        dispatch_id=dispatch_id,
        create_time=from_micros(create_us),
        update_time=from_micros(update_us),
        end_time=None if end_us is None else from_micros(end_us),
    )
    assert replies.metadata(dispatch_id, create_us, update_us, end_us) == bytes(message)


@pytest.mark.parametrize(
    "micros",
    [0, -1, 1, 999_999, 1_000_000, -1_000_000, -1_000_001, to_micros(FIRST), to_micros(LAST)],
)
def test_metadata_at_the_edges_of_a_second(micros: int) -> None:
    """Before 1970 seconds are negative (ten-byte varints) and nanos still count up."""
    message = DispatchMetadata(
        dispatch_id=1, create_time=from_micros(micros), update_time=from_micros(micros)
    )
    assert replies.metadata(1, micros, micros, None) == bytes(message)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 2**63 - 1, 2**64 - 1, -1, -(2**63)])
def test_varint_is_betterproto2s(value: int) -> None:
    import betterproto2

    assert replies.varint(value) == betterproto2.encode_varint(value)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dispatch=dispatches,
    microgrid_id=st.integers(0, MAX_ID),
    kind=st.sampled_from(list(Event)) | st.integers(-2, 300).map(Event),
)
def test_replies_of_any_dispatch_are_betterproto2s(
    fast: bool, dispatch: Dispatch, microgrid_id: int, kind: Event
) -> None:
    encoded = replies.encode_dispatch(dispatch)
    assert encoded == bytes(dispatch)
    assert replies.get_reply(microgrid_id, encoded) == bytes(
        GetMicrogridDispatchResponse(microgrid_id=microgrid_id, dispatch=dispatch)
    )
    assert replies.dispatch_reply(encoded) == bytes(
        CreateMicrogridDispatchResponse(dispatch=dispatch)
    )
    assert replies.dispatch_reply(encoded) == bytes(
        UpdateMicrogridDispatchResponse(dispatch=dispatch)
    )
    assert replies.delete_reply(microgrid_id, dispatch_id := microgrid_id // 3) == bytes(
        DeleteMicrogridDispatchResponse(microgrid_id=microgrid_id, dispatch_id=dispatch_id)
    )
    event = StreamMicrogridDispatchesResponse(dispatch=dispatch, event=kind)
    assert replies.encode_event(event) == bytes(event)
    assert StreamEvent(event).SerializeToString() == bytes(event)
    assert StreamEvent(data=bytes(event)).message == event


def test_a_stream_event_is_encoded_once_for_all_subscribers(fast: bool) -> None:
    fanout = Fanout(4)
    subscriptions = [fanout.subscribe(5) for _ in range(3)]
    fanout.publish(5, StreamMicrogridDispatchesResponse(dispatch=Dispatch(), event=Event.CREATED))
    events = [subscription.events.receive_nowait() for subscription in subscriptions]
    assert all(event is events[0] for event in events)
    first = events[0].SerializeToString()
    assert all(event.SerializeToString() is first for event in events)


def test_a_stream_event_takes_a_message_or_its_bytes() -> None:
    with pytest.raises(TypeError, match="either a message or its data"):
        StreamEvent()
    with pytest.raises(TypeError, match="either a message or its data"):
        StreamEvent(StreamMicrogridDispatchesResponse(), data=b"")


# -- what a client receives ------------------------------------------------------------


class Raw:
    """Bytes that grpclib's codec sends and receives as they are."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> Raw:
        return cls(data)


async def unary(channel: Channel, method: str, request: Any) -> bytes:
    async with channel.request(SERVICE + method, Cardinality.UNARY_UNARY, Raw, Raw) as stream:
        await stream.send_message(Raw(bytes(request)), end=True)
        reply = await stream.recv_message()
    assert reply is not None
    return reply.data


async def follow_raw(
    channel: Channel, microgrid_id: int, received: MemoryObjectSendStream[bytes]
) -> None:
    request = StreamMicrogridDispatchesRequest(microgrid_id=microgrid_id)
    path = SERVICE + "StreamMicrogridDispatches"
    async with channel.request(path, Cardinality.UNARY_STREAM, Raw, Raw) as stream:
        await stream.send_message(Raw(bytes(request)), end=True)
        async for event in stream:
            received.send_nowait(event.data)


async def follow_in_process(
    service: DispatchService, microgrid_id: int, received: MemoryObjectSendStream[bytes]
) -> None:
    request = StreamMicrogridDispatchesRequest(microgrid_id=microgrid_id)
    async for event in service.stream_microgrid_dispatches(request):
        received.send_nowait(bytes(event))


NOW = dt.datetime.now(dt.UTC)
starts = st.datetimes(
    min_value=(NOW + dt.timedelta(days=2)).replace(tzinfo=None),
    max_value=dt.datetime(2999, 1, 1),
    timezones=st.just(dt.UTC),
)
payloads = st.none() | st.dictionaries(
    st.text(max_size=6), json_values(max_leaves=6), max_size=4
).map(Struct.from_dict)
targets = st.one_of(
    st.none(),
    st.lists(st.integers(0, MAX_ID), min_size=1, max_size=4).map(lambda ids: target_from_ids(*ids)),
    st.lists(st.sampled_from(list(ElectricalComponentCategory)[1:]), min_size=1, max_size=3).map(
        lambda categories: target_from_categories(*categories)
    ),
    st.lists(st.sampled_from(list(BatteryType)[1:]), min_size=1, max_size=2).map(
        lambda types: target_from_types(*types)
    ),
)
recurrences = st.none() | st.builds(
    RecurrenceRule,
    freq=st.sampled_from(
        [
            RecurrenceRuleFrequency.MINUTELY,
            RecurrenceRuleFrequency.HOURLY,
            RecurrenceRuleFrequency.DAILY,
            RecurrenceRuleFrequency.MONTHLY,
        ]
    ),
    interval=st.integers(1, 5),
    end_criteria=st.none() | st.builds(RecurrenceRuleEndCriteria, count=st.integers(1, 20)),
    byhours=st.lists(st.integers(0, 23), max_size=3),
    byweekdays=st.lists(st.sampled_from(list(RecurrenceRuleWeekday)[1:]), max_size=3),
    bymonthdays=st.lists(st.integers(1, 28) | st.integers(-28, -1), max_size=2),
)
datas = st.builds(
    DispatchData,
    type=st.text(min_size=1, max_size=12).filter(lambda text: bool(text.strip("\x00"))),
    start_time=starts,
    duration=st.none() | st.integers(0, 2**32 - 1),
    target=targets,
    is_active=st.booleans(),
    is_dry_run=st.booleans(),
    payload=payloads,
    recurrence=recurrences,
)
updates = st.builds(
    UpdateMicrogridDispatchRequestDispatchUpdate,
    start_time=starts,
    duration=st.none() | st.integers(0, 2**32 - 1),
    is_active=st.booleans(),
    payload=payloads,
    target=targets,
)
UPDATE_PATHS = ["start_time", "duration", "is_active", "payload", "target"]
steps = st.lists(
    st.tuples(datas, st.none() | updates, st.sampled_from(UPDATE_PATHS), st.booleans()),
    min_size=1,
    max_size=4,
)


async def serve_and_compare(
    db: str, microgrid_id: int, plan: list[tuple[DispatchData, Any, str, bool]]
) -> None:
    """Create, get, update, get and maybe delete each dispatch; compare every reply and event."""
    async with running_server(db=db) as server:
        service, store = server.service, server.service.store
        channel = Channel(server.host, server.port)
        # Two clients over the wire, one in process (its messages encoded here).
        followers = [anyio.create_memory_object_stream[bytes](1000) for _ in range(3)]
        expected: list[bytes] = []

        def event(dispatch: Dispatch | None, kind: Event) -> bytes:
            return bytes(StreamMicrogridDispatchesResponse(dispatch=dispatch, event=kind))

        try:
            async with anyio.create_task_group() as tasks:
                for sender, _ in followers[:2]:
                    tasks.start_soon(follow_raw, channel, microgrid_id, sender)
                tasks.start_soon(follow_in_process, service, microgrid_id, followers[2][0])
                with anyio.fail_after(10):
                    await service.wait_for_streams(microgrid_id, 3)

                for data, update, path, delete in plan:
                    request = CreateMicrogridDispatchRequest(
                        microgrid_id=microgrid_id, dispatch_data=data
                    )
                    reply = await unary(channel, "CreateMicrogridDispatch", request)
                    created = CreateMicrogridDispatchResponse.parse(reply).dispatch
                    assert created is not None and created.metadata is not None
                    did = created.metadata.dispatch_id
                    stored = await store.get(microgrid_id, did)
                    assert reply == bytes(CreateMicrogridDispatchResponse(dispatch=stored))
                    expected.append(event(stored, Event.CREATED))

                    get = GetMicrogridDispatchRequest(microgrid_id=microgrid_id, dispatch_id=did)
                    reply = await unary(channel, "GetMicrogridDispatch", get)
                    assert reply == bytes(await service.get_microgrid_dispatch(get))

                    if update is not None:
                        request = UpdateMicrogridDispatchRequest(
                            microgrid_id=microgrid_id,
                            dispatch_id=did,
                            update_mask=FieldMask(paths=[path]),
                            update=update,
                        )
                        reply = await unary(channel, "UpdateMicrogridDispatch", request)
                        stored = await store.get(microgrid_id, did)
                        assert reply == bytes(UpdateMicrogridDispatchResponse(dispatch=stored))
                        expected.append(event(stored, Event.UPDATED))
                        reply = await unary(channel, "GetMicrogridDispatch", get)
                        assert reply == bytes(await service.get_microgrid_dispatch(get))

                    if delete:
                        request = DeleteMicrogridDispatchRequest(
                            microgrid_id=microgrid_id, dispatch_id=did
                        )
                        reply = await unary(channel, "DeleteMicrogridDispatch", request)
                        assert reply == bytes(
                            DeleteMicrogridDispatchResponse(
                                microgrid_id=microgrid_id, dispatch_id=did
                            )
                        )
                        expected.append(event(stored, Event.DELETED))

                with anyio.fail_after(10):
                    for _, receiver in followers:
                        assert [await receiver.receive() for _ in expected] == expected
                tasks.cancel_scope.cancel()
        finally:
            channel.close()


MICROGRIDS = st.sampled_from([1, 2**63, MAX_ID])
SERVER_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SERVER_SETTINGS
@given(microgrid_id=MICROGRIDS, plan=steps)
def test_sqlite_server_sends_betterproto2s_bytes(
    fast: bool, microgrid_id: int, plan: list[tuple[DispatchData, Any, str, bool]]
) -> None:
    asyncio.run(serve_and_compare(":memory:", microgrid_id, plan))


@SERVER_SETTINGS
@given(microgrid_id=MICROGRIDS, plan=steps)
def test_postgresql_server_sends_betterproto2s_bytes(
    postgres_url: str,
    fast: bool,
    microgrid_id: int,
    plan: list[tuple[DispatchData, Any, str, bool]],
) -> None:
    asyncio.run(serve_and_compare(postgres_url, microgrid_id, plan))


@needs_upb
def test_the_upb_path_is_the_one_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fast path on, replies are not encoded by betterproto2 (its encoder is not called)."""
    monkeypatch.setenv(_fastdecode.ENV_VAR, "1")
    data = DispatchData(type="X", start_time=NOW, payload=Struct.from_dict({"a": [1, "b"]}))
    dispatch = Dispatch(metadata=DispatchMetadata(dispatch_id=3, create_time=NOW), data=data)
    expected = bytes(dispatch)
    calls: list[object] = []
    original = DispatchData.__bytes__

    def counting(self: Any) -> bytes:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(DispatchData, "__bytes__", counting)
    assert replies.encode_dispatch(dispatch) == expected
    assert calls == []


class _RenamingService(DispatchService):
    """Overrides two RPCs' methods: the server must answer through them."""

    async def get_microgrid_dispatch(
        self, message: GetMicrogridDispatchRequest
    ) -> GetMicrogridDispatchResponse:
        reply = await super().get_microgrid_dispatch(message)
        assert reply.dispatch is not None and reply.dispatch.data is not None
        reply.dispatch.data.type = "OVERRIDDEN"
        return reply

    async def delete_microgrid_dispatch(
        self, message: DeleteMicrogridDispatchRequest
    ) -> DeleteMicrogridDispatchResponse:
        return DeleteMicrogridDispatchResponse(microgrid_id=message.microgrid_id, dispatch_id=0)


@pytest.mark.anyio
async def test_a_subclass_overriding_an_rpc_method_answers_it(fast: bool) -> None:
    from dispatch_client.server import DispatchServer

    async with _RenamingService() as service, DispatchServer(service) as server:
        data = DispatchData(type="ORIGINAL", start_time=NOW + dt.timedelta(days=3))
        created = await service.store.insert(7, data, now=NOW, end_time=None)
        assert created.metadata is not None
        did = created.metadata.dispatch_id
        channel = Channel(server.host, server.port)
        try:
            get = GetMicrogridDispatchRequest(microgrid_id=7, dispatch_id=did)
            reply = await unary(channel, "GetMicrogridDispatch", get)
            assert reply == bytes(await service.get_microgrid_dispatch(get))
            assert b"OVERRIDDEN" in reply
            delete = DeleteMicrogridDispatchRequest(microgrid_id=7, dispatch_id=did)
            reply = await unary(channel, "DeleteMicrogridDispatch", delete)
            assert reply == bytes(DeleteMicrogridDispatchResponse(microgrid_id=7))
        finally:
            channel.close()


class _CountingService(DispatchService):
    """Overrides the wire path of a get (`encoded_get`), not its public method."""

    gets = 0

    async def encoded_get(self, message: GetMicrogridDispatchRequest) -> bytes:
        self.gets += 1
        return await super().encoded_get(message)


@pytest.mark.anyio
async def test_a_subclass_overriding_the_wire_path_answers_it() -> None:
    from dispatch_client.server import DispatchServer

    async with _CountingService() as service, DispatchServer(service) as server:
        data = DispatchData(type="T", start_time=NOW + dt.timedelta(days=3))
        created = await service.store.insert(7, data, now=NOW, end_time=None)
        assert created.metadata is not None
        get = GetMicrogridDispatchRequest(microgrid_id=7, dispatch_id=created.metadata.dispatch_id)
        channel = Channel(server.host, server.port)
        try:
            reply = await unary(channel, "GetMicrogridDispatch", get)
        finally:
            channel.close()
        assert service.gets == 1
        assert reply == bytes(await service.get_microgrid_dispatch(get))
