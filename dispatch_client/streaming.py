"""Dispatch events as async generators over one shared gRPC stream per microgrid.

`StreamHub` gives every consumer of a microgrid its own async generator
(`subscribe()` for live events, `watch()` for snapshot + live events that
converge after reconnects) while the server sees one gRPC stream per microgrid.
How that stream is owned, fanned out, re-opened and counted as open is in
`dispatch_client._shared_stream`; the rules of the watch view are in
`dispatch_client.watchview`. This module is the async shell around both.

watch() and why it never misses a change. The stream only carries changes made
after the server registered it, and a list is a snapshot at the moment it is
served, so the order matters: the stream is opened first and the list is taken
only once the stream counts as open, marked in the consumer's buffer by a
resync marker. Every change after the marker is in the buffer, and the list
reflects every change before the list, so `WatchView.reconcile(list, buffered)`
yields the server's state. The same happens after every reconnect (a new
marker per opened stream) and after a `"resync"` overflow; a marker arriving
during the list means the list may predate the new stream, so it lists again.
A failed list is retried with the hub's backoff. Live events go through
`WatchView.apply`, which drops what the list already showed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from types import MappingProxyType

import anyio

from . import _defaults
from ._proto.frequenz.api.dispatch.v1 import Dispatch, StreamMicrogridDispatchesResponse
from ._shared_stream import (
    Backoff,
    Consumer,
    Marker,
    Overflow,
    SharedStream,
    StreamSettings,
    StreamState,
    StreamStatus,
    is_retryable,
)
from ._tasks import aclose_quietly
from .connection import absorb_leaked_cancel
from .validation import check_positive_int, check_uint64
from .watchview import DispatchEvent, WatchView

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_OPEN_GRACE",
    "Backoff",
    "DispatchEvent",
    "Overflow",
    "SharedStream",
    "StreamHub",
    "StreamState",
    "StreamStatus",
]

_log = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE = _defaults.STREAM_BUFFER_SIZE

DEFAULT_OPEN_GRACE = _defaults.STREAM_OPEN_GRACE

_SUBSCRIBE_POLICIES = ("error", "drop_oldest")
_WATCH_POLICIES = ("error", "resync")


class StreamHub:
    """Shares one gRPC stream per microgrid among any number of async-generator consumers."""

    def __init__(
        self,
        *,
        open_stream: Callable[[int], AsyncIterator[StreamMicrogridDispatchesResponse | None]],
        list_dispatches: Callable[[int], AsyncIterator[Dispatch]],
        server_url: str,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        backoff: Backoff | None = None,
        on_status: Callable[[StreamStatus], None] | None = None,
        open_grace: float = DEFAULT_OPEN_GRACE,
    ) -> None:
        """Create a hub; nothing is opened until the first consumer iterates.

        Args:
            open_stream: `open_stream(microgrid_id)` opens the gRPC stream, yields
                its messages and raises typed errors; it may first yield `None`
                to say the server accepted the stream (its initial metadata
                arrived), which makes the stream count as open at once instead
                of after `open_grace`.
            list_dispatches: `list_dispatches(microgrid_id)` yields every current
                dispatch (all pages).
            server_url: for error messages (never holds credentials).
            buffer_size: each consumer's default buffer, in events.
            backoff: the reconnect policy (default `Backoff()`).
            on_status: told of every state change of every shared stream.
            open_grace: seconds an unacknowledged, quiet stream must stay up
                before it counts as open.

        Raises:
            ValueError: `buffer_size` is not a positive int or `open_grace` is
                negative.
        """
        check_positive_int(buffer_size, "buffer_size")
        if not open_grace >= 0:
            raise ValueError(f"open_grace must be >= 0, got {open_grace!r}")
        self._settings = StreamSettings(
            open_stream=open_stream,
            list_dispatches=list_dispatches,
            server_url=server_url,
            backoff=backoff if backoff is not None else Backoff(),
            open_grace=open_grace,
            on_status=on_status,
        )
        self._buffer_size = buffer_size
        self._streams: dict[int, SharedStream] = {}

    @property
    def streams(self) -> Mapping[int, SharedStream]:
        """The open shared streams, by microgrid id (a live read-only view)."""
        return MappingProxyType(self._streams)

    def subscribe(
        self,
        microgrid_id: int,
        *,
        buffer_size: int | None = None,
        overflow: Overflow = "error",
    ) -> AsyncGenerator[DispatchEvent, None]:
        """Yield live events of a microgrid, from the first iteration on.

        Reconnects are invisible here.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            buffer_size: events this consumer may fall behind by (default: the hub's).
            overflow: `"error"` (raise `StreamOverflow` once the buffered events
                are read) or `"drop_oldest"`.

        Returns:
            An async generator; nothing is opened until it is iterated.

        Raises:
            ValueError: a bad argument (checked before anything is opened).
        """
        size = self._consumer_buffer(microgrid_id, buffer_size)
        if overflow not in _SUBSCRIBE_POLICIES:
            raise ValueError(f"overflow must be one of {_SUBSCRIBE_POLICIES}, not {overflow!r}")
        return self._subscribe(microgrid_id, size, overflow)

    def watch(
        self,
        microgrid_id: int,
        *,
        buffer_size: int | None = None,
        overflow: Overflow = "error",
    ) -> AsyncGenerator[DispatchEvent, None]:
        """Yield the current dispatches as CREATED events, then changes, converging after reconnects.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            buffer_size: events this consumer may fall behind by (default: the hub's).
            overflow: `"error"` or `"resync"` (re-list instead of failing);
                dropping events would break the promise of a converging view.

        Returns:
            An async generator; nothing is opened until it is iterated.

        Raises:
            ValueError: a bad argument (checked before anything is opened).
        """
        size = self._consumer_buffer(microgrid_id, buffer_size)
        if overflow not in _WATCH_POLICIES:
            raise ValueError(f"watch() overflow must be one of {_WATCH_POLICIES}, not {overflow!r}")
        return self._watch(microgrid_id, size, overflow)

    async def aclose(self) -> None:
        """End every stream; their consumers finish cleanly after reading what is buffered.

        The hub stays usable: a later `subscribe()`/`watch()` opens a new stream.
        """
        while self._streams:
            streams = list(self._streams.values())
            for stream in streams:
                stream.close()
            for stream in streams:
                await stream.wait_closed()

    def _consumer_buffer(self, microgrid_id: int, buffer_size: int | None) -> int:
        check_uint64(microgrid_id, "microgrid_id")
        size = self._buffer_size if buffer_size is None else buffer_size
        return check_positive_int(size, "buffer_size")

    def _join(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow, *, watch: bool
    ) -> tuple[SharedStream, Consumer]:
        stream = self._streams.get(microgrid_id)
        if stream is None:
            stream = SharedStream(microgrid_id, self._settings, on_closed=self._forget)
            stream.start()
            self._streams[microgrid_id] = stream
        return stream, stream.join(buffer_size, overflow, watch=watch)

    def _forget(self, stream: SharedStream) -> None:
        if self._streams.get(stream.microgrid_id) is stream:
            del self._streams[stream.microgrid_id]

    async def _subscribe(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow
    ) -> AsyncGenerator[DispatchEvent, None]:
        stream, consumer = self._join(microgrid_id, buffer_size, overflow, watch=False)
        try:
            while (item := await consumer.next()) is not None:
                if isinstance(item, DispatchEvent):
                    yield item
        finally:
            await stream.leave(consumer)

    async def _watch(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow
    ) -> AsyncGenerator[DispatchEvent, None]:
        stream, consumer = self._join(microgrid_id, buffer_size, overflow, watch=True)
        view = WatchView()
        try:
            # Joining an open stream needs no marker: everything from now on is buffered.
            resync = stream.connected
            while True:
                if resync:
                    resync = False
                    for synthetic in await self._reconcile(consumer, view):
                        yield synthetic
                item = await consumer.next()
                if item is None:
                    return
                if item is Marker.RESYNC:
                    resync = True
                elif (event := view.apply(item)) is not None:
                    yield event
        finally:
            await stream.leave(consumer)

    async def _reconcile(self, consumer: Consumer, view: WatchView) -> list[DispatchEvent]:
        """List the microgrid, fold in the buffered events, and return the view's difference."""
        failures = 0
        buffered: list[DispatchEvent] = []  # received since the latest marker
        while True:
            try:
                snapshot = await _collect(self._settings.list_dispatches(consumer.microgrid_id))
            except Exception as exc:
                if consumer.ended:
                    # The stream ended meanwhile (e.g. disconnect() closing the hub,
                    # then the channel): that ending, not this failure, is the news.
                    return []
                error = self._settings.typed(exc)
                if not is_retryable(error):
                    if error is exc:
                        raise
                    raise error from exc
                delay = self._settings.backoff.delay(failures)
                failures += 1
                _log.warning(
                    "listing microgrid %d failed (%s); retrying in %.2f s",
                    consumer.microgrid_id,
                    error,
                    delay,
                )
                await anyio.sleep(delay)
                continue
            relist = False
            for item in consumer.drain_nowait():
                if item is Marker.RESYNC:
                    # A newer stream (or an overflow) started after this list was
                    # taken: only what follows the marker counts, with a new list.
                    relist = True
                    buffered.clear()
                else:
                    buffered.append(item)
            if not relist:
                return view.reconcile(snapshot, buffered)


async def _collect(dispatches: AsyncIterator[Dispatch]) -> list[Dispatch]:
    try:
        with absorb_leaked_cancel():
            return [dispatch async for dispatch in dispatches]
    finally:
        await aclose_quietly(dispatches)
