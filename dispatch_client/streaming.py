"""Dispatch events as async generators over one shared gRPC stream per microgrid.

`StreamHub` gives every consumer of a microgrid its own async generator while
the server sees one gRPC stream per microgrid:

- `subscribe()` (`Client.stream()`): the changes from the moment the shared
  stream is open. After every gap (a re-open, whatever its cause: server
  restart, broken connection, the server cutting a slow client off) the
  changes missed are delivered as ordinary CREATED/UPDATED/DELETED events,
  computed from one list per shared stream, before live events resume: no
  duplicates, and per dispatch never an older version after a newer one. With
  `on_gap="raise"` a consumer gets the server's events as they come instead,
  and `StreamGap` at each gap.
- `watch()`: the current dispatches as CREATED events, then changes; its view
  converges on the server's after every gap.

How the stream is owned, caught up, re-opened and counted as open is in
`dispatch_client._shared_stream`, what each consumer is fed in
`dispatch_client._fanout`, the rules of the views in `dispatch_client.watchview`.
This module is the async shell around them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Literal, TypeAlias

from . import _defaults
from ._fanout import Audience, Batch, Consumer, Overflow, Snapshot
from ._proto.frequenz.api.dispatch.v1 import Dispatch, StreamMicrogridDispatchesResponse
from ._reconnect import Backoff, ReachabilityProber
from ._shared_stream import (
    SharedStream,
    StreamSettings,
    StreamState,
    StreamStatus,
)
from .errors import StreamGap
from .validation import check_positive_int, check_uint64, shown
from .watchview import DispatchEvent, WatchView

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_OPEN_GRACE",
    "Backoff",
    "DispatchEvent",
    "GapPolicy",
    "Overflow",
    "SharedStream",
    "StreamGap",
    "StreamHub",
    "StreamState",
    "StreamStatus",
]

DEFAULT_BUFFER_SIZE = _defaults.STREAM_BUFFER_SIZE

DEFAULT_OPEN_GRACE = _defaults.STREAM_OPEN_GRACE

GapPolicy: TypeAlias = Literal["catch_up", "raise"]
"""What a `stream()` consumer gets at a gap: the changes it missed, or `StreamGap`."""

_GAP_POLICIES = ("catch_up", "raise")
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
        probe: Callable[[], Awaitable[object]] | None = None,
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
                before it counts as open, as long as the server has
                acknowledged none of the hub's streams (one that does is
                waited for).
            probe: connects the channel if it is not connected, raising if it
                cannot; lets a reconnect wait end as soon as an unreachable
                server is back (see `Backoff.probe`). None: wait out every delay.

        Raises:
            ValueError: `buffer_size` is not a positive int or `open_grace` is
                negative.
        """
        check_positive_int(buffer_size, "buffer_size")
        if not open_grace >= 0:
            raise ValueError(f"open_grace must be >= 0, got {shown(open_grace)}")
        backoff = backoff if backoff is not None else Backoff()
        self._settings = StreamSettings(
            open_stream=open_stream,
            list_dispatches=list_dispatches,
            server_url=server_url,
            backoff=backoff,
            open_grace=open_grace,
            on_status=on_status,
            probe=probe,
            # One prober for all the streams: they share the channel it probes.
            prober=ReachabilityProber(probe, backoff.probe),
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
        on_gap: GapPolicy = "catch_up",
    ) -> AsyncGenerator[DispatchEvent, None]:
        """Yield the changes of a microgrid from the moment its shared stream is open.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            buffer_size: events this consumer may fall behind by (default: the hub's).
            overflow: `"error"` (raise `StreamOverflow` once the buffered events
                are read) or `"drop_oldest"` (lose the oldest events: the
                consumer chose to).
            on_gap: `"catch_up"`: after the stream re-opens, first the changes
                missed meanwhile (one event per changed dispatch, its latest
                version), then live events; `"raise"`: the server's events as
                they come, and `StreamGap` when the stream breaks.

        Returns:
            An async generator; nothing is opened until it is iterated. It
            raises the typed error that ended the stream (e.g.
            `Unauthenticated`), `StreamOverflow`, or `StreamGap`.

        Raises:
            ValueError: a bad argument (checked before anything is opened).
        """
        size = self._consumer_buffer(microgrid_id, buffer_size)
        if overflow not in _SUBSCRIBE_POLICIES:
            raise ValueError(
                f"overflow must be one of {_SUBSCRIBE_POLICIES}, not {shown(overflow)}"
            )
        if on_gap not in _GAP_POLICIES:
            raise ValueError(f"on_gap must be one of {_GAP_POLICIES}, not {shown(on_gap)}")
        audience = Audience.CATCH_UP if on_gap == "catch_up" else Audience.RAW
        return self._subscribe(microgrid_id, size, overflow, audience)

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
            overflow: `"error"` or `"resync"` (catch up from the stream's
                current state instead of failing); dropping events would break
                the promise of a converging view.

        Returns:
            An async generator; nothing is opened until it is iterated.

        Raises:
            ValueError: a bad argument (checked before anything is opened).
        """
        size = self._consumer_buffer(microgrid_id, buffer_size)
        if overflow not in _WATCH_POLICIES:
            raise ValueError(
                f"watch() overflow must be one of {_WATCH_POLICIES}, not {shown(overflow)}"
            )
        return self._watch(microgrid_id, size, overflow)

    async def aclose(self) -> None:
        """End every stream; their consumers finish cleanly after reading what is buffered.

        No task of the hub is left once it returns. The hub stays usable: a
        later `subscribe()`/`watch()` opens a new stream.
        """
        while self._streams:
            streams = list(self._streams.values())
            for stream in streams:
                stream.close()
            for stream in streams:
                await stream.wait_closed()
        # After the streams: they no longer wait for a probe.
        await self._settings.prober.aclose()

    def _consumer_buffer(self, microgrid_id: int, buffer_size: int | None) -> int:
        check_uint64(microgrid_id, "microgrid_id")
        size = self._buffer_size if buffer_size is None else buffer_size
        return check_positive_int(size, "buffer_size")

    def _join(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow, audience: Audience
    ) -> tuple[SharedStream, Consumer]:
        stream = self._streams.get(microgrid_id)
        if stream is None:
            stream = SharedStream(microgrid_id, self._settings, on_closed=self._forget)
            stream.start()
            self._streams[microgrid_id] = stream
        return stream, stream.join(buffer_size, overflow, audience=audience)

    def _forget(self, stream: SharedStream) -> None:
        if self._streams.get(stream.microgrid_id) is stream:
            del self._streams[stream.microgrid_id]

    async def _subscribe(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow, audience: Audience
    ) -> AsyncGenerator[DispatchEvent, None]:
        stream, consumer = self._join(microgrid_id, buffer_size, overflow, audience)
        try:
            while (item := await consumer.next()) is not None:
                if isinstance(item, DispatchEvent):
                    yield item
                elif isinstance(item, Batch):
                    for event in item.events:
                        yield event
        finally:
            await stream.leave(consumer)

    async def _watch(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow
    ) -> AsyncGenerator[DispatchEvent, None]:
        stream, consumer = self._join(microgrid_id, buffer_size, overflow, Audience.WATCH)
        view = WatchView()
        try:
            while (item := await consumer.next()) is not None:
                if isinstance(item, Snapshot):
                    changes = view.reset(item.dispatches)
                else:
                    events = item.events if isinstance(item, Batch) else (item,)
                    changes = [c for e in events for c in view.apply(e)]
                for change in changes:
                    yield change
        finally:
            await stream.leave(consumer)
