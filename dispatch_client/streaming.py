"""Dispatch events as async generators over one shared gRPC stream per microgrid.

`StreamHub` gives every consumer of a microgrid its own async generator
(`subscribe()` for live events, `watch()` for snapshot + live events that
converge after reconnects) while the server sees one gRPC stream per microgrid.

Ownership. The gRPC stream must outlive any single consumer (the first one may
leave while others keep reading) but never the hub, so it is read by one reader
task per microgrid that the hub owns: the hub keeps the task, its cancel scope
and a "done" event. The task starts with the first consumer; the last consumer
leaving (break, cancel, `aclose()`, a timeout) or `StreamHub.aclose()` cancels
it and waits, shielded and bounded, until it has finished, so no task outlives
its consumers or the hub. Consumers cannot host the reader themselves: a task
group cannot stay open across an async generator's `yield`, and handing a
half-read gRPC stream from one consumer's task to another would lose events.
The task is an asyncio task because grpclib only runs on asyncio; everything
inside it uses anyio (cancel scopes, task groups, memory object streams). The
reader never lets an exception escape unseen: a failure, including a bug or a
cancellation by anyone but the hub, ends every consumer of that microgrid with
the error (one copy each, chained to the original).

Fan-out and overflow. Each consumer has its own bounded memory object stream,
filled with `send_nowait`, so a slow consumer never slows the reader or the
others. When a consumer's buffer is full, its `overflow` policy applies:
`"error"` (default) detaches it and, after it has read what was buffered,
raises `StreamOverflow` in it; `"drop_oldest"` discards its oldest event;
`"resync"` (`watch()` only) discards its backlog and re-lists, which loses
nothing because the re-list shows every change the dropped events carried.

Reconnect. A retryable failure (UNAVAILABLE, DEADLINE_EXCEEDED, a broken
connection, the server ending the stream, ...) re-opens the stream after a
delay drawn uniformly from [0, min(maximum, initial * multiplier ** failures)]
("full jitter", so many clients do not reconnect in lock step). `failures`
resets once a stream counts as open (below). Non-retryable statuses
(UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND, ...) end the
consumers. Transitions go to the optional `on_status` hook and the log; errors
carry the server URL, never the API key.

When a stream counts as open. The server acknowledges a stream by sending its
initial metadata once the subscription is registered (the reference server
does); `open_stream` passes that on by yielding `None` first. Without an
acknowledgement, the first event or `open_grace` quiet seconds without an error
count instead: a heuristic, but a safe one in practice because the stream
request and the later list request share one HTTP/2 connection, so the stream
request reaches the server first; the grace only covers the server's handler
scheduling, not network latency.

watch() and why it never misses a change. The stream only carries changes made
after the server registered it, and a list is a snapshot at the moment it is
served, so the order matters: the stream is opened first and the list is taken
only once the stream counts as open, marked in the consumer's buffer by a
resync marker. Every change after the marker is in the buffer, and the list
reflects every change before the list, so "list, then override each dispatch
with the last buffered event for it (unless the list holds a newer version)"
is the server's state. The consumer emits the difference between its view and
that state as CREATED/UPDATED/DELETED events. The same happens after every
reconnect (a new marker per opened stream) and after a `"resync"` overflow; a
marker arriving during the list means the list may predate the new stream, so
it lists again. A failed list is retried with the hub's backoff. Live events
are applied to the view: one equal to, or older (by `update_time`) than, what
the view holds is dropped, so changes the list already showed are not repeated,
and the event kind follows the view (CREATED only for unknown ids, UPDATED and
DELETED only for known ones), so the consumer's view converges.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import math
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _defaults
from ._proto.frequenz.api.common.v1alpha8.streaming import Event
from ._proto.frequenz.api.dispatch.v1 import Dispatch, StreamMicrogridDispatchesResponse
from .connection import absorb_leaked_cancel, translate_error
from .errors import (
    Aborted,
    Cancelled,
    DeadlineExceeded,
    DispatchApiError,
    Internal,
    ResourceExhausted,
    StreamOverflow,
    Unavailable,
    UnknownError,
)

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

_CLOSE_TIMEOUT = 5.0
"""Upper bound for waiting on a cancelled reader, so a hung close cannot hang a consumer."""

Overflow: TypeAlias = Literal["error", "drop_oldest", "resync"]
_SUBSCRIBE_POLICIES = ("error", "drop_oldest")
_WATCH_POLICIES = ("error", "resync")

# Statuses worth re-opening a stream for; all others are a verdict on the request.
_RETRYABLE = (
    Unavailable,
    DeadlineExceeded,
    Aborted,
    Internal,
    UnknownError,
    ResourceExhausted,
    Cancelled,
)


@dataclass(frozen=True, slots=True)
class DispatchEvent:
    """One change of a dispatch: what happened and the dispatch after it (before, if deleted)."""

    event: Event
    dispatch: Dispatch


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter for re-opening a broken stream."""

    initial: float = 0.2
    """Upper bound of the first delay, in seconds."""
    maximum: float = 30.0
    """Upper bound of any delay, in seconds."""
    multiplier: float = 2.0
    """Growth of the bound per consecutive failure."""
    jitter: bool = True
    """Draw each delay uniformly from [0, bound]; False waits exactly the bound."""

    def __post_init__(self) -> None:
        """Reject settings that would spin or never retry."""
        if not 0 < self.initial <= self.maximum or not math.isfinite(self.maximum):
            raise ValueError("Backoff needs 0 < initial <= maximum < inf")
        if self.multiplier < 1:
            raise ValueError("Backoff multiplier must be >= 1")

    def delay(self, failures: int) -> float:
        """Return the delay before the next attempt after `failures` consecutive failures."""
        try:
            bound = min(self.maximum, self.initial * self.multiplier**failures)
        except OverflowError:
            bound = self.maximum
        # Jitter spreads the reconnects of many clients after a server restart.
        return random.uniform(0.0, bound) if self.jitter else bound


class StreamState(enum.Enum):
    """Where a shared stream is in its life."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A state change of a microgrid's shared stream, as passed to `on_status`."""

    microgrid_id: int
    state: StreamState
    failures: int = 0
    """Consecutive failed attempts so far."""
    retry_in: float | None = None
    """Seconds until the next attempt (RECONNECTING only)."""
    error: BaseException | None = None
    """Why the stream broke (RECONNECTING) or ended (FAILED)."""


class _Marker(enum.Enum):
    RESYNC = enum.auto()
    """Everything after this in a buffer is complete: re-list and reconcile now."""


_Item: TypeAlias = DispatchEvent | _Marker


class _Consumer:
    """One consumer's bounded buffer and overflow policy."""

    def __init__(
        self,
        microgrid_id: int,
        buffer_size: int,
        overflow: Overflow,
        *,
        watch: bool,
        server_url: str,
    ) -> None:
        self.microgrid_id = microgrid_id
        self.buffer_size = buffer_size
        self.overflow = overflow
        self.watch = watch
        self.server_url = server_url
        self.ended = False
        """No more items will come: the stream ended, or this consumer overflowed or left."""
        self.error: BaseException | None = None
        self._send: MemoryObjectSendStream[_Item]
        self._receive: MemoryObjectReceiveStream[_Item]
        self._send, self._receive = anyio.create_memory_object_stream[_Item](buffer_size)

    def offer(self, item: _Item) -> bool:
        """Queue `item` without waiting; return False if the consumer must be detached."""
        try:
            self._send.send_nowait(item)
            return True
        except anyio.WouldBlock:
            pass
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        if self.overflow == "drop_oldest":
            self._receive.receive_nowait()
            self._send.send_nowait(item)
            return True
        if self.overflow == "resync":
            # The re-list after the marker reflects every dropped event, `item` included.
            for _ in self.drain_nowait():
                pass
            self._send.send_nowait(_Marker.RESYNC)
            return True
        self.end(
            StreamOverflow(
                f"a consumer of microgrid {self.microgrid_id} fell behind by more than "
                f"{self.buffer_size} events",
                server_url=self.server_url,
            )
        )
        return False

    def end(self, error: BaseException | None = None) -> None:
        """Stop feeding this consumer; it reads what is buffered, then sees `error` or the end."""
        if self.error is None:
            self.error = error
        self.ended = True
        self._send.close()

    def close(self) -> None:
        """Release both ends of the buffer (the consumer left)."""
        self.ended = True
        self._send.close()
        self._receive.close()

    async def next(self) -> _Item | None:
        """Return the next item, None at a clean end, or raise the error that ended the stream."""
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            pass
        # Raised outside the handler so the error keeps its own cause, not EndOfStream.
        if self.error is not None:
            raise self.error
        return None

    def drain_nowait(self) -> Iterator[_Item]:
        """Yield what is buffered right now without waiting."""
        while True:
            try:
                yield self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return


def _copy_error(error: BaseException) -> BaseException:
    """Return a fresh exception per consumer: one instance raised in many tasks tangles tracebacks."""
    fresh: BaseException
    if isinstance(error, DispatchApiError):
        fresh = type(error)(error.message, server_url=error.server_url)
    else:
        try:
            fresh = copy.copy(error)
        except Exception:
            return error
    fresh.__cause__ = error
    return fresh


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, _RETRYABLE)


class SharedStream:
    """The one gRPC stream of a microgrid, read by a hub-owned task and fanned out to consumers."""

    def __init__(self, hub: StreamHub, microgrid_id: int) -> None:
        self.microgrid_id = microgrid_id
        self._hub = hub
        self._consumers: list[_Consumer] = []
        self._connected = False
        self._open_count = 0
        self._failures = 0
        self._status = StreamStatus(microgrid_id, StreamState.CONNECTING)
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"SharedStream(microgrid_id={self.microgrid_id}, state={self._status.state.value}, "
            f"consumers={len(self._consumers)}, open_count={self._open_count})"
        )

    @property
    def consumer_count(self) -> int:
        """Consumers currently fed by this stream."""
        return len(self._consumers)

    @property
    def connected(self) -> bool:
        """Whether the gRPC stream counts as open (acknowledged, an event, or `open_grace` up)."""
        return self._connected

    @property
    def open_count(self) -> int:
        """How many times a gRPC stream has been opened (1 + reconnect attempts)."""
        return self._open_count

    @property
    def status(self) -> StreamStatus:
        """The latest state change."""
        return self._status

    @property
    def closed(self) -> bool:
        """Whether the reader task has finished."""
        return self._done.is_set()

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "dispatch streams need a running asyncio event loop (grpclib is asyncio-only)"
            ) from None
        self._task = loop.create_task(self._run(), name=f"dispatch-stream-{self.microgrid_id}")

    def _attach(self, consumer: _Consumer) -> None:
        self._consumers.append(consumer)

    def _detach(self, consumer: _Consumer) -> None:
        """Stop feeding `consumer`; the last one leaving stops the reader."""
        if consumer in self._consumers:
            self._consumers.remove(consumer)
            if not self._consumers:
                self._cancel()

    def _cancel(self) -> None:
        self._hub._forget(self)
        self._scope.cancel()
        # End the consumers now rather than when the reader gets to it: a
        # watcher whose re-list fails because the client just disconnected
        # must see a closed stream, not that failure.
        for consumer in self._consumers:
            consumer.end()

    async def _wait_closed(self) -> None:
        # Shielded so a consumer that is itself being cancelled still waits for
        # the reader; bounded so a hung close cannot hang the consumer.
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self._done.wait()

    async def _run(self) -> None:
        failure: BaseException | None = None
        try:
            with self._scope:
                failure = await self._follow()
        except Exception as exc:
            # A bug in the fan-out must still reach the consumers, not vanish with the task.
            _log.exception("dispatch stream reader of microgrid %d crashed", self.microgrid_id)
            failure = exc
        finally:
            if failure is None and not self._scope.cancel_called:
                # Cancelled by someone other than the hub (e.g. loop shutdown):
                # the consumers must not mistake that for a clean end.
                failure = Cancelled(
                    "the stream reader was cancelled", server_url=self._hub._server_url
                )
            self._connected = False
            self._hub._forget(self)
            consumers, self._consumers = self._consumers, []
            for consumer in consumers:
                consumer.end(None if failure is None else _copy_error(failure))
            if failure is None:
                self._publish(StreamState.CLOSED)
            else:
                # Warning, not error: every consumer raises it, so the caller decides.
                _log.warning(
                    "dispatch stream of microgrid %d ended: %s", self.microgrid_id, failure
                )
                self._publish(StreamState.FAILED, error=failure)
            self._done.set()

    async def _follow(self) -> BaseException:
        """Keep a gRPC stream open until a non-retryable error ends it; return that error."""
        while True:
            self._open_count += 1
            self._publish(StreamState.CONNECTING, failures=self._failures)
            error = self._hub._typed(await self._attempt())
            self._connected = False
            if not _is_retryable(error):
                return error
            delay = self._hub._backoff.delay(self._failures)
            self._failures += 1
            _log.warning(
                "dispatch stream of microgrid %d broke (%s); reconnecting in %.2f s",
                self.microgrid_id,
                error,
                delay,
            )
            self._publish(
                StreamState.RECONNECTING, failures=self._failures, retry_in=delay, error=error
            )
            await anyio.sleep(delay)

    async def _attempt(self) -> BaseException:
        """Read one gRPC stream until it ends; return why it ended."""
        ended: BaseException
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._confirm_after_grace)
            responses = self._hub._open_stream(self.microgrid_id)
            try:
                with absorb_leaked_cancel():
                    async for response in responses:
                        self._confirm()
                        if response is not None:
                            self._fan_out(response)
                ended = Unavailable("the server ended the stream", server_url=self._hub._server_url)
            except Exception as exc:
                ended = exc
            finally:
                await _close_quietly(responses)
            tg.cancel_scope.cancel()
        return ended

    async def _confirm_after_grace(self) -> None:
        await anyio.sleep(self._hub._open_grace)
        self._confirm()

    def _confirm(self) -> None:
        """Mark the stream open: reset the backoff and tell watchers to re-list."""
        if self._connected:
            return
        self._connected = True
        self._failures = 0
        _log.info("dispatch stream of microgrid %d connected", self.microgrid_id)
        self._publish(StreamState.CONNECTED)
        self._offer_all(_Marker.RESYNC, watchers_only=True)

    def _fan_out(self, response: StreamMicrogridDispatchesResponse) -> None:
        if response.dispatch is None or response.event == Event.UNSPECIFIED:
            _log.warning("ignoring malformed stream message for microgrid %d", self.microgrid_id)
            return
        self._offer_all(DispatchEvent(response.event, response.dispatch), watchers_only=False)

    def _offer_all(self, item: _Item, *, watchers_only: bool) -> None:
        for consumer in list(self._consumers):
            if watchers_only and not consumer.watch:
                continue
            if not consumer.offer(item):
                self._detach(consumer)

    def _publish(
        self,
        state: StreamState,
        *,
        failures: int = 0,
        retry_in: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        self._status = StreamStatus(self.microgrid_id, state, failures, retry_in, error)
        hook = self._hub._on_status
        if hook is not None:
            try:
                hook(self._status)
            except Exception:
                # A faulty hook must not take the stream down with it.
                _log.exception("on_status hook failed for microgrid %d", self.microgrid_id)


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
        """Create a hub.

        `open_stream(microgrid_id)` opens the gRPC stream, yields its messages and
        raises typed errors; it may first yield `None` to say the server accepted
        the stream (its initial metadata arrived), which makes the stream count as
        open at once instead of after `open_grace`. `list_dispatches(microgrid_id)`
        yields every current dispatch (all pages).
        """
        _check_buffer_size(buffer_size)
        if not open_grace >= 0:
            raise ValueError("open_grace must be >= 0")
        self._open_stream = open_stream
        self._list_dispatches = list_dispatches
        self._server_url = server_url
        self._buffer_size = buffer_size
        self._backoff = backoff if backoff is not None else Backoff()
        self._on_status = on_status
        self._open_grace = open_grace
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

        `overflow` is `"error"` (raise `StreamOverflow` once the buffered events are
        read) or `"drop_oldest"`. Reconnects are invisible here; a non-retryable
        failure ends the generator with its typed error.
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

        `overflow` is `"error"` or `"resync"` (re-list instead of failing);
        dropping events would break the promise of a converging view.
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
                stream._cancel()
            for stream in streams:
                await stream._wait_closed()

    def _consumer_buffer(self, microgrid_id: int, buffer_size: int | None) -> int:
        if (
            isinstance(microgrid_id, bool)
            or not isinstance(microgrid_id, int)
            or not 0 <= microgrid_id < 2**64
        ):
            raise ValueError(f"microgrid_id must be an int in [0, 2**64), not {microgrid_id!r}")
        size = self._buffer_size if buffer_size is None else buffer_size
        _check_buffer_size(size)
        return size

    def _join(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow, *, watch: bool
    ) -> tuple[SharedStream, _Consumer]:
        stream = self._streams.get(microgrid_id)
        if stream is None:
            stream = SharedStream(self, microgrid_id)
            stream._start()
            self._streams[microgrid_id] = stream
        consumer = _Consumer(
            microgrid_id, buffer_size, overflow, watch=watch, server_url=self._server_url
        )
        stream._attach(consumer)
        return stream, consumer

    async def _leave(self, stream: SharedStream, consumer: _Consumer) -> None:
        consumer.close()
        stream._detach(consumer)
        if stream._scope.cancel_called:
            await stream._wait_closed()

    def _forget(self, stream: SharedStream) -> None:
        if self._streams.get(stream.microgrid_id) is stream:
            del self._streams[stream.microgrid_id]

    def _typed(self, error: BaseException) -> BaseException:
        return translate_error(error, self._server_url) or error

    async def _subscribe(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow
    ) -> AsyncGenerator[DispatchEvent, None]:
        stream, consumer = self._join(microgrid_id, buffer_size, overflow, watch=False)
        try:
            while (item := await consumer.next()) is not None:
                if isinstance(item, DispatchEvent):
                    yield item
        finally:
            await self._leave(stream, consumer)

    async def _watch(
        self, microgrid_id: int, buffer_size: int, overflow: Overflow
    ) -> AsyncGenerator[DispatchEvent, None]:
        stream, consumer = self._join(microgrid_id, buffer_size, overflow, watch=True)
        view: dict[int, Dispatch] = {}
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
                if item is _Marker.RESYNC:
                    resync = True
                elif (event := _apply_live(view, item)) is not None:
                    yield event
        finally:
            await self._leave(stream, consumer)

    async def _reconcile(
        self, consumer: _Consumer, view: dict[int, Dispatch]
    ) -> list[DispatchEvent]:
        """List the microgrid, fold in the buffered events, and return the view's difference."""
        failures = 0
        latest: dict[int, DispatchEvent] = {}  # last buffered event per dispatch since the marker
        while True:
            try:
                snapshot = await _collect(self._list_dispatches(consumer.microgrid_id))
            except Exception as exc:
                if consumer.ended:
                    # The stream ended meanwhile (e.g. disconnect() closing the hub,
                    # then the channel): that ending, not this failure, is the news.
                    return []
                error = self._typed(exc)
                if not _is_retryable(error):
                    if error is exc:
                        raise
                    raise error from exc
                delay = self._backoff.delay(failures)
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
                if item is _Marker.RESYNC:
                    # A newer stream (or an overflow) started after this list was taken.
                    relist = True
                    latest.clear()
                else:
                    dispatch_id = _id(item.dispatch)
                    latest.pop(dispatch_id, None)
                    latest[dispatch_id] = item
            if not relist:
                break

        target = {_id(d): d for d in snapshot}
        deleted: dict[int, Dispatch] = {}
        for dispatch_id, item in latest.items():
            if item.event == Event.DELETED:
                target.pop(dispatch_id, None)
                deleted[dispatch_id] = item.dispatch
            elif (listed := target.get(dispatch_id)) is None or not _older(item.dispatch, listed):
                target[dispatch_id] = item.dispatch
        return _diff(view, target, deleted)


async def _close_quietly(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator now (not at garbage collection); closing must not mask errors."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        _log.warning("closing %r failed", iterator, exc_info=True)


async def _collect(dispatches: AsyncIterator[Dispatch]) -> list[Dispatch]:
    try:
        with absorb_leaked_cancel():
            return [dispatch async for dispatch in dispatches]
    finally:
        await _close_quietly(dispatches)


def _check_buffer_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"buffer_size must be a positive int, not {size!r}")


def _id(dispatch: Dispatch) -> int:
    return dispatch.metadata.dispatch_id if dispatch.metadata is not None else 0


def _older(candidate: Dispatch, known: Dispatch) -> bool:
    """Whether `candidate` is a strictly older version of `known`, by update time."""
    new = candidate.metadata.update_time if candidate.metadata is not None else None
    old = known.metadata.update_time if known.metadata is not None else None
    return new is not None and old is not None and new < old


def _apply_live(view: dict[int, Dispatch], item: DispatchEvent) -> DispatchEvent | None:
    """Apply a live event to a watch view; return the event to emit, or None if it is stale.

    The event kind follows the view, so a watcher sees CREATED only for dispatches
    it does not know and UPDATED/DELETED only for ones it does.
    """
    dispatch_id = _id(item.dispatch)
    known = view.get(dispatch_id)
    if item.event == Event.DELETED:
        if known is None:
            return None
        del view[dispatch_id]
        return DispatchEvent(Event.DELETED, item.dispatch)
    if known is None:
        view[dispatch_id] = item.dispatch
        return DispatchEvent(Event.CREATED, item.dispatch)
    if known == item.dispatch or _older(item.dispatch, known):
        return None
    view[dispatch_id] = item.dispatch
    return DispatchEvent(Event.UPDATED, item.dispatch)


def _diff(
    view: dict[int, Dispatch], target: dict[int, Dispatch], deleted: dict[int, Dispatch]
) -> list[DispatchEvent]:
    """Turn `view` into `target` and return the events that say so."""
    events: list[DispatchEvent] = []
    for dispatch_id, dispatch in target.items():
        known = view.get(dispatch_id)
        if known is None:
            events.append(DispatchEvent(Event.CREATED, dispatch))
        elif known != dispatch:
            events.append(DispatchEvent(Event.UPDATED, dispatch))
    for dispatch_id, known in view.items():
        if dispatch_id not in target:
            events.append(DispatchEvent(Event.DELETED, deleted.get(dispatch_id, known)))
    view.clear()
    view.update(target)
    return events
