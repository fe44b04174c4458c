"""`Client`: the facade over the Dispatch API's gRPC service.

It adds only what the wire cannot: connection lifecycle, auth metadata, checks
before sending, the `"NOW"` start time, the update mask, pagination, typed errors
and shared streams. Every value returned is the generated message. Each call
method reads build (`requests`) → call (`connection.unary`, errors mapped by
`errors.map_errors`) → unwrap.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from . import _defaults, requests
from ._client_streams import ClientStreams
from ._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    RecurrenceRule,
)
from ._runtime import trio_aware, trio_aware_disconnect
from .connection import (
    ChannelOptions,
    Credentials,
    LoopChannel,
    ServerTarget,
    bound_keep_alive,
    parse_server_url,
    seconds_or_none,
    unary,
)
from .errors import ClientNotConnected, UnknownError
from .requests import START_TIME_GRACE, SortSpec
from .targets import TargetLike
from .validation import check_positive_int

if TYPE_CHECKING:
    from grpclib.client import Channel

    from ._proto.frequenz.api.dispatch.v1 import (
        ListMicrogridDispatchesRequest,
        ListMicrogridDispatchesResponse,
    )
    from .streaming import Backoff, StreamHub, StreamStatus

__all__ = ["START_TIME_GRACE", "Client", "SortSpec"]

_Resp = TypeVar("_Resp")


class Client(ClientStreams):
    """A client of the Dispatch API.

    ```python
    async with Client("grpc://dispatch.example.com", auth_key=KEY) as client:
        dispatch = await client.create(1, "CHARGE", "NOW", timedelta(hours=1), [7])
        async for page in client.list(1, active=True):
            ...
    ```

    Every call raises `ValueError` naming the argument before sending when an
    argument is wrong, `ClientNotConnected` when the client is not connected,
    and otherwise a `DispatchApiError` subclass for the gRPC status of a
    failed call (`Unavailable` when the server cannot be reached).

    Inside trio (directly or as anyio's backend) the same calls work: the
    client then runs grpclib on an asyncio loop in a thread of its own, which
    `disconnect()` stops (see `dispatch_client._trio`).
    """

    def __init__(
        self,
        server_url: str,
        *,
        auth_key: str | None = None,
        key: str | None = None,
        sign_secret: str | None = None,
        connect: bool = True,
        call_timeout: dt.timedelta | None = _defaults.CALL_TIMEOUT,
        stream_timeout: dt.timedelta | None = _defaults.STREAM_TIMEOUT,
        channel_defaults: ChannelOptions | None = None,
        stream_buffer_size: int = _defaults.STREAM_BUFFER_SIZE,
        stream_backoff: Backoff | None = None,
        on_stream_status: Callable[[StreamStatus], None] | None = None,
    ) -> None:
        """Check the URL and options now; the channel opens on first use in a running loop.

        Args:
            server_url: `grpc://host[:port][?options]` (see `dispatch_client.connection`);
                TLS and port 443 unless it says otherwise. Never credentials.
            auth_key: the API key sent with every call; may be omitted only
                for servers that check no keys (e.g. a local reference server).
            key: alias of `auth_key`.
            sign_secret: secret to sign every request with (needs `auth_key`).
            connect: call `connect()` now.
            call_timeout: deadline of each unary call (None: no deadline).
            stream_timeout: the longest a stream's dead connection may go
                unnoticed before the stream re-opens (keep-alive pings are made
                frequent enough); streams have no deadline. None: keep-alive
                settings alone decide (80 s by default).
            channel_defaults: channel options the URL's parameters override.
            stream_buffer_size: events each stream consumer may fall behind
                by, by default (an int >= 1).
            stream_backoff: the reconnect policy of shared streams.
            on_stream_status: called with every stream state change.

        Raises:
            ValueError: the URL or an option is invalid, or `auth_key` and
                `key` differ.
        """
        if auth_key is not None and key is not None and auth_key != key:
            raise ValueError("auth_key and key are aliases; pass only one of them")
        self._credentials = Credentials(auth_key if auth_key is not None else key, sign_secret)
        self._call_timeout = seconds_or_none(call_timeout, "call_timeout")
        self._stream_timeout = seconds_or_none(stream_timeout, "stream_timeout")
        self._channel_defaults = channel_defaults or ChannelOptions()
        self._conn = LoopChannel(self._parse(server_url), self._credentials)
        self._connected = False
        self._hub: StreamHub | None = None
        self._stream_buffer_size = check_positive_int(stream_buffer_size, "stream_buffer_size")
        self._stream_backoff = stream_backoff
        self._on_stream_status = on_stream_status
        if connect:
            self.connect()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"Client({self._conn.target.url!r}, {state})"

    # -- connection lifecycle -------------------------------------------------

    @property
    def server_url(self) -> str:
        """The server URL (it never carries credentials)."""
        return self._conn.target.url

    @property
    def channel_defaults(self) -> ChannelOptions:
        """The channel options used where the server URL does not say otherwise."""
        return self._channel_defaults

    @property
    def channel_options(self) -> ChannelOptions:
        """The effective channel options: the defaults overridden by the URL."""
        return self._conn.target.options

    @property
    def is_connected(self) -> bool:
        """Whether `connect()` was called and `disconnect()` was not since."""
        return self._connected

    def connect(self, server_url: str | None = None) -> None:
        """Connect, or switch to `server_url`; a no-op when already connected there.

        The grpclib channel itself opens lazily, on the first call.

        Args:
            server_url: a new server URL, or None to keep the current one.

        Raises:
            ValueError: `server_url` is invalid (the client keeps its old URL).
        """
        if server_url is not None and server_url != self._conn.target.url:
            target = self._parse(server_url)
            if target.url != self._conn.target.url:
                self._conn.close()
                self._conn = LoopChannel(target, self._credentials)
        self._connected = True

    def _parse(self, server_url: str) -> ServerTarget:
        target = parse_server_url(server_url, self._channel_defaults)
        return replace(target, options=bound_keep_alive(target.options, self._stream_timeout))

    @trio_aware_disconnect
    async def disconnect(self) -> None:
        """Close shared streams and the channel; calling it again does nothing.

        Open `stream()`/`watch()` generators end; calls in flight fail.
        """
        hub, self._hub = self._hub, None
        self._connected = False
        try:
            if hub is not None:
                await hub.aclose()
        finally:
            self._conn.close()

    async def __aenter__(self) -> Self:
        """Connect (see `connect()`) and return the client."""
        self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Disconnect (see `disconnect()`)."""
        await self.disconnect()

    @property
    def channel(self) -> Channel:
        """The grpclib channel of the running event loop, opened there on first use.

        Raises:
            ClientNotConnected: the client is not connected.
        """
        self._check_connected()
        return self._conn.get()

    def _check_connected(self) -> None:
        if not self._connected:
            raise ClientNotConnected(
                "the client is not connected; call connect() first", server_url=self.server_url
            )

    def _unary(self, call: requests.Call[Any, _Resp]) -> Coroutine[Any, Any, _Resp]:
        # Not a coroutine itself: `unary`'s is awaited directly, one frame less per call.
        # The running loop is looked up once per call (each lookup is a getpid() system call).
        self._check_connected()
        loop = asyncio.get_running_loop()
        return unary(
            self._conn.get(loop),
            call,
            time_limit=self._call_timeout,
            server_url=self.server_url,
            loop=loop,
        )

    def _unwrap(self, dispatch: Dispatch | None) -> Dispatch:
        if dispatch is None:
            raise UnknownError("the server answered without a dispatch", server_url=self.server_url)
        return dispatch

    # -- unary calls ----------------------------------------------------------

    @trio_aware
    async def create(
        self,
        microgrid_id: int,
        type: str,
        start_time: dt.datetime | Literal["NOW"],
        duration: dt.timedelta | None,
        target: TargetLike,
        *,
        active: bool = True,
        dry_run: bool = False,
        payload: Mapping[str, Any] | None = None,
        recurrence: RecurrenceRule | None = None,
    ) -> Dispatch:
        """Create a dispatch.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            type: the dispatch type (free text the consumers agree on), non-empty.
            start_time: an aware datetime not in the past, or `"NOW"` to start
                as soon as the server stores it (at the server's clock).
            duration: how long each run lasts (sent in whole seconds), or None
                for unlimited.
            target: component ids, categories or types (see `to_target`).
            active: whether the dispatch is active.
            dry_run: whether the dispatch is a dry run.
            payload: a JSON-like dict, at most 5 levels deep and 50 KB encoded.
            recurrence: the recurrence rule, or None for a single run.

        Returns:
            The dispatch as stored, with its id and timestamps in `metadata`.

        Raises:
            ValueError: before sending, for a naive or past start time, a
                negative duration, a payload that is not JSON-like or too
                large, an invalid recurrence rule or target.
            ClientNotConnected: the client is not connected.
            DispatchApiError: the call failed (a subclass per gRPC status).
        """
        call = requests.create(
            microgrid_id,
            type,
            start_time,
            duration,
            target,
            active=active,
            dry_run=dry_run,
            payload=payload,
            recurrence=recurrence,
        )
        return self._unwrap((await self._unary(call)).dispatch)

    @trio_aware
    async def get(self, microgrid_id: int, dispatch_id: int) -> Dispatch:
        """Fetch one dispatch.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            dispatch_id: the dispatch, an int in 0..2**64-1.

        Returns:
            The dispatch.

        Raises:
            ValueError: an id is not an int in range (before sending).
            NotFound: the dispatch does not exist.
            ClientNotConnected: the client is not connected.
            DispatchApiError: the call failed otherwise.
        """
        call = requests.get(microgrid_id, dispatch_id)
        return self._unwrap((await self._unary(call)).dispatch)

    @trio_aware
    async def delete(self, microgrid_id: int, dispatch_id: int) -> None:
        """Delete a dispatch.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            dispatch_id: the dispatch, an int in 0..2**64-1.

        Raises:
            ValueError: an id is not an int in range (before sending).
            NotFound: the dispatch does not exist.
            ClientNotConnected: the client is not connected.
            DispatchApiError: the call failed otherwise.
        """
        await self._unary(requests.delete(microgrid_id, dispatch_id))

    @trio_aware
    async def update(
        self, microgrid_id: int, dispatch_id: int, new_fields: Mapping[str, Any]
    ) -> Dispatch:
        """Change the fields named in `new_fields` and only those.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            dispatch_id: the dispatch, an int in 0..2**64-1.
            new_fields: field name → new value; the keys are listed in
                `dispatch_client.update` (e.g. `{"duration": timedelta(hours=2)}`,
                `{"recurrence.interval": 2}`, `{"active": False}`).

        Returns:
            The dispatch as stored after the change.

        Raises:
            ValueError: before sending, for an unknown or fixed key (`type`,
                `dry_run`) or a bad value.
            NotFound: the dispatch does not exist.
            ClientNotConnected: the client is not connected.
            DispatchApiError: the call failed otherwise.
        """
        call = requests.update(microgrid_id, dispatch_id, new_fields)
        return self._unwrap((await self._unary(call)).dispatch)

    # -- listing --------------------------------------------------------------

    @trio_aware
    def list(
        self,
        microgrid_id: int,
        *,
        target_components: Iterable[TargetLike] = (),
        start_from: dt.datetime | None = None,
        start_to: dt.datetime | None = None,
        end_from: dt.datetime | None = None,
        end_to: dt.datetime | None = None,
        update_from: dt.datetime | None = None,
        update_to: dt.datetime | None = None,
        active: bool | None = None,
        dry_run: bool | None = None,
        recurring: bool | None = None,
        dispatch_ids: Iterable[int] = (),
        filter_queries: Iterable[str] = (),
        sort: SortSpec | None = None,
        page_size: int | None = None,
    ) -> AsyncGenerator[builtins.list[Dispatch], None]:
        """Yield pages of dispatches, following the server's page tokens to the end.

        Filters combine with AND; the arguments are checked on the first iteration.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            target_components: match dispatches targeting any of these.
            start_from: aware datetime; start times from it (inclusive).
            start_to: aware datetime; start times before it (exclusive).
            end_from: aware datetime; end times from it (inclusive).
            end_to: aware datetime; end times before it (exclusive).
            update_from: aware datetime; last updates from it (inclusive).
            update_to: aware datetime; last updates before it (exclusive).
            active: only active (True) or inactive (False) ones; None for both.
            dry_run: only dry runs (True) or real ones (False); None for both.
            recurring: only recurring (True) or single (False) ones; None for both.
            dispatch_ids: only these ids.
            filter_queries: OR-ed texts: `"#12"` matches dispatch 12, any other
                text dispatches whose type contains it.
            sort: a field (ascending), a (field, order) pair or `SortOptions`.
            page_size: dispatches per page (an int >= 1); None for the server's default.

        Yields:
            Each non-empty page, a list of dispatches in the requested order.

        Raises:
            ValueError: a filter is of the wrong type or out of range (before sending).
            ClientNotConnected: the client is not connected.
            DispatchApiError: a page could not be fetched.
        """
        return self._list(
            microgrid_id,
            target_components=target_components,
            start_from=start_from,
            start_to=start_to,
            end_from=end_from,
            end_to=end_to,
            update_from=update_from,
            update_to=update_to,
            active=active,
            dry_run=dry_run,
            recurring=recurring,
            dispatch_ids=dispatch_ids,
            filter_queries=filter_queries,
            sort=sort,
            page_size=page_size,
        )

    async def _list(
        self, microgrid_id: int, **filters: Any
    ) -> AsyncGenerator[builtins.list[Dispatch], None]:
        # Built here, not in `list()`: its bad filters are raised at the first iteration.
        async with aclosing(self._pages(requests.list_page(microgrid_id, **filters))) as pages:
            async for page in pages:
                yield page

    async def _pages(
        self, call: requests.Call[ListMicrogridDispatchesRequest, ListMicrogridDispatchesResponse]
    ) -> AsyncGenerator[builtins.list[Dispatch], None]:
        seen_tokens: set[str] = set()
        while True:
            response = await self._unary(call)
            if response.dispatches:
                yield list(response.dispatches)
            if (after := _next_page(call, response, seen_tokens)) is None:
                return
            call = after

    @trio_aware
    def dispatches(self, microgrid_id: int, **filters: Any) -> AsyncGenerator[Dispatch, None]:
        """Yield every matching dispatch across all pages.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            **filters: the keyword arguments of `list()`.

        Yields:
            Each dispatch, page after page.

        Raises:
            ValueError: a filter is of the wrong type or out of range (before sending).
            ClientNotConnected: the client is not connected.
            DispatchApiError: a page could not be fetched.
        """
        return self._dispatches(microgrid_id, **filters)

    async def _dispatches(
        self, microgrid_id: int, **filters: Any
    ) -> AsyncGenerator[Dispatch, None]:
        async with aclosing(self._list(microgrid_id, **filters)) as pages:
            async for page in pages:
                for dispatch in page:
                    yield dispatch

    async def _all_dispatches(self, microgrid_id: int) -> AsyncGenerator[Dispatch, None]:
        """Every dispatch of a microgrid: a shared stream's baseline and catch-up lists.

        `requests.list_all`'s call, not `list_page`'s: a fleet opening at once
        lists a thousand times, with no filters to build or check.
        """
        # The pages walked here rather than through `_pages`: one async
        # generator less per list.
        call = requests.list_all(microgrid_id)
        seen_tokens: set[str] = set()
        while True:
            response = await self._unary(call)
            for dispatch in response.dispatches:
                yield dispatch
            if (after := _next_page(call, response, seen_tokens)) is None:
                return
            call = after


def _next_page(
    call: requests.Call[ListMicrogridDispatchesRequest, ListMicrogridDispatchesResponse],
    response: ListMicrogridDispatchesResponse,
    seen_tokens: set[str],
) -> requests.Call[ListMicrogridDispatchesRequest, ListMicrogridDispatchesResponse] | None:
    """The call of the page after `response`, or None after the last (`seen_tokens` grows)."""
    info = response.pagination_info
    token = info.next_page_token if info is not None else None
    # A token seen before would make the loop endless; stop instead.
    if not token or token in seen_tokens:
        return None
    seen_tokens.add(token)
    return requests.next_page(call, token)
