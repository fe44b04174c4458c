"""The client's core cases under both anyio backends: asyncio, and trio through the bridge.

The reference server runs in a thread of its own (`threaded_server`), so the
same tests drive it from either backend. Under trio every call crosses into
the client's loop thread; the autouse fixture checks that no such thread
outlives a test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import grpclib.server
import pytest
from test_streaming_helpers import Watcher, current_set, dispatch_id, wait_until

from dispatch_client import (
    Backoff,
    Client,
    ClientNotConnected,
    DeadlineExceeded,
    Dispatch,
    DispatchEvent,
    EndCriteria,
    Event,
    Frequency,
    InvalidArgument,
    NotFound,
    RecurrenceRule,
    StreamState,
    Transition,
)
from dispatch_client._runtime import in_trio
from dispatch_client.testing import ThreadedServer, threaded_server
from dispatch_client.wire import (
    DeleteMicrogridDispatchRequest,
    GetMicrogridDispatchRequest,
    GetMicrogridDispatchResponse,
    MicrogridDispatchServiceBase,
)

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("error")]

MG = 1
FAST_BACKOFF = Backoff(initial=0.02, maximum=0.1)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dispatch-client-loop-")]


@pytest.fixture(autouse=True)
def nothing_left_behind(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No loop thread outlives a test, and no loop reported a lost exception."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    yield
    deadline = time.monotonic() + 5
    while loop_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop_threads() == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    with threaded_server() as server:
        yield server


@pytest.fixture
async def client(server: ThreadedServer) -> AsyncIterator[Client]:
    async with Client(server.url, stream_backoff=FAST_BACKOFF) as client:
        yield client


def soon(**delta: float) -> dt.datetime:
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    return base + dt.timedelta(**delta)


async def make(client: Client, kind: str = "CHARGE", **kwargs: Any) -> Dispatch:
    fields: dict[str, Any] = {"start_time": soon(), "duration": dt.timedelta(minutes=10)}
    fields.update(kwargs)
    return await client.create(MG, kind, target=[1], **fields)


async def test_the_backend_is_the_one_asked_for(anyio_backend: str, client: Client) -> None:
    assert in_trio() == (anyio_backend == "trio")
    await make(client)
    assert bool(loop_threads()) == (anyio_backend == "trio")


# -- unary calls ---------------------------------------------------------------------


async def test_create_get_update_delete(client: Client, server: ThreadedServer) -> None:
    rule = RecurrenceRule(freq=Frequency.DAILY, end_criteria=EndCriteria(count=3))
    created = await make(client, payload={"power": 5.5}, recurrence=rule)
    identifier = dispatch_id(created)
    assert created.data is not None and created.data.recurrence == rule
    assert await client.get(MG, identifier) == created

    updated = await client.update(MG, identifier, {"duration": None, "active": False})
    assert updated.data is not None
    assert (updated.data.duration, updated.data.is_active) == (None, False)
    assert await client.get(MG, identifier) == updated

    await client.delete(MG, identifier)
    with pytest.raises(NotFound) as info:
        await client.get(MG, identifier)
    assert info.value.server_url == server.url


async def test_errors_arrive_typed_and_bad_input_fails_before_sending(client: Client) -> None:
    with pytest.raises(ValueError, match="in the past"):
        await make(client, start_time=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    weekly = await make(client, recurrence=RecurrenceRule(freq=Frequency.WEEKLY))
    with pytest.raises(InvalidArgument):
        await client.update(MG, dispatch_id(weekly), {"recurrence.bymonthdays": [1]})
    assert [d async for d in client.dispatches(MG)] == [weekly]


async def test_list_follows_page_tokens(client: Client) -> None:
    made = [await make(client, f"T{i}") for i in range(7)]
    pages = [page async for page in client.list(MG, page_size=3)]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [d for page in pages for d in page] == made[::-1]
    assert [d async for d in client.dispatches(MG, page_size=2)] == made[::-1]
    # Leaving early closes the generator on the loop side too.
    async with aclosing(client.list(MG, page_size=2)) as first_pages:
        async for page in first_pages:
            assert page == made[:-3:-1]
            break
    with pytest.raises(ValueError, match="page_size"):
        async for _ in client.list(MG, page_size=0):
            pass


async def test_concurrent_calls_share_the_client(client: Client) -> None:
    created: dict[int, Dispatch] = {}

    async def create(i: int) -> None:
        created[i] = await client.create(MG, f"LOAD_{i}", "NOW", None, [i])

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(create, i)
    assert len({dispatch_id(d) for d in created.values()}) == 50
    assert len(await current_set(client)) == 50


async def test_a_client_without_async_with(server: ThreadedServer) -> None:
    client = Client(server.url)
    first = await make(client)
    await client.disconnect()
    await client.disconnect()  # idempotent
    assert loop_threads() == []
    with pytest.raises(ClientNotConnected):
        await client.get(MG, dispatch_id(first))
    client.connect()
    assert await client.get(MG, dispatch_id(first)) == first
    await client.disconnect()


# -- cancellation --------------------------------------------------------------------


class HangingService(MicrogridDispatchServiceBase):
    """Answers no `get`: records that the call arrived and whether it was cancelled."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.cancelled = threading.Event()

    async def get_microgrid_dispatch(
        self, message: GetMicrogridDispatchRequest
    ) -> GetMicrogridDispatchResponse:
        self.arrived.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")


@pytest.fixture
async def hanging(server: ThreadedServer) -> AsyncIterator[tuple[HangingService, str]]:
    """A grpclib server that never answers, on the threaded server's loop."""
    service = HangingService()

    async def start() -> grpclib.server.Server:
        # Built here: a grpclib server binds to the loop it is created in.
        grpc_server = grpclib.server.Server([service])
        await grpc_server.start("127.0.0.1", 0)
        return grpc_server

    async def stop(grpc_server: grpclib.server.Server) -> None:
        grpc_server.close()
        await grpc_server.wait_closed()

    grpc_server = await server.call(start)
    assert grpc_server._server is not None
    port = grpc_server._server.sockets[0].getsockname()[1]
    yield service, f"grpc://127.0.0.1:{port}?ssl=false"
    with anyio.fail_after(5):
        await server.call(stop, grpc_server)


async def test_a_cancel_scope_cancels_the_call_in_flight(
    hanging: tuple[HangingService, str],
) -> None:
    service, url = hanging
    async with Client(url) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, MG, 1)
                await wait_until(service.arrived.is_set)
                cancelled_at = time.monotonic()
                tg.cancel_scope.cancel()
            assert time.monotonic() - cancelled_at < 1
            # The server saw the call reset, not just abandoned.
            await wait_until(service.cancelled.is_set, 5)


async def test_call_timeout_is_deadline_exceeded(hanging: tuple[HangingService, str]) -> None:
    _, url = hanging
    async with Client(url, call_timeout=dt.timedelta(milliseconds=200)) as client:
        with anyio.fail_after(5), pytest.raises(DeadlineExceeded):
            await client.get(MG, 1)


@pytest.mark.parametrize("how", ["timeout", "aclose", "break"])
async def test_leaving_a_stream_closes_the_grpc_stream(
    client: Client, server: ThreadedServer, how: str
) -> None:
    if how == "timeout":
        with anyio.move_on_after(0.3) as scope:
            async for _ in client.stream(MG):
                pass
        assert scope.cancelled_caught
    else:

        async def make_once_subscribed() -> None:
            await wait_until(lambda: server.service.open_stream_count(MG) == 1)
            await make(client)

        events = client.stream(MG)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(make_once_subscribed)
                async for _ in events:
                    break
        if how == "aclose":
            await events.aclose()
        else:
            # The running library's async generator finalizer closes it (trio
            # warns first that aclosing() would have been better).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                del events
    await wait_until(lambda: not client.streams, 5)
    await wait_until(lambda: server.service.open_stream_count(MG) == 0, 5)
    assert server.service.opened_stream_count(MG) == 1


# -- streams ---------------------------------------------------------------------------


async def test_stream_resumes_by_itself_after_a_server_restart(
    client: Client, server: ThreadedServer
) -> None:
    received: list[DispatchEvent] = []

    async def collect() -> None:
        async with aclosing(client.stream(MG)) as events:
            async for event in events:
                received.append(event)
                if len(received) == 3:
                    return

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await wait_until(lambda: server.service.open_stream_count(MG) == 1)
            first = await make(client)
            await wait_until(lambda: len(received) == 1)

            await server.stop()
            await wait_until(lambda: client.streams[MG].status.state is StreamState.RECONNECTING)
            await server.start()
            await wait_until(lambda: server.service.open_stream_count(MG) == 1)
            second = await make(client)
            await client.delete(MG, dispatch_id(first))
    assert [(e.event, dispatch_id(e.dispatch)) for e in received] == [
        (Event.CREATED, dispatch_id(first)),
        (Event.CREATED, dispatch_id(second)),
        (Event.DELETED, dispatch_id(first)),
    ]
    assert server.service.opened_stream_count(MG) >= 2
    assert not client.streams


async def test_watch_snapshot_live_events_and_convergence_after_a_restart(
    client: Client, server: ThreadedServer
) -> None:
    existing = [await make(client, f"OLD{i}") for i in range(3)]
    watcher = Watcher()
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.follow, client.watch(MG))
            await wait_until(lambda: len(watcher.events) == 3)
            assert {dispatch_id(e.dispatch) for e in watcher.events} == {
                dispatch_id(d) for d in existing
            }
            live = await make(client, "LIVE")
            await client.update(MG, dispatch_id(existing[0]), {"active": False})
            expected = await current_set(client)
            await wait_until(lambda: watcher.view == expected)
            assert [e.event for e in watcher.events[3:]] == [Event.CREATED, Event.UPDATED]
            assert watcher.events[3].dispatch == live

            await server.stop()
            await wait_until(lambda: client.streams[MG].status.state is StreamState.RECONNECTING)
            # Changed while the server is down: only a re-list can tell the watcher.
            await server.call(
                server.service.delete_microgrid_dispatch,
                DeleteMicrogridDispatchRequest(
                    microgrid_id=MG, dispatch_id=dispatch_id(existing[1])
                ),
            )
            await server.start()
            expected = await current_set(client)
            await wait_until(lambda: watcher.view == expected)
            tg.cancel_scope.cancel()
    assert dispatch_id(existing[1]) not in watcher.view
    assert watcher.events[-1].event == Event.DELETED


async def test_running_reports_start_and_stop(client: Client) -> None:
    kinds: list[Transition] = []
    with anyio.fail_after(10):
        dispatch = await client.create(MG, "SHORT", "NOW", dt.timedelta(seconds=1), [1])
        async with aclosing(client.running(MG, type="SHORT")) as transitions:
            async for transition in transitions:
                assert dispatch_id(transition.dispatch) == dispatch_id(dispatch)
                kinds.append(transition.kind)
                if transition.kind is Transition.STOPPED:
                    break
    assert kinds == [Transition.STARTED, Transition.STOPPED]
    assert not client.streams


async def test_disconnect_ends_the_consumers_cleanly(
    client: Client, server: ThreadedServer
) -> None:
    ended: list[str] = []

    async def consume(name: str, events: AsyncGenerator[Any, None]) -> None:
        async with aclosing(events):
            async for _ in events:
                pass
        ended.append(name)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, "stream", client.stream(MG))
            tg.start_soon(consume, "watch", client.watch(MG))
            await wait_until(lambda: MG in client.streams and client.streams[MG].connected)
            await client.disconnect()
    assert sorted(ended) == ["stream", "watch"]
    assert loop_threads() == []
    await wait_until(lambda: server.service.open_stream_count(MG) == 0, 5)


async def test_the_dispatch_server_fixture_serves_both_backends(dispatch_server: Any) -> None:
    async with Client(dispatch_server.url) as client:
        created = await make(client)
        await dispatch_server.stop()
        assert not dispatch_server.is_running
        await dispatch_server.start()
        assert await client.get(MG, dispatch_id(created)) == created
