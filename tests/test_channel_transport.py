"""The client's channel: writes joined per loop turn, stream limits kept without O(n²) counting."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from dispatch_client import Client
from dispatch_client.connection import _CoalescedWrites, _H2Connection
from dispatch_client.server import app
from dispatch_client.testing import running_server

pytestmark = pytest.mark.anyio


def _h2(client: Client) -> Any:
    return client.channel._protocol.connection._connection  # grpclib keeps it private


async def test_a_server_stream_limit_is_kept_and_closed_streams_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "MAX_STREAMS_PER_CONNECTION", 3)
    async with running_server() as server, Client(server.url) as client:
        created = await client.create(1, "T", "NOW", dt.timedelta(minutes=1), [1])
        assert created.metadata is not None
        h2 = _h2(client)
        assert isinstance(h2, _H2Connection)
        assert h2.remote_settings.max_concurrent_streams == 3
        most = 0
        original = _H2Connection.open_outbound_streams.fget
        assert original is not None

        def counting(self: _H2Connection) -> int:
            nonlocal most
            count = original(self)
            most = max(most, sum(1 for s in self.streams.values() if s.open))
            return count

        monkeypatch.setattr(_H2Connection, "open_outbound_streams", property(counting))
        # 40 calls at once through a limit of 3: the rest wait for a free stream.
        got = await asyncio.gather(
            *(client.get(1, created.metadata.dispatch_id) for _ in range(40))
        )
        assert got == [created] * 40
        assert 1 <= most <= 3
        for _ in range(200):
            await client.get(1, created.metadata.dispatch_id)
        # Closed streams are forgotten now and then, not kept for ever.
        assert len(h2.streams) < 100


async def test_many_streams_open_on_one_connection() -> None:
    async with running_server() as server, Client(server.url) as client:
        streams = [client.stream(1000 + i) for i in range(150)]
        try:
            tasks = [asyncio.ensure_future(anext(stream)) for stream in streams]
            await asyncio.wait_for(server.service.wait_for_streams(None, 150), 20)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for stream in streams:
                await stream.aclose()


async def test_writes_of_one_turn_go_out_in_one_send() -> None:
    sent: list[bytes] = []

    class Transport:
        closing = False

        def write(self, data: bytes) -> None:
            sent.append(data)

        def is_closing(self) -> bool:
            return self.closing

        def close(self) -> None:
            self.closing = True

    transport = Transport()
    writes = _CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    writes.write(b"a")
    writes.write(b"")
    writes.write(b"bc")
    assert sent == []
    await asyncio.sleep(0)
    assert sent == [b"abc"]
    writes.write(b"d")
    writes.close()  # what is pending goes out before the close
    assert sent == [b"abc", b"d"]
    writes.write(b"e")
    await asyncio.sleep(0)
    assert sent == [b"abc", b"d"]  # nothing is written to a closing transport
