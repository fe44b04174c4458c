"""What opening a stream costs the client, kept cheap without changing what is sent (issue 17, fleet)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from stream_fleet import streams_held

from dispatch_client import Client, Dispatch, Unauthenticated, requests
from dispatch_client.streaming import StreamHub, StreamState, StreamStatus
from dispatch_client.testing import running_server
from dispatch_client.wire import StreamMicrogridDispatchesResponse


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_list_all_is_list_page_without_filters(microgrid_id: int) -> None:
    # A shared stream's lists go through `list_all`: the server must see
    # exactly what `Client.list(microgrid_id)` sends.
    fast, full = requests.list_all(microgrid_id), requests.list_page(microgrid_id)
    assert (fast.path, fast.response_type) == (full.path, full.response_type)
    assert fast.request == full.request
    assert bytes(fast.request) == bytes(full.request)


@pytest.mark.parametrize("microgrid_id", [-1, 2**64, 1.0, "1", None, True])
def test_list_all_refuses_what_list_page_refuses(microgrid_id: object) -> None:
    with pytest.raises(ValueError) as full:
        requests.list_page(microgrid_id)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as fast:
        requests.list_all(microgrid_id)  # type: ignore[arg-type]
    assert str(fast.value) == str(full.value)


@pytest.mark.anyio
async def test_a_fleet_opening_as_the_client_connects_opens_once() -> None:
    # 60 microgrids: 120 HTTP/2 streams (a stream and its baseline list each),
    # all written before the reference server's SETTINGS reach the client;
    # the server held them to h2's 100 until then and dropped the connection.
    statuses: list[StreamStatus] = []
    async with (
        running_server() as server,
        Client(server.url, on_stream_status=statuses.append) as client,
        streams_held(client, server, 3000, 60),
    ):
        assert {stream.open_count for stream in client.streams.values()} == {1}
        assert not [s for s in statuses if s.state is not StreamState.CONNECTING]


@pytest.mark.anyio
async def test_an_open_stream_that_raises_at_the_call_ends_the_stream_with_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client's `open_stream` is a plain function returning the call's
    # generator: what it raises at the call must end the consumers as a failed
    # stream does, not crash the reader.
    async def no_list(_: int) -> AsyncIterator[Dispatch]:
        return
        yield  # pragma: no cover

    def refused(microgrid_id: int) -> AsyncIterator[StreamMicrogridDispatchesResponse | None]:
        raise Unauthenticated("no key", server_url="grpc://x")

    hub = StreamHub(open_stream=refused, list_dispatches=no_list, server_url="grpc://x")
    with anyio.fail_after(5), pytest.raises(Unauthenticated, match="no key"):
        async for _ in hub.subscribe(7):
            pass  # pragma: no cover
    assert "crashed" not in caplog.text
    assert not hub.streams


@pytest.mark.anyio
async def test_a_streams_list_walks_every_page_as_client_dispatches_does() -> None:
    # `_all_dispatches` (the baseline and catch-up lists) walks the pages
    # itself rather than through `_pages`: the same dispatches in the same order.
    async with running_server() as server, Client(server.url) as client:
        server.service.default_page_size = 3
        for index in range(8):
            await client.create(9, f"T{index}", "NOW", dt.timedelta(minutes=5), [1])
        listed = [dispatch async for dispatch in client._all_dispatches(9)]
        assert len(listed) == 8
        assert listed == [dispatch async for dispatch in client.dispatches(9)]
