"""The client's channel: writes joined per loop turn, stream limits kept without O(n²) counting.

The same h2 connection class serves the reference server's connections.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from grpclib.client import Channel
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import TooManyStreamsError
from h2.settings import SettingCodes
from hypothesis import given, settings
from hypothesis import strategies as st
from server_process import free_port
from stream_fleet import streams_held

from dispatch_client import Client
from dispatch_client._h2_protocol import FLUSH_BYTES, RETRY_AFTER
from dispatch_client._server_url import parse_server_url
from dispatch_client.connection import _CoalescedWrites, _H2Connection, connect_shared, open_channel
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


async def test_many_streams_open_on_one_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    walks = {True: 0, False: 0}  # by client_side
    original = H2Connection._open_streams

    def counting(self: H2Connection, remainder: int) -> int:
        walks[self.config.client_side] += 1
        return original(self, remainder)

    monkeypatch.setattr(H2Connection, "_open_streams", counting)
    async with (
        running_server() as server,
        Client(server.url) as client,
        streams_held(client, server, 1000, 150),
    ):
        # Neither end walks all its streams for each new one (O(n²) for a fleet).
        assert walks[True] <= 10 and walks[False] <= 10, walks


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


class _RecordingTransport:
    closing = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closing


# A turn: the sizes of its writes (0 is an empty write).
_turns = st.lists(st.lists(st.integers(0, 3 * FLUSH_BYTES // 2), max_size=12), max_size=6)


@settings(max_examples=60, deadline=None)
@given(turns=_turns)
def test_a_turn_sends_each_flush_bytes_as_reached_and_the_rest_at_its_end(
    turns: list[list[int]],
) -> None:
    """Whatever the writes, the same bytes in the same order; never FLUSH_BYTES left waiting."""

    async def run() -> None:
        transport = _RecordingTransport()
        writes = _CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        written = bytearray()
        for turn in turns:
            for size in turn:
                data = bytes([len(written) % 251]) * size
                writes.write(data)
                written += data
                waiting = len(written) - sum(map(len, transport.sent))
                assert waiting < FLUSH_BYTES
            await asyncio.sleep(0)
            # At the turn's end everything written is out.
            assert b"".join(transport.sent) == written
        for send in transport.sent:
            # A send holds less than FLUSH_BYTES plus the one write that reached it.
            assert 0 < len(send) < FLUSH_BYTES + 3 * FLUSH_BYTES // 2

    asyncio.run(run())


async def test_a_fleet_of_requests_goes_out_in_chunks_during_the_turn() -> None:
    """The case that asked for the threshold: 2,000 small requests written in one turn."""
    transport = _RecordingTransport()
    writes = _CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    request = b"x" * 37  # the size of one small request's frames
    for _ in range(2_000):
        writes.write(request)
    # Before the turn ends, all but the last partial chunk is already out.
    assert len(transport.sent) == 2_000 * 37 // FLUSH_BYTES
    await asyncio.sleep(0)
    assert b"".join(transport.sent) == request * 2_000


class _Pair:
    """An h2 client and server connection (both `_H2Connection`) passing bytes in memory."""

    def __init__(self, limit: int) -> None:
        self.client = _H2Connection(H2Configuration(client_side=True))
        self.server = _H2Connection(H2Configuration(client_side=False))
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        self.exchange()
        self.open: list[int] = []

    def exchange(self) -> None:
        for _ in range(4):
            self.server.receive_data(self.client.data_to_send())
            self.client.receive_data(self.server.data_to_send())

    def true_counts(self) -> tuple[int, int]:
        """What h2's own walk counts: the client's outbound and the server's inbound open streams."""
        return (
            H2Connection.open_outbound_streams.fget(self.client),  # type: ignore[attr-defined]
            H2Connection.open_inbound_streams.fget(self.server),  # type: ignore[attr-defined]
        )


_HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")]


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 40),
    steps=st.lists(st.sampled_from(["open", "finish", "reset"]), max_size=300),
)
def test_the_stream_count_bound_answers_as_h2s_walk(limit: int, steps: list[str]) -> None:
    """Client and server side: the limit holds exactly as with h2's walk, and closed streams are forgotten."""
    pair = _Pair(limit)
    for step in steps:
        if step == "open":
            stream_id = pair.client.get_next_available_stream_id()
            true_outbound, _ = pair.true_counts()
            try:
                pair.client.send_headers(stream_id, _HEADERS)
            except TooManyStreamsError:
                assert true_outbound + 1 > limit
                continue
            assert true_outbound + 1 <= limit
            pair.open.append(stream_id)
        elif pair.open:
            stream_id = pair.open.pop(0)
            if step == "finish":
                pair.client.end_stream(stream_id)
                pair.exchange()
                pair.server.send_headers(stream_id, [(":status", "200")], end_stream=True)
            else:
                pair.client.reset_stream(stream_id)
        pair.exchange()
        for side, bound, true in zip(
            (pair.client, pair.server),
            (pair.client.open_outbound_streams, pair.server.open_inbound_streams),
            pair.true_counts(),
            strict=True,
        ):
            assert bound >= true
            assert (bound + 1 > limit) == (true + 1 > limit)
            assert len(side.streams) <= 2 * len(pair.open) + 64
    assert len(pair.open) <= limit


def test_the_server_does_not_walk_its_streams_for_each_new_one() -> None:
    """Opening n streams costs the server O(log n) walks over them, not n."""
    pair = _Pair(100_000)
    walks = 0
    original = H2Connection._open_streams

    def counting(self: H2Connection, remainder: int) -> int:
        nonlocal walks
        if self is pair.server:
            walks += 1
        return original(self, remainder)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(H2Connection, "_open_streams", counting)
        for _ in range(2_000):
            pair.client.send_headers(pair.client.get_next_available_stream_id(), _HEADERS)
            pair.exchange()
    assert len(pair.server.streams) == 2_000
    assert walks <= 12


async def test_streams_opened_while_connecting_go_out_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Waiters on the connection wake together, not one per loop turn (and one send each)."""
    sends = 0
    server_port = -1
    flush = _CoalescedWrites._flush

    def counting(self: _CoalescedWrites) -> None:
        nonlocal sends
        if self._transport.get_extra_info("sockname")[1] != server_port:  # the client's end
            sends += 1
        flush(self)

    monkeypatch.setattr(_CoalescedWrites, "_flush", counting)
    async with running_server() as server, Client(server.url) as client:
        server_port = server.port
        async with streams_held(client, server, 2000, 200):
            # The client's sends: about 3 here (the 400 requests in one), over 100
            # when the waiters woke one by one. (It read about 45 while the server
            # dropped the connection at the 101st stream and every stream re-opened.)
            assert sends <= 80, sends


async def test_a_failed_shared_connection_attempt_fails_every_waiter() -> None:
    channel = open_channel(
        parse_server_url(f"grpc://127.0.0.1:{free_port()}?ssl=false"), key=None, sign_secret=None
    )[0]
    try:
        results = await asyncio.gather(
            *(connect_shared(channel) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, OSError) for r in results), results
        assert not channel._connected
    finally:
        channel.close()


def _count_connection_attempts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the channel's TCP connection attempts (grpclib's `_create_connection`)."""
    attempts = [0]
    create = Channel._create_connection

    async def counting(self: Channel) -> Any:
        attempts[0] += 1
        return await create(self)

    monkeypatch.setattr(Channel, "_create_connection", counting)
    return attempts


async def test_the_waiters_of_a_failed_attempt_do_not_each_try_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = _count_connection_attempts(monkeypatch)
    channel = open_channel(
        parse_server_url(f"grpc://127.0.0.1:{free_port()}?ssl=false"), key=None, sign_secret=None
    )[0]
    try:
        results = await asyncio.gather(
            *(connect_shared(channel) for _ in range(200)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionRefusedError) for r in results), results
        # One attempt for all (each waiter tried on its own before: 200).
        assert attempts[0] == 1
        # A copy for each: no traceback grown by 200 raises of one object.
        assert len({id(r) for r in results}) == 200
        await asyncio.sleep(RETRY_AFTER * 1.5)
        with pytest.raises(ConnectionRefusedError):
            await connect_shared(channel)
        assert attempts[0] == 2  # the failure is shared only for RETRY_AFTER seconds
    finally:
        channel.close()


async def test_a_fleet_of_streams_does_not_storm_a_server_that_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each stream checks whether the server is back; they share the connection attempts."""
    attempts = _count_connection_attempts(monkeypatch)
    port = free_port()
    async with Client(f"grpc://127.0.0.1:{port}?ssl=false") as client:

        async def follow(microgrid_id: int) -> None:
            async for _ in client.stream(microgrid_id):
                return

        tasks = [asyncio.create_task(follow(m)) for m in range(1, 201)]
        try:
            await asyncio.sleep(1.0)
            # Over 400 before (two a second per stream); one per RETRY_AFTER now.
            assert attempts[0] <= 1.0 / RETRY_AFTER + 5, attempts[0]
            async with running_server(port=port) as server:
                # And they all open once it is back.
                async with asyncio.timeout(10):
                    await server.service.wait_for_streams(None, 200)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
