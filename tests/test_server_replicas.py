"""Several reference servers (replicas) on one PostgreSQL database.

Each test starts two or three replicas on the session's PostgreSQL server and
talks to them over real loopback channels: a change made through one replica
reaches the streams of every replica (LISTEN/NOTIFY), fast and in commit order
per dispatch; updates through different replicas never lose each other;
replays are refused across replicas; page tokens work on any replica.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest
from grpclib.client import Stream
from grpclib.const import Status
from test_server_auth import SECRET, _signed
from test_server_stream import Response, receive, subscribed
from test_server_support import connect, create, expect_error, make_data

from dispatch_client import Event
from dispatch_client._proto.google.protobuf import FieldMask
from dispatch_client.testing import RunningServer, running_server
from dispatch_client.validation import payload_to_struct
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    DispatchFilter,
    GetMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    MicrogridDispatchServiceStub,
    PaginationParams,
    StreamMicrogridDispatchesRequest,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

LATENCY_LIMIT_S = 0.100
"""A change reaches the streams of every replica within this (issue 19), on loopback."""


@asynccontextmanager
async def replicas(db: str, count: int, **options: object) -> AsyncIterator[list[RunningServer]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(running_server(db=db, **options))  # type: ignore[arg-type]
            for _ in range(count)
        ]


@asynccontextmanager
async def stubs(servers: list[RunningServer]) -> AsyncIterator[list[MicrogridDispatchServiceStub]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(connect(server)) for server in servers]


@asynccontextmanager
async def streams(
    stubs_: list[MicrogridDispatchServiceStub], microgrid_id: int
) -> AsyncIterator[list[Stream[StreamMicrogridDispatchesRequest, Response]]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(subscribed(stub.channel, microgrid_id))
            for stub in stubs_
        ]


async def _update(
    stub: MicrogridDispatchServiceStub, dispatch_id: int, path: str, **values: object
) -> None:
    await stub.update_microgrid_dispatch(
        UpdateMicrogridDispatchRequest(
            microgrid_id=1,
            dispatch_id=dispatch_id,
            update_mask=FieldMask(paths=[path]),
            update=UpdateMicrogridDispatchRequestDispatchUpdate(**values),  # type: ignore[arg-type]
        )
    )


async def test_a_change_through_one_replica_reaches_the_streams_of_all(postgres_url: str) -> None:
    async with (
        replicas(postgres_url, 3) as servers,
        stubs(servers) as clients,
        streams(clients, 1) as subscribers,
        streams(clients[:1], 2) as other_microgrid,
    ):
        created = await create(clients[0], 1)
        assert created.metadata is not None
        await _update(clients[1], created.metadata.dispatch_id, "is_active", is_active=False)
        await clients[2].delete_microgrid_dispatch(
            DeleteMicrogridDispatchRequest(microgrid_id=1, dispatch_id=created.metadata.dispatch_id)
        )
        await create(clients[1], 2)
        for stream in subscribers:
            events = await receive(stream, 3)
            assert [e.event for e in events] == [Event.CREATED, Event.UPDATED, Event.DELETED]
            assert {
                e.dispatch.metadata.dispatch_id
                for e in events
                if e.dispatch and e.dispatch.metadata
            } == {created.metadata.dispatch_id}
            assert events[0].dispatch == created
            assert events[1].dispatch is not None and events[1].dispatch.data is not None
            assert events[1].dispatch.data.is_active is False
        (other,) = await receive(other_microgrid[0], 1)
        assert other.event == Event.CREATED


async def test_cross_replica_latency_is_under_100_ms(postgres_url: str) -> None:
    latencies: list[float] = []
    async with (
        replicas(postgres_url, 2) as servers,
        stubs(servers) as (writer, reader),
        streams([reader], 1) as (stream,),
    ):
        for _ in range(30):
            started = time.perf_counter()
            await create(writer, 1)
            await receive(stream, 1)
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    median, p90 = statistics.median(latencies), latencies[int(len(latencies) * 0.9)]
    print(
        f"create on one replica -> event on another: median {median * 1000:.1f} ms,"
        f" p90 {p90 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    # Tolerance for a busy 2-core machine: the bound holds for 9 in 10 changes.
    assert p90 < LATENCY_LIMIT_S, latencies


async def test_events_of_a_dispatch_arrive_in_commit_order_on_every_replica(
    postgres_url: str,
) -> None:
    async with (
        replicas(postgres_url, 3) as servers,
        stubs(servers) as clients,
        streams(clients, 1) as subscribers,
    ):
        first, second = await create(clients[0], 1), await create(clients[1], 1)
        targets = [d.metadata.dispatch_id for d in (first, second) if d.metadata]
        rounds = 8

        async def writer(index: int) -> None:
            stub = clients[index % len(clients)]
            for n in range(rounds):
                payload = payload_to_struct({"writer": index, "n": n})
                await _update(stub, targets[n % 2], "payload", payload=payload)

        async with anyio.create_task_group() as tg:
            for index in range(4):
                tg.start_soon(writer, index)
        total = 2 + 4 * rounds
        views = [await receive(stream, total) for stream in subscribers]
        # The same sequence on every replica, and per dispatch the update times
        # never go back: each update committed after the one before it.
        assert [bytes(e) for e in views[0]] == [bytes(e) for e in views[1]]
        assert [bytes(e) for e in views[0]] == [bytes(e) for e in views[2]]
        for dispatch_id in targets:
            times = [
                e.dispatch.metadata.update_time
                for e in views[0]
                if e.dispatch
                and e.dispatch.metadata
                and e.dispatch.metadata.dispatch_id == dispatch_id
            ]
            assert times == sorted(times) and len(times) == 1 + 2 * rounds
        # The last event of each dispatch is what is stored.
        last = {
            e.dispatch.metadata.dispatch_id: bytes(e.dispatch)
            for e in views[0]
            if e.dispatch and e.dispatch.metadata
        }
        stored = await clients[2].list_microgrid_dispatches(
            ListMicrogridDispatchesRequest(microgrid_id=1)
        )
        assert {d.metadata.dispatch_id: bytes(d) for d in stored.dispatches if d.metadata} == last


async def test_concurrent_updates_through_two_replicas_lose_nothing(postgres_url: str) -> None:
    async with replicas(postgres_url, 2) as servers, stubs(servers) as (one, two):
        dispatch = await create(one, 1, duration=60, is_active=True)
        assert dispatch.metadata is not None
        did = dispatch.metadata.dispatch_id
        for n in range(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(_update, one, did, "duration", duration=100 + n))
                tg.start_soon(partial(_update, two, did, "is_active", is_active=n % 2 == 0))
            stored = await two.get_microgrid_dispatch(
                GetMicrogridDispatchRequest(microgrid_id=1, dispatch_id=did)
            )
            assert stored.dispatch is not None and stored.dispatch.data is not None
            # Each update read the other's result under the row lock.
            assert stored.dispatch.data.duration == 100 + n
            assert stored.dispatch.data.is_active is (n % 2 == 0)


async def test_page_tokens_work_on_any_replica(postgres_url: str) -> None:
    async with replicas(postgres_url, 2) as servers, stubs(servers) as (one, two):
        made = [await create(one if n % 2 else two, 1, type=f"T{n}") for n in range(7)]
        expected = sorted((d.metadata.dispatch_id for d in made if d.metadata), reverse=True)
        seen: list[int] = []
        request = ListMicrogridDispatchesRequest(
            microgrid_id=1, pagination_params=PaginationParams(page_size=3)
        )
        for turn in range(5):
            page = await (one, two)[turn % 2].list_microgrid_dispatches(request)
            seen += [d.metadata.dispatch_id for d in page.dispatches if d.metadata]
            token = page.pagination_info.next_page_token if page.pagination_info else None
            if not token:
                break
            request = ListMicrogridDispatchesRequest(
                microgrid_id=1, pagination_params=PaginationParams(page_token=token)
            )
        assert seen == expected
        only = await two.list_microgrid_dispatches(
            ListMicrogridDispatchesRequest(microgrid_id=1, filter=DispatchFilter(queries=["T3"]))
        )
        assert [d.data.type for d in only.dispatches if d.data] == ["T3"]


async def test_a_replayed_signed_request_is_refused_by_the_other_replica(
    postgres_url: str,
) -> None:
    async with (
        replicas(postgres_url, 2, sign_secret=SECRET) as servers,
        stubs(servers) as (one, two),
    ):
        metadata = _signed(nonce="shared-once")
        request = ListMicrogridDispatchesRequest(microgrid_id=1)
        await one.list_microgrid_dispatches(request, metadata=metadata)
        with expect_error(Status.UNAUTHENTICATED, "replay"):
            await two.list_microgrid_dispatches(request, metadata=metadata)
        with expect_error(Status.UNAUTHENTICATED, "replay"):
            await one.list_microgrid_dispatches(request, metadata=metadata)
        await two.list_microgrid_dispatches(request, metadata=_signed(nonce="another"))


async def test_a_dispatch_type_with_nul_is_stored_and_found(postgres_url: str) -> None:
    # PostgreSQL text cannot hold NUL; the store keeps types as bytes.
    async with replicas(postgres_url, 1) as (server,), connect(server) as stub:
        await stub.create_microgrid_dispatch(
            CreateMicrogridDispatchRequest(microgrid_id=1, dispatch_data=make_data(type="A\x00B"))
        )
        found = await stub.list_microgrid_dispatches(
            ListMicrogridDispatchesRequest(microgrid_id=1, filter=DispatchFilter(queries=["\x00B"]))
        )
        assert [d.data.type for d in found.dispatches if d.data] == ["A\x00B"]


async def test_replicas_starting_together_migrate_a_new_database_once(
    postgres_server: Any,
) -> None:
    from dispatch_client.server.pg_store import PgDispatchStore, known_migrations

    url = postgres_server.create_database(f"fresh_{time.monotonic_ns()}")
    stores = [PgDispatchStore(url) for _ in range(3)]
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(store.open)
    try:
        assert all(store.healthy for store in stores)
        async with stores[0]._connection() as conn:
            cursor = await conn.execute("SELECT migration_id FROM _yoyo_migration")
            applied = sorted(row[0] for row in await cursor.fetchall())
        assert applied == known_migrations()
    finally:
        for store in stores:
            await store.close()
