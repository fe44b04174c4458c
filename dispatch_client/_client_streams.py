"""`Client`'s stream methods: `stream()`, `watch()`, `running()`, `manage()` over one `StreamHub`.

`ClientStreams` is a base of `Client`, documented there; the client creates
the state these methods use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from . import _defaults, requests
from ._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    StreamMicrogridDispatchesResponse,
)
from ._runtime import trio_aware
from .connection import connect_shared, server_stream
from .requests import START_TIME_GRACE, SortSpec
from .validation import shown

if TYPE_CHECKING:
    from grpclib.client import Channel

    from .execution import Handler
    from .schedule import Merge, RunTransition
    from .streaming import Backoff, DispatchEvent, SharedStream, StreamHub, StreamStatus

__all__ = ["START_TIME_GRACE", "Client", "SortSpec"]

from typing import cast

if TYPE_CHECKING:
    from .client import Client


def _check_type(type: object) -> None:
    if type is not None and (not isinstance(type, str) or not type):
        raise ValueError(f"type must be a non-empty str or None, got {shown(type)}")


async def _of_type(
    events: AsyncGenerator[DispatchEvent, None], type: str
) -> AsyncGenerator[DispatchEvent, None]:
    """Keep the events of dispatches of `type`; closing this closes `events`."""
    from ._proto.frequenz.api.common.v1alpha8.streaming import Event

    # A dispatch's type never changes, but a deletion is let through for any
    # dispatch shown before, whatever the deleted version carries.
    shown: set[int] = set()
    async with aclosing(events):
        async for event in events:
            dispatch = event.dispatch
            key = dispatch.metadata.dispatch_id if dispatch.metadata is not None else 0
            if event.event == Event.DELETED:
                if key in shown or (dispatch.data is not None and dispatch.data.type == type):
                    shown.discard(key)
                    yield event
            elif dispatch.data is not None and dispatch.data.type == type:
                shown.add(key)
                yield event


class ClientStreams:
    """The stream half of `Client`'s methods (see `Client`)."""

    _call_timeout: float | None
    _hub: StreamHub | None
    _stream_buffer_size: int
    _stream_backoff: Backoff | None
    _on_stream_status: Callable[[StreamStatus], None] | None

    if TYPE_CHECKING:

        @property
        def channel(self) -> Channel: ...

        @property
        def server_url(self) -> str: ...

        def _check_connected(self) -> None: ...

        def _all_dispatches(self, microgrid_id: int) -> AsyncGenerator[Dispatch, None]: ...

    # -- streams --------------------------------------------------------------

    def _open_stream(
        self, microgrid_id: int
    ) -> AsyncGenerator[StreamMicrogridDispatchesResponse | None, None]:
        """Open one StreamMicrogridDispatches call (typed errors; `None` first: it is registered).

        Raises:
            ClientNotConnected: the client is not connected (at the call).
        """
        # `server_stream`'s own generator, not one wrapping it: one generator
        # less per stream (a fleet opens a thousand) and one frame less per event.
        return server_stream(
            self.channel,
            requests.stream(microgrid_id),
            open_limit=self._call_timeout,
            server_url=self.server_url,
        )

    async def _connect_channel(self) -> None:
        """Connect the channel if it is not (a no-op while it is), within the call timeout.

        Raises:
            ClientNotConnected: the client is not connected.
            OSError: the connection could not be made (grpclib's errors).
            TimeoutError: it took longer than `call_timeout`, as opening a call may.
        """
        async with asyncio.timeout(self._call_timeout):
            await connect_shared(self.channel)

    def _stream_hub(self) -> StreamHub:
        self._check_connected()
        if self._hub is None:
            # Imported here: unary-only users never pay for streaming.
            from .streaming import StreamHub

            self._hub = StreamHub(
                open_stream=self._open_stream,
                list_dispatches=self._all_dispatches,
                server_url=self.server_url,
                buffer_size=self._stream_buffer_size,
                backoff=self._stream_backoff,
                on_status=self._on_stream_status,
                probe=self._connect_channel,
            )
        return self._hub

    @trio_aware
    def stream(
        self,
        microgrid_id: int,
        *,
        type: str | None = None,
        buffer_size: int | None = None,
        overflow: Literal["error", "drop_oldest"] = "error",
        on_gap: Literal["catch_up", "raise"] = "catch_up",
    ) -> AsyncGenerator[DispatchEvent, None]:
        """Yield the changes of one microgrid from the moment its shared stream is open.

        After every gap (restart, broken connection, a slow client cut off) the
        changes missed come first, from one re-list per shared stream, then live
        events: no duplicates, never an older version of a dispatch after a
        newer one (see `dispatch_client.streaming`). Close it with `aclosing()`.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            type: only events of dispatches of this type (a non-empty str;
                deletions included); None for all.
            buffer_size: events this consumer may fall behind by (an int >= 1);
                None for the client's `stream_buffer_size`.
            overflow: when the buffer is full, `"error"` raises
                `StreamOverflow` once the buffered events are read;
                `"drop_oldest"` drops the oldest buffered event.
            on_gap: `"catch_up"` as above; `"raise"`: the server's events as
                they come, and `StreamGap` when the stream breaks.

        Yields:
            A `DispatchEvent` (kind and dispatch) per change on the server.

        Raises:
            ValueError: an argument is invalid (at the call).
            ClientNotConnected: the client is not connected.
            StreamOverflow: the consumer fell behind with `overflow="error"`.
            StreamGap: the stream broke, with `on_gap="raise"`.
            DispatchApiError: the stream failed for good (a status that is
                not `retryable`, e.g. `Unauthenticated`).
        """
        _check_type(type)
        events = self._stream_hub().subscribe(
            microgrid_id, buffer_size=buffer_size, overflow=overflow, on_gap=on_gap
        )
        return events if type is None else _of_type(events, type)

    @trio_aware
    def watch(
        self,
        microgrid_id: int,
        *,
        type: str | None = None,
        buffer_size: int | None = None,
        overflow: Literal["error", "resync"] = "error",
    ) -> AsyncGenerator[DispatchEvent, None]:
        """Yield the current dispatches, then changes; the view converges after every gap.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            type: only dispatches of this type (a non-empty str): their
                snapshot, changes and deletion; None for all.
            buffer_size: events this consumer may fall behind by (an int >= 1);
                None for the client's `stream_buffer_size`.
            overflow: when the buffer is full, `"error"` raises `StreamOverflow`;
                `"resync"` yields the difference to the stream's current state.

        Yields:
            A CREATED `DispatchEvent` per current dispatch, then one per change.

        Raises:
            ValueError: an argument is invalid (at the call).
            ClientNotConnected: the client is not connected.
            StreamOverflow: the consumer fell behind with `overflow="error"`.
            DispatchApiError: the stream or a re-list failed for good.
        """
        _check_type(type)
        events = self._watch(microgrid_id, buffer_size=buffer_size, overflow=overflow)
        return events if type is None else _of_type(events, type)

    def _watch(
        self,
        microgrid_id: int,
        *,
        buffer_size: int | None,
        overflow: Literal["error", "resync"],
    ) -> AsyncGenerator[DispatchEvent, None]:
        return self._stream_hub().watch(microgrid_id, buffer_size=buffer_size, overflow=overflow)

    @trio_aware
    def running(
        self, microgrid_id: int, type: str | None = None, *, merge: Merge = None
    ) -> AsyncGenerator[RunTransition, None]:
        """Yield a `RunTransition` whenever a run of the microgrid starts, changes or stops.

        Built on `watch()`; see `dispatch_client.schedule` for what is reported.
        A slow consumer makes the watch re-list rather than fail: only the
        current set of dispatches matters for the schedule.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            type: only dispatches of this type (a non-empty str); None for all.
            merge: how dispatches group into runs: None (one run per
                dispatch), `"type"` (per type and dry-run flag),
                `"type+target"` (also per target) or a callable
                `Dispatch -> Hashable` giving each dispatch's group key.

        Yields:
            STARTED / UPDATED / STOPPED transitions with the dispatch that
            caused them, the aware time `at`, the run's `key` and its `members`.

        Raises:
            ValueError: an argument is invalid (at the call).
            ClientNotConnected: the client is not connected.
            DispatchApiError: the underlying watch failed for good.
        """
        from .schedule import running as run_transitions

        _check_type(type)
        return run_transitions(
            self._watch(microgrid_id, buffer_size=None, overflow="resync"), type=type, merge=merge
        )

    async def manage(
        self,
        microgrid_id: int,
        type: str,
        handler: Handler,
        *,
        merge: Merge = None,
        retry_interval: dt.timedelta = _defaults.RETRY_INTERVAL,
    ) -> None:
        """Call `await handler(run)` in a task of its own for each run of `type`, until cancelled.

        The task is cancelled when the run stops; `run.dispatch` is the current
        version and `run.updates()` yields new ones. A handler that raises an
        `Exception` is called again after `retry_interval` while the run goes
        on; one that raises a `BaseException` that is no `Exception` (say,
        `KeyboardInterrupt`) ends `manage()` with it. Returns when
        the client disconnects; no task outlives it. Works under asyncio and
        trio alike (the handlers run in the caller's event loop). See
        `dispatch_client.execution`.

        Args:
            microgrid_id: the microgrid, an int in 0..2**64-1.
            type: the dispatch type to execute (a non-empty str).
            handler: `async def handler(run: Run) -> None`.
            merge: how dispatches group into runs (as for `running()`).
            retry_interval: the wait before calling a failed handler again (positive).

        Raises:
            ValueError: an argument is invalid (before anything starts).
            TypeError: the handler is not async (its call returned no awaitable),
                or the merge callable returned an unhashable key.
            ClientNotConnected: the client is not connected.
            DispatchApiError: the stream of changes failed for good.
            BaseException: what a handler raised that is no `Exception`, as is.
        """
        from .execution import manage

        await manage(
            cast("Client", self),
            microgrid_id,
            type,
            handler,
            merge=merge,
            retry_interval=retry_interval,
        )

    @property
    def streams(self) -> Mapping[int, SharedStream]:
        """The shared per-microgrid streams open right now, by microgrid id (read-only)."""
        if self._hub is None:
            return MappingProxyType({})
        return self._hub.streams
