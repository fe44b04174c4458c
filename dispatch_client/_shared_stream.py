"""One gRPC stream per microgrid, read by a task of its own and fanned out to bounded buffers.

Ownership. The gRPC stream must outlive any single consumer (the first one may
leave while others keep reading) but never the hub, so it is read by one
`OwnedTask` per microgrid. The task starts with the first consumer; the last
consumer leaving (break, cancel, `aclose()`, a timeout) or `StreamHub.aclose()`
cancels it and waits, shielded and bounded, until it has finished, so no task
outlives its consumers or the hub. Consumers cannot host the reader themselves:
a task group cannot stay open across an async generator's `yield`, and handing
a half-read gRPC stream from one consumer's task to another would lose events.
The reader never lets an exception escape unseen: a failure, including a bug or
a cancellation by anyone but the hub, ends every consumer of that microgrid with
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
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeAlias

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._proto.frequenz.api.common.v1alpha8.streaming import Event
from ._proto.frequenz.api.dispatch.v1 import Dispatch, StreamMicrogridDispatchesResponse
from ._tasks import OwnedTask, aclose_quietly
from .connection import absorb_leaked_cancel
from .errors import (
    Cancelled,
    DispatchApiError,
    StreamOverflow,
    Unavailable,
    copy_error,
    map_errors,
)
from .watchview import DispatchEvent

__all__ = [
    "Backoff",
    "Consumer",
    "Marker",
    "Overflow",
    "SharedStream",
    "StreamSettings",
    "StreamState",
    "StreamStatus",
]

_log = logging.getLogger("dispatch_client.streaming")

Overflow: TypeAlias = Literal["error", "drop_oldest", "resync"]


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
        """Return the delay before the next attempt.

        Args:
            failures: consecutive failed attempts so far.

        Returns:
            Seconds to wait.
        """
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


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Everything a shared stream needs from its hub, fixed when the hub is made."""

    open_stream: Callable[[int], AsyncIterator[StreamMicrogridDispatchesResponse | None]]
    """Opens one gRPC stream of a microgrid; may yield None first (see the module docstring)."""
    list_dispatches: Callable[[int], AsyncIterator[Dispatch]]
    """Yields every current dispatch of a microgrid (all pages)."""
    server_url: str
    """For error messages; it never holds credentials."""
    backoff: Backoff
    """The reconnect policy."""
    open_grace: float
    """Seconds an unacknowledged, quiet stream must stay up before it counts as open."""
    on_status: Callable[[StreamStatus], None] | None = None
    """Told of every state change; its failures are logged, never raised."""

    def typed(self, error: BaseException) -> BaseException:
        """Return the client's typed error for a transport failure, or `error` itself."""
        try:
            with map_errors(self.server_url):
                raise error
        except Exception as mapped:
            return mapped
        return error  # not reached: the block always raises


def is_retryable(error: BaseException) -> bool:
    """Tell whether a stream or list failure is worth trying again after a delay."""
    return isinstance(error, DispatchApiError) and error.retryable


class Marker(enum.Enum):
    """An item in a watcher's buffer that is not an event."""

    RESYNC = enum.auto()
    """Everything after this in a buffer is complete: re-list and reconcile now."""


_Item: TypeAlias = DispatchEvent | Marker


class Consumer:
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
        """Make an empty buffer of `buffer_size` items."""
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
            self._send.send_nowait(Marker.RESYNC)
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


class SharedStream:
    """The one gRPC stream of a microgrid, read by an owned task and fanned out to consumers."""

    def __init__(
        self,
        microgrid_id: int,
        settings: StreamSettings,
        *,
        on_closed: Callable[[SharedStream], None] | None = None,
    ) -> None:
        """Prepare the stream of `microgrid_id`; nothing is opened until `start()`.

        Args:
            microgrid_id: the microgrid whose dispatches it carries.
            settings: how to open, list, retry and report.
            on_closed: told once the stream stops taking consumers (its owner forgets it).
        """
        self.microgrid_id = microgrid_id
        self._settings = settings
        self._on_closed = on_closed
        self._consumers: list[Consumer] = []
        self._connected = False
        self._open_count = 0
        self._failures = 0
        self._failure: BaseException | None = None
        self._status = StreamStatus(microgrid_id, StreamState.CONNECTING)
        self._task = OwnedTask(f"dispatch-stream-{microgrid_id}")

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
        return self._task.done

    @property
    def closing(self) -> bool:
        """Whether the stream was told to close (it takes no new consumers)."""
        return self._task.cancel_called

    def start(self) -> None:
        """Start the reader task.

        Raises:
            RuntimeError: no asyncio event loop is running.
        """
        self._task.start(
            self._run,
            cleanup=self._finish,
            needs_loop="dispatch streams need a running asyncio event loop (grpclib is asyncio-only)",
        )

    def join(self, buffer_size: int, overflow: Overflow, *, watch: bool) -> Consumer:
        """Add a consumer with a buffer of `buffer_size` items and the `overflow` policy."""
        consumer = Consumer(
            self.microgrid_id,
            buffer_size,
            overflow,
            watch=watch,
            server_url=self._settings.server_url,
        )
        self._consumers.append(consumer)
        return consumer

    async def leave(self, consumer: Consumer) -> None:
        """Remove `consumer`; the last one leaving closes the stream and waits for its task."""
        consumer.close()
        self._detach(consumer)
        if self._task.cancel_called:
            await self._task.wait_closed()

    def close(self) -> None:
        """End the stream: its consumers read what is buffered, then see the end."""
        if self._on_closed is not None:
            self._on_closed(self)
        self._task.cancel()
        # End the consumers now rather than when the reader gets to it: a
        # watcher whose re-list fails because the client just disconnected
        # must see a closed stream, not that failure.
        for consumer in self._consumers:
            consumer.end()

    async def wait_closed(self) -> None:
        """Wait, shielded and bounded, until the reader task has finished."""
        await self._task.wait_closed()

    def _detach(self, consumer: Consumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
            if not self._consumers:
                self.close()

    async def _run(self) -> None:
        try:
            self._failure = await self._follow()
        except Exception as exc:
            # A bug in the fan-out must still reach the consumers, not vanish with the task.
            _log.exception("dispatch stream reader of microgrid %d crashed", self.microgrid_id)
            self._failure = exc

    async def _finish(self) -> None:
        failure = self._failure
        if failure is None and not self._task.cancel_called:
            # Cancelled by someone other than the hub (e.g. loop shutdown):
            # the consumers must not mistake that for a clean end.
            failure = Cancelled(
                "the stream reader was cancelled", server_url=self._settings.server_url
            )
        self._connected = False
        if self._on_closed is not None:
            self._on_closed(self)
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.end(None if failure is None else copy_error(failure))
        if failure is None:
            self._publish(StreamState.CLOSED)
        else:
            # Warning, not error: every consumer raises it, so the caller decides.
            _log.warning("dispatch stream of microgrid %d ended: %s", self.microgrid_id, failure)
            self._publish(StreamState.FAILED, error=failure)

    async def _follow(self) -> BaseException:
        """Keep a gRPC stream open until a non-retryable error ends it; return that error."""
        while True:
            self._open_count += 1
            self._publish(StreamState.CONNECTING, failures=self._failures)
            error = self._settings.typed(await self._attempt())
            self._connected = False
            if not is_retryable(error):
                return error
            delay = self._settings.backoff.delay(self._failures)
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
            responses = self._settings.open_stream(self.microgrid_id)
            try:
                with absorb_leaked_cancel():
                    async for response in responses:
                        self._confirm()
                        if response is not None:
                            self._fan_out(response)
                ended = Unavailable(
                    "the server ended the stream", server_url=self._settings.server_url
                )
            except Exception as exc:
                ended = exc
            finally:
                await aclose_quietly(responses)
            tg.cancel_scope.cancel()
        return ended

    async def _confirm_after_grace(self) -> None:
        await anyio.sleep(self._settings.open_grace)
        self._confirm()

    def _confirm(self) -> None:
        """Mark the stream open: reset the backoff and tell watchers to re-list."""
        if self._connected:
            return
        self._connected = True
        self._failures = 0
        _log.info("dispatch stream of microgrid %d connected", self.microgrid_id)
        self._publish(StreamState.CONNECTED)
        self._offer_all(Marker.RESYNC, watchers_only=True)

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
        hook = self._settings.on_status
        if hook is not None:
            try:
                hook(self._status)
            except Exception:
                # A faulty hook must not take the stream down with it.
                _log.exception("on_status hook failed for microgrid %d", self.microgrid_id)
