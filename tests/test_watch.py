"""`Client.watch()` against the reference server: snapshot, live events, convergence after restarts.

Every watcher applies its events to a view and checks that each event is
consistent with it (CREATED only for unknown ids, UPDATED/DELETED only for
known ones); the tests then require the view to equal the server's set.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest
from test_streaming_helpers import (
    Watcher,
    Writer,
    apply,
    closing_hub,
    current_set,
    dispatch_id,
    hub_for,
    wait_until,
)

from dispatch_client import Dispatch, Event, StreamOverflow, Unauthenticated
from dispatch_client.client import Client
from dispatch_client.server.service import DispatchService
from dispatch_client.streaming import DispatchEvent, StreamState
from dispatch_client.testing import RunningServer, running_server

pytest_plugins = ["test_streaming_helpers"]
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("error"),
    pytest.mark.usefixtures("no_stream_leftovers"),
]


async def drain(events: AsyncGenerator[DispatchEvent, None]) -> None:
    async with aclosing(events):
        async for _ in events:
            pass


async def converge(client: Client, *watchers: Watcher, limit: float = 10.0) -> dict[int, Dispatch]:
    expected = await current_set(client)
    await wait_until(lambda: all(w.view == expected for w in watchers), limit)
    return expected


async def test_snapshot_as_created_events_then_live_changes(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    for _ in range(5):
        await writer.create()
    listed = [d async for d in client.dispatches(1)]
    watcher = Watcher()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.follow, client.watch(1))
            await wait_until(lambda: len(watcher.events) == 5)
            assert watcher.events == [DispatchEvent(Event.CREATED, d) for d in listed]
            await writer.churn(40)
            await converge(client, watcher)
            tg.cancel_scope.cancel()
    # A quiet start: the live part is exactly what happened, nothing repeated or synthetic.
    assert watcher.events[5:] == writer.log[5:]
    assert server.service.opened_stream_count(1) == 1


@pytest.mark.parametrize("acknowledged", [False, True], ids=["grace", "initial-metadata"])
async def test_changes_racing_the_snapshot_are_not_lost(
    client: Client, server: RunningServer, writer: Writer, acknowledged: bool
) -> None:
    """Watchers start while a writer keeps changing things; each ends with the server's set."""
    watchers = [Watcher() for _ in range(4)]
    async with closing_hub(hub_for(client, acked=acknowledged)) as hub:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await writer.churn(20)
                churning = anyio.Event()

                async def churn() -> None:
                    for _ in range(30):
                        await writer.churn(10)
                        await anyio.sleep(0.01)
                    churning.set()

                tg.start_soon(churn)
                for watcher in watchers:
                    tg.start_soon(watcher.follow, hub.watch(1))
                    await anyio.sleep(0.07)
                await churning.wait()
                await converge(client, *watchers)
                tg.cancel_scope.cancel()
    # Every watcher started with a snapshot and stayed on the one shared stream.
    assert all(w.events and w.events[0].event == Event.CREATED for w in watchers)
    assert server.service.opened_stream_count(1) == 1


async def test_a_watcher_joining_an_open_stream_needs_no_new_one(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    for _ in range(3):
        await writer.create()
    watcher = Watcher()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, client.stream(1))
            await wait_until(lambda: 1 in client.streams and client.streams[1].connected)
            tg.start_soon(watcher.follow, client.watch(1))
            await wait_until(lambda: len(watcher.events) == 3)
            await writer.churn(10)
            await converge(client, watcher)
            tg.cancel_scope.cancel()
    assert server.service.opened_stream_count(1) == 1


async def test_watch_and_stream_catch_up_after_a_restart_with_changes_made_while_down(
    tmp_path: Path,
) -> None:
    """Kill the server, change the data behind its back, start a new one on the same file and port."""
    db = str(tmp_path / "dispatches.sqlite")
    watchers = [Watcher(), Watcher()]
    streamer = Watcher()

    async with running_server(db=db) as first:
        port = first.port
        writer = Writer(first.service)
        client = Client(first.url, auth_key="watch-test-key")
        for _ in range(10):
            await writer.create()
        # stream() tells changes, not the state: its consumer starts from a list.
        streamer.view = dict(writer.current)
        async with client, anyio.create_task_group() as tg:
            with anyio.fail_after(30):
                for watcher in watchers:
                    tg.start_soon(watcher.follow, client.watch(1))
                tg.start_soon(streamer.follow, client.stream(1))
                await converge(client, *watchers)
                await writer.churn(10)
                before_restart = len(writer.log)
                await converge(client, *watchers, streamer)
                before = dict(writer.current)

                await first.stop()
                await wait_until(lambda: client.streams[1].status.state is StreamState.RECONNECTING)
                # Another process changes the data while no server is up.
                async with DispatchService(db=db) as offline:
                    writer.service = offline
                    await writer.churn(25)
                changed_offline = {
                    key
                    for key in before.keys() | writer.current.keys()
                    if before.get(key) != writer.current.get(key)
                }
                async with running_server(db=db, port=port) as second:
                    writer.service = second.service
                    await second.service.wait_for_streams(1, 1)
                    await wait_until(lambda: client.streams[1].synced)
                    # Each dispatch that changed is told once, with its latest version.
                    caught_up = 10 + len(changed_offline)
                    await wait_until(lambda: len(streamer.events) == caught_up)
                    live_from = len(writer.log)
                    await writer.churn(15)
                    final = await converge(client, *watchers, streamer)
                    tg.cancel_scope.cancel()

    assert final == writer.current
    assert len(writer.log) - before_restart == 40
    assert streamer.events[:10] == writer.log[before_restart - 10 : before_restart]
    # What happened while it was down: one event per dispatch that changed, before the live ones.
    assert sorted(dispatch_id(e.dispatch) for e in streamer.events[10:caught_up]) == sorted(
        changed_offline
    )
    assert streamer.events[caught_up:] == writer.log[live_from:]


async def test_a_stream_that_breaks_during_its_catch_up_lists_again_after_re_opening(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    """The first open's list never comes back: the server stops while serving it."""
    for _ in range(5):
        await writer.create()
    lists = 0

    async def list_across_a_restart(microgrid_id: int) -> AsyncIterator[Dispatch]:
        nonlocal lists
        lists += 1
        if lists == 2:  # the catch-up after the first open (the first list precedes it)
            await server.stop()
            await anyio.sleep_forever()  # the break ends this attempt, list included
        async with aclosing(client.dispatches(microgrid_id)) as dispatches:
            async for dispatch in dispatches:
                yield dispatch

    watcher = Watcher()
    streamer = Watcher()
    streamer.view = dict(writer.current)
    async with closing_hub(hub_for(client, list_dispatches=list_across_a_restart)) as hub:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watcher.follow, hub.watch(1))
                tg.start_soon(streamer.follow, hub.subscribe(1))
                await wait_until(lambda: lists == 2)
                await wait_until(lambda: hub.streams[1].status.state is StreamState.RECONNECTING)
                await writer.churn(10)
                await server.start()
                await wait_until(lambda: hub.streams[1].synced)
                await writer.churn(5)
                await converge(client, watcher, streamer)
                tg.cancel_scope.cancel()
    assert lists == 3
    # The watcher's first snapshot came from the list that succeeded.
    assert all(event.event == Event.CREATED for event in watcher.events[: len(watcher.view)])


async def test_resync_overflow_catches_up_by_re_listing(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    for _ in range(5):
        await writer.create()
    resume = anyio.Event()
    watcher = Watcher()

    async def stall_after_snapshot() -> None:
        async with aclosing(client.watch(1, buffer_size=4, overflow="resync")) as events:
            async for event in events:
                apply(watcher.view, event)
                watcher.events.append(event)
                if len(watcher.events) == 5:
                    await resume.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stall_after_snapshot)
            await wait_until(lambda: len(watcher.events) == 5)
            await writer.churn(60)
            resume.set()
            await converge(client, watcher)
            tg.cancel_scope.cancel()
    assert server.service.opened_stream_count(1) == 1
    # It caught up with a diff, not by replaying all 60 changes.
    assert len(watcher.events) - 5 < 60


async def test_a_stalled_watcher_gets_stream_overflow_by_default(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    seen: list[DispatchEvent] = []
    resume = anyio.Event()

    async def stall() -> None:
        with pytest.raises(StreamOverflow):
            async with aclosing(client.watch(1, buffer_size=4)) as events:
                async for event in events:
                    seen.append(event)
                    await resume.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stall)
            await wait_until(lambda: 1 in client.streams and client.streams[1].connected)
            await writer.churn(20)
            await wait_until(lambda: 1 not in client.streams)
            resume.set()
    assert [dispatch_id(e.dispatch) for e in seen] == [
        dispatch_id(e.dispatch) for e in writer.log[:5]
    ]


async def test_watch_ends_with_the_typed_error_on_auth_failure() -> None:
    async with (
        running_server(keys=["the-right-key"]) as server,
        Client(server.url, auth_key="a-wrong-key") as client,
    ):
        with anyio.fail_after(5), pytest.raises(Unauthenticated):
            async for _ in client.watch(1):
                pass
        assert not client.streams
