"""One gRPC stream per microgrid: an owned reader task, catch-up after every gap, reconnect.

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
the error (one copy each, chained to the original). Fan-out and overflow are in
`dispatch_client._fanout`; settings and statuses in `dispatch_client._stream_settings`.

Lifetime. A gRPC stream has no deadline: it lives until the server ends it,
the connection is found dead (HTTP/2 keep-alive pings unanswered, see
`Client(stream_timeout=...)`) or its last consumer leaves.

What the stream knows. The reader keeps two `WatchView`s: `told`, what its
`stream()` consumers have been told, and `state`, the server's state that
`watch()` consumers get as snapshots. `told` starts as one list of the
microgrid, the baseline, sent right behind the first gRPC stream request (not
before it: the stream opens a round trip sooner, and a fleet of streams is
registered before the server serves the baselines). `stream()` consumers are
taken to know the baseline whenever the server serves it, which is what makes
every catch-up, the first open's included, complete: a consumer iterating
before the stream opened gets every change from that list on. Served before
the server registered the stream, its catch-up (below) tells what changed in
between; served after, the stream's events for changes it already shows are
dropped by `WatchView` as duplicates (same `update_time`), just as a change
made between the consumer's call and the baseline is taken as known.

Why two lists, not one. A list served after the stream is registered could
stand for both the baseline and the catch-up. But only a list sent once the
server has acknowledged the stream is known to be served after it; taking
that one as the baseline would make every change between the consumer's
first iteration and the acknowledgement (a round trip, seconds when many
streams open at once) known without ever being told: a consumer that starts
iterating and then creates a dispatch could miss it. So the baseline goes out
with the stream request, and the catch-up list once the stream counts open.

Catch-up after every gap. The stream only carries changes made after the
server registered it, and a list is a snapshot at the moment it is served. So
each time a gRPC stream counts as open (below), the reader lists the microgrid
once, for all consumers, and holds back the events arriving meanwhile. When
the list is back, `WatchView.catch_up(list, held events)` turns each view into
the server's state and says how: the changes the list shows for dispatches
without held events (what happened during the gap), then the held events in
order. Live events then go through `WatchView.apply`, which drops what the
list already showed (an event can arrive after a list that reflects it), so
there are no duplicates and no dispatch goes back in time. The very first
open is no exception for `stream()` consumers: a change committed after the
baseline was served but before the server registered the stream is in no
event, only in the list after the open, so they are held back for it too
(the cost is the same: watchers need that list anyway); the catch-up also
waits for the baseline if it is still in flight. A failed list, the baseline
included, ends the attempt like a broken stream. Consumers that opted out
(`on_gap="raise"`) get the server's events as they come and `StreamGap` when a
stream that was open breaks.

Opening many streams at once. A client following many microgrids opens
their streams together (at start, or when a restarted server is back). A
baseline must stay right behind its stream request (above), but a catch-up
list only has to be served after the registration, whenever that is: it waits
until no stream of the hub is still waiting for its acknowledgement (or until
none was acknowledged for `open_grace` seconds, or as many were acknowledged or
failed as were waiting when it began: streams that keep failing and opening
again must not hold it back for good), so the server registers them
all before it serves the catch-up lists instead of between them, and every
stream is open sooner. Events arriving meanwhile are held as usual. A lone
stream, acknowledged, does not wait.

Reconnect. A retryable failure (the error class's `retryable`: UNAVAILABLE,
DEADLINE_EXCEEDED, a broken connection, the server ending the stream, ...)
re-opens the stream after a backoff delay, cut short once a server that could
not be reached can be again (see `dispatch_client._reconnect`); the failure
count resets once a catch-up is complete. Non-retryable statuses
(UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND, ...) end the
consumers. Transitions go to the optional `on_status` hook and the log; errors
carry the server URL, never the API key.

When a stream counts as open. The server acknowledges a stream by sending its
initial metadata once the subscription is registered (the reference server
does); `open_stream` passes that on by yielding `None` first. Without an
acknowledgement, the first event or `open_grace` quiet seconds without an error
count instead (counted once the baseline is in): a heuristic, but a safe one
in practice because the stream request and the later list request share one
HTTP/2 connection, so the stream request reaches the server first; the grace
only covers the server's handler scheduling, not network latency. So the grace
applies only while the server has not acknowledged any stream of the hub: a
server that acknowledges is waited for, however long it takes when busy (a
stream counted open before its registration would let the catch-up list be
served before it, and a change made in between would be in neither). The grace
is waited out by the task that lists, so an acknowledged stream costs no
timer task. It counts as `connected` (and CONNECTED is published) only once
the baseline is in as well: a change made before the baseline is served is in
it and taken as known, so a user who saw the stream connected and then made a
change must find it told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from ._fanout import Audience, Batch, Consumer, Item, Overflow, Snapshot
from ._proto.frequenz.api.common.v1alpha8.streaming import Event
from ._proto.frequenz.api.dispatch.v1 import Dispatch, StreamMicrogridDispatchesResponse
from ._reconnect import is_retryable, unreachable
from ._stream_settings import StreamSettings, StreamState, StreamStatus
from ._tasks import OwnedTask, aclose_quietly, wait_event
from .connection import withdraw_leaked_cancels
from .errors import Cancelled, StreamGap, Unavailable, copy_error
from .watchview import DispatchEvent, WatchView

__all__ = [
    "SharedStream",
    "StreamSettings",
    "StreamState",
    "StreamStatus",
]

_log = logging.getLogger("dispatch_client.streaming")

_AUDIENCES = tuple(Audience)
"""Iterating the enum class builds a generator each time: once per consumer joining or leaving."""


class _ListFailed(Exception):
    """Ends an attempt's task group (the reader is cancelled): a list failed, see `_list_failure`."""


async def _collect(dispatches: AsyncIterator[Dispatch]) -> list[Dispatch]:
    task = asyncio.current_task()
    baseline = task.cancelling() if task is not None else 0
    try:
        return [dispatch async for dispatch in dispatches]
    except Exception:
        withdraw_leaked_cancels(task, baseline)
        raise
    finally:
        await aclose_quietly(dispatches)


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
        self._audiences: dict[Audience, tuple[Consumer, ...]] = dict.fromkeys(_AUDIENCES, ())
        """The consumers by audience, rebuilt as they come and go: no copy per event."""
        self._open = False
        """The current attempt's gRPC stream counts as open (events are held from then on)."""
        self._connected = False
        """Open and the baseline is in: changes from now on reach every consumer."""
        self._synced = False
        self._open_count = 0
        self._catch_up_count = 0
        self._failures = 0
        self._failure: BaseException | None = None
        self._status = StreamStatus(microgrid_id, StreamState.CONNECTING)
        self._task = OwnedTask(f"dispatch-stream-{microgrid_id}")
        self._told: WatchView | None = None
        """What stream() consumers were told; None until the first list."""
        self._state: WatchView | None = None
        """The server's state for watchers; None until the first list after an open."""
        self._held: list[DispatchEvent] | None = None
        """Events received while a catch-up list is in flight; None when not catching up."""
        self._list_failure: BaseException | None = None
        self._opened = asyncio.Event()
        """Set once the current attempt's gRPC stream counts as open."""
        self._counted = False
        """The current attempt is counted in the hub's `unacknowledged` streams."""

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
        """Whether the gRPC stream counts as open and the baseline list is in.

        From then on every change reaches the `stream()` consumers: open alone
        is not enough, as a change made before the baseline is served is in it
        and taken as known (see the module docstring).
        """
        return self._connected

    @property
    def synced(self) -> bool:
        """Whether the stream is open and its catch-up after opening is delivered."""
        return self._synced

    @property
    def open_count(self) -> int:
        """How many times a gRPC stream has been opened (1 + reconnect attempts)."""
        return self._open_count

    @property
    def catch_up_count(self) -> int:
        """How many catch-ups (one list each) were completed after a stream opened."""
        return self._catch_up_count

    @property
    def status(self) -> StreamStatus:
        """The latest state change."""
        return self._status

    @property
    def closed(self) -> bool:
        """Whether the reader task has finished."""
        return self._task.done

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

    def join(self, buffer_size: int, overflow: Overflow, *, audience: Audience) -> Consumer:
        """Add a consumer.

        Args:
            buffer_size: items it may fall behind by.
            overflow: what happens when it falls further behind.
            audience: what it is fed (see `dispatch_client._fanout`).

        Returns:
            The consumer; a watcher joining a stream that knows the state gets
            its snapshot at once.
        """
        consumer = Consumer(
            self.microgrid_id,
            buffer_size,
            overflow,
            audience=audience,
            server_url=self._settings.server_url,
            snapshot=self._snapshot,
        )
        self._consumers.append(consumer)
        self._regroup()
        if audience is Audience.WATCH and self._state is not None:
            consumer.offer(self._snapshot())
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
        # End the consumers now rather than when the reader gets to it.
        for consumer in self._consumers:
            consumer.end()

    async def wait_closed(self) -> None:
        """Wait, shielded and bounded, until the reader task has finished."""
        await self._task.wait_closed()

    def _detach(self, consumer: Consumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
            self._regroup()
            if not self._consumers:
                self.close()

    def _regroup(self) -> None:
        self._audiences = {
            audience: tuple(c for c in self._consumers if c.audience is audience)
            for audience in _AUDIENCES
        }

    def _snapshot(self) -> Snapshot:
        assert self._state is not None
        return Snapshot(self._state.copy())

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
        self._open = self._connected = self._synced = False
        if self._on_closed is not None:
            self._on_closed(self)
        consumers, self._consumers = self._consumers, []
        self._regroup()
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
        cut_short_since_synced = False
        while True:
            self._open_count += 1
            self._publish(StreamState.CONNECTING, failures=self._failures)
            was_open, error = await self._attempt()
            if self._synced:
                cut_short_since_synced = False
            self._open = self._connected = self._synced = False
            self._held = None
            if not is_retryable(error):
                return error
            if was_open:
                self._end_raw_consumers(error)
            delay = self._settings.backoff.delay(self._failures)
            self._failures += 1
            _log.warning(
                "dispatch stream of microgrid %d broke (%s); reconnecting in at most %.2f s",
                self.microgrid_id,
                error,
                delay,
            )
            self._publish(
                StreamState.RECONNECTING, failures=self._failures, retry_in=delay, error=error
            )
            # Once a wait was cut short without the stream getting back in sync, a
            # failure that merely looks like an unreachable server (a connection
            # reset at once) no longer cuts one short: only a probe that fails
            # first does, so a server that drops every connection is backed off.
            down = unreachable(error) and not cut_short_since_synced
            if await self._settings.prober.wait_to_retry(delay, unreachable=down):
                cut_short_since_synced = True
                _log.info("server of microgrid %d is reachable again", self.microgrid_id)

    async def _attempt(self) -> tuple[bool, BaseException]:
        """Read one gRPC stream until it ends, listing alongside; return whether it was open and why it ended."""
        self._list_failure = None
        self._opened = asyncio.Event()
        ended: BaseException | None = None
        probe = self._settings.probe
        if probe is not None:
            # Connected first: a fleet's streams opening on a new channel all
            # wait here for its one connection, then each sends its request in
            # one go. Waiting inside the call instead, each first started its
            # list and got halfway into the call, and resumed from there once
            # connected: a second pass over the fleet before anything was sent.
            task = asyncio.current_task()
            baseline = task.cancelling() if task is not None else 0
            prober = self._settings.prober
            number = prober.probe_started()
            try:
                await probe()
            except Exception as exc:
                withdraw_leaked_cancels(task, baseline)  # see `absorb_leaked_cancel`
                return False, self._settings.typed(exc)
            # The server can be reached: the hub's streams waiting for that
            # need not wait for the prober's next probe.
            prober.reached(number)
        # asyncio's task group, not anyio's: the hub runs on asyncio only (as
        # grpclib does, trio included: see `dispatch_client._trio`), and
        # anyio's costs about 35 µs more per stream, a fleet's opening over.
        try:
            async with asyncio.TaskGroup() as tg:
                # Created first but run after the stream request is written:
                # the baseline list (if still needed) goes out right behind it.
                lists = tg.create_task(self._lists())
                ended = await self._read()
                lists.cancel()
        except* _ListFailed:
            pass
        error = self._list_failure or ended
        assert error is not None
        return self._open, self._settings.typed(error)

    async def _read(self) -> BaseException:
        self._settings.unacknowledged.add()
        self._counted = True
        responses = None
        task = asyncio.current_task()
        baseline = task.cancelling() if task is not None else 0
        try:
            # Inside the try: an `open_stream` may raise at the call (the
            # client's does when it was disconnected meanwhile), and that
            # ends the attempt as a failure at the first message would.
            responses = self._settings.open_stream(self.microgrid_id)
            async for response in responses:
                if response is None:
                    self._settings.unacknowledged.server_acknowledges = True
                if not self._open:
                    self._confirm()
                if response is not None:
                    self._receive(response)
            return Unavailable("the server ended the stream", server_url=self._settings.server_url)
        except Exception as exc:
            withdraw_leaked_cancels(task, baseline)
            return exc
        finally:
            self._uncount()
            if responses is not None:
                await aclose_quietly(responses)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._settings.unacknowledged.remove()

    async def _list(self) -> list[Dispatch]:
        return await _collect(self._settings.list_dispatches(self.microgrid_id))

    async def _lists(self) -> None:
        """List the baseline if there is none yet, wait until the stream is open, then catch up."""
        try:
            if self._told is None:
                self._told = WatchView(await self._list())
            if not self._open:
                # Without the server's acknowledgement or an event, `open_grace`
                # quiet seconds count as open, unless this server acknowledges
                # its streams: then it is waited for, however long a busy server
                # takes (see "When a stream counts as open").
                await wait_event(self._opened, self._settings.open_grace)
                if not self._open and self._settings.unacknowledged.server_acknowledges:
                    await self._opened.wait()
                self._confirm()
            self._announce()
            # Streams of this hub opening at the same time are registered
            # first (see "Opening many streams at once").
            await self._settings.unacknowledged.wait_for_none(self._settings.open_grace)
            snapshot = await self._list()
        except Exception as exc:
            # The attempt ends as if the stream had broken; the next one lists again.
            self._list_failure = exc
            raise _ListFailed from None
        self._catch_up(snapshot)

    def _confirm(self) -> None:
        """Mark the stream open: hold events back until the catch-up list is in."""
        if self._open:
            return
        self._open = True
        self._held = []
        self._opened.set()
        self._uncount()

    def _announce(self) -> None:
        """Count the stream connected: it is open and the baseline is in."""
        # Not at the acknowledgement: a change made before the baseline is
        # served is in it, taken as known and never told; one made after the
        # user saw CONNECTED must be told.
        self._connected = True
        _log.info("dispatch stream of microgrid %d connected", self.microgrid_id)
        self._publish(StreamState.CONNECTED, failures=self._failures)

    def _catch_up(self, snapshot: list[Dispatch]) -> None:
        held, self._held = self._held or [], None
        assert self._told is not None
        self._fan_out_batch(Audience.CATCH_UP, self._told.catch_up(snapshot, held))
        if self._state is None:
            self._state = WatchView()
            self._state.catch_up(snapshot, held)
        else:
            self._fan_out_batch(Audience.WATCH, self._state.catch_up(snapshot, held))
        for consumer in list(self._consumers):
            if consumer.audience is Audience.WATCH and not consumer.has_snapshot:
                self._offer(consumer, self._snapshot())
        self._synced = True
        self._catch_up_count += 1
        self._failures = 0

    def _receive(self, response: StreamMicrogridDispatchesResponse) -> None:
        if response.dispatch is None or response.event == Event.UNSPECIFIED:
            _log.warning("ignoring malformed stream message for microgrid %d", self.microgrid_id)
            return
        event = DispatchEvent(response.event, response.dispatch)
        if self._audiences[Audience.RAW]:
            self._fan_out(Audience.RAW, (event,))
        if self._held is not None:
            self._held.append(event)
            return
        assert self._told is not None
        self._fan_out(Audience.CATCH_UP, self._told.apply(event))
        if self._state is not None:
            self._fan_out(Audience.WATCH, self._state.apply(event))

    def _fan_out(self, audience: Audience, events: Iterable[DispatchEvent]) -> None:
        # A tuple that offering cannot change: a consumer detached meanwhile
        # has ended, and its offer is refused.
        consumers = self._audiences[audience]
        if not consumers:
            return
        for event in events:
            for consumer in consumers:
                if consumer.has_snapshot:
                    self._offer(consumer, event)

    def _fan_out_batch(self, audience: Audience, events: list[DispatchEvent]) -> None:
        if not events:
            return
        batch = Batch(tuple(events))
        for consumer in self._audiences[audience]:
            if consumer.has_snapshot:
                self._offer(consumer, batch)

    def _offer(self, consumer: Consumer, item: Item) -> None:
        if not consumer.offer(item):
            self._detach(consumer)

    def _end_raw_consumers(self, error: BaseException) -> None:
        for consumer in self._audiences[Audience.RAW]:
            consumer.end(
                StreamGap(
                    f"the stream of microgrid {consumer.microgrid_id} broke ({error}); "
                    "changes made until it is open again are not delivered",
                    server_url=self._settings.server_url,
                )
            )
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
