"""`OwnedTask` on asyncio's own primitives: the owner's cancel sticks, waiting is shielded and bounded.

The stream hub's reader tasks used to live in an anyio cancel scope, whose
cancellation is level-triggered: delivered again at every await until the
scope is left. `OwnedTask` keeps that on asyncio alone, since a single
`task.cancel()` can be lost: grpclib turns a cancellation that arrives while
its connection dies into its own error, and the hub withdraws the cancel
requests such an error leaves counted. The stream cases run against the real
reference server; a subprocess checks that a stream opened in a fresh asyncio
program loads none of anyio (its asyncio backend cost ~20 ms of CPU inside the
first `stream()` call).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import grpclib.events
import pytest
from fresh_python import run_python
from test_streaming_helpers import FAST_BACKOFF, stream_tasks, wait_until

from dispatch_client import _tasks
from dispatch_client._tasks import OwnedTask, wait_event
from dispatch_client.client import Client
from dispatch_client.testing import running_server

pytestmark = pytest.mark.anyio

MG = 7


@pytest.fixture(params=["asyncio only", "anyio loaded"])
def anyio_loaded(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Both ways `wait_closed()` shields: its own (no anyio in the process) and anyio's."""
    loaded = request.param == "anyio loaded"
    monkeypatch.setattr(_tasks, "_anyio_loaded", lambda: loaded)
    yield loaded


def started(
    body: Callable[[], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]] | None = None,
    *,
    close_timeout: float = 5.0,
) -> OwnedTask:
    task = OwnedTask("test-owned", close_timeout=close_timeout)
    task.start(body, cleanup=cleanup)
    return task


# -- the owner's cancel sticks -------------------------------------------------


async def test_a_cancel_turned_into_an_error_and_withdrawn_is_delivered_again() -> None:
    """The body withdraws two deliveries, as grpclib plus the hub's leak handling would.

    Delivered once (a plain `task.cancel()`), the cancel is gone after the
    first and the task runs on; the wait below then times out.
    """
    gave_in = asyncio.Event()
    swallowed = 0
    cleaned: list[int] = []

    async def body() -> None:
        nonlocal swallowed
        task = asyncio.current_task()
        assert task is not None
        gave_in.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise
                # Turned into an error and withdrawn: the request is gone.
                task.uncancel()

    async def cleanup() -> None:
        # No cancel request is left standing for the clean-up: it can wait.
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0.01)
        cleaned.append(1)

    owned = started(body, cleanup)
    await gave_in.wait()
    owned.cancel()
    with anyio.fail_after(2):
        await owned.wait_closed()
    assert owned.done and owned.cancel_called and swallowed == 3 and cleaned == [1]
    assert owned._task is not None and not owned._task.cancelled()


async def test_cancelled_before_it_ran_the_body_is_cancelled_at_its_first_await() -> None:
    steps: list[str] = []

    async def body() -> None:
        steps.append("body")
        await asyncio.sleep(3600)
        steps.append("not reached")

    async def cleanup() -> None:
        steps.append("cleanup")

    owned = started(body, cleanup)
    owned.cancel()
    with anyio.fail_after(2):
        await owned.wait_closed()
    assert steps == ["body", "cleanup"] and owned.done


async def test_a_cancel_from_inside_the_body_ends_it_at_its_next_await() -> None:
    steps: list[str] = []
    owned: OwnedTask

    async def body() -> None:
        owned.cancel()  # as a shared stream does when its last consumer overflows
        steps.append("went on")
        await asyncio.sleep(3600)
        steps.append("not reached")

    owned = started(body)
    with anyio.fail_after(2):
        await owned.wait_closed()
    assert steps == ["went on"] and owned.done


async def test_a_cancellation_by_anyone_else_is_not_the_owners() -> None:
    """Loop shutdown, say: the task ends cancelled, `cancel_called` stays False, the clean-up runs."""
    running = asyncio.Event()
    cleaned: list[bool] = []

    async def body() -> None:
        running.set()
        await asyncio.sleep(3600)

    async def cleanup() -> None:
        cleaned.append(owned.cancel_called)

    owned = started(body, cleanup)
    await running.wait()
    assert owned._task is not None
    owned._task.cancel()
    with anyio.fail_after(2):
        await owned.wait_closed()
    assert cleaned == [False] and owned._task.cancelled()


async def test_the_redelivery_stops_with_the_body() -> None:
    """No callback keeps coming once the body has ended: a cleanup's awaits are not cancelled."""
    running = asyncio.Event()
    slept: list[float] = []

    async def body() -> None:
        running.set()
        await asyncio.sleep(3600)

    async def cleanup() -> None:
        started_at = time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        slept.append(time.monotonic() - started_at)

    owned = started(body, cleanup)
    await running.wait()
    owned.cancel()
    with anyio.fail_after(2):
        await owned.wait_closed()
    assert owned._redelivery is None and len(slept) == 1 and slept[0] >= 0.02


# -- wait_closed: shielded, bounded ---------------------------------------------


async def test_waiting_holds_off_the_owner_cancel_of_the_waiting_owned_task(
    anyio_loaded: bool,
) -> None:
    """A reader (like `running()`'s) cancelled while it waits for a stream task sees it finished first."""
    inner_running, outer_waiting = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def inner_body() -> None:
        inner_running.set()
        await asyncio.sleep(3600)

    async def inner_cleanup() -> None:
        await asyncio.sleep(0.1)
        seen.append("inner done")

    inner = started(inner_body, inner_cleanup)

    async def outer_body() -> None:
        await inner_running.wait()
        inner.cancel()
        outer_waiting.set()
        try:
            await inner.wait_closed()
            seen.append(f"wait over, inner done: {inner.done}")
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("outer cancelled")
            raise

    outer = started(outer_body)
    await outer_waiting.wait()
    outer.cancel()
    with anyio.fail_after(2):
        await outer.wait_closed()
    assert seen == ["inner done", "wait over, inner done: True", "outer cancelled"]
    assert outer.done


async def test_waiting_is_bounded(anyio_loaded: bool) -> None:
    running = asyncio.Event()
    release = asyncio.Event()

    async def body() -> None:
        running.set()
        await asyncio.sleep(3600)

    async def hung_cleanup() -> None:
        await release.wait()

    owned = started(body, hung_cleanup, close_timeout=0.1)
    await running.wait()
    owned.cancel()
    begun = time.monotonic()
    with anyio.fail_after(2):
        await owned.wait_closed()
    assert 0.09 <= time.monotonic() - begun < 1.0 and not owned.done
    release.set()
    with anyio.fail_after(2):
        await owned.wait_closed()
    assert owned.done


async def test_a_plain_cancel_of_the_waiting_task_ends_the_wait_at_once(
    anyio_loaded: bool,
) -> None:
    """As with anyio's shielded scope: only cancel scopes are held off, not a `task.cancel()`."""
    running = asyncio.Event()
    release = asyncio.Event()

    async def body() -> None:
        running.set()
        await asyncio.sleep(3600)

    async def slow_cleanup() -> None:
        await release.wait()

    owned = started(body, slow_cleanup)
    await running.wait()
    owned.cancel()
    waiter = asyncio.create_task(owned.wait_closed())
    await asyncio.sleep(0.02)
    waiter.cancel()
    with anyio.fail_after(2), pytest.raises(asyncio.CancelledError):
        await waiter
    assert not owned.done
    release.set()
    await owned.wait_closed()


async def test_an_anyio_scope_around_the_waiter_takes_effect_once_the_task_is_done() -> None:
    running = asyncio.Event()
    seen: list[str] = []

    async def body() -> None:
        running.set()
        await asyncio.sleep(3600)

    async def cleanup() -> None:
        await asyncio.sleep(0.1)
        seen.append("cleaned")

    owned = started(body, cleanup)
    await running.wait()
    owned.cancel()
    with anyio.fail_after(2), anyio.move_on_after(0.01) as scope:
        await owned.wait_closed()
        seen.append("wait over")
        await asyncio.sleep(3600)
    assert scope.cancelled_caught and seen == ["cleaned", "wait over"]


async def test_wait_event_turns_only_its_own_expiry_into_false() -> None:
    event = asyncio.Event()
    assert not await wait_event(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 1.0)
    # An outer timeout expiring during the wait is the outer one's, not a False.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await wait_event(asyncio.Event(), 10.0)
    # A plain cancellation goes on as one.
    waiter = asyncio.create_task(wait_event(asyncio.Event(), 10.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


# -- against the reference server ----------------------------------------------


async def test_closing_a_stream_as_its_connection_dies_ends_it_instead_of_reconnecting() -> None:
    """grpclib's stream turns the hub's cancel into `StreamTerminatedError` when both land together.

    The hub takes that error for a broken stream, withdraws the cancel request
    grpclib left counted, and would wait to reconnect. Delivered once, the
    close is lost: the reader re-opens a stream nobody reads, and outlives the
    close timeout. Delivered again at the next await, it ends there.
    """
    async with (
        running_server() as server,
        Client(server.url, stream_backoff=FAST_BACKOFF) as client,
    ):
        # A listener of the user's sends every call through grpclib's own stream.
        async def on_send(event: grpclib.events.SendRequest) -> None:
            pass

        grpclib.events.listen(client.channel, grpclib.events.SendRequest, on_send)
        events = client.stream(MG)
        first = asyncio.ensure_future(anext(events))
        await wait_until(lambda: MG in client.streams and client.streams[MG].synced)
        stream = client.streams[MG]
        await server.service.wait_for_streams(MG, 1)
        protocol: Any = client.channel._protocol
        loop = asyncio.get_running_loop()
        # The connection's end reaches grpclib one cycle later (call_soon): the
        # close right behind it lands in the same cycle.
        protocol.connection._transport.abort()
        loop.call_soon(stream.close)
        with anyio.move_on_after(2):
            await stream.wait_closed()
        assert stream.closed, "the reader task outlived its close"
        assert stream.open_count == 1, "the closed stream was opened again"
        with anyio.fail_after(2), pytest.raises(StopAsyncIteration):
            await first
        await events.aclose()
    assert stream_tasks() == []


async def test_a_consumer_cancelled_by_an_anyio_scope_leaves_no_reader_behind() -> None:
    """The consumer's leaving waits (shielded) for the reader, and the server sees the stream end."""
    async with running_server() as server, Client(server.url) as client:
        with anyio.move_on_after(0.5) as scope:
            async with aclosing(client.stream(MG)) as events:
                async for _ in events:
                    pass
        assert scope.cancelled_caught
        assert client.streams == {} and stream_tasks() == []
        with anyio.fail_after(5):
            await server.service.wait_for_streams(MG, 0)


async def test_opening_a_stream_in_an_asyncio_program_loads_no_anyio() -> None:
    """anyio's asyncio backend alone cost ~20 ms of CPU inside the first `stream()` call."""
    async with running_server() as server:
        program = f"""
            import asyncio, json, sys
            from dispatch_client import Client

            async def main():
                async with Client({server.url!r}) as client:
                    events = client.stream({MG})
                    first = asyncio.ensure_future(anext(events))
                    while not (client.streams.get({MG}) and client.streams[{MG}].synced):
                        await asyncio.sleep(0.005)
                    first.cancel()
                    await asyncio.gather(first, return_exceptions=True)
                    await events.aclose()

            asyncio.run(asyncio.wait_for(main(), 30))
            print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "anyio")))
        """
        # The server runs in this process's loop: the child runs in a thread.
        output = await anyio.to_thread.run_sync(run_python, program)
    assert json.loads(output.splitlines()[-1]) == []
