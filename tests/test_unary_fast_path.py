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
import random
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


async def test_calls_started_apart_time_out_each_at_its_own_deadline(tmp_path: Path) -> None:
    # The calls of a channel share one timer (`_unary._Deadlines`): each must
    # still end at its own deadline, not at the first one's or the last one's.
    service = _SlowGet(5.0, db=str(tmp_path / "db.sqlite"))
    async with (
        service,
        DispatchServer(service) as server,
        Client(server.url, call_timeout=dt.timedelta(milliseconds=400)) as client,
    ):
        created = await client.create(MG, "T", "NOW", HOUR, [1])
        assert created.metadata is not None
        dispatch_id = created.metadata.dispatch_id
        ended: list[float] = []

        async def one(after: float) -> None:
            await asyncio.sleep(after)
            started = anyio.current_time()
            with pytest.raises(DeadlineExceeded):
                await client.get(MG, dispatch_id)
            ended.append(anyio.current_time() - started)

        with anyio.fail_after(10):
            await asyncio.gather(*(one(0.15 * i) for i in range(4)))
        assert _processor_streams(client) == {}
    assert len(ended) == 4
    assert all(0.35 <= took < 1.2 for took in ended), ended


async def test_finished_calls_are_not_kept_behind_a_pending_one(tmp_path: Path) -> None:
    service = _SlowGet(3.0, db=str(tmp_path / "db.sqlite"))
    async with (
        service,
        DispatchServer(service) as server,
        Client(server.url, call_timeout=dt.timedelta(seconds=20)) as client,
    ):
        created = await client.create(MG, "T", "NOW", HOUR, [1])
        assert created.metadata is not None
        slow = asyncio.create_task(client.get(MG, created.metadata.dispatch_id))
        await asyncio.sleep(0.1)  # the slow call's deadline heads the queue
        for i in range(300):
            await client.create(MG, f"T{i}", "NOW", HOUR, [1])
        deadlines: Any = client.channel.fast_path._deadlines  # type: ignore[attr-defined]
        held = len(deadlines._queue)
        assert await slow == created
    assert held <= 2 * 2 + 64  # swept: the pending call and at most one sweep's worth


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
            read = _read_or_refuse(caching.decode, block)
            assert read == _read_or_refuse(plain.decode, block)
            if isinstance(read, str):
                return  # both refused the block alike; the tables are no longer in step
            block = encoder.encode(headers)


def _read_or_refuse(decode: Any, block: bytes) -> Any:
    """The headers `decode` reads from `block`, or its error as text.

    hpack's own encoder can write a block its decoder refuses (a table index
    out of range, after evictions in a table resized to 256 bytes): the
    caching decoder must then refuse it the same way.
    """
    try:
        return decode(block, raw=True)
    except hpack.HPACKError as exc:
        return f"{type(exc).__name__}: {exc}"


# -- answers larger than the flow-control windows ----------------------------------


async def test_a_page_larger_than_the_receive_windows_arrives(tmp_path: Path) -> None:
    # A page over grpclib's 4 MiB stream and connection windows: the fast path
    # once acknowledged data only when the answer ended, so the server waited
    # for a window update that never came (DeadlineExceeded after call_timeout).
    payload = {"k": "x" * 45_000}
    async with (
        DispatchService(db=str(tmp_path / "db.sqlite")) as service,
        DispatchServer(service) as server,
        Client(server.url, call_timeout=dt.timedelta(seconds=20)) as client,
    ):
        await asyncio.gather(
            *(client.create(MG, "T", "NOW", HOUR, [1], payload=payload) for _ in range(100))
        )
        with anyio.fail_after(10):
            pages = [page async for page in client.list(MG, page_size=100)]
            assert _processor_streams(client) == {}
            assert await client.get(MG, pages[0][0].metadata.dispatch_id)  # type: ignore[union-attr]
    assert [len(page) for page in pages] == [100]


# -- an adversarial server: the fast path against grpclib's own ------------------------

_OK_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_OK_TRAILERS = [(b"grpc-status", b"0")]
_GET = "/frequenz.api.dispatch.v1.MicrogridDispatchService/GetMicrogridDispatch"


def _framed(body: bytes, compressed: int = 0) -> bytes:
    return bytes([compressed]) + len(body).to_bytes(4, "big") + body


def _dispatch_message(dispatch_id: int = 5, kind: str = "T") -> bytes:
    from dispatch_client._proto.frequenz.api.dispatch.v1 import (
        Dispatch,
        DispatchData,
        DispatchMetadata,
        GetMicrogridDispatchResponse,
    )

    dispatch = Dispatch(
        metadata=DispatchMetadata(dispatch_id=dispatch_id), data=DispatchData(type=kind)
    )
    return bytes(GetMicrogridDispatchResponse(dispatch=dispatch))


class _Answer:
    """How the raw server answers one `get`: an async function of (h2 connection, stream, send)."""

    def __init__(self, h2: Any, stream_id: int, send: Any, writer: asyncio.StreamWriter) -> None:
        self.h2, self.id, self.send, self.writer = h2, stream_id, send, writer

    def headers(self, headers: list[tuple[bytes, bytes]], end: bool = False) -> None:
        self.h2.send_headers(self.id, headers, end_stream=end)
        self.send()

    def data(self, data: bytes, end: bool = False) -> None:
        self.h2.send_data(self.id, data, end_stream=end)
        self.send()

    async def data_as_windows_allow(self, data: bytes) -> None:
        sent = 0
        for _ in range(100_000):  # bounded: the client opens the windows as it reads
            if sent == len(data):
                return
            room = min(self.h2.local_flow_control_window(self.id), self.h2.max_outbound_frame_size)
            if room <= 0:
                await asyncio.sleep(0.005)
                continue
            self.data(data[sent : sent + room])
            sent += min(room, len(data) - sent)
            await asyncio.sleep(0)

    def good(self, message: bytes | None = None) -> None:
        self.headers(_OK_HEADERS)
        self.data(_framed(_dispatch_message() if message is None else message))
        self.headers(_OK_TRAILERS, end=True)


class _RawServer:
    """An HTTP/2 server on 127.0.0.1 written with h2 alone: it answers `delete` well and
    every other call as `answer` says, and can change its hpack settings."""

    def __init__(self, answer: Any) -> None:
        import h2.config
        import h2.connection
        import h2.events

        self._h2 = h2
        self.answer = answer
        self.requests: list[dict[bytes, bytes]] = []
        self.connections: list[Any] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> _RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"grpc://127.0.0.1:{port}?ssl=false"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h2 = self._h2
        config = h2.config.H2Configuration(
            client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        conn = h2.connection.H2Connection(config)
        self.connections.append(conn)
        self._writers.append(writer)
        conn.initiate_connection()

        def send() -> None:
            if not writer.is_closing():
                writer.write(conn.data_to_send())

        send()
        paths: dict[int, bytes] = {}
        while data := await reader.read(65536):
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                writer.close()
                return
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers)
                    self.requests.append(headers)
                    paths[event.stream_id] = headers[b":path"]
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    call = _Answer(conn, event.stream_id, send, writer)
                    if paths[event.stream_id].endswith(b"DeleteMicrogridDispatch"):
                        call.headers(_OK_HEADERS)
                        call.data(_framed(b""))
                        call.headers(_OK_TRAILERS, end=True)
                    else:
                        task = asyncio.ensure_future(self.answer(call))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
            send()


async def _outcome(client: Client) -> tuple[Any, ...]:
    try:
        with anyio.fail_after(5):
            got = await client.get(MG, 5)
    except TimeoutError:
        return ("hang",)
    except Exception as exc:  # the outcome compared, whatever it is
        return (type(exc).__name__, str(exc).split(" (server")[0], getattr(exc, "metadata", None))
    assert got.metadata is not None
    return ("ok", got.metadata.dispatch_id)


async def _both_paths(answer: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The outcome of one `get` answered by `answer`: on the fast path, then on grpclib's."""
    outcomes = []
    for force in (False, True):
        async with (
            _RawServer(answer) as server,
            Client(server.url, call_timeout=dt.timedelta(seconds=3)) as client,
        ):
            await client.delete(MG, 1)  # connects: the next call may take the fast path
            if force:
                await _force_grpclib_path(client)
            outcomes.append(await _outcome(client))
            assert _processor_streams(client) == {}
            with anyio.fail_after(5):
                await client.delete(MG, 1)  # the client goes on
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
    return outcomes[0], outcomes[1]


async def _status_503_left_open(call: _Answer) -> None:
    call.headers([(b":status", b"503")])  # and nothing more: grpclib fails at the headers


async def _status_418_then_reset(call: _Answer) -> None:
    call.headers([(b":status", b"418")])
    await asyncio.sleep(0.05)
    call.h2.reset_stream(call.id)
    call.send()


async def _percent_encoded_error(call: _Answer) -> None:
    message = b"not%20found%3A%20%E2%9C%93"
    extra = [(b"grpc-status", b"5"), (b"grpc-message", message), (b"x-extra", b"v")]
    call.headers(_OK_HEADERS + extra, end=True)


async def _error_after_a_message(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_framed(_dispatch_message()))
    call.headers([(b"grpc-status", b"7"), (b"grpc-message", b"denied"), (b"x-md", b"1")], True)


async def _wrong_content_type(call: _Answer) -> None:
    call.headers([(b":status", b"200"), (b"content-type", b"application/grpc+json")])
    call.data(_framed(_dispatch_message()))
    call.headers(_OK_TRAILERS, end=True)


async def _two_messages(call: _Answer) -> None:
    call.good(_dispatch_message(5) + _framed(_dispatch_message(6)))


async def _one_byte_per_frame(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    for byte in _framed(_dispatch_message()):
        call.data(bytes([byte]))
        await asyncio.sleep(0)
    call.headers(_OK_TRAILERS, end=True)


async def _five_megabytes(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    await call.data_as_windows_allow(_framed(_dispatch_message(5, "T" * 5_000_000)))
    call.headers(_OK_TRAILERS, end=True)


async def _goaway(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    await asyncio.sleep(0.05)
    call.h2.close_connection()
    call.send()


async def _reset_mid_message(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_framed(_dispatch_message())[:4])
    await asyncio.sleep(0.05)
    call.h2.reset_stream(call.id, 2)
    call.send()


@pytest.mark.parametrize(
    "answer",
    [
        _status_503_left_open,
        _status_418_then_reset,
        _percent_encoded_error,
        _error_after_a_message,
        _wrong_content_type,
        _two_messages,
        _one_byte_per_frame,
        _five_megabytes,
        _reset_mid_message,
    ],
)
async def test_an_odd_answer_comes_out_as_on_grpclibs_path(answer: Any) -> None:
    fast, slow = await _both_paths(answer)
    assert fast == slow
    assert fast[0] != "hang"


async def test_a_goaway_is_unavailable_on_both_paths() -> None:
    fast, slow = await _both_paths(_goaway)
    assert fast[0] == slow[0] == "Unavailable"


async def _compressed(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_framed(_dispatch_message(), compressed=1))
    call.headers(_OK_TRAILERS, end=True)


async def _truncated(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_framed(_dispatch_message())[:-3])
    call.headers(_OK_TRAILERS, end=True)


async def _short_prefix(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(b"\0\0")
    call.headers(_OK_TRAILERS, end=True)


async def _undecodable_details(call: _Answer) -> None:
    status = [(b"grpc-status", b"3"), (b"grpc-message", b"bad")]
    call.headers(_OK_HEADERS + status + [(b"grpc-status-details-bin", b"!!!notbase64")], True)


async def _no_http_status(call: _Answer) -> None:
    call.headers([(b"content-type", b"application/grpc")])
    call.data(_framed(_dispatch_message()))
    call.headers(_OK_TRAILERS, end=True)


@pytest.mark.parametrize(
    ("answer", "fast_error", "grpclib_error"),
    [
        (_compressed, "Internal", "NotImplementedError"),
        (_truncated, "Internal", "AssertionError"),
        (_short_prefix, "Internal", "AssertionError"),
        (_undecodable_details, "InvalidArgument", "Error"),  # binascii.Error
        (_no_http_status, "UnknownError", "KeyError"),
    ],
)
async def test_a_broken_answer_is_a_typed_error_where_grpclib_raises_a_raw_one(
    answer: Any, fast_error: str, grpclib_error: str
) -> None:
    fast, slow = await _both_paths(answer)
    assert (fast[0], slow[0]) == (fast_error, grpclib_error)


# -- header caches on a live connection: evictions, table size changes -------------

_HEADER_VALUES = ["", "a", "v" * 40, "w" * 300, "x" * 1500, "y" * 3000, "z" * 5000]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sign_secret", [None, "s3cret"])
async def test_header_caches_stay_right_through_evictions_and_table_size_changes(
    seed: int, sign_secret: str | None
) -> None:
    # The server answers with metadata values up to larger than the whole
    # dynamic table (evicting everything), and changes SETTINGS_HEADER_TABLE_SIZE
    # (resizing our encoder's table) between calls: every answer must decode
    # to what was sent, and the server must read every request right.
    import h2.settings

    rng = random.Random(seed)
    sent: list[list[tuple[str, str]]] = []
    sizes = iter([0, 1024, 100, 4096, 300])

    async def answer(call: _Answer) -> None:
        if len(sent) % 15 == 14:
            size = next(sizes, None)
            if size is not None:
                call.h2.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: size})
        metadata = [
            (f"x-{rng.choice('abc')}", rng.choice(_HEADER_VALUES) + str(rng.randint(0, 3)))
            for _ in range(rng.randint(0, 4))
        ]
        sent.append(metadata)
        status = [(b"grpc-status", b"5"), (b"grpc-message", b"nf")]
        encoded = [(name.encode(), value.encode()) for name, value in metadata]
        call.headers(_OK_HEADERS + status + encoded, end=True)

    got: list[list[tuple[str, str]]] = []
    async with (
        _RawServer(answer) as server,
        Client(server.url, auth_key="k1", sign_secret=sign_secret) as client,
    ):
        await client.delete(MG, 1)

        async def one() -> None:
            with pytest.raises(NotFound) as caught:
                await client.get(MG, 5)
            got.append(list(caught.value.metadata))

        with anyio.fail_after(20):
            for _ in range(12):
                async with anyio.create_task_group() as group:
                    for _ in range(rng.randint(1, 15)):
                        group.start_soon(one)
        assert isinstance(_h2(client).decoder, CachingDecoder)
    assert sorted(got) == sorted(sent)
    assert len(server.connections) == 1  # no protocol error broke the connection
    for request in server.requests:
        assert request[b":path"].endswith((b"/GetMicrogridDispatch", b"/DeleteMicrogridDispatch"))
        assert request[b"key"] == b"k1" and request[b"te"] == b"trailers"
        assert (b"sig" in request) == (sign_secret is not None)


# -- cancel storms -------------------------------------------------------------------


async def test_a_storm_of_cancelled_calls_leaves_nothing_behind(tmp_path: Path) -> None:
    rng = random.Random(7)
    outcomes = {"ok": 0, "cancelled": 0, "deadline": 0}
    async with (
        DispatchService(db=str(tmp_path / "db.sqlite")) as service,
        DispatchServer(service, keys=["k1"], sign_secret="s3cret") as server,
        Client(
            server.url,
            auth_key="k1",
            sign_secret="s3cret",
            call_timeout=dt.timedelta(milliseconds=rng.choice([150, 300])),
        ) as client,
    ):
        created = await client.create(MG, "T", "NOW", HOUR, [1])
        assert created.metadata is not None
        dispatch_id = created.metadata.dispatch_id

        async def one() -> None:
            task = asyncio.current_task()
            with anyio.move_on_after(rng.random() * 0.3) as scope:
                try:
                    await client.get(MG, dispatch_id)
                    outcomes["ok"] += 1
                except DeadlineExceeded:
                    outcomes["deadline"] += 1
            outcomes["cancelled"] += scope.cancelled_caught
            assert task is not None and task.cancelling() == 0

        with anyio.fail_after(30):
            for _ in range(3):
                async with anyio.create_task_group() as group:
                    for _ in range(400):
                        group.start_soon(one)
        await asyncio.sleep(0.1)  # the resets are written
        assert _processor_streams(client) == {}
        assert all(stream.closed for stream in _h2(client).streams.values())
        assert await client.get(MG, dispatch_id) == created
    # Some calls were cancelled and some ran to an answer or to their deadline
    # (on a loaded machine a whole wave can outlast every cancel delay: no "ok").
    assert outcomes["cancelled"] > 0 and outcomes["ok"] + outcomes["deadline"] > 0


async def test_calls_over_the_servers_stream_limit_wait_for_a_free_stream() -> None:
    import h2.settings

    async def answer(call: _Answer) -> None:
        await asyncio.sleep(0.05)
        call.good()

    async with _RawServer(answer) as server, Client(server.url) as client:
        await client.delete(MG, 1)
        server.connections[0].update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
        server.connections[0].max_inbound_streams = 2
        await client.delete(MG, 1)  # the settings reach the client
        with anyio.fail_after(10):
            got = await asyncio.gather(*(client.get(MG, 5) for _ in range(12)))
        assert _processor_streams(client) == {}
    assert len(got) == 12


# -- the connection's receive side: reads into one buffer, frames with a cheap repr ----


async def test_reads_go_into_one_buffer_and_frames_reach_h2s_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatch_client._h2_protocol import _Protocol, _QuietFrameBuffer

    reads: list[int] = []
    original = _Protocol.buffer_updated

    def counting(self: _Protocol, nbytes: int) -> None:
        reads.append(nbytes)
        original(self, nbytes)

    monkeypatch.setattr(_Protocol, "buffer_updated", counting)
    payload = {f"key{i}": "x" * 400 for i in range(100)}  # ~41 KB: frames split across reads
    async with (
        DispatchService(db=str(tmp_path / "db.sqlite")) as service,
        DispatchServer(service) as server,
        Client(server.url) as client,
    ):
        created = await client.create(MG, "BIG", "NOW", HOUR, [1], payload=payload)
        assert created.metadata is not None
        got = await asyncio.gather(
            *(client.get(MG, created.metadata.dispatch_id) for _ in range(5))
        )
        protocol: Any = client.channel._protocol
        h2 = _h2(client)
        buffer = h2.incoming_buffer
        table = h2._frame_dispatch_table
    assert got == [created] * 5
    assert isinstance(protocol, asyncio.BufferedProtocol)
    assert reads and sum(reads) > 5 * 41_000
    assert isinstance(buffer, _QuietFrameBuffer)
    for cls, quiet in buffer.quiet.items():
        assert issubclass(quiet, cls) and table[quiet] == table[cls]
        assert "repr skipped" in repr(object.__new__(quiet))


def test_frames_keep_their_repr_when_h2_logs_them() -> None:
    import logging

    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.frame_buffer import FrameBuffer

    from dispatch_client._h2_protocol import _quiet_received_frames

    logged = H2Connection(H2Configuration(client_side=True, logger=logging.getLogger("h2test")))
    _quiet_received_frames(logged)
    assert type(logged.incoming_buffer) is FrameBuffer
    quiet = H2Connection(H2Configuration(client_side=True))
    _quiet_received_frames(quiet)
    assert type(quiet.incoming_buffer) is not FrameBuffer
