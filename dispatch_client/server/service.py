"""The six RPCs of `MicrogridDispatchService`, with the live service's semantics.

Semantics chosen where the API leaves room (all documented in the README of
the server, `python -m dispatch_client.server --help`):

- `start_time` is stored rounded to the nearest whole second. A start time up
  to `start_time_allowance` (default 60 s) in the past is accepted, to absorb
  clock skew between client and server.
- List: `*_from` bounds are inclusive, `*_to` bounds exclusive. A dispatch
  whose series never ends (no `end_time`) counts as ending after every bound.
  `targets`: a dispatch matches when its target equals one of the given
  targets (same kind, same set of ids / categories / category-types; order
  and duplicates ignored). `queries`: `#<digits>` matches that id, any other
  text is a case-sensitive substring of the type; queries are OR-ed with each
  other and AND-ed with the other criteria.
- Update: a path in `update_mask` whose value is unset in `update` takes the
  field's proto default (`is_active` false, `duration`/`payload`/`target`
  cleared, a recurrence field reset), except `start_time`, which must be set.
  `recurrence` alone replaces the whole rule. `type` and `is_dry_run` are
  fixed at creation.
- Sorting defaults to create time, descending; an unspecified order is
  descending; ties are broken by id in the same direction.
- Page size: 0/unset means `default_page_size` (100); larger than
  `max_page_size` (1000) is clamped to it. Page tokens are opaque and carry
  the position (sort key + id of the last row) and page size, so they stay
  valid while rows are added or removed; a token is only valid with the sort
  options it was issued for.
- Streams: events of one microgrid go to every subscriber in commit order.
  Each subscriber has a buffer of `stream_buffer_size` events; one that falls
  further behind is cut off with RESOURCE_EXHAUSTED after the buffered events.
  A client leaving a stream is logged at DEBUG (grpclib says INFO).
- Bad input: every request is decoded inside the handler from its raw bytes
  (`dispatch_client.server.decoding`), so malformed bytes, out-of-range
  values, unknown enum values and too deep nesting get INVALID_ARGUMENT naming
  the field, like every rule of `dispatch_client.validation` (limits: filter
  lists of at most 1000 items, times within 0001-01-01..9999-12-31, payloads
  of at most 5 levels and 50 KiB). No request gets UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import anyio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .._logsafe import protect_logs
from .._proto.frequenz.api.common.v1alpha8.streaming import Event
from .._proto.frequenz.api.dispatch.v1 import (
    CreateMicrogridDispatchRequest,
    CreateMicrogridDispatchResponse,
    DeleteMicrogridDispatchRequest,
    DeleteMicrogridDispatchResponse,
    Dispatch,
    DispatchData,
    GetMicrogridDispatchRequest,
    GetMicrogridDispatchResponse,
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
    UpdateMicrogridDispatchResponse,
)
from ..recurrence import series_end
from ..validation import check_dispatch_data
from ._handlers import _invalid, _quiet_cancellations
from ._routing import WireHandlers
from .fanout import Fanout
from .listing import list_query, pagination_info
from .records import ListQuery, is_recurring
from .replies import (
    encode,
    get_reply,
    message_field,
)
from .stores import FanoutEvents, Replacement, Store, store_for
from .updates import apply_update, check_mask, round_to_second

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_STREAM_BUFFER_SIZE",
    "MAX_PAGE_SIZE",
    "START_TIME_ALLOWANCE",
    "DispatchService",
]

_log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_STREAM_BUFFER_SIZE = 1024
START_TIME_ALLOWANCE = dt.timedelta(seconds=60)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _after(current: Dispatch, now: dt.datetime) -> dt.datetime:
    """The update time of a new version of `current`: `now`, or just after the last one.

    Clients order a dispatch's versions by update time (a stream's catch-up
    keeps the newer one), so it must grow even when this server's clock is
    behind the one that stamped the last version (a restart after the clock
    was set back, a replica whose clock is behind).
    """
    last = current.metadata.update_time if current.metadata is not None else None
    if last is None or now > last:
        return now
    return last + dt.timedelta(microseconds=1)


def _not_found(microgrid_id: int, dispatch_id: int) -> NoReturn:
    raise GRPCError(
        Status.NOT_FOUND, f"dispatch {dispatch_id} not found in microgrid {microgrid_id}"
    )


async def _end_time(data: DispatchData) -> dt.datetime | None:
    # A long series (e.g. minutely until a far date) may take a while to
    # walk; do it off the event loop. A single run has nothing to walk: the
    # thread hand-off would cost more than the answer.
    try:
        if not is_recurring(data):
            return series_end(data)
        return await anyio.to_thread.run_sync(series_end, data)
    except (ValueError, OverflowError) as error:
        _invalid(f"recurrence cannot be evaluated: {error}")


class DispatchService(WireHandlers):
    """The servicer: pass it to a grpclib `Server` (or use `DispatchServer`).

    Open it before serving (`await service.open()` or `async with service`):
    that opens the store. `store` defaults to `store_for(db)`: SQLite (a
    file or ":memory:"), or PostgreSQL for a `postgresql://` URL.

    Observability for tests: `open_stream_count()`, `opened_stream_count()`,
    `await wait_for_streams(...)`.

    Args:
        store: where dispatches live (a `Store`); None makes `store_for(db)`.
        db: for the default store: an SQLite file, ":memory:", or a
            `postgresql://` URL (several servers may share one PostgreSQL database).
        stream_buffer_size: events buffered per stream before a slow subscriber is cut off.
        default_page_size: dispatches per list page when the request gives no size.
        max_page_size: the most dispatches per page; larger requested sizes are clamped.
        start_time_allowance: how far in the past a start time may be (clock skew).
        clock: the server's clock, returning an aware datetime.

    Raises:
        ValueError: `stream_buffer_size` is below 1.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        db: str = ":memory:",
        stream_buffer_size: int = DEFAULT_STREAM_BUFFER_SIZE,
        default_page_size: int = DEFAULT_PAGE_SIZE,
        max_page_size: int = MAX_PAGE_SIZE,
        start_time_allowance: dt.timedelta = START_TIME_ALLOWANCE,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.store = store if store is not None else store_for(db)
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.start_time_allowance = start_time_allowance
        self._clock = clock
        self._fanout = Fanout(stream_buffer_size)
        protect_logs()
        _quiet_cancellations()
        self.store_events = FanoutEvents(self._fanout)
        """The store's events and health (`store_events.watch_health(...)`)."""
        self.store.attach(self.store_events)
        # Held from the start of a write until its event is published, so
        # events leave in commit order.
        self._write_lock = anyio.Lock()

    async def __aenter__(self) -> DispatchService:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store; no-op when open."""
        await self.store.open()

    async def close(self) -> None:
        """End all streams (UNAVAILABLE) and close the store."""
        self._fanout.close()
        await self.store.close()

    # Stream counters ------------------------------------------------------------

    def open_stream_count(self, microgrid_id: int | None = None) -> int:
        """Return how many streams are subscribed now.

        Args:
            microgrid_id: count only this microgrid's streams; None counts all.

        Returns:
            The number of open streams.
        """
        return self._fanout.open_count(microgrid_id)

    def opened_stream_count(self, microgrid_id: int | None = None) -> int:
        """Return how many streams were ever opened.

        Args:
            microgrid_id: count only this microgrid's streams; None counts all.

        Returns:
            The number of streams opened since the service was made.
        """
        return self._fanout.opened_count(microgrid_id)

    async def wait_for_streams(self, microgrid_id: int | None, count: int) -> None:
        """Wait until exactly `count` streams are open (bound it with `anyio.fail_after`).

        Args:
            microgrid_id: count only this microgrid's streams; None counts all.
            count: the number of open streams to wait for.
        """
        while self.open_stream_count(microgrid_id) != count:
            await self._fanout.wait_changed()

    # RPCs -----------------------------------------------------------------------

    async def create_microgrid_dispatch(
        self, message: CreateMicrogridDispatchRequest
    ) -> CreateMicrogridDispatchResponse:
        """Validate and store a new dispatch; publish CREATED.

        Args:
            message: the request; `start_immediately` sets the start time to now.

        Returns:
            The stored dispatch with its new id, start time rounded to the second.

        Raises:
            GRPCError: INVALID_ARGUMENT naming the field for data that breaks a
                rule of `dispatch_client.validation`.
        """
        return CreateMicrogridDispatchResponse(dispatch=await self._create(message))

    async def _create(self, message: CreateMicrogridDispatchRequest) -> Dispatch:
        if message.dispatch_data is None:
            _invalid("dispatch_data is required")
        data = message.dispatch_data
        now = self._clock()
        start_immediately = bool(message.start_immediately)
        if start_immediately:
            data.start_time = now
        try:
            check_dispatch_data(
                data,
                now=now,
                allowance=self.start_time_allowance,
                start_immediately=start_immediately,
            )
        except ValueError as error:
            _invalid(str(error))
        assert data.start_time is not None
        data.start_time = round_to_second(data.start_time)
        end_time = await _end_time(data)

        async def write() -> Dispatch:
            return await self.store.insert(message.microgrid_id, data, now=now, end_time=end_time)

        dispatch = await self._write(message.microgrid_id, Event.CREATED, write)
        assert dispatch is not None
        return dispatch

    async def get_microgrid_dispatch(
        self, message: GetMicrogridDispatchRequest
    ) -> GetMicrogridDispatchResponse:
        """Return one dispatch.

        Args:
            message: the request (microgrid and dispatch id).

        Returns:
            The dispatch as stored.

        Raises:
            GRPCError: NOT_FOUND for unknown ids and ids of other microgrids.
        """
        dispatch = await self.store.get(message.microgrid_id, message.dispatch_id)
        if dispatch is None:
            _not_found(message.microgrid_id, message.dispatch_id)
        return GetMicrogridDispatchResponse(microgrid_id=message.microgrid_id, dispatch=dispatch)

    async def encoded_get(self, message: GetMicrogridDispatchRequest) -> bytes:
        """Return `bytes(await get_microgrid_dispatch(message))`, without parsing stored data.

        The server answers gets with this: the stored dispatch data goes out
        as stored (see `encoded_list`).

        Args:
            message: the request (microgrid and dispatch id).

        Returns:
            The encoded `GetMicrogridDispatchResponse`.

        Raises:
            GRPCError: as `get_microgrid_dispatch`.
        """
        dispatch = await self.store.get_encoded(message.microgrid_id, message.dispatch_id)
        if dispatch is None:
            _not_found(message.microgrid_id, message.dispatch_id)
        return get_reply(message.microgrid_id, dispatch)

    async def delete_microgrid_dispatch(
        self, message: DeleteMicrogridDispatchRequest
    ) -> DeleteMicrogridDispatchResponse:
        """Delete one dispatch; publish DELETED with its last state.

        Args:
            message: the request (microgrid and dispatch id).

        Returns:
            The ids of the deleted dispatch.

        Raises:
            GRPCError: NOT_FOUND for unknown ids and ids of other microgrids.
        """
        await self._delete(message)
        return DeleteMicrogridDispatchResponse(
            microgrid_id=message.microgrid_id, dispatch_id=message.dispatch_id
        )

    async def _delete(self, message: DeleteMicrogridDispatchRequest) -> None:
        async def write() -> Dispatch | None:
            return await self.store.delete(message.microgrid_id, message.dispatch_id)

        if await self._write(message.microgrid_id, Event.DELETED, write) is None:
            _not_found(message.microgrid_id, message.dispatch_id)

    async def update_microgrid_dispatch(
        self, message: UpdateMicrogridDispatchRequest
    ) -> UpdateMicrogridDispatchResponse:
        """Apply exactly the `update_mask` paths; publish UPDATED.

        Args:
            message: the request; see `dispatch_client.server.updates` for the mask rules.

        Returns:
            The dispatch after the update.

        Raises:
            GRPCError: INVALID_ARGUMENT naming the path or field for an empty mask,
                a fixed or unknown path or a value that breaks a rule; NOT_FOUND for
                unknown ids.
        """
        return UpdateMicrogridDispatchResponse(dispatch=await self._update(message))

    async def _update(self, message: UpdateMicrogridDispatchRequest) -> Dispatch:
        paths = list(message.update_mask.paths) if message.update_mask is not None else []
        try:
            check_mask(paths)
        except ValueError as error:
            _invalid(str(error))
        update = message.update or UpdateMicrogridDispatchRequestDispatchUpdate()
        mid, did = message.microgrid_id, message.dispatch_id

        async def change(current: Dispatch) -> Replacement:
            assert current.data is not None
            now = self._clock()
            try:
                data = apply_update(
                    current.data, paths, update, now=now, allowance=self.start_time_allowance
                )
            except ValueError as error:
                _invalid(str(error))
            return Replacement(data, _after(current, now), await _end_time(data))

        async def write() -> Dispatch | None:
            return await self.store.update(mid, did, change)

        dispatch = await self._write(mid, Event.UPDATED, write)
        if dispatch is None:
            _not_found(mid, did)
        return dispatch

    async def list_microgrid_dispatches(
        self, message: ListMicrogridDispatchesRequest
    ) -> ListMicrogridDispatchesResponse:
        """Return one page of the filtered, sorted dispatches of a microgrid.

        Args:
            message: the request; see `dispatch_client.server.listing` for filters,
                sorting and page tokens.

        Returns:
            The page and its pagination info.

        Raises:
            GRPCError: INVALID_ARGUMENT for an unknown sort field or order, or a page
                token not issued by this server or for other sort options.
        """
        query = self._list_query(message)
        result = await self.store.list(query)
        return ListMicrogridDispatchesResponse(
            dispatches=result.dispatches, pagination_info=pagination_info(query, result)
        )

    async def encoded_list(self, message: ListMicrogridDispatchesRequest) -> bytes:
        """Return `bytes(await list_microgrid_dispatches(message))`, without parsing stored data.

        The server answers lists with this: the stored dispatch data goes out
        as stored, instead of being parsed and encoded again.

        Args:
            message: the list request.

        Returns:
            The encoded `ListMicrogridDispatchesResponse`.

        Raises:
            GRPCError: as `list_microgrid_dispatches`.
        """
        query = self._list_query(message)
        result = await self.store.list_encoded(query)
        # ListMicrogridDispatchesResponse: dispatches = 1, pagination_info = 2.
        return b"".join(
            [
                *(message_field(1, dispatch) for dispatch in result.dispatches),
                message_field(2, encode(pagination_info(query, result))),
            ]
        )

    async def stream_microgrid_dispatches(
        self, message: StreamMicrogridDispatchesRequest
    ) -> AsyncIterator[StreamMicrogridDispatchesResponse]:
        """Yield every CREATED/UPDATED/DELETED event of the microgrid from now on.

        Args:
            message: the request (the microgrid id).

        Yields:
            One response per committed change, in commit order.

        Raises:
            GRPCError: RESOURCE_EXHAUSTED after the buffered events when the
                subscriber fell more than `stream_buffer_size` events behind;
                UNAVAILABLE when the service closes.
        """
        subscription = self._fanout.subscribe(message.microgrid_id)
        try:
            async for event in self._events(subscription):
                yield event.message
        finally:
            self._fanout.unsubscribe(subscription)

    # Plumbing -------------------------------------------------------------------

    async def _write(
        self,
        microgrid_id: int,
        kind: Event,
        write: Callable[[], Any],
    ) -> Dispatch | None:
        # Shielded: once a write has started, a cancelled caller must not
        # leave it committed but unpublished.
        with anyio.CancelScope(shield=True):
            if self.store.publishes_events:
                # The store publishes what it commits, in commit order.
                result: Dispatch | None = await write()
                return result
            # grpclib cancels the handler of a call its client gave up with a
            # plain task.cancel(), which goes through a shield: the write and
            # its publication run in a task of their own, which the handler
            # waits for and leaves cancelled after.
            task = asyncio.get_running_loop().create_task(
                self._write_and_publish(microgrid_id, kind, write)
            )
            cancelled: asyncio.CancelledError | None = None
            while not task.done():
                try:
                    await asyncio.wait((task,))
                except asyncio.CancelledError as error:
                    cancelled = error
        if cancelled is not None:
            raise cancelled
        return task.result()

    async def _write_and_publish(
        self, microgrid_id: int, kind: Event, write: Callable[[], Any]
    ) -> Dispatch | None:
        async with self._write_lock:
            dispatch: Dispatch | None = await write()
            if dispatch is not None:
                self._fanout.publish(
                    microgrid_id,
                    StreamMicrogridDispatchesResponse(dispatch=dispatch, event=kind),
                )
        return dispatch

    def _list_query(self, message: ListMicrogridDispatchesRequest) -> ListQuery:
        try:
            return list_query(
                message,
                default_page_size=self.default_page_size,
                max_page_size=self.max_page_size,
            )
        except ValueError as error:
            _invalid(str(error))
