"""`Client.stream()` against the reference server: sharing, fan-out, overflow, reconnect, errors.

Runs with warnings as errors; every test also checks that no reader task
outlives it and that the loop reported no lost exception. The cleanup tests
(leaving, cancelling, disconnecting) live in test_streaming_cleanup.py and also
run in asyncio debug mode, which is too slow for the 10 x 1,000 events here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import anyio
import grpclib.server
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from test_streaming_helpers import (
    STREAM_KEY,
    Writer,
    closing_hub,
    collect,
    hub_for,
    wait_until,
)

from dispatch_client import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StreamOverflow,
    Unauthenticated,
)
from dispatch_client.client import Client
from dispatch_client.errors import DispatchApiError
from dispatch_client.streaming import DispatchEvent, StreamState, StreamStatus
from dispatch_client.testing import RunningServer, running_server
from dispatch_client.wire import (
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    MicrogridDispatchServiceBase,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
)

pytest_plugins = ["test_streaming_helpers"]
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("error"),
    pytest.mark.usefixtures("no_stream_leftovers"),
]

KEY = STREAM_KEY


async def test_ten_consumers_share_one_grpc_stream_and_see_every_event_in_order(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    received: list[list[DispatchEvent]] = [[] for _ in range(10)]
    elsewhere: list[DispatchEvent] = []
    other_microgrid = Writer(server.service, microgrid_id=2)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for events in received:
                tg.start_soon(collect, client, 1, 1000, events)
            tg.start_soon(collect, client, 2, 3, elsewhere)
            await wait_until(lambda: 1 in client.streams and client.streams[1].consumer_count == 10)
            await server.service.wait_for_streams(1, 1)
            await server.service.wait_for_streams(2, 1)
            await writer.churn(1000)
            for _ in range(3):
                await other_microgrid.create()

    kinds = {event.event for event in writer.log}
    assert len(writer.log) == 1000 and len(kinds) == 3
    for events in received:
        assert events == writer.log
    assert elsewhere == other_microgrid.log
    assert server.service.opened_stream_count(1) == 1
    assert server.service.opened_stream_count(2) == 1
    await wait_until(lambda: not client.streams)
    await server.service.wait_for_streams(None, 0)


async def test_a_stalled_consumer_overflows_alone_without_slowing_the_others(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    fast: list[list[DispatchEvent]] = [[] for _ in range(3)]
    stalled: list[DispatchEvent] = []

    async def keep_up(into: list[DispatchEvent]) -> None:
        async for event in client.stream(1):
            into.append(event)

    resume = anyio.Event()
    overflow: list[StreamOverflow] = []

    async def stall() -> None:
        async with aclosing(client.stream(1, buffer_size=8)) as events:
            try:
                async for event in events:
                    stalled.append(event)
                    await resume.wait()
            except StreamOverflow as exc:
                overflow.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for events in fast:
                tg.start_soon(keep_up, events)
            tg.start_soon(stall)
            await wait_until(lambda: 1 in client.streams and client.streams[1].consumer_count == 4)
            # Caught up: every change from now on comes live, one per buffered item
            # (changes the first open's catch-up tells come as one batch, read as one item).
            await wait_until(lambda: client.streams[1].synced)
            started = time.monotonic()
            await writer.churn(300)
            # The fast consumers get everything while the stalled one has read one event.
            await wait_until(lambda: all(len(events) == 300 for events in fast))
            elapsed = time.monotonic() - started
            assert len(stalled) == 1 and not resume.is_set()
            assert client.streams[1].consumer_count == 3
            resume.set()
            await wait_until(lambda: bool(overflow))
            tg.cancel_scope.cancel()

    assert all(events == writer.log for events in fast)
    # What was buffered before the overflow is still delivered, then the error.
    assert stalled == writer.log[:9]
    assert len(overflow) == 1 and "fell behind" in str(overflow[0])
    assert server.service.opened_stream_count(1) == 1
    assert elapsed < 10


async def test_drop_oldest_keeps_the_newest_events(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    stalled: list[DispatchEvent] = []
    resume = anyio.Event()

    async def stall() -> None:
        async with aclosing(client.stream(1, buffer_size=8, overflow="drop_oldest")) as events:
            async for event in events:
                stalled.append(event)
                await resume.wait()
                if len(stalled) == 10:
                    return

    everything: list[DispatchEvent] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stall)
            tg.start_soon(collect, client, 1, 51, everything)
            await wait_until(lambda: 1 in client.streams and client.streams[1].consumer_count == 2)
            # Caught up: every change from now on comes live, one per buffered item
            # (a change the first open's catch-up told would come in one batch with others).
            await wait_until(lambda: client.streams[1].synced)
            await writer.churn(50)
            # Once another consumer has all 50, so has the stalled one's buffer.
            await wait_until(lambda: len(everything) == 50)
            resume.set()
            await wait_until(lambda: len(stalled) == 9)
            await writer.create()
    assert stalled == [writer.log[0], *writer.log[42:50], writer.log[50]]


async def test_stream_resumes_by_itself_after_a_server_restart(
    client: Client, server: RunningServer, writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatch_client")
    received: list[DispatchEvent] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, client, 1, 3, received)
            await server.service.wait_for_streams(1, 1)
            await writer.create()
            await wait_until(lambda: len(received) == 1)

            await server.stop()
            await wait_until(lambda: client.streams[1].status.state is StreamState.RECONNECTING)
            await server.start()
            await server.service.wait_for_streams(1, 1)
            await writer.create()
            await writer.create()
    assert received == writer.log
    assert server.service.opened_stream_count(1) >= 2
    assert "reconnecting" in caplog.text
    assert KEY not in caplog.text


async def test_status_hook_sees_every_transition_and_may_fail(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    statuses: list[StreamStatus] = []

    def hook(status: StreamStatus) -> None:
        statuses.append(status)
        raise RuntimeError("a broken hook must not break the stream")

    received: list[DispatchEvent] = []
    async with closing_hub(hub_for(client, on_status=hook)) as hub:

        async def consume() -> None:
            async with aclosing(hub.subscribe(1)) as events:
                async for event in events:
                    received.append(event)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await wait_until(lambda: 1 in hub.streams and hub.streams[1].connected)
                await server.stop()
                await wait_until(lambda: hub.streams[1].status.state is StreamState.RECONNECTING)
                await server.start()
                await wait_until(lambda: hub.streams[1].connected)
                await server.service.wait_for_streams(1, 1)
                await writer.create()
                await wait_until(lambda: len(received) == 1)
                tg.cancel_scope.cancel()
    states = [status.state for status in statuses]
    assert states[:2] == [StreamState.CONNECTING, StreamState.CONNECTED]
    assert StreamState.RECONNECTING in states
    assert states[-2:] == [StreamState.CONNECTED, StreamState.CLOSED]
    reconnecting = next(s for s in statuses if s.state is StreamState.RECONNECTING)
    assert reconnecting.failures == 1 and reconnecting.retry_in is not None
    assert isinstance(reconnecting.error, DispatchApiError)
    assert received == writer.log


async def test_a_reader_failure_reaches_every_consumer(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    async def explode_after_one(
        microgrid_id: int,
    ) -> AsyncIterator[StreamMicrogridDispatchesResponse]:
        async with aclosing(client._open_stream(microgrid_id)) as responses:
            async for response in responses:
                yield response
                raise LookupError("bug in the stream source")

    hub = hub_for(client, open_stream=explode_after_one)
    failures: list[BaseException] = []

    async def consume() -> None:
        with pytest.raises(LookupError) as info:
            async with aclosing(hub.subscribe(1)) as events:
                async for _ in events:
                    pass
        failures.append(info.value)

    async with closing_hub(hub):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                tg.start_soon(consume)
                await server.service.wait_for_streams(1, 1)
                await writer.create()
    assert len(failures) == 2 and failures[0] is not failures[1]
    assert all(isinstance(f.__cause__, LookupError) for f in failures)
    assert not hub.streams


async def test_auth_failure_ends_the_consumers_without_retrying(tmp_path: Path) -> None:
    statuses: list[StreamStatus] = []
    async with (
        running_server(keys=["the-right-key"]) as server,
        Client(server.url, auth_key="a-wrong-key") as client,
    ):
        with anyio.fail_after(5):
            with pytest.raises(Unauthenticated) as info:
                async for _ in client.stream(1):
                    pass
            assert "a-wrong-key" not in str(info.value)
            async with closing_hub(hub_for(client, on_status=statuses.append)) as hub:
                with pytest.raises(Unauthenticated):
                    async for _ in hub.subscribe(1):
                        pass
        assert [s.state for s in statuses] == [StreamState.CONNECTING, StreamState.FAILED]
        assert server.service.opened_stream_count() == 0


class RejectingService(MicrogridDispatchServiceBase):
    """Answers every stream with one status, like a service that does not know the microgrid."""

    def __init__(self, status: Status) -> None:
        self.status = status
        self.calls = 0

    async def list_microgrid_dispatches(
        self, message: ListMicrogridDispatchesRequest
    ) -> ListMicrogridDispatchesResponse:
        return ListMicrogridDispatchesResponse()

    async def stream_microgrid_dispatches(
        self, message: StreamMicrogridDispatchesRequest
    ) -> AsyncIterator[StreamMicrogridDispatchesResponse]:
        self.calls += 1
        raise GRPCError(self.status, f"microgrid {message.microgrid_id} is not known here")
        yield StreamMicrogridDispatchesResponse()  # pragma: no cover


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (Status.NOT_FOUND, NotFound),
        (Status.PERMISSION_DENIED, PermissionDenied),
        (Status.INVALID_ARGUMENT, InvalidArgument),
        (Status.UNAUTHENTICATED, Unauthenticated),
    ],
)
async def test_non_retryable_statuses_end_every_consumer_with_the_typed_error(
    status: Status, error: type[DispatchApiError]
) -> None:
    service = RejectingService(status)
    server = grpclib.server.Server([service])
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    outcomes: list[BaseException] = []

    async def consume(client: Client) -> None:
        with pytest.raises(error) as info:
            async for _ in client.stream(7):
                pass
        outcomes.append(info.value)

    try:
        async with Client(f"grpc://127.0.0.1:{port}?ssl=false", auth_key=KEY) as client:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume, client)
                    tg.start_soon(consume, client)
            assert not client.streams
    finally:
        server.close()
        await server.wait_closed()
    assert service.calls == 1
    assert len(outcomes) == 2
    assert all("microgrid 7 is not known here" in str(o) for o in outcomes)
