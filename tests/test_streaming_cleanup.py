"""Leaving a stream in every way there is: break, aclose, cancellation, timeouts, disconnect.

Each test runs in asyncio debug mode with warnings as errors and checks that
no reader task, server-side stream or lost exception is left behind.
"""

from __future__ import annotations

import asyncio
import types
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from test_streaming_helpers import Writer, collect, foreign_tasks, stream_tasks, wait_until

from dispatch_client.client import Client
from dispatch_client.streaming import DispatchEvent
from dispatch_client.testing import RunningServer

pytest_plugins = ["test_streaming_helpers"]
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("error"),
    pytest.mark.usefixtures("no_stream_leftovers"),
]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    # Debug mode reports never-awaited coroutines, tasks destroyed while
    # pending and generators finalized in the wrong place.
    return ("asyncio", {"debug": True})


LEAVE_MID_WAIT = ["break", "break_without_aclosing", "aclose", "move_on_after", "asyncio_timeout"]


async def leave(client: Client, how: str, first: anyio.Event) -> None:
    """Consume microgrid 1 and leave the way `how` says, after the first event."""
    if how == "break":
        async with aclosing(client.stream(1)) as events:
            async for _ in events:
                first.set()
                break
        return
    if how == "break_without_aclosing":
        # The generator is closed by the event loop's async-generator finalizer.
        async for _ in client.stream(1):
            first.set()
            break
        return
    events = client.stream(1)
    await anext(events)
    first.set()
    if how == "aclose":
        await events.aclose()
    elif how == "move_on_after":
        with anyio.move_on_after(0.05):
            await anext(events)
    else:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await anext(events)
    # Cancelled while waiting: the generator has finished, not merely paused.
    assert isinstance(events, types.AsyncGeneratorType) and events.ag_frame is None


@pytest.mark.parametrize("how", LEAVE_MID_WAIT)
async def test_a_consumer_leaving_does_not_disturb_the_others(
    client: Client, server: RunningServer, writer: Writer, how: str
) -> None:
    bystander: list[DispatchEvent] = []
    first = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, client, 1, 2, bystander)
            tg.start_soon(leave, client, how, first)
            await wait_until(lambda: 1 in client.streams and client.streams[1].consumer_count == 2)
            await server.service.wait_for_streams(1, 1)
            await writer.create()
            await first.wait()
            await wait_until(lambda: client.streams[1].consumer_count == 1)
            await writer.create()
    assert bystander == writer.log
    assert server.service.opened_stream_count(1) == 1


@pytest.mark.parametrize("how", [*LEAVE_MID_WAIT, "cancel_scope"])
async def test_the_last_consumer_leaving_closes_the_stream_and_its_task(
    client: Client, server: RunningServer, writer: Writer, how: str
) -> None:
    first = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            if how == "cancel_scope":
                tg.start_soon(collect, client, 1, 1000, [])
            else:
                tg.start_soon(leave, client, how, first)
            await server.service.wait_for_streams(1, 1)
            await writer.create()
            if how == "cancel_scope":
                await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        await wait_until(lambda: not client.streams and not stream_tasks())
        await server.service.wait_for_streams(1, 0)
        # Nothing else either: no finalizer, reader or server handler still running.
        await wait_until(lambda: not foreign_tasks())


async def test_disconnect_ends_every_consumer_cleanly(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    ended: list[int] = []

    async def consume(microgrid_id: int) -> None:
        async for _ in client.stream(microgrid_id):
            pass
        ended.append(microgrid_id)

    async def watch(microgrid_id: int) -> None:
        async for _ in client.watch(microgrid_id):
            pass
        ended.append(microgrid_id)

    await writer.create()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for microgrid_id in (1, 1, 2):
                tg.start_soon(consume, microgrid_id)
            tg.start_soon(watch, 1)
            await server.service.wait_for_streams(None, 2)
            await wait_until(lambda: client.streams[1].connected)
            await client.disconnect()
    assert sorted(ended) == [1, 1, 1, 2]
    assert not client.streams and not stream_tasks()
    await server.service.wait_for_streams(None, 0)
    await wait_until(lambda: not foreign_tasks())
