"""Streams never lose a change silently: lifetime, catch-up after gaps, the opt-out, reconnect speed.

The first two tests are the reproductions of issue 14: a short `stream_timeout`
used to be the stream's deadline (it re-opened the stream every second and lost
what changed meanwhile), and a server cutting a slow client off lost every
change of the gap without a word.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest
from server_process import ServerProcess
from test_streaming_helpers import (
    Watcher,
    Writer,
    closing_hub,
    collect,
    current_set,
    dispatch_id,
    hub_for,
    wait_until,
)

from dispatch_client import Dispatch, Event, ResourceExhausted, StreamGap, Unavailable
from dispatch_client.client import Client
from dispatch_client.server.app import DispatchServer
from dispatch_client.server.service import DispatchService
from dispatch_client.streaming import Backoff, DispatchEvent, StreamState, StreamStatus
from dispatch_client.testing import RunningServer, running_server

pytest_plugins = ["test_streaming_helpers"]
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_stream_leftovers")]

PAYLOAD = {"padding": "x" * 20_000}
"""Makes each event large enough that 400 of them (8 MB) exceed the 4 MiB HTTP/2 window."""


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    return tmp_path / "gaps.sqlite"


@pytest.fixture
async def process(db: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(db)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_a_short_stream_timeout_no_longer_cuts_a_busy_stream(server: RunningServer) -> None:
    """Reproduction 1: stream_timeout=1 s, one stream(2) consumer, 60 creates 50 ms apart: 60/60."""
    received: list[DispatchEvent] = []
    async with (
        Client(server.url, stream_timeout=dt.timedelta(seconds=1)) as client,
        Client(server.url) as other,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, client, 2, 60, received)
        await wait_until(lambda: 2 in client.streams and client.streams[2].synced)
        stream = client.streams[2]
        # Quiet for twice the limit: answered keep-alive pings keep it open.
        await anyio.sleep(2)
        for _ in range(60):
            await other.create(2, "REPRO", "NOW", dt.timedelta(minutes=1), [1])
            await anyio.sleep(0.05)
        with anyio.fail_after(10):
            await wait_until(lambda: len(received) == 60)
        assert stream.open_count == 1
    assert [e.event for e in received] == [Event.CREATED] * 60
    assert server.service.opened_stream_count(2) == 1


def write_in_another_thread(url: str, count: int, done: threading.Event) -> threading.Thread:
    async def write() -> None:
        async with Client(url) as writer:
            for _ in range(count):
                await writer.create(
                    4, "BURST", "NOW", dt.timedelta(minutes=1), [1], payload=PAYLOAD
                )

    def run() -> None:
        try:
            asyncio.run(write())
        finally:
            done.set()

    thread = threading.Thread(target=run, name="writer")
    thread.start()
    return thread


async def test_a_slow_client_cut_off_by_the_server_catches_up_or_is_told(tmp_path: Path) -> None:
    """Reproduction 2: --stream-buffer 16, the client's loop blocked while 400 changes are made."""
    server = ServerProcess(tmp_path / "cutoff.sqlite", "--stream-buffer", "16")
    await server.start()
    statuses: list[StreamStatus] = []
    caught_up: list[DispatchEvent] = []
    told: list[DispatchEvent] = []
    gaps: list[StreamGap] = []

    async def opted_out(client: Client) -> None:
        try:
            async with aclosing(client.stream(4, on_gap="raise")) as events:
                async for event in events:
                    told.append(event)
        except StreamGap as gap:
            gaps.append(gap)

    try:
        async with (
            Client(server.url, on_stream_status=statuses.append) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(collect, client, 4, 400, caught_up)
            tg.start_soon(opted_out, client)
            await wait_until(lambda: 4 in client.streams and client.streams[4].synced)
            done = threading.Event()
            thread = write_in_another_thread(server.url, 400, done)
            # The whole event loop stands still (as under a long synchronous call)
            # until the other thread has made all 400 changes.
            done.wait(timeout=60)
            thread.join()
            with anyio.fail_after(20):
                await wait_until(lambda: len(caught_up) == 400 and bool(gaps))
    finally:
        await server.close()
    # The server did cut the stream off ...
    assert any(isinstance(s.error, ResourceExhausted) for s in statuses)
    # ... and the default consumer still has every change, once each.
    assert len({e.dispatch.metadata.dispatch_id for e in caught_up if e.dispatch.metadata}) == 400
    assert [e.event for e in caught_up] == [Event.CREATED] * 400
    # The one that opted out got what came before the gap, then StreamGap.
    assert len(told) < 400 and len(gaps) == 1
    assert "microgrid 4" in str(gaps[0])


async def test_on_gap_raise_ends_at_a_restart_while_catch_up_tells_what_was_missed(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "restart.sqlite")
    await server.start()
    raised: list[BaseException] = []
    before_gap: list[DispatchEvent] = []
    streamer = Watcher()

    async def opted_out(client: Client) -> None:
        with pytest.raises(StreamGap) as info:
            async with aclosing(client.stream(5, on_gap="raise")) as events:
                async for event in events:
                    before_gap.append(event)
        raised.append(info.value)

    try:
        async with (
            Client(server.url) as client,
            Client(server.url) as writer,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(streamer.follow, client.stream(5))
            tg.start_soon(opted_out, client)
            await wait_until(lambda: 5 in client.streams and client.streams[5].synced)
            first = await writer.create(5, "A", "NOW", dt.timedelta(minutes=1), [1])
            await wait_until(lambda: len(before_gap) == 1)
            await server.kill()
            await wait_until(lambda: bool(raised))
            await server.start()
            # Made right after the restart, possibly before the stream is back.
            second = await writer.create(5, "B", "NOW", dt.timedelta(minutes=1), [1])
            await writer.delete(5, first.metadata.dispatch_id)  # type: ignore[union-attr]
            with anyio.fail_after(10):
                await wait_until(lambda: streamer.view == {2: second})
            tg.cancel_scope.cancel()
    finally:
        await server.close()
    assert [e.event for e in before_gap] == [Event.CREATED]
    assert "broke" in str(raised[0])
    assert [(e.event, e.dispatch.metadata.dispatch_id) for e in streamer.events] == [  # type: ignore[union-attr]
        (Event.CREATED, 1),
        (Event.CREATED, 2),
        (Event.DELETED, 1),
    ]


async def test_a_paused_server_is_noticed_within_stream_timeout(process: ServerProcess) -> None:
    """SIGSTOP: the connection stays open but nothing answers; keep-alive finds it dead."""
    statuses: list[StreamStatus] = []
    limit = dt.timedelta(seconds=1)
    async with (
        Client(process.url, stream_timeout=limit, on_stream_status=statuses.append) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, client, 6, 10**6, [])
        await wait_until(lambda: 6 in client.streams and client.streams[6].synced)
        process.pause()
        paused = time.monotonic()
        with anyio.fail_after(5):
            await wait_until(lambda: statuses[-1].state is StreamState.RECONNECTING)
        noticed = time.monotonic() - paused
        process.resume()
        await wait_until(lambda: client.streams[6].synced)
        tg.cancel_scope.cancel()
    assert noticed < 1.0 + 0.5


async def measure_resync(process: ServerProcess, client: Client, outage: float) -> float:
    """Seconds from "the restarted server accepts connections" to "the stream has caught up"."""
    stream = client.streams[7]
    before = stream.catch_up_count
    await process.kill()
    await anyio.sleep(outage)
    ready = await process.start()
    with anyio.fail_after(40):
        await wait_until(lambda: stream.catch_up_count > before, limit=40)
    return time.monotonic() - ready


async def test_a_server_back_after_a_long_outage_is_noticed_within_a_second(
    process: ServerProcess,
) -> None:
    """The backoff has grown to seconds during the outage; the probe cuts the wait short."""
    watcher = Watcher()
    async with Client(process.url) as client, anyio.create_task_group() as tg:
        tg.start_soon(watcher.follow, client.watch(7))
        await wait_until(lambda: 7 in client.streams and client.streams[7].synced)
        resync = await measure_resync(process, client, outage=4.0)
        tg.cancel_scope.cancel()
    assert resync < 1.0, resync


@pytest.mark.chaos
@pytest.mark.timeout(600)
@pytest.mark.parametrize("probe", [Backoff().probe, None], ids=["probe", "no-probe"])
async def test_resync_times_after_outages_of_many_lengths(
    process: ServerProcess, probe: float | None
) -> None:
    """The figures for the report: 12 outages from 0.2 s to 12 s, default backoff (with its probe or not)."""
    outages = [0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0]
    times: list[float] = []
    async with (
        Client(process.url, stream_backoff=Backoff(probe=probe)) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, client, 7, 10**6, [])
        await wait_until(lambda: 7 in client.streams and client.streams[7].synced)
        for outage in outages:
            times.append(await measure_resync(process, client, outage))
        tg.cancel_scope.cancel()
    ordered = sorted(times)
    median = (ordered[5] + ordered[6]) / 2
    print(
        f"resync (probe={probe}): median {median:.3f} s, max {ordered[-1]:.3f} s; "
        + ", ".join(f"{o:g}s->{t:.2f}" for o, t in zip(outages, times, strict=True))
    )
    if probe is not None:
        assert median < 1.0


async def test_catch_up_events_come_before_live_ones_without_duplicates(
    client: Client, server: RunningServer, writer: Writer
) -> None:
    """After a restart with changes made while down, the catch-up batch precedes live events."""
    streamer = Watcher()
    async with anyio.create_task_group() as tg:
        tg.start_soon(streamer.follow, client.stream(1))
        await wait_until(lambda: 1 in client.streams and client.streams[1].synced)
        await writer.churn(20)
        await wait_until(lambda: len(streamer.events) == 20)
        await server.stop()
        await wait_until(lambda: client.streams[1].status.state is StreamState.RECONNECTING)
        await writer.churn(30)
        missed = len(streamer.events)
        await server.start()
        await writer.churn(10)
        with anyio.fail_after(10):
            final = await current_set(client)
            await wait_until(lambda: streamer.view == final)
        tg.cancel_scope.cancel()
    assert streamer.events[:missed] == writer.log[:20]
    assert len(streamer.events) < len(writer.log)  # the gap is told per dispatch, not replayed


async def test_a_server_that_drops_every_connection_is_backed_off_not_hammered() -> None:
    """Reachable, yet every connection dies at once: probes must not turn into a retry loop."""
    accepted = 0

    async def drop(connection: anyio.abc.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await connection.aclose()

    statuses: list[StreamStatus] = []
    backoff = Backoff(initial=0.05, maximum=0.4, probe=0.01)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, drop)
        url = f"grpc://127.0.0.1:{port}?ssl=false"
        async with Client(url, stream_backoff=backoff, on_stream_status=statuses.append) as client:
            with anyio.move_on_after(2.0):
                async for _ in client.stream(1):
                    pass
        tg.cancel_scope.cancel()
    attempts = sum(s.state is StreamState.CONNECTING for s in statuses)
    # Backing off from 0.05 s to 0.4 s for 2 s allows about a dozen attempts (and
    # one probe each); probing every 0.01 s as if the server were down: 200.
    assert 3 <= attempts <= 20, attempts
    assert accepted <= 3 * attempts


def test_stream_timeout_caps_the_keep_alive_and_needs_it() -> None:
    client = Client("grpc://h:1?ssl=false", stream_timeout=dt.timedelta(seconds=10), connect=False)
    assert client.channel_options.keep_alive_interval == dt.timedelta(seconds=5)
    assert client.channel_options.keep_alive_timeout == dt.timedelta(seconds=5)
    # Without stream_timeout the URL's (or the default) keep-alive decides alone.
    plain = Client("grpc://h:1?ssl=false&keep_alive_interval_s=7", connect=False)
    assert plain.channel_options.keep_alive_interval == dt.timedelta(seconds=7)
    assert plain.channel_options.keep_alive_timeout == dt.timedelta(seconds=20)
    with pytest.raises(ValueError, match="stream_timeout"):
        Client("grpc://h:1?keep_alive=false", stream_timeout=dt.timedelta(seconds=10))
    # Switching servers keeps the cap.
    client.connect("grpc://other:2?ssl=false")
    assert client.channel_options.keep_alive_interval == dt.timedelta(seconds=5)


class LateRegisteringService(DispatchService):
    """A servicer whose stream handler waits for `registering` before it subscribes.

    It makes the window between a client's list and the server registering its
    stream as long as a test needs, to commit changes inside it.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = anyio.Event()
        self.registering = anyio.Event()

    async def _serve_stream(self, stream: Any, request: Any) -> None:
        self.entered.set()
        await self.registering.wait()
        await super()._serve_stream(stream, request)


class ListCounter:
    """A `list_dispatches` for a hub that counts the lists served (received in full)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.served = 0

    async def list(self, microgrid_id: int) -> AsyncIterator[Dispatch]:
        dispatches = [d async for d in self.client.dispatches(microgrid_id)]
        self.served += 1
        for dispatch in dispatches:
            yield dispatch


async def test_a_change_before_the_first_stream_is_registered_reaches_stream_consumers(
    tmp_path: Path,
) -> None:
    """The first open is a gap too: changes between the first list and the registration are told.

    The consumer iterates before the stream opens; its baseline is the list sent
    right behind the stream request. A create, an update and a delete committed
    after that list was served but before the server registered the stream are
    in no event, only in the list after the open: they come as catch-up, before
    the live events.
    """
    async with LateRegisteringService(db=str(tmp_path / "late.sqlite")) as service:
        writer = Writer(service)
        kept = await writer.create("KEPT")
        gone = await writer.create("GONE")
        async with (
            DispatchServer(service) as dispatch_server,
            Client(dispatch_server.url) as client,
        ):
            lists = ListCounter(client)
            # A long grace: only the server's acknowledgement makes the stream count as open.
            hub = hub_for(client, acked=True, open_grace=30.0, list_dispatches=lists.list)
            async with closing_hub(hub), anyio.create_task_group() as tg:
                streamer = Watcher()
                streamer.view = {dispatch_id(kept): kept, dispatch_id(gone): gone}
                tg.start_soon(streamer.follow, hub.subscribe(1))
                with anyio.fail_after(10):
                    await service.entered.wait()
                    # The baseline list goes out right behind the stream request;
                    # the window opens once it was served.
                    await wait_until(lambda: lists.served == 1)
                assert not hub.streams[1].connected
                created = await writer.create("IN THE WINDOW")
                updated = await writer.update(dispatch_id(kept), duration=120)
                await writer.delete(dispatch_id(gone))
                service.registering.set()
                await wait_until(lambda: 1 in hub.streams and hub.streams[1].synced)
                assert lists.served == 2
                live = await writer.create("LIVE")
                with anyio.fail_after(10):
                    await wait_until(lambda: dispatch_id(live) in streamer.view)
                tg.cancel_scope.cancel()
    assert [(e.event, dispatch_id(e.dispatch)) for e in streamer.events] == [
        (Event.CREATED, dispatch_id(created)),
        (Event.UPDATED, dispatch_id(updated)),
        (Event.DELETED, dispatch_id(gone)),
        (Event.CREATED, dispatch_id(live)),
    ]
    assert streamer.view == writer.current


class LateListingService(DispatchService):
    """A servicer that serves its first list only once `listing` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listing = anyio.Event()
        self.lists = 0

    async def encoded_list(self, message: Any) -> bytes:
        self.lists += 1
        if self.lists == 1:
            await self.listing.wait()
        return await super().encoded_list(message)


async def test_a_baseline_served_after_the_registration_neither_repeats_nor_loses_a_change(
    tmp_path: Path,
) -> None:
    """The baseline list may be served after the stream is registered: its changes are not told twice.

    The stream is registered and delivering while the first list (the baseline)
    is held back. Changes committed then reach the client as events and are in
    the baseline as well: the consumer is taken to know them (told once would
    be a duplicate of what it knows). Changes after the baseline was served
    are told once each, in order, as are changes of the other dispatches.
    """
    async with LateListingService(db=str(tmp_path / "late-list.sqlite")) as service:
        writer = Writer(service)
        kept = await writer.create("KEPT")
        async with (
            DispatchServer(service) as dispatch_server,
            Client(dispatch_server.url) as client,
        ):
            hub = hub_for(client, acked=True, open_grace=30.0)
            async with closing_hub(hub), anyio.create_task_group() as tg:
                streamer = Watcher()
                tg.start_soon(streamer.follow, hub.subscribe(1))
                with anyio.fail_after(10):
                    await wait_until(lambda: service.open_stream_count(1) == 1)
                    await wait_until(lambda: service.lists == 1)
                # Registered, baseline not served yet: events arrive and are held,
                # and the stream does not count as connected (see the next test).
                assert not hub.streams[1].connected
                early = await writer.create("EARLY")
                await writer.update(dispatch_id(kept), duration=120)
                await wait_until(lambda: len(hub.streams[1]._held or ()) == 2)
                # What the baseline, served now, shows: what the consumer is taken to know.
                streamer.view = dict(writer.current)
                service.listing.set()
                await wait_until(lambda: hub.streams[1].synced)
                assert streamer.events == []
                later = await writer.update(dispatch_id(early), duration=300)
                live = await writer.create("LIVE")
                with anyio.fail_after(10):
                    await wait_until(lambda: dispatch_id(live) in streamer.view)
                tg.cancel_scope.cancel()
    assert [(e.event, dispatch_id(e.dispatch)) for e in streamer.events] == [
        (Event.UPDATED, dispatch_id(later)),
        (Event.CREATED, dispatch_id(live)),
    ]
    assert streamer.events[0].dispatch == later


async def test_a_change_made_once_the_stream_counts_connected_is_told_even_before_the_baseline(
    tmp_path: Path,
) -> None:
    """`connected` (and the CONNECTED status) wait for the baseline list.

    The docs and `dispatch-cli stream` take `connected` as "changes from now on
    are delivered". A server that registers and acknowledges the stream before
    it serves the baseline used to make the stream count as connected at once:
    a change made then is in the baseline, so the consumer was taken to know it
    and never told (lost). Now the stream counts as connected only once the
    baseline is in, and what comes after it is told.
    """
    states: list[StreamState] = []
    async with LateListingService(db=str(tmp_path / "late-list.sqlite")) as service:
        writer = Writer(service)
        async with (
            DispatchServer(service) as dispatch_server,
            Client(
                dispatch_server.url, on_stream_status=lambda s: states.append(s.state)
            ) as client,
            anyio.create_task_group() as tg,
        ):
            streamer = Watcher()
            tg.start_soon(streamer.follow, client.stream(1))
            with anyio.fail_after(10):
                await wait_until(lambda: service.open_stream_count(1) == 1 and service.lists == 1)
            # Registered and acknowledged, baseline held back by the server.
            await anyio.sleep(0.2)
            assert not client.streams[1].connected
            assert StreamState.CONNECTED not in states
            service.listing.set()
            with anyio.fail_after(10):
                await wait_until(lambda: client.streams[1].connected)
            created = await writer.create("AFTER CONNECTED")
            with anyio.fail_after(10):
                await wait_until(lambda: dispatch_id(created) in streamer.view)
            tg.cancel_scope.cancel()
    assert [(e.event, dispatch_id(e.dispatch)) for e in streamer.events] == [
        (Event.CREATED, dispatch_id(created)),
    ]


async def test_catch_up_lists_wait_until_the_streams_opening_with_them_are_registered(
    client: Client, writer: Writer
) -> None:
    """Many streams opening at once: the server registers them all before serving catch-ups.

    Microgrid 2's acknowledgement is held back; microgrid 1's catch-up list
    waits for it (its baseline does not), and a change made meanwhile still
    reaches microgrid 1's consumer, once.
    """
    lists: list[int] = []
    ack_2 = anyio.Event()

    async def list_dispatches(microgrid_id: int) -> AsyncIterator[Dispatch]:
        lists.append(microgrid_id)
        async for dispatch in client.dispatches(microgrid_id):
            yield dispatch

    async def open_stream(microgrid_id: int) -> AsyncIterator[Any]:
        async with aclosing(client._open_stream(microgrid_id)) as responses:
            async for response in responses:
                if response is None and microgrid_id == 2:
                    await ack_2.wait()
                yield response

    hub = hub_for(client, open_stream=open_stream, list_dispatches=list_dispatches, open_grace=30)
    one: list[DispatchEvent] = []
    two: list[DispatchEvent] = []
    async with closing_hub(hub), anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            tg.start_soon(collect, hub, 1, 1, one)
            tg.start_soon(collect, hub, 2, 1, two)
            await wait_until(lambda: 1 in hub.streams and hub.streams[1].connected)
            created = await writer.create()  # microgrid 1, while its catch-up waits
            await anyio.sleep(0.3)
            assert sorted(lists) == [1, 2] and not hub.streams[1].synced
            ack_2.set()
            # Microgrid 1's consumer leaves with its event, closing that stream.
            await wait_until(lambda: len(one) == 1 and hub.streams[2].synced)
            assert sorted(lists) == [1, 1, 2, 2]
            await Writer(writer.service, microgrid_id=2).create()
    assert [(e.event, e.dispatch) for e in one] == [(Event.CREATED, created)]
    assert len(two) == 1


def _holding_acks(client: Client, held: set[int]) -> Any:
    """An `open_stream` that drops the acknowledgement of the microgrids in `held`."""

    async def open_stream(microgrid_id: int) -> AsyncIterator[Any]:
        async with aclosing(client._open_stream(microgrid_id)) as responses:
            async for response in responses:
                if response is None and microgrid_id in held:
                    continue  # as a server that does not acknowledge this stream
                yield response

    return open_stream


async def test_a_stream_never_acknowledged_holds_the_others_catch_up_only_for_a_while(
    client: Client,
) -> None:
    hub = hub_for(client, open_stream=_holding_acks(client, {2}), open_grace=0.3)
    async with closing_hub(hub), anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            tg.start_soon(collect, hub, 1, 1, [])
            tg.start_soon(collect, hub, 2, 1, [])
            await wait_until(lambda: 1 in hub.streams and hub.streams[1].synced)
            # This server acknowledges streams: microgrid 2 is not taken as open
            # after `open_grace` (its registration may be late; a catch-up list
            # served before it would miss what changed in between).
            await anyio.sleep(1.0)
            assert 2 in hub.streams and not hub.streams[2].connected
            tg.cancel_scope.cancel()


async def test_a_server_that_acknowledges_no_stream_still_gets_open_grace(
    client: Client, writer: Writer
) -> None:
    hub = hub_for(client, open_stream=_holding_acks(client, {1, 2}), open_grace=0.3)
    one: list[DispatchEvent] = []
    async with closing_hub(hub), anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            tg.start_soon(collect, hub, 1, 1, one)
            tg.start_soon(collect, hub, 2, 1, [])
            await wait_until(lambda: all(m in hub.streams for m in (1, 2)))
            await wait_until(lambda: hub.streams[1].synced and hub.streams[2].synced)
            created = await writer.create()
            await wait_until(lambda: len(one) == 1)
            tg.cancel_scope.cancel()
    assert one == [DispatchEvent(Event.CREATED, created)]


def _flapping(client: Client, first: int) -> Any:
    """An `open_stream`: microgrids from `first` on never acknowledge and fail after about 0.3 s."""

    async def open_stream(microgrid_id: int) -> AsyncIterator[Any]:
        if microgrid_id < first:
            async with aclosing(client._open_stream(microgrid_id)) as responses:
                async for response in responses:
                    yield response
            return
        await anyio.sleep(0.28 + 0.01 * (microgrid_id - first))
        raise Unavailable("the backend of this microgrid is down", server_url=client.server_url)

    return open_stream


async def test_streams_that_keep_failing_to_open_do_not_hold_another_stream_s_catch_up_forever(
    client: Client, writer: Writer
) -> None:
    """Others opening and failing, one after another without end, never leave none unacknowledged.

    The catch-up waits for the streams opening with it, not for every one that
    opens later: a change made once microgrid 1 counts connected reaches its
    consumer within a few `open_grace` (it was held back for as long as the
    others kept failing).
    """
    hub = hub_for(client, open_stream=_flapping(client, 10), open_grace=0.25)
    one: list[DispatchEvent] = []
    async with closing_hub(hub), anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            for microgrid_id in range(10, 18):
                tg.start_soon(collect, hub, microgrid_id, 1, [])
            await anyio.sleep(1.0)  # their attempts and backoffs now overlap
            tg.start_soon(collect, hub, 1, 1, one)
            await wait_until(lambda: 1 in hub.streams and hub.streams[1].connected)
            created = await writer.create()
            await wait_until(lambda: len(one) == 1, limit=3)
            tg.cancel_scope.cancel()
    assert [(e.event, e.dispatch) for e in one] == [(Event.CREATED, created)]


def test_a_hub_whose_catch_ups_waited_in_one_event_loop_serves_the_next_one() -> None:
    """A client reused by a later `asyncio.run`: the hub's shared count is not bound to the first loop."""
    client = Client("grpc://127.0.0.1:1?ssl=false", auth_key="k")
    hub: Any = None

    async def open_stream(microgrid_id: int) -> AsyncIterator[Any]:
        async with aclosing(client._open_stream(microgrid_id)) as responses:
            async for response in responses:
                if response is None and microgrid_id == 2:
                    # Microgrid 1's catch-up waits for this acknowledgement.
                    await wait_until(lambda: 1 in hub.streams and hub.streams[1].connected)
                    await anyio.sleep(0.1)
                yield response

    async def round_trip() -> list[DispatchEvent]:
        nonlocal hub
        async with running_server() as server:
            client.connect(server.url)
            hub = hub or hub_for(client, open_stream=open_stream, open_grace=5)
            one: list[DispatchEvent] = []
            async with anyio.create_task_group() as tg:
                with anyio.fail_after(10):
                    tg.start_soon(collect, hub, 1, 1, one)
                    tg.start_soon(collect, hub, 2, 1, [])
                    await wait_until(lambda: 1 in hub.streams and hub.streams[1].synced)
                    await Writer(server.service).create()
                    await wait_until(lambda: len(one) == 1)
                    tg.cancel_scope.cancel()
            await hub.aclose()
            await client.disconnect()
            return one

    assert len(asyncio.run(round_trip())) == 1
    assert len(asyncio.run(round_trip())) == 1
