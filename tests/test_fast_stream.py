"""Server streams without grpclib's stream objects: same answers, same failures, nothing left behind.

`dispatch_client._fast_stream` opens server-streaming calls on grpclib's
connection itself. These tests hold it to grpclib's own path with an
adversarial HTTP/2 server (the one of `test_unary_fast_path`): every odd
answer comes out the same on both paths (or as a typed error where grpclib
lets a raw one out), and streams left early, broken or cut off leave no
registered stream behind. The streaming tests (`test_streaming*.py`,
`test_chaos.py`) run their real-server cases through this path too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from test_unary_fast_path import (
    _OK_HEADERS,
    _OK_TRAILERS,
    MG,
    _Answer,
    _force_grpclib_path,
    _framed,
    _goaway,
    _percent_encoded_error,
    _processor_streams,
    _RawServer,
    _reset_mid_message,
    _status_418_then_reset,
    _status_503_left_open,
    _wrong_content_type,
)

from dispatch_client import Client, requests
from dispatch_client._fast_stream import PendingStream
from dispatch_client._proto.frequenz.api.common.v1alpha8.streaming import Event
from dispatch_client._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    DispatchData,
    DispatchMetadata,
    StreamMicrogridDispatchesResponse,
)
from dispatch_client.connection import connect_shared, server_stream
from dispatch_client.testing import running_server

pytestmark = pytest.mark.anyio


async def _outcome(client: Client, seen: list[type[Any]]) -> tuple[Any, ...]:
    """What one stream yields (None, dispatch ids), then how it ends."""
    items: list[Any] = []
    protocol: Any = client.channel._protocol
    try:
        # Every answer here ends within milliseconds; one that never ends is a "hang".
        with anyio.fail_after(1):
            responses = server_stream(
                client.channel, requests.stream(MG), open_limit=3, server_url=client.server_url
            )
            async with aclosing(responses):
                async for response in responses:
                    seen.extend(type(s) for s in protocol.processor.streams.values())
                    if response is None:
                        items.append(None)
                    else:
                        assert response.dispatch is not None and response.dispatch.metadata
                        items.append(response.dispatch.metadata.dispatch_id)
    except TimeoutError:
        return (*items, "hang")
    except Exception as exc:  # the outcome compared, whatever it is
        return (*items, type(exc).__name__, str(exc).split(" (server")[0])
    return (*items, "end")


async def _both_paths(answer: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    outcomes = []
    for force in (False, True):
        seen: list[type[Any]] = []
        async with (
            _RawServer(answer) as server,
            Client(server.url, call_timeout=dt.timedelta(seconds=3)) as client,
        ):
            await client.delete(MG, 1)  # connects: the stream may take the fast path
            if force:
                await _force_grpclib_path(client)
            outcomes.append(await _outcome(client, seen))
            assert (PendingStream in seen) is (not force) or not seen
            assert _processor_streams(client) == {}
            with anyio.fail_after(5):
                await client.delete(MG, 1)  # the client goes on
    return outcomes[0], outcomes[1]


def _event(dispatch_id: int) -> bytes:
    dispatch = Dispatch(
        metadata=DispatchMetadata(dispatch_id=dispatch_id), data=DispatchData(type="T")
    )
    return _framed(bytes(StreamMicrogridDispatchesResponse(dispatch=dispatch, event=Event.CREATED)))


async def _messages_over_time(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    for dispatch_id in range(1, 6):
        call.data(_event(dispatch_id))
        await asyncio.sleep(0.01)
    call.headers(_OK_TRAILERS, end=True)


async def _messages_across_frames(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    data = b"".join(_event(i) for i in range(1, 4))
    for start in range(0, len(data), 7):  # boundaries fall inside prefixes and bodies
        call.data(data[start : start + 7])
        await asyncio.sleep(0)
    call.headers(_OK_TRAILERS, end=True)


async def _messages_then_reset(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_event(1) + _event(2))
    await asyncio.sleep(0.05)
    call.h2.reset_stream(call.id, 2)
    call.send()


async def _error_after_messages(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_event(1) + _event(2))
    call.headers([(b"grpc-status", b"7"), (b"grpc-message", b"denied"), (b"x-md", b"1")], True)


async def _no_trailers(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_event(1), end=True)


async def _compressed(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_event(1) + b"\1" + _event(2)[1:])
    call.headers(_OK_TRAILERS, end=True)


async def _truncated(call: _Answer) -> None:
    call.headers(_OK_HEADERS)
    call.data(_event(1) + _event(2)[:-3])
    call.headers(_OK_TRAILERS, end=True)


async def _trailers_only_ok(call: _Answer) -> None:
    call.headers(_OK_HEADERS + _OK_TRAILERS, end=True)


async def _ack_then_silence(call: _Answer) -> None:
    call.headers(_OK_HEADERS)


@pytest.mark.parametrize(
    "answer",
    [
        _messages_over_time,
        _messages_across_frames,
        _trailers_only_ok,
        _status_503_left_open,
        _status_418_then_reset,
        _percent_encoded_error,
        _error_after_messages,
        _wrong_content_type,
    ],
)
async def test_an_odd_answer_comes_out_as_on_grpclibs_path(answer: Any) -> None:
    fast, slow = await _both_paths(answer)
    assert fast == slow
    assert fast[-1] != "hang"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_reset_mid_message, (None, "Unavailable")),
        (_messages_then_reset, (None, 1, 2, "Unavailable")),
        (_goaway, (None, "Unavailable")),
        (_ack_then_silence, (None, "hang")),
    ],
)
async def test_a_broken_stream_ends_alike_on_both_paths(answer: Any, expected: tuple[Any]) -> None:
    """The same messages, then the same typed error (grpclib words a GOAWAY differently)."""
    for outcome in await _both_paths(answer):
        assert outcome[: len(expected)] == expected


@pytest.mark.parametrize(
    ("answer", "fast_error", "grpclib_error"),
    [
        (_compressed, "Internal", "NotImplementedError"),
        (_truncated, "Internal", "AssertionError"),
    ],
)
async def test_a_broken_message_is_a_typed_error_where_grpclib_raises_a_raw_one(
    answer: Any, fast_error: str, grpclib_error: str
) -> None:
    """The messages before it arrive on both paths."""
    fast, slow = await _both_paths(answer)
    assert fast[:2] == slow[:2] == (None, 1)
    assert (fast[2], slow[2]) == (fast_error, grpclib_error)


async def test_a_stream_ended_without_trailers_is_an_unknown_error_not_a_hang() -> None:
    fast, slow = await _both_paths(_no_trailers)
    assert fast[:3] == (None, 1, "UnknownError")
    assert slow[:2] == (None, 1)


async def test_leaving_a_stream_early_resets_it_and_the_server_sees_the_cancel() -> None:
    async with running_server() as server, Client(server.url) as client:
        await connect_shared(client.channel)
        responses = server_stream(
            client.channel, requests.stream(MG), open_limit=3, server_url=client.server_url
        )
        with anyio.fail_after(5):
            assert await anext(responses) is None
            assert any(isinstance(s, PendingStream) for s in _processor_streams(client).values())
            await server.service.wait_for_streams(MG, 1)
            await responses.aclose()
            assert _processor_streams(client) == {}
            await server.service.wait_for_streams(MG, 0)


async def test_a_killed_connection_ends_every_open_stream_as_unavailable() -> None:
    async with running_server() as server, Client(server.url) as client:
        await connect_shared(client.channel)
        streams = [
            server_stream(
                client.channel, requests.stream(MG + i), open_limit=3, server_url=client.server_url
            )
            for i in range(20)
        ]
        with anyio.fail_after(10):
            for stream in streams:
                assert await anext(stream) is None
            protocol: Any = client.channel._protocol
            protocol.connection._transport.abort()
            for stream in streams:
                with pytest.raises(Exception) as info:
                    await anext(stream)
                assert type(info.value).__name__ == "Unavailable"
        assert _processor_streams(client) == {}


async def _buffered_by_client(client: Client) -> int:
    """Bytes the client holds received and unread (the fast path's queues)."""
    return sum(
        len(message) + 5
        for stream in _processor_streams(client).values()
        if isinstance(stream, PendingStream)
        for message in stream.messages
    )


@pytest.mark.parametrize("force", [False, True], ids=["fast", "grpclib"])
async def test_a_slow_reader_holds_the_server_back_and_is_cut_off(force: bool) -> None:
    """A reader that falls behind is the server's slow subscriber on both paths.

    The writes push more than the stream's 4 MiB window: DATA acknowledged on
    arrival whatever the reader does made the client an endless sink (every
    byte buffered in the client, the server's cut-off never reached).
    """
    events, blob = 150, "x" * 45_000  # 6.7 MB: beyond the window plus the read-ahead
    async with (
        running_server(stream_buffer_size=4) as server,
        Client(server.url) as client,
        Client(server.url) as writer,
    ):
        await connect_shared(client.channel)
        if force:
            await _force_grpclib_path(client)
        responses = server_stream(
            client.channel, requests.stream(MG), open_limit=3, server_url=client.server_url
        )
        async with aclosing(responses):
            with anyio.fail_after(20):
                assert await anext(responses) is None
                await server.service.wait_for_streams(MG, 1)
                for _ in range(events):  # the reader reads nothing meanwhile
                    await writer.create(MG, "T", "NOW", None, [1], payload={"blob": blob})
                await server.service.wait_for_streams(MG, 0)  # cut off
                assert await _buffered_by_client(client) <= (1 << 18) + (4 << 20) + 50_000
                got = 0
                with pytest.raises(Exception) as info:
                    async for _ in responses:
                        got += 1
            assert type(info.value).__name__ == "ResourceExhausted"
            assert "fell more than 4 events behind" in str(info.value)
            assert 4 <= got < events
        assert _processor_streams(client) == {}
