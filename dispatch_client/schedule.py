"""When dispatches start, change and stop running, as time passes and dispatches change.

`running(events)` turns the events of `Client.watch()` into `RunTransition`s:
STARTED when a run begins, UPDATED when it changes but keeps running, STOPPED
when it ends. A run is one dispatch, or with `merge` a group of dispatches
(same type and dry-run flag, or also the same target, or any key of yours)
that runs while at least one member does.

What is reported:

- A dispatch is running while `recurrence.is_running` says so. Runs that touch
  or overlap (a duration at least the gap between starts) make one running
  period: one STARTED, one STOPPED. An instantaneous run (duration 0) is never
  running, yet it is reported as STARTED immediately followed by STOPPED at the
  same `at`, so one-shot dispatches are not lost. Inactive dispatches never run;
  dry-run dispatches are reported like any other (see `data.is_dry_run`).
- `at` is when the transition happened: the run's scheduled start or end for
  transitions that come from the schedule, the moment the change was seen for
  transitions a change causes (the snapshot, a create, update or delete). `at`
  never decreases from one transition to the next. Scheduled transitions due at
  the same instant come STOPPED first, so a dispatch handing over to another
  frees things first; within one merged run, a member joining at the instant
  another leaves keeps the run going (UPDATED, never STOPPED then STARTED).
- Changes apply at once: an update that leaves now outside every run (duration
  shortened, start moved, deactivated) yields STOPPED, one that puts now inside
  a run yields STARTED, deleting a running dispatch yields STOPPED with its last
  version. An update of a running dispatch that keeps it running (payload,
  target, duration, recurrence, dry-run flag) yields UPDATED with the new
  version; one that changes only metadata yields nothing.
- Nothing is skipped: transitions that fell due while the consumer was busy (or
  the machine slept) are delivered late, in order, with their scheduled `at`.
- When `events` ends (the client disconnected), `running()` ends too, without
  inventing STOPPED transitions: the dispatches are still scheduled, there is
  just nobody left to tell about changes.

How it is built. `RunTracker` holds the logic, synchronous and without a clock
of its own: changes and "it is now t" go in, transitions come out, and it says
when the next one may fall due. `running()` is the asynchronous shell around
it, which has to wait for "the next event or the next due transition, whichever
comes first". It cannot put a timeout on the events iterator itself: cancelling
a pending `__anext__` of an async generator ends that generator for good. So a
reader task moves the events into a zero-size memory object stream (keeping
`watch()`'s own back-pressure and overflow handling), and the generator waits
on that stream with `move_on_after` until the next due time. No polling: with
something scheduled it also wakes every `_MAX_SLEEP` (60 s) to re-read the
clock, with nothing scheduled it only waits for events.

Where the reader task lives. Not in a task group opened inside the generator:
a task group is a cancel scope, and one left open across a `yield` sits on the
consumer's stack while the consumer runs. A consumer that wraps `anext()` in
`fail_after()` then breaks anyio's scope nesting (RuntimeError), a failing child
would cancel the consumer's own code, and a generator closed by the garbage
collector would exit the task group from another task. So the generator starts
the reader as a task of its own and, in its `finally`, cancels it and waits
until it has closed `events`: the reader never outlives the generator, and no
cancel scope is ever open across a `yield`. Close the generator promptly with
`contextlib.aclosing()` (a `break` leaves closing to the garbage collector).
Like the shared streams, the task is an asyncio task, so `running()` needs an
asyncio loop; under trio, `Client.running()` runs it on the client's own loop thread.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._proto.frequenz.api.common.v1alpha8.streaming import Event
from ._proto.frequenz.api.dispatch.v1 import Dispatch
from ._run_groups import MERGE_STRATEGIES, Merge, merge_key, target_key
from ._tasks import CLOSE_TIMEOUT, OwnedTask, aclose_quietly
from .recurrence import is_running, next_run, until
from .validation import dispatch_id_of, shown, to_utc
from .watchview import DispatchEvent

__all__ = [
    "MERGE_STRATEGIES",
    "Merge",
    "RunTracker",
    "RunTransition",
    "Transition",
    "merge_key",
    "running",
    "target_key",
]

_log = logging.getLogger(__name__)

_MAX_SLEEP = 60.0
"""Longest wait, in seconds, before the clock is read again.

anyio sleeps on a monotonic clock, transitions fall due on the wall clock, and
the two drift apart (NTP steps, a suspended machine): re-reading bounds the error.
"""


class Transition(enum.Enum):
    """What happened to a run: a dispatch, or a merged group of dispatches, running."""

    STARTED = "started"
    """It began running."""
    UPDATED = "updated"
    """It keeps running but changed: a member's new version, or a member joined or left."""
    STOPPED = "stopped"
    """It stopped running."""


@dataclass(frozen=True, slots=True)
class RunTransition:
    """A run started, changed or stopped at `at`."""

    dispatch: Dispatch
    """The dispatch that caused it, in the version it is based on (after a delete: the last one)."""
    kind: Transition
    at: datetime
    """When it happened: the scheduled instant, or when the causing change was seen (UTC)."""
    key: Hashable = None
    """Which run: the dispatch id without merging, else the group key of its members."""
    members: tuple[Dispatch, ...] = ()
    """The dispatches running in the run after this transition, current versions, in the
    order they joined; empty after STOPPED."""


@dataclass(eq=False, slots=True)
class _Tracked:
    dispatch: Dispatch
    running: bool
    group: Hashable


@dataclass(frozen=True, slots=True)
class _Change:
    """One dispatch started, changed while running, or stopped: before grouping."""

    at: datetime
    dispatch_id: int
    dispatch: Dispatch
    group: Hashable
    kind: Transition


@dataclass(slots=True)
class _Net:
    """What an instant's changes did to one dispatch."""

    dispatch: Dispatch
    group: Hashable
    running: bool
    started: bool
    """It started at this instant, whether or not it still runs."""


@dataclass(slots=True)
class _Plan:
    """What an instant does to one group, in the order it is applied."""

    joins: list[Dispatch] = field(default_factory=list)
    updates: list[Dispatch] = field(default_factory=list)
    leaves: list[Dispatch] = field(default_factory=list)
    flashes: list[Dispatch] = field(default_factory=list)
    """Instantaneous runs: members for no time at all."""


class RunTracker:
    """The schedule logic of `running()`, without I/O or a clock: feed it changes and time.

    `observe(event, now)` applies a `DispatchEvent` seen at `now`; `advance(now)`
    reports what the schedules did up to `now`; `next_change` says when to
    call `advance` next. Both return the transitions in order (see the module
    docstring). Times are aware datetimes; one earlier than a time already
    given counts as that time, so `at` never decreases.

    Grouping. Every dispatch has a group key (`merge_key`); a run is a group
    with at least one running member. It STARTS with its first member, is
    UPDATED when a member joins, leaves or changes (its `data` differs) while
    others keep it running, and STOPS with its last member. A running member
    whose key changes (say its target, under `"type+target"`) leaves one group
    and joins another. Changes at the same instant are applied per group as
    joins, then changes, then leaves, so a run handing over from one member to
    another at a shared boundary never stops; across groups, runs that stop
    come first, then runs that change, then runs that start.
    """

    def __init__(self, *, type: str | None = None, merge: Merge = None) -> None:
        """Track every dispatch, or only those whose `type` is `type`, grouped by `merge`.

        Args:
            type: Only dispatches of this type; None for all.
            merge: How dispatches group into runs (see `merge_key`).

        Raises:
            ValueError: `type` is not a str or None, or `merge` is not a strategy.
        """
        if type is not None and not isinstance(type, str):
            raise ValueError(f"type must be a str or None, not {shown(type)}")
        self._type = type
        self._key = merge_key(merge)
        self._tracked: dict[int, _Tracked] = {}
        # (due, 0 = may stop / 1 = may start, tie-breaker, entry); an entry
        # replaced or removed since it was pushed is skipped when popped.
        self._due: list[tuple[datetime, int, int, _Tracked]] = []
        self._order = itertools.count()
        self._latest: datetime | None = None
        # Running members per group (in the order they joined), and each member's group.
        self._groups: dict[Hashable, dict[int, Dispatch]] = {}
        self._group_of: dict[int, Hashable] = {}

    @property
    def next_change(self) -> datetime | None:
        """When the next scheduled transition may fall due; None if none is scheduled."""
        while self._due and not self._live(self._due[0][3]):
            heapq.heappop(self._due)
        return self._due[0][0] if self._due else None

    @property
    def runs(self) -> dict[Hashable, tuple[Dispatch, ...]]:
        """The runs going on as of the latest time given: group key -> running members."""
        return {key: tuple(members.values()) for key, members in self._groups.items()}

    def advance(self, now: datetime) -> list[RunTransition]:
        """Return the scheduled transitions due at or before `now`, in order."""
        return self._settle(self._advance(self._clamp(now)))

    def observe(self, event: DispatchEvent, now: datetime) -> list[RunTransition]:
        """Apply a change seen at `now`; return what fell due before it, then what it caused.

        Raises:
            TypeError: The merge callable returned something unhashable.
            ValueError: `now` is not an aware datetime.
            Exception: What the merge callable raised, with a note naming the
                dispatch; the state is left as it was.
        """
        dispatch = event.dispatch
        wanted = event.event != Event.DELETED and self._wanted(dispatch)
        # The key first: a failing merge callable must leave the state as it was.
        group = self._group(dispatch) if wanted else None
        now = self._clamp(now)
        changes = self._advance(now)
        key = dispatch_id_of(dispatch)
        old = self._tracked.pop(key, None)
        was_running = old is not None and old.running
        new: _Tracked | None = None
        if wanted:
            try:
                new = _Tracked(dispatch, is_running(dispatch, now), group)
            except (ValueError, OverflowError) as error:
                # One malformed dispatch must not end everyone's transitions.
                _log.warning("ignoring dispatch %d: %s", key, error)
        if new is not None:
            self._tracked[key] = new
            self._schedule(new, now)
        if was_running and old is not None:
            if new is not None and new.running:
                changes.append(_Change(now, key, dispatch, new.group, Transition.UPDATED))
            else:
                changes.append(_Change(now, key, dispatch, old.group, Transition.STOPPED))
        elif new is not None and new.running:
            changes.append(_Change(now, key, dispatch, new.group, Transition.STARTED))
        return self._settle(changes)

    def _group(self, dispatch: Dispatch) -> Hashable:
        try:
            group = self._key(dispatch)
        except Exception as error:
            # The user's own error, raised as is; the note says which dispatch triggered it.
            error.add_note(f"raised by the merge callable for dispatch {dispatch_id_of(dispatch)}")
            raise
        try:
            hash(group)
        except TypeError:
            raise TypeError(
                f"merge returned {group!r} for dispatch {dispatch_id_of(dispatch)}:"
                " a group key must be hashable"
            ) from None
        return group

    def _clamp(self, now: datetime) -> datetime:
        now = to_utc(now, "now")
        if self._latest is not None and now < self._latest:
            return self._latest
        self._latest = now
        return now

    def _wanted(self, dispatch: Dispatch) -> bool:
        if self._type is None:
            return True
        return dispatch.data is not None and dispatch.data.type == self._type

    def _live(self, entry: _Tracked) -> bool:
        return self._tracked.get(dispatch_id_of(entry.dispatch)) is entry

    def _schedule(self, entry: _Tracked, at: datetime) -> None:
        """Queue the next instant after `at` at which `entry` may change state."""
        dispatch = entry.dispatch
        # While running: the end of the latest run; another run may have
        # started by then, which the step at that instant finds out.
        try:
            due = until(dispatch, at) if entry.running else next_run(dispatch, at)
        except (ValueError, OverflowError) as error:
            _log.warning("dispatch %d: schedule not followed: %s", dispatch_id_of(dispatch), error)
            return
        if due is not None:
            rank = 0 if entry.running else 1
            heapq.heappush(self._due, (due, rank, next(self._order), entry))

    def _advance(self, now: datetime) -> list[_Change]:
        changes: list[_Change] = []
        while self._due and self._due[0][0] <= now:
            at, _, _, entry = heapq.heappop(self._due)
            if self._live(entry):
                self._step(entry, at, changes)
        return changes

    def _step(self, entry: _Tracked, at: datetime, changes: list[_Change]) -> None:
        """Bring `entry` to its state at `at`, an instant its schedule may change."""
        dispatch = entry.dispatch
        key = dispatch_id_of(dispatch)
        try:
            running = is_running(dispatch, at)
        except (ValueError, OverflowError) as error:
            # As in `observe`: one dispatch that cannot be evaluated stops
            # being tracked; the others go on.
            _log.warning("ignoring dispatch %d: %s", key, error)
            del self._tracked[key]
            if entry.running:
                changes.append(_Change(at, key, dispatch, entry.group, Transition.STOPPED))
            return
        if running != entry.running:
            kind = Transition.STARTED if running else Transition.STOPPED
            changes.append(_Change(at, key, dispatch, entry.group, kind))
            entry.running = running
        elif not running and dispatch.data is not None and dispatch.data.duration == 0:
            # Not running at a run's start: an instantaneous run, both at once.
            changes.append(_Change(at, key, dispatch, entry.group, Transition.STARTED))
            changes.append(_Change(at, key, dispatch, entry.group, Transition.STOPPED))
        self._schedule(entry, at)

    def _settle(self, changes: list[_Change]) -> list[RunTransition]:
        """Turn per-dispatch changes (in time order) into run transitions."""
        transitions: list[RunTransition] = []
        for at, batch in itertools.groupby(changes, key=lambda change: change.at):
            transitions += self._settle_instant(at, batch)
        return transitions

    def _settle_instant(self, at: datetime, batch: Iterable[_Change]) -> list[RunTransition]:
        # Only the net effect on each dispatch counts: a stop and a start of
        # one dispatch at one instant are no interruption.
        net: dict[int, _Net] = {}
        for change in batch:
            previous = net.get(change.dispatch_id)
            started = change.kind is Transition.STARTED or (
                previous is not None and previous.started
            )
            running = change.kind is not Transition.STOPPED
            net[change.dispatch_id] = _Net(change.dispatch, change.group, running, started)
        plans: dict[Hashable, _Plan] = {}
        for dispatch_id, outcome in net.items():
            old_group = self._group_of.get(dispatch_id, _NO_GROUP)
            moved = outcome.group != old_group
            if old_group is not _NO_GROUP and (not outcome.running or moved):
                plans.setdefault(old_group, _Plan()).leaves.append(outcome.dispatch)
            if outcome.running:
                plan = plans.setdefault(outcome.group, _Plan())
                (plan.joins if moved else plan.updates).append(outcome.dispatch)
            elif old_group is _NO_GROUP and outcome.started:
                plans.setdefault(outcome.group, _Plan()).flashes.append(outcome.dispatch)

        def order(item: tuple[Hashable, _Plan]) -> int:
            group, plan = item
            before = len(self._groups.get(group, ()))
            after = before + len(plan.joins) - len(plan.leaves)
            return 2 if not before else 1 if after else 0

        transitions: list[RunTransition] = []
        for group, plan in sorted(plans.items(), key=order):
            transitions += self._apply(group, plan, at)
        return transitions

    def _apply(self, group: Hashable, plan: _Plan, at: datetime) -> list[RunTransition]:
        members = self._groups.pop(group, {})
        transitions: list[RunTransition] = []

        def emit(dispatch: Dispatch, kind: Transition, running: Iterable[Dispatch]) -> None:
            transitions.append(RunTransition(dispatch, kind, at, group, tuple(running)))

        for dispatch in plan.joins:
            kind = Transition.UPDATED if members else Transition.STARTED
            members[dispatch_id_of(dispatch)] = dispatch
            self._group_of[dispatch_id_of(dispatch)] = group
            emit(dispatch, kind, members.values())
        for dispatch in plan.updates:
            known = members[dispatch_id_of(dispatch)]
            members[dispatch_id_of(dispatch)] = dispatch
            # A new version that only differs in its metadata changes nothing that runs.
            if known.data != dispatch.data:
                emit(dispatch, Transition.UPDATED, members.values())
        for dispatch in plan.leaves:
            del members[dispatch_id_of(dispatch)]
            del self._group_of[dispatch_id_of(dispatch)]
            emit(dispatch, Transition.UPDATED if members else Transition.STOPPED, members.values())
        for dispatch in plan.flashes:
            if members:
                emit(dispatch, Transition.UPDATED, [*members.values(), dispatch])
                emit(dispatch, Transition.UPDATED, members.values())
            else:
                emit(dispatch, Transition.STARTED, [dispatch])
                emit(dispatch, Transition.STOPPED, ())
        if members:
            self._groups[group] = members
        return transitions


_NO_GROUP: Final = object()
"""Stands for "in no group" where None may be a group key (a merge callable may return it)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def running(
    events: AsyncIterator[DispatchEvent],
    *,
    type: str | None = None,
    merge: Merge = None,
    clock: Callable[[], datetime] = _utc_now,
) -> AsyncGenerator[RunTransition, None]:
    """Yield a `RunTransition` whenever a run starts, changes or stops.

    Dispatches running when first seen start at once. An exception from
    `events` is raised here.

    ```python
    async with aclosing(running(client.watch(1), type="CHARGE")) as transitions:
        async for transition in transitions:
            ...
    ```

    Args:
        events: What `Client.watch()` yields (the current dispatches as CREATED
            events, then changes); `running()` owns it from now on and closes
            it when it ends.
        type: Only dispatches of this type; None for all.
        merge: How dispatches group into runs: None (one run per dispatch),
            `"type"`, `"type+target"` or a callable `Dispatch -> Hashable`
            (see `RunTracker` and `merge_key`).
        clock: Returns the current aware time.

    Returns:
        The transitions, as an async generator (close it with `aclosing()`).

    Raises:
        ValueError: `type`, `merge` or `clock` is not what is allowed.
    """
    tracker = RunTracker(type=type, merge=merge)
    if not callable(clock):
        raise ValueError(f"clock must be callable, not {shown(clock)}")
    return _running(events, tracker, clock)


@dataclass(frozen=True, slots=True)
class _Failure:
    error: Exception


async def _running(
    events: AsyncIterator[DispatchEvent], tracker: RunTracker, clock: Callable[[], datetime]
) -> AsyncGenerator[RunTransition, None]:
    send, receive = anyio.create_memory_object_stream[DispatchEvent | _Failure](0)
    reader = _Reader(events, send)
    try:
        reader.start()
        while True:
            for transition in tracker.advance(to_utc(clock(), "clock()")):
                yield transition
            try:
                item = await _receive_until(receive, tracker.next_change, clock)
            except anyio.EndOfStream:
                return
            if isinstance(item, _Failure):
                raise item.error
            if item is not None:
                for transition in tracker.observe(item, to_utc(clock(), "clock()")):
                    yield transition
    finally:
        await reader.close()
        receive.close()


async def _receive_until(
    receive: MemoryObjectReceiveStream[DispatchEvent | _Failure],
    deadline: datetime | None,
    clock: Callable[[], datetime],
) -> DispatchEvent | _Failure | None:
    """Return the next item, or None once `deadline` has come (or it is time to re-read the clock)."""
    delay = math.inf
    if deadline is not None:
        delay = min((deadline - to_utc(clock(), "clock()")).total_seconds(), _MAX_SLEEP)
    # Entered and left within this call: no scope is ever open across a yield.
    with anyio.move_on_after(max(delay, 0.0)):
        return await receive.receive()
    return None


class _Reader:
    """Moves `events` into a memory object stream from a task of its own (see the module docstring)."""

    def __init__(
        self,
        events: AsyncIterator[DispatchEvent],
        send: MemoryObjectSendStream[DispatchEvent | _Failure],
    ) -> None:
        self._events = events
        self._send = send
        self._task = OwnedTask("dispatch-running-reader")

    def start(self) -> None:
        self._task.start(
            self._pump,
            cleanup=self._close_events,
            needs_loop="running() needs a running asyncio event loop "
            "(under trio, use Client.running())",
        )

    async def close(self) -> None:
        """Stop reading and wait until `events` is closed, even when being cancelled."""
        if not self._task.started:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self._close_events()
            return
        self._task.cancel()
        await self._task.wait_closed()

    async def _close_events(self) -> None:
        try:
            # Closed by the task that iterated it: an async generator cannot be
            # closed from another task while it is running.
            await aclose_quietly(self._events)
        finally:
            self._send.close()

    async def _pump(self) -> None:
        try:
            async for event in self._events:
                if not await self._forward(event):
                    return
        except Exception as error:
            await self._forward(_Failure(error))

    async def _forward(self, item: DispatchEvent | _Failure) -> bool:
        """Hand `item` over; False if the consumer has gone."""
        try:
            await self._send.send(item)
        except anyio.BrokenResourceError:
            return False
        return True
