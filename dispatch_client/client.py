"""`Client`: the facade over the generated grpclib stub.

It adds only what the wire cannot: connection lifecycle, auth metadata,
checks before sending, the `"NOW"` start time, the update mask, pagination,
typed errors and shared streams. Every value returned is the generated message.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from grpclib.const import Cardinality

from . import _defaults
from ._proto.frequenz.api.common.v1alpha8.pagination import PaginationParams
from ._proto.frequenz.api.common.v1alpha8.types import Interval
from ._proto.frequenz.api.dispatch.v1 import (
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    Dispatch,
    DispatchData,
    DispatchFilter,
    GetMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    MicrogridDispatchServiceStub,
    RecurrenceRule,
    SortField,
    SortOptions,
    SortOrder,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
)
from ._runtime import trio_aware, trio_aware_disconnect
from .connection import (
    ChannelOptions,
    ServerTarget,
    absorb_leaked_cancel,
    open_channel,
    parse_server_url,
    translate_error,
)
from .errors import ClientNotConnected, UnknownError
from .targets import TargetLike, to_target
from .update import build_update
from .validation import (
    check_aware,
    check_dispatch_data,
    check_duration,
    check_start_time,
    payload_to_struct,
)

if TYPE_CHECKING:
    from grpclib.client import Channel

    from .schedule import RunTransition
    from .streaming import Backoff, DispatchEvent, SharedStream, StreamHub, StreamStatus

__all__ = ["START_TIME_GRACE", "Client", "SortSpec", "build_create_request"]

_log = logging.getLogger(__name__)
_STREAM_PATH = "/frequenz.api.dispatch.v1.MicrogridDispatchService/StreamMicrogridDispatches"
_T = TypeVar("_T")
_MAX_UINT64 = 2**64 - 1

START_TIME_GRACE = dt.timedelta(seconds=1)
"""How far in the past a start time may be and still count as "now".

`datetime.now(UTC)` computed just before a call is a moment old when checked;
that is not the mistake the past-start check is meant to catch.
"""

SortSpec = SortOptions | SortField | tuple[SortField, SortOrder]
"""A sort for `Client.list`: a field (ascending), a (field, order) pair or `SortOptions`."""


class _Credentials:
    """The API key and sign secret, kept out of every repr."""

    __slots__ = ("key", "sign_secret")

    def __init__(self, key: str | None, sign_secret: str | None) -> None:
        self.key = key
        self.sign_secret = sign_secret

    def __repr__(self) -> str:
        return "_Credentials(<hidden>)"


def _seconds(value: dt.timedelta | None, name: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, dt.timedelta) or value <= dt.timedelta(0):
        raise ValueError(f"{name} must be a positive timedelta or None, got {value!r}")
    return value.total_seconds()


def _check_uint64(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UINT64:
        raise ValueError(f"{name} must be an int in 0..2**64-1, got {value!r}")
    return value


def _sort_options(sort: SortSpec | None) -> SortOptions | None:
    if sort is None or isinstance(sort, SortOptions):
        return sort
    if isinstance(sort, SortField):
        return SortOptions(sort_field=sort, sort_order=SortOrder.ASCENDING)
    if isinstance(sort, tuple) and len(sort) == 2:
        field, order = sort
        if isinstance(field, SortField) and isinstance(order, SortOrder):
            return SortOptions(sort_field=field, sort_order=order)
    raise ValueError(
        f"sort must be a SortField, (SortField, SortOrder) or SortOptions, got {sort!r}"
    )


def _interval(start: dt.datetime | None, end: dt.datetime | None, name: str) -> Interval | None:
    if start is None and end is None:
        return None
    return Interval(
        start_time=None if start is None else check_aware(start, f"{name}_from"),
        end_time=None if end is None else check_aware(end, f"{name}_to"),
    )


def build_create_request(
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
    now: dt.datetime | None = None,
) -> CreateMicrogridDispatchRequest:
    """Check the arguments of `Client.create` and build its request; raise `ValueError` if bad."""
    now = now or dt.datetime.now(dt.UTC)
    _check_uint64(microgrid_id, "microgrid_id")
    if not isinstance(type, str) or not type:
        raise ValueError(f"type must be a non-empty str, got {type!r}")
    start_immediately = isinstance(start_time, str) and start_time.upper() == "NOW"
    if isinstance(start_time, str) and not start_immediately:
        raise ValueError(f'start_time must be an aware datetime or "NOW", got {start_time!r}')
    start = (
        None
        if start_immediately
        else check_start_time(start_time, now=now, allowance=START_TIME_GRACE)
    )
    for name, flag in (("active", active), ("dry_run", dry_run)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    if recurrence is not None and not isinstance(recurrence, RecurrenceRule):
        raise ValueError(
            f"recurrence must be a RecurrenceRule, got {recurrence.__class__.__name__}"
        )
    data = DispatchData(
        type=type,
        start_time=start,
        duration=check_duration(duration),
        target=to_target(target),
        is_active=active,
        is_dry_run=dry_run,
        payload=payload_to_struct(payload),
        recurrence=recurrence,
    )
    check_dispatch_data(
        data,
        now=now,
        allowance=START_TIME_GRACE,
        start_immediately=start_immediately,
        payload_checked=True,  # by payload_to_struct above
    )
    return CreateMicrogridDispatchRequest(
        microgrid_id=microgrid_id,
        dispatch_data=data,
        start_immediately=True if start_immediately else None,
    )


class Client:
    """A client of the Dispatch API.

    ```python
    async with Client("grpc://dispatch.example.com", auth_key=KEY) as client:
        dispatch = await client.create(1, "CHARGE", "NOW", timedelta(hours=1), [7])
        async for page in client.list(1, active=True):
            ...
    ```

    `auth_key` (alias `key`) may be omitted only for servers that check no
    keys, such as a local reference server started without any.

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

        `stream_buffer_size` is each stream consumer's default buffer,
        `stream_backoff` the reconnect policy of shared streams and
        `on_stream_status` a hook told of every stream state change.
        """
        if auth_key is not None and key is not None and auth_key != key:
            raise ValueError("auth_key and key are aliases; pass only one of them")
        auth_key = auth_key if auth_key is not None else key
        for name, value in (("auth_key", auth_key), ("sign_secret", sign_secret)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty str")
        if sign_secret is not None and auth_key is None:
            raise ValueError("sign_secret needs an auth_key to sign")
        self._credentials = _Credentials(auth_key, sign_secret)
        self._call_timeout = _seconds(call_timeout, "call_timeout")
        self._stream_timeout = _seconds(stream_timeout, "stream_timeout")
        self._channel_defaults = channel_defaults or ChannelOptions()
        self._target: ServerTarget = parse_server_url(server_url, self._channel_defaults)
        self._connected = False
        self._channel: Channel | None = None
        self._channel_loop: asyncio.AbstractEventLoop | None = None
        self._stub: MicrogridDispatchServiceStub | None = None
        self._hub: StreamHub | None = None
        if isinstance(stream_buffer_size, bool) or not isinstance(stream_buffer_size, int):
            raise ValueError(
                f"stream_buffer_size must be a positive int, got {stream_buffer_size!r}"
            )
        if stream_buffer_size < 1:
            raise ValueError(
                f"stream_buffer_size must be a positive int, got {stream_buffer_size!r}"
            )
        self._stream_buffer_size = stream_buffer_size
        self._stream_backoff = stream_backoff
        self._on_stream_status = on_stream_status
        if connect:
            self.connect()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"Client({self._target.url!r}, {state})"

    # -- connection lifecycle -------------------------------------------------

    @property
    def server_url(self) -> str:
        """The server URL (it never carries credentials)."""
        return self._target.url

    @property
    def channel_defaults(self) -> ChannelOptions:
        """The channel options used where the server URL does not say otherwise."""
        return self._channel_defaults

    @property
    def channel_options(self) -> ChannelOptions:
        """The effective channel options: the defaults overridden by the URL."""
        return self._target.options

    @property
    def is_connected(self) -> bool:
        """Whether `connect()` was called and `disconnect()` was not since."""
        return self._connected

    def connect(self, server_url: str | None = None) -> None:
        """Connect, or switch to `server_url`; a no-op when already connected there.

        The grpclib channel itself opens lazily, on the first call.
        """
        if server_url is not None and server_url != self._target.url:
            target = parse_server_url(server_url, self._channel_defaults)
            if target.url != self._target.url:
                self._drop_channel()
                self._target = target
        self._connected = True

    @trio_aware_disconnect
    async def disconnect(self) -> None:
        """Close shared streams and the channel; calling it again does nothing."""
        hub, self._hub = self._hub, None
        self._connected = False
        try:
            if hub is not None:
                await hub.aclose()
        finally:
            self._drop_channel()

    async def __aenter__(self) -> Self:
        self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    def _drop_channel(self) -> None:
        channel, loop = self._channel, self._channel_loop
        self._channel = self._channel_loop = self._stub = None
        # A channel whose loop has closed can no longer be closed from here; its
        # socket goes with garbage collection (disconnect before the loop ends).
        if channel is None or loop is None or loop.is_closed():
            return
        if loop.is_running() and loop is not asyncio._get_running_loop():
            # The loop runs in another thread (the trio bridge's): close it there.
            loop.call_soon_threadsafe(channel.close)
        else:
            channel.close()

    @property
    def channel(self) -> Channel:
        """The grpclib channel; raises `ClientNotConnected` when not connected.

        grpclib binds a channel to one event loop, so it is (re)created inside
        the running loop: a client built outside any loop, or reused by a later
        `asyncio.run` after `disconnect()`, gets a channel of the loop it runs in.
        """
        if not self._connected:
            raise ClientNotConnected(
                "the client is not connected; call connect() first", server_url=self.server_url
            )
        loop = asyncio.get_running_loop()
        if self._channel is None or self._channel_loop is not loop:
            self._drop_channel()
            _log.debug("opening channel to %s", self.server_url)
            self._channel, self._channel_loop = open_channel(
                self._target,
                key=self._credentials.key,
                sign_secret=self._credentials.sign_secret,
            )
        return self._channel

    def _service(self) -> MicrogridDispatchServiceStub:
        channel = self.channel
        if self._stub is None or self._stub.channel is not channel:
            self._stub = MicrogridDispatchServiceStub(channel)
        return self._stub

    async def _call(self, call: Callable[[MicrogridDispatchServiceStub], Awaitable[_T]]) -> _T:
        service = self._service()
        try:
            with absorb_leaked_cancel():
                return await call(service)
        except Exception as exc:
            error = translate_error(exc, self.server_url)
            if error is None or error is exc:
                raise
            raise error from exc

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
        """Create a dispatch; `start_time="NOW"` starts it as soon as the server stores it.

        Raises `ValueError` before sending for a naive or past start time, a
        negative duration, a payload that is not JSON-like (or nested deeper
        than 5 levels, or over 50 KB) and an invalid recurrence rule.
        """
        request = build_create_request(
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
        response = await self._call(
            lambda s: s.create_microgrid_dispatch(request, timeout=self._call_timeout)
        )
        return self._require(response.dispatch)

    @trio_aware
    async def get(self, microgrid_id: int, dispatch_id: int) -> Dispatch:
        """Fetch one dispatch; raises `NotFound` if it does not exist."""
        request = GetMicrogridDispatchRequest(
            microgrid_id=_check_uint64(microgrid_id, "microgrid_id"),
            dispatch_id=_check_uint64(dispatch_id, "dispatch_id"),
        )
        response = await self._call(
            lambda s: s.get_microgrid_dispatch(request, timeout=self._call_timeout)
        )
        return self._require(response.dispatch)

    @trio_aware
    async def delete(self, microgrid_id: int, dispatch_id: int) -> None:
        """Delete a dispatch; raises `NotFound` if it does not exist."""
        request = DeleteMicrogridDispatchRequest(
            microgrid_id=_check_uint64(microgrid_id, "microgrid_id"),
            dispatch_id=_check_uint64(dispatch_id, "dispatch_id"),
        )
        await self._call(lambda s: s.delete_microgrid_dispatch(request, timeout=self._call_timeout))

    @trio_aware
    async def update(
        self, microgrid_id: int, dispatch_id: int, new_fields: Mapping[str, Any]
    ) -> Dispatch:
        """Change the fields named in `new_fields` (see `dispatch_client.update`) and only those."""
        _check_uint64(microgrid_id, "microgrid_id")
        _check_uint64(dispatch_id, "dispatch_id")
        update, mask = build_update(
            new_fields, now=dt.datetime.now(dt.UTC), allowance=START_TIME_GRACE
        )
        request = UpdateMicrogridDispatchRequest(
            microgrid_id=microgrid_id, dispatch_id=dispatch_id, update_mask=mask, update=update
        )
        response = await self._call(
            lambda s: s.update_microgrid_dispatch(request, timeout=self._call_timeout)
        )
        return self._require(response.dispatch)

    def _require(self, dispatch: Dispatch | None) -> Dispatch:
        if dispatch is None:
            raise UnknownError("the server answered without a dispatch", server_url=self.server_url)
        return dispatch

    # -- listing --------------------------------------------------------------

    @trio_aware
    async def list(
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

        Time filters take aware datetimes: `*_from` is inclusive, `*_to`
        exclusive. `filter_queries` are OR-ed: `"#12"` matches dispatch 12, any
        other text dispatches whose type contains it. Empty pages are skipped.
        """
        request = ListMicrogridDispatchesRequest(
            microgrid_id=_check_uint64(microgrid_id, "microgrid_id"),
            filter=self._filter(
                target_components=target_components,
                start=(start_from, start_to),
                end=(end_from, end_to),
                updated=(update_from, update_to),
                active=active,
                dry_run=dry_run,
                recurring=recurring,
                dispatch_ids=dispatch_ids,
                filter_queries=filter_queries,
            ),
            sort_options=_sort_options(sort),
        )
        if page_size is not None:
            if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
                raise ValueError(f"page_size must be a positive int, got {page_size!r}")
            request.pagination_params = PaginationParams(page_size=page_size)
        seen_tokens: set[str] = set()
        while True:
            response = await self._call(
                lambda s: s.list_microgrid_dispatches(request, timeout=self._call_timeout)
            )
            if response.dispatches:
                yield list(response.dispatches)
            info = response.pagination_info
            token = info.next_page_token if info is not None else None
            # A token seen before would make the loop endless; stop instead.
            if not token or token in seen_tokens:
                return
            seen_tokens.add(token)
            # page_size and page_token are a oneof: later pages carry only the token.
            request.pagination_params = PaginationParams(page_token=token)

    @staticmethod
    def _filter(
        *,
        target_components: Iterable[TargetLike],
        start: tuple[dt.datetime | None, dt.datetime | None],
        end: tuple[dt.datetime | None, dt.datetime | None],
        updated: tuple[dt.datetime | None, dt.datetime | None],
        active: bool | None,
        dry_run: bool | None,
        recurring: bool | None,
        dispatch_ids: Iterable[int],
        filter_queries: Iterable[str],
    ) -> DispatchFilter:
        for name, flag in (("active", active), ("dry_run", dry_run), ("recurring", recurring)):
            if flag is not None and not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool or None, got {flag!r}")
        if isinstance(filter_queries, str):
            filter_queries = [filter_queries]
        queries = list(filter_queries)
        for query in queries:
            if not isinstance(query, str):
                raise ValueError(f"filter_queries must be strings, got {query!r}")
        return DispatchFilter(
            targets=[to_target(t) for t in target_components],
            is_active=active,
            is_dry_run=dry_run,
            is_recurring=recurring,
            start_time_interval=_interval(*start, "start"),
            end_time_interval=_interval(*end, "end"),
            update_time_interval=_interval(*updated, "update"),
            dispatch_ids=[_check_uint64(i, "dispatch_ids item") for i in dispatch_ids],
            queries=queries,
        )

    @trio_aware
    async def dispatches(self, microgrid_id: int, **filters: Any) -> AsyncGenerator[Dispatch, None]:
        """Yield every matching dispatch across all pages; takes `list`'s filters."""
        async with aclosing(self.list(microgrid_id, **filters)) as pages:
            async for page in pages:
                for dispatch in page:
                    yield dispatch

    # -- streams --------------------------------------------------------------

    async def _open_stream(
        self, microgrid_id: int
    ) -> AsyncGenerator[StreamMicrogridDispatchesResponse | None, None]:
        """Open one StreamMicrogridDispatches call; failures surface as typed errors.

        Yields `None` once the server's initial metadata has arrived: from then
        on the server has registered the subscription, which lets `watch()`
        list without a gap between the snapshot and the live events.
        """
        request = StreamMicrogridDispatchesRequest(
            microgrid_id=_check_uint64(microgrid_id, "microgrid_id")
        )
        channel = self.channel
        try:
            async with channel.request(
                _STREAM_PATH,
                Cardinality.UNARY_STREAM,
                StreamMicrogridDispatchesRequest,
                StreamMicrogridDispatchesResponse,
                timeout=self._stream_timeout,
            ) as stream:
                await stream.send_message(request, end=True)
                await stream.recv_initial_metadata()
                yield None
                async for response in stream:
                    yield response
        except Exception as exc:
            error = translate_error(exc, self.server_url)
            if error is None or error is exc:
                raise
            raise error from exc

    def _stream_hub(self) -> StreamHub:
        if not self._connected:
            raise ClientNotConnected(
                "the client is not connected; call connect() first", server_url=self.server_url
            )
        if self._hub is None:
            # Imported here: unary-only users never pay for streaming (and anyio).
            from .streaming import StreamHub

            self._hub = StreamHub(
                open_stream=self._open_stream,
                list_dispatches=self.dispatches,
                server_url=self.server_url,
                buffer_size=self._stream_buffer_size,
                backoff=self._stream_backoff,
                on_status=self._on_stream_status,
            )
        return self._hub

    @trio_aware
    def stream(self, microgrid_id: int, **kwargs: Any) -> AsyncGenerator[DispatchEvent, None]:
        """Yield `DispatchEvent`s of one microgrid from its shared stream."""
        return self._stream_hub().subscribe(microgrid_id, **kwargs)

    @trio_aware
    def watch(self, microgrid_id: int, **kwargs: Any) -> AsyncGenerator[DispatchEvent, None]:
        """Yield a snapshot, then live events that survive reconnects (see `streaming`)."""
        return self._stream_hub().watch(microgrid_id, **kwargs)

    @trio_aware
    def running(
        self, microgrid_id: int, type: str | None = None
    ) -> AsyncGenerator[RunTransition, None]:
        """Yield a `RunTransition` whenever a dispatch of the microgrid starts or stops running.

        Built on `watch()`; see `dispatch_client.schedule` for what is reported.
        A slow consumer makes the watch re-list rather than fail: only the
        current set of dispatches matters for the schedule.
        """
        from .schedule import running as run_transitions

        return run_transitions(self.watch(microgrid_id, overflow="resync"), type=type)

    @property
    def streams(self) -> Mapping[int, SharedStream]:
        """The shared per-microgrid streams open right now, by microgrid id."""
        if self._hub is None:
            return MappingProxyType({})
        return self._hub.streams
