"""The client under `asyncio.run` and `anyio.run`, and across event loops."""

from __future__ import annotations

import asyncio

import anyio

from dispatch_client import Client
from dispatch_client.testing import running_server


async def _round_trip(client: Client | None = None) -> int:
    async with running_server() as server:
        client = client or Client(server.url)
        client.connect(server.url)
        try:
            created = await client.create(1, "RUNTIME", "NOW", None, [1])
            assert created.metadata is not None
            assert await client.get(1, created.metadata.dispatch_id) == created
            return len([d async for d in client.dispatches(1)])
        finally:
            # A connection belongs to its event loop: close it before the loop ends.
            await client.disconnect()


def test_under_asyncio_run() -> None:
    assert asyncio.run(_round_trip()) == 1


def test_under_anyio_run() -> None:
    assert anyio.run(_round_trip) == 1


def test_one_client_across_event_loops() -> None:
    # Built outside any loop, used in two loops one after the other: the
    # channel is opened in the running loop, not bound at construction.
    client = Client("grpc://127.0.0.1:1?ssl=false")
    assert asyncio.run(_round_trip(client)) == 1
    assert anyio.run(_round_trip, client) == 1
