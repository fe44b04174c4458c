"""A signed request captured before a server restart is refused after it.

Each restart is real: the service, its store and the server are closed and
new ones built (nothing shared in memory), on the same port. With an SQLite
file the used nonces were persisted; in memory they are gone, so the new
server refuses every request signed before it started.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from dispatch_client._auth import auth_metadata
from dispatch_client.server import DispatchServer, DispatchService
from dispatch_client.wire import (
    ListMicrogridDispatchesRequest,
    MicrogridDispatchServiceStub,
)

pytestmark = pytest.mark.anyio

KEY = "replay-key"
SECRET = "replay-secret"
METHOD = "/frequenz.api.dispatch.v1.MicrogridDispatchService/ListMicrogridDispatches"


@asynccontextmanager
async def serving(db: str, port: int = 0) -> AsyncIterator[DispatchServer]:
    async with DispatchService(db=db) as service:
        server = DispatchServer(service, port=port, keys=[KEY], sign_secret=SECRET)
        async with server:
            yield server


async def call(server: DispatchServer, metadata: list[tuple[str, str]]) -> None:
    channel = Channel(server.host, server.port)
    try:
        with anyio.fail_after(10):
            await MicrogridDispatchServiceStub(channel).list_microgrid_dispatches(
                ListMicrogridDispatchesRequest(microgrid_id=1), metadata=metadata
            )
    finally:
        channel.close()


def captured() -> list[tuple[str, str]]:
    """A signed call's metadata, as an eavesdropper would record it."""
    return list(auth_metadata(KEY, SECRET, METHOD))


async def next_second() -> None:
    """Sleep into the next whole second, so a server started now starts after `ts`."""
    await anyio.sleep(1.01 - time.time() % 1)


@pytest.mark.parametrize("where", ["file", "memory"])
async def test_a_replay_after_a_restart_is_refused(tmp_path: Path, where: str) -> None:
    db = str(tmp_path / "replay.db") if where == "file" else ":memory:"
    async with serving(db) as first:
        await next_second()  # the request is signed after the server started
        request = captured()
        await call(first, request)
        with pytest.raises(GRPCError, match="replay"):
            await call(first, request)
        port = first.port
    await next_second()
    async with serving(db, port) as restarted:
        with pytest.raises(GRPCError) as error:
            await call(restarted, request)
        assert error.value.status == Status.UNAUTHENTICATED
        expected = "replay" if where == "file" else "before this server started"
        assert expected in (error.value.message or "")
        # A request signed now is accepted: only the captured one is refused.
        await call(restarted, captured())
