"""Unary calls without grpclib's stream objects: same requests, same answers, same failures.

`dispatch_client._unary` makes unary calls on grpclib's connection itself
and caches hpack header blocks. These tests hold it to grpclib's own path:
the server sees the same request, errors come out the same, a user's event
listener still sees every call, deadlines, cancellation and broken
connections leave nothing behind, and the header caches encode and decode
exactly what plain hpack does (property tests over random header sequences).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any, cast

import anyio
import grpclib.events
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_process import ServerProcess

from dispatch_client import (
    Client,
    DeadlineExceeded,
    NotFound,
    Unavailable,
)
from dispatch_client._unary import CachingDecoder, CachingEncoder, PendingCall
from dispatch_client.server.app import DispatchServer
from dispatch_client.server.service import DispatchService

pytestmark = pytest.mark.anyio

MG = 7
HOUR = dt.timedelta(hours=1)


def _h2(client: Client) -> Any:
    protocol: Any = client.channel._protocol  # grpclib keeps it private
    return protocol.connection._connection


def _processor_streams(client: Client) -> dict[int, Any]:
    protocol: Any = client.channel._protocol
    return dict(protocol.processor.streams)


class _Seen:
    """What the server's `RecvRequest` event shows of each call."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[tuple[str, Any]], str | None, str | None]] = []

    async def __call__(self, event: grpclib.events.RecvRequest) -> None:
        timeout = None if event.deadline is None else round(event.deadline.time_remaining())
        self.requests.append(
            (event.method_name, sorted(event.metadata.items()), event.content_type, str(timeout))
        )


async def _force_grpclib_path(client: Client) -> list[str]:
    """Register a listener of the user's: every later call goes through grpclib's stream."""
    seen: list[str] = []

    async def on_send(event: grpclib.events.SendRequest) -> None:
        seen.append(event.method_name)

    grpclib.events.listen(client.channel, grpclib.events.SendRequest, on_send)
    return seen


@pytest.mark.parametrize("sign_secret", [None, "s3cret"])
async def test_the_server_sees_the_same_request_either_way(
    tmp_path: Path, sign_secret: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _Seen()
    fast_calls: list[int] = []
    original = PendingCall.__init__

    def counting(self: PendingCall, stream_id: int, done: Any, h2: Any) -> None:
        fast_calls.append(stream_id)
        original(self, stream_id, done, h2)

    monkeypatch.setattr(PendingCall, "__init__", counting)
    async with (
        DispatchService(db=str(tmp_path / "db.sqlite")) as service,
        DispatchServer(service, keys=["k1"], sign_secret=sign_secret) as server,
    ):
        grpclib.events.listen(cast(Any, server._server), grpclib.events.RecvRequest, seen)
        async with Client(server.url, auth_key="k1", sign_secret=sign_secret) as client:
            created = await client.create(MG, "T", "NOW", HOUR, [1, 2])
            assert created.metadata is not None
            fast = await client.get(MG, created.metadata.dispatch_id)
            fast_request = seen.requests[-1]
            assert len(fast_calls) == 1  # the create connected through grpclib, the get did not
            await _force_grpclib_path(client)
            slow = await client.get(MG, created.metadata.dispatch_id)
            slow_request = seen.requests[-1]
            assert len(fast_calls) == 1
    assert fast == slow == created
    # Signed calls differ only in their per-call values (time stamp, nonce, signature).
    varying = {"ts", "nonce", "sig"}

    def fixed(request: tuple[str, list[tuple[str, Any]], str | None, str | None]) -> Any:
        method, metadata, content_type, timeout = request
        return method, [(k, v) for k, v in metadata if k not in varying], content_type, timeout

    assert fixed(fast_request) == fixed(slow_request)
    assert [k for k, _ in fast_request[1]] == [k for k, _ in slow_request[1]]
    assert fast_request[3] in {"59", "60"}  # the default call_timeout reached the server


async def test_a_users_listener_sees_every_call(tmp_path: Path) -> None:
    async with (
        DispatchService(db=str(tmp_path / "db.sqlite")) as service,
        DispatchServer(service) as server,
        Client(server.url) as client,
    ):
        await client.create(MG, "T", "NOW", HOUR, [1])  # connects
        seen = await _force_grpclib_path(client)
        created = await client.create(MG, "U", "NOW", HOUR, [1])
        assert created.metadata is not None
        await client.get(MG, created.metadata.dispatch_id)
        await client.update(MG, created.metadata.dispatch_id, {"duration": 2 * HOUR})
        await client.delete(MG, created.metadata.dispatch_id)
    assert [name.rsplit("/", 1)[1] for name in seen] == [
        "CreateMicrogridDispatch",
        "GetMicrogridDispatch",
        "UpdateMicrogridDispatch",
        "DeleteMicrogridDispatch",
    ]


async def test_errors_come_out_typed_with_message_and_trailers(tmp_path: Path) -> None:
    async with (
        DispatchService(db=str(tmp_path / "db.sqlite")) as service,
        DispatchServer(service) as server,
        Client(server.url) as client,
    ):
        await client.create(MG, "T", "NOW", HOUR, [1])
        with pytest.raises(NotFound) as fast:
            await client.get(MG, 424242)
        await _force_grpclib_path(client)
        with pytest.raises(NotFound) as slow:
            await client.get(MG, 424242)
    assert str(fast.value) == str(slow.value)
    assert "424242" in str(fast.value)
    assert fast.value.metadata == slow.value.metadata
    assert fast.value.server_url == server.url


class _SlowGet(DispatchService):
    """Answers `get` only after `delay` seconds, and records handlers that were cancelled."""

    def __init__(self, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay
        self.cancelled = asyncio.Event()

    async def get_microgrid_dispatch(self, message: Any) -> Any:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return await super().get_microgrid_dispatch(message)


async def test_a_deadline_ends_the_call_and_resets_its_stream(tmp_path: Path) -> None:
    service = _SlowGet(5.0, db=str(tmp_path / "db.sqlite"))
    async with (
        service,
        DispatchServer(service) as server,
        Client(server.url, call_timeout=dt.timedelta(milliseconds=300)) as client,
    ):
        created = await client.create(MG, "T", "NOW", HOUR, [1])
        assert created.metadata is not None
        started = anyio.current_time()
        with pytest.raises(DeadlineExceeded):
            await client.get(MG, created.metadata.dispatch_id)
        assert 0.25 <= anyio.current_time() - started < 2.0
        assert _processor_streams(client) == {}
        with anyio.fail_after(5):  # the server learns the call is over (deadline or reset)
            await service.cancelled.wait()
        service.delay = 0
        assert await client.get(MG, created.metadata.dispatch_id) == created


async def test_cancelling_a_call_resets_its_stream_and_the_client_goes_on(tmp_path: Path) -> None:
    service = _SlowGet(30.0, db=str(tmp_path / "db.sqlite"))
    async with (
        service,
        DispatchServer(service) as server,
        Client(server.url) as client,
    ):
        created = await client.create(MG, "T", "NOW", HOUR, [1])
        assert created.metadata is not None
        with anyio.move_on_after(0.2) as scope:
            await client.get(MG, created.metadata.dispatch_id)
        assert scope.cancelled_caught
        assert _processor_streams(client) == {}
        with anyio.fail_after(5):  # RST_STREAM reached the server
            await service.cancelled.wait()
        h2 = _h2(client)
        assert all(stream.closed for stream in h2.streams.values())
        service.delay = 0
        assert await client.get(MG, created.metadata.dispatch_id) == created
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0


async def test_a_server_killed_mid_call_is_unavailable(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "db.sqlite")
    await process.start()
    try:
        async with Client(process.url) as client:
            created = await client.create(MG, "T", "NOW", HOUR, [1])
            assert created.metadata is not None

            async def kill_soon() -> None:
                await asyncio.sleep(0.05)
                await process.kill()

            killer = asyncio.ensure_future(kill_soon())
            with anyio.fail_after(10), pytest.raises(Unavailable):
                for _ in range(100_000):  # bounded: the kill ends it within 0.05 s
                    await client.get(MG, created.metadata.dispatch_id)
            await killer
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
    finally:
        await process.close()


async def test_a_request_larger_than_one_frame_is_sent_whole(tmp_path: Path) -> None:
    payload = {f"key{i}": "x" * 400 for i in range(100)}  # about 41 KB, over the 16 KB frame
    async with (
        DispatchService(db=str(tmp_path / "db.sqlite")) as service,
        DispatchServer(service) as server,
        Client(server.url) as client,
    ):
        await client.create(MG, "T", "NOW", HOUR, [1])
        assert _h2(client).max_outbound_frame_size < 41_000
        created = await client.create(MG, "BIG", "NOW", HOUR, [1], payload=payload)
        assert created.metadata is not None
        got = await client.get(MG, created.metadata.dispatch_id)
    assert got == created
    assert got.data is not None and got.data.payload is not None
    assert len(got.data.payload.fields) == 100


async def test_many_concurrent_calls_share_the_caches(tmp_path: Path) -> None:
    async with (
        DispatchService(db=str(tmp_path / "db.sqlite")) as service,
        DispatchServer(service) as server,
        Client(server.url) as client,
    ):
        made = await asyncio.gather(
            *(client.create(MG, f"T{i % 3}", "NOW", HOUR, [i]) for i in range(60))
        )
        ids = [d.metadata.dispatch_id for d in made if d.metadata is not None]
        got = await asyncio.gather(*(client.get(MG, i) for i in ids))
        h2 = _h2(client)
    assert got == made
    assert isinstance(h2.encoder, CachingEncoder) and isinstance(h2.decoder, CachingDecoder)
    assert h2.encoder._blocks and h2.decoder._blocks  # the caches were used


# -- the header caches against plain hpack -----------------------------------------

_NAMES = [b":path", b"key", b"grpc-timeout", b"x-a", b"content-type"]
_VALUES = [b"/a", b"/b", b"59S", b"k1", b"v" * 300, b"application/grpc", b"z"]
_header = st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES))
_block = st.tuples(
    st.lists(_header, min_size=1, max_size=6),
    st.lists(_header, max_size=2),  # sent never-indexed, at the end
    st.sampled_from([None, None, None, 0, 256, 4096]),  # a table size change before the block
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_block, min_size=1, max_size=25))
def test_the_caching_encoder_writes_what_a_plain_decoder_reads(blocks: list[Any]) -> None:
    caching, plain, decoder = CachingEncoder(), hpack.Encoder(), hpack.Decoder()
    for indexed, secret, resize in blocks:
        if resize is not None:
            caching.header_table_size = plain.header_table_size = resize
        headers: list[Any] = list(indexed) + [hpack.NeverIndexedHeaderTuple(*h) for h in secret]
        block = caching.encode(headers)
        assert decoder.decode(block, raw=True) == [tuple(h) for h in headers]
        if not secret:
            assert block == plain.encode(headers)  # the same bytes as hpack itself
        else:
            plain.encode(headers)  # keep both encoders' tables in step


@settings(max_examples=300, deadline=None)
@given(st.lists(_block, min_size=1, max_size=25))
def test_the_caching_decoder_reads_what_a_plain_decoder_reads(blocks: list[Any]) -> None:
    encoder, plain = hpack.Encoder(), hpack.Decoder()
    caching = CachingDecoder(hpack.Decoder())
    for indexed, secret, resize in blocks:
        if resize is not None:
            encoder.header_table_size = resize
        headers: list[Any] = list(indexed) + [hpack.NeverIndexedHeaderTuple(*h) for h in secret]
        block = encoder.encode(headers)
        for _ in range(2):  # the second read of a block may come from the cache
            assert caching.decode(block, raw=True) == plain.decode(block, raw=True)
            block = encoder.encode(headers)
