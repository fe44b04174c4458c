"""Inputs that broke the stream catch-up once (issue 14, tried as a new user would), kept as cases.

Each case runs the reference server as a process of its own, killed and
restarted on the same port, and holds every consumer to what `list()` says at
the end, checking each event against what that consumer knew (`Ledger`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest
from consumer_rules import apply_checked
from server_process import ServerProcess
from test_streaming_helpers import wait_until

from dispatch_client import Dispatch, Event
from dispatch_client.client import Client
from dispatch_client.server.app import DispatchServer
from dispatch_client.server.service import DispatchService
from dispatch_client.streaming import DispatchEvent
from dispatch_client.testing import RunningServer, running_server

pytest_plugins = ["test_streaming_helpers"]
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_stream_leftovers")]

MG = 3


class Ledger:
    """A consumer's events applied to a dict, each checked against what it knew."""

    def __init__(self) -> None:
        self.known: dict[int, Dispatch] = {}
        self.kinds: list[tuple[Event, int, str]] = []

    def apply(self, event: DispatchEvent) -> None:
        assert event.dispatch.data is not None
        key = apply_checked(self.known, event)
        self.kinds.append((event.event, key, event.dispatch.data.type))

    async def follow(self, events: AsyncGenerator[DispatchEvent, None]) -> None:
        async with aclosing(events):
            async for event in events:
                self.apply(event)


async def listed(client: Client) -> dict[int, Dispatch]:
    return {d.metadata.dispatch_id: d async for d in client.dispatches(MG) if d.metadata}


async def test_a_server_back_on_another_database_is_caught_up_as_deleted_then_created(
    tmp_path: Path,
) -> None:
    """break14: ids 1..5 of the new database were older than the 1..8 seen: kept stale for ever."""
    async with (
        running_server(db=str(tmp_path / "other.sqlite")) as other,
        Client(other.url) as client,
    ):
        for _ in range(5):
            await client.create(MG, "OTHER", "NOW", dt.timedelta(minutes=5), [1])
    # The first database's dispatches are made later: newer update times, same ids.
    first = ServerProcess(tmp_path / "first.sqlite")
    await first.start()
    second = ServerProcess(tmp_path / "other.sqlite", port=first.port)
    ledgers = {"stream": Ledger(), "watch": Ledger()}
    try:
        async with (
            Client(first.url) as client,
            Client(first.url) as producer,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(ledgers["stream"].follow, client.stream(MG))
            tg.start_soon(ledgers["watch"].follow, client.watch(MG))
            await wait_until(lambda: MG in client.streams and client.streams[MG].synced)
            for _ in range(8):
                await producer.create(MG, "FIRST", "NOW", dt.timedelta(minutes=5), [1])
            await wait_until(lambda: all(len(x.known) == 8 for x in ledgers.values()))
            await first.kill()
            await second.start()
            truth = await listed(producer)
            with anyio.fail_after(10):
                await wait_until(lambda: all(x.known == truth for x in ledgers.values()))
            tg.cancel_scope.cancel()
    finally:
        await first.close()
        await second.close()
    for ledger in ledgers.values():
        after = ledger.kinds[8:]
        assert sorted(after) == sorted(
            [(Event.DELETED, key, "FIRST") for key in range(1, 9)]
            + [(Event.CREATED, key, "OTHER") for key in range(1, 6)]
        )


async def test_a_server_clock_set_back_still_stamps_each_version_after_the_last() -> None:
    """break14: a server back with its clock 30 s behind: its updates were dropped as "older"."""
    now = [dt.datetime.now(dt.UTC)]
    ledgers = {"stream": Ledger(), "watch": Ledger()}
    async with (
        DispatchService(clock=lambda: now[0]) as service,
        DispatchServer(service, host="127.0.0.1", port=0) as server,
    ):
        url = RunningServer(server).url
        async with Client(url) as client, Client(url) as producer, anyio.create_task_group() as tg:
            tg.start_soon(ledgers["stream"].follow, client.stream(MG))
            tg.start_soon(ledgers["watch"].follow, client.watch(MG))
            await wait_until(lambda: MG in client.streams and client.streams[MG].synced)
            made = await producer.create(MG, "CLOCK", "NOW", dt.timedelta(minutes=5), [1])
            assert made.metadata is not None
            key = made.metadata.dispatch_id
            await producer.update(MG, key, {"duration": dt.timedelta(seconds=111)})
            now[0] -= dt.timedelta(seconds=30)
            last = await producer.update(MG, key, {"duration": dt.timedelta(seconds=222)})
            assert last.metadata is not None and made.metadata.update_time is not None
            assert last.metadata.update_time is not None
            assert last.metadata.update_time > made.metadata.update_time
            truth = await listed(producer)
            assert truth[key] == last
            with anyio.fail_after(5):
                await wait_until(lambda: all(x.known == truth for x in ledgers.values()))
            tg.cancel_scope.cancel()
