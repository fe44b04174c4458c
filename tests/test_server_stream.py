"""Reference server: event streams, fan-out, concurrency, slow subscribers."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from test_server_support import (
    GRPCError,
    Status,
    connect,
    create,
    future,
    list_all,
)

from dispatch_client import (
    Dispatch,
    Event,
)
from dispatch_client._proto.google.protobuf import FieldMask
from dispatch_client.server import DispatchService
from dispatch_client.testing import RunningServer, in_memory_channel, running_server
from dispatch_client.validation import payload_to_struct
from dispatch_client.wire import (
    DeleteMicrogridDispatchRequest,
    MicrogridDispatchServiceStub,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

STREAM_PATH = "/frequenz.api.dispatch.v1.MicrogridDispatchService/StreamMicrogridDispatches"
Response = StreamMicrogridDispatchesResponse


@asynccontextmanager
async def subscribed(
    channel: Channel, microgrid_id: int
) -> AsyncIterator[Stream[StreamMicrogridDispatchesRequest, Response]]:
    """Open a stream and wait until the server has registered it (initial metadata)."""
    async with channel.request(
        STREAM_PATH, Cardinality.UNARY_STREAM, StreamMicrogridDispatchesRequest, Response
    ) as stream:
        await stream.send_message(
            StreamMicrogridDispatchesRequest(microgrid_id=microgrid_id), end=True
        )
        await stream.recv_initial_metadata()
        yield stream
        # Stop listening; fails harmlessly when the server already ended the stream.
        with contextlib.suppress(Exception):
            await stream.cancel()


async def receive(
    stream: Stream[StreamMicrogridDispatchesRequest, Response], count: int
) -> list[Response]:
    received = []
    with anyio.fail_after(10):
        for _ in range(count):
            message = await stream.recv_message()
            assert message is not None
            received.append(message)
    return received


def summary(events: list[Response]) -> list[tuple[Event, int]]:
    return [
        (e.event, e.dispatch.metadata.dispatch_id)
        for e in events
        if e.dispatch and e.dispatch.metadata
    ]


async def _update_active(
    stub: MicrogridDispatchServiceStub, dispatch_id: int, active: bool
) -> Dispatch:
    response = await stub.update_microgrid_dispatch(
        UpdateMicrogridDispatchRequest(
            microgrid_id=1,
            dispatch_id=dispatch_id,
            update_mask=FieldMask(paths=["is_active"]),
            update=UpdateMicrogridDispatchRequestDispatchUpdate(is_active=active),
        )
    )
    assert response.dispatch is not None
    return response.dispatch


async def test_subscriber_sees_create_update_delete_of_its_microgrid_only(
    store_server: RunningServer,
) -> None:
    async with connect(store_server) as stub:
        channel = stub.channel
        async with subscribed(channel, 1) as mine, subscribed(channel, 2) as theirs:
            created = await create(stub, 1)
            await create(stub, 3)  # nobody listens to microgrid 3
            assert created.metadata is not None
            dispatch_id = created.metadata.dispatch_id
            updated = await _update_active(stub, dispatch_id, False)
            await stub.delete_microgrid_dispatch(
                DeleteMicrogridDispatchRequest(microgrid_id=1, dispatch_id=dispatch_id)
            )
            other = await create(stub, 2)
            events = await receive(mine, 3)
            assert summary(events) == [
                (Event.CREATED, dispatch_id),
                (Event.UPDATED, dispatch_id),
                (Event.DELETED, dispatch_id),
            ]
            assert bytes(events[0].dispatch) == bytes(created)  # type: ignore[arg-type]
            assert bytes(events[1].dispatch) == bytes(updated)  # type: ignore[arg-type]
            # DELETED carries the dispatch as it was last stored.
            assert bytes(events[2].dispatch) == bytes(updated)  # type: ignore[arg-type]
            assert other.metadata is not None
            assert summary(await receive(theirs, 1)) == [
                (Event.CREATED, other.metadata.dispatch_id)
            ]


async def test_failed_writes_publish_nothing(store_server: RunningServer) -> None:
    async with connect(store_server) as stub, subscribed(stub.channel, 1) as stream:
        with pytest.raises(GRPCError):
            await create(stub, 1, start_time=future(-3600))
        with pytest.raises(GRPCError):
            await _update_active(stub, 12345, True)
        marker = await create(stub, 1)
        assert marker.metadata is not None
        assert summary(await receive(stream, 1)) == [(Event.CREATED, marker.metadata.dispatch_id)]


async def test_stream_counters(store_server: RunningServer) -> None:
    service = store_server.service
    assert service.open_stream_count() == 0
    async with connect(store_server) as stub:
        async with (
            subscribed(stub.channel, 1),
            subscribed(stub.channel, 1),
            subscribed(stub.channel, 2),
        ):
            assert service.open_stream_count(1) == 2
            assert service.open_stream_count(2) == 1
            assert service.open_stream_count() == 3
            assert service.opened_stream_count(1) == 2
        with anyio.fail_after(5):
            await service.wait_for_streams(None, 0)
        assert service.open_stream_count(1) == 0
        assert service.opened_stream_count() == 3


async def test_generated_stub_stream_works(
    stub: MicrogridDispatchServiceStub, store_server: RunningServer
) -> None:
    received: list[Response] = []

    async def consume() -> None:
        async for event in stub.stream_microgrid_dispatches(
            StreamMicrogridDispatchesRequest(microgrid_id=5)
        ):
            received.append(event)
            return

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        with anyio.fail_after(5):
            await store_server.service.wait_for_streams(5, 1)
        await create(stub, 5)
    assert [e.event for e in received] == [Event.CREATED]


async def test_fifty_concurrent_creates_reach_every_subscriber_once_in_order(
    store_server: RunningServer, server_db: str
) -> None:
    async with (
        connect(store_server) as stub,
        subscribed(stub.channel, 1) as first,
        subscribed(stub.channel, 1) as second,
    ):
        made: list[Dispatch] = []

        async def create_one(n: int) -> None:
            made.append(await create(stub, 1, type=f"T{n}"))

        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(create_one, n)
        numbers = [d.metadata.dispatch_id for d in made if d.metadata]
        assert len(set(numbers)) == 50
        orders = [summary(await receive(stream, 50)) for stream in (first, second)]
        assert orders[0] == orders[1]
        assert sorted(orders[0]) == [(Event.CREATED, n) for n in sorted(numbers)]
        if server_db == ":memory:":
            # SQLite hands out ids in commit order, so commit order is id order;
            # PostgreSQL takes ids before commit: there only the set is fixed.
            assert orders[0] == [(Event.CREATED, n) for n in sorted(numbers)]


async def test_concurrent_mixed_writes_replay_to_the_stored_state(
    store_server: RunningServer,
) -> None:
    rng = random.Random(7)
    async with connect(store_server) as stub, subscribed(stub.channel, 1) as stream:
        seed = [await create(stub, 1) for _ in range(10)]
        seed_ids = [d.metadata.dispatch_id for d in seed if d.metadata]
        writes = 0

        async def worker() -> None:
            nonlocal writes
            for _ in range(6):
                choice = rng.random()
                try:
                    if choice < 0.4:
                        await create(stub, 1)
                    elif choice < 0.8:
                        await _update_active(stub, rng.choice(seed_ids), rng.random() < 0.5)
                    else:
                        await stub.delete_microgrid_dispatch(
                            DeleteMicrogridDispatchRequest(
                                microgrid_id=1, dispatch_id=rng.choice(seed_ids)
                            )
                        )
                    writes += 1
                except GRPCError as error:
                    assert error.status == Status.NOT_FOUND  # lost a race with a delete

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
        events = await receive(stream, 10 + writes)
        state: dict[int, bytes] = {}
        for event in events:
            assert event.dispatch is not None and event.dispatch.metadata is not None
            if event.event == Event.DELETED:
                del state[event.dispatch.metadata.dispatch_id]
            else:
                state[event.dispatch.metadata.dispatch_id] = bytes(event.dispatch)
        stored = {d.metadata.dispatch_id: bytes(d) for d in await list_all(stub) if d.metadata}
        assert state == stored


async def test_slow_subscriber_is_dropped_while_others_get_everything() -> None:
    # Small HTTP/2 windows on the slow client's side, so that the server
    # cannot park much in the network and its per-stream buffer must fill.
    small_window = Configuration(
        http2_connection_window_size=2**16 - 1, http2_stream_window_size=2**16 - 1
    )
    async with running_server(stream_buffer_size=4) as server:
        slow_channel = Channel(server.host, server.port, config=small_window)
        try:
            async with (
                connect(server) as stub,
                subscribed(stub.channel, 1) as fast,
                subscribed(slow_channel, 1) as slow,
            ):
                payload = payload_to_struct({"blob": "x" * 20_000})
                fast_events: list[Response] = []

                async def read_fast() -> None:
                    fast_events.extend(await receive(fast, 30))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_fast)
                    with anyio.fail_after(10):  # writers never wait for the slow reader
                        for _ in range(30):
                            await create(stub, 1, payload=payload)
                assert len(fast_events) == 30
                assert server.service.open_stream_count(1) == 1  # only the fast one is left

                got = 0
                with anyio.fail_after(10), pytest.raises(GRPCError) as info:
                    while await slow.recv_message() is not None:
                        got += 1
                    await slow.recv_trailing_metadata()
                assert info.value.status == Status.RESOURCE_EXHAUSTED
                assert "fell more than 4 events behind" in (info.value.message or "")
                assert 4 <= got < 30
        finally:
            slow_channel.close()


async def test_stop_ends_streams_and_restart_accepts_new_ones(
    store_server: RunningServer,
) -> None:
    async with connect(store_server) as stub:
        async with subscribed(stub.channel, 1) as stream:
            await store_server.stop()
            with anyio.fail_after(5), pytest.raises(Exception):  # noqa: B017 - connection lost
                await stream.recv_message()
        assert store_server.service.open_stream_count() == 0
        await store_server.start()
        async with subscribed(stub.channel, 1) as stream:
            created = await create(stub, 1)
            assert created.metadata is not None
            assert summary(await receive(stream, 1)) == [
                (Event.CREATED, created.metadata.dispatch_id)
            ]


async def test_closing_the_service_ends_streams_with_unavailable() -> None:
    service = DispatchService()
    await service.open()
    async with in_memory_channel(service) as channel, subscribed(channel, 1) as stream:
        await service.close()
        with anyio.fail_after(5), pytest.raises(GRPCError) as info:
            assert await stream.recv_message() is None
            await stream.recv_trailing_metadata()
        assert info.value.status == Status.UNAVAILABLE
