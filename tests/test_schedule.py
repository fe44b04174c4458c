"""`running()`: start/stop transitions from schedules and live changes.

Three layers: `RunTracker` with hand-fed times (the logic, including long
recurring series, in microseconds), `running()` over an in-memory events
iterator (waking, closing, errors, a fast fake clock), and `running()` over
`Client.watch()` against the reference server with sub-second timing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_streaming_helpers import LoopErrors, stream_tasks, wait_until

from dispatch_client import (
    Dispatch,
    DispatchData,
    DispatchMetadata,
    Event,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
)
from dispatch_client import schedule as schedule_module
from dispatch_client.client import Client
from dispatch_client.recurrence import runs
from dispatch_client.schedule import RunTracker, RunTransition, Transition, running
from dispatch_client.streaming import DispatchEvent

# The server and client fixtures of the tests against the reference server.
pytest_plugins = ["test_streaming_helpers"]
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("error")]

STARTED, STOPPED = Transition.STARTED, Transition.STOPPED
CREATED, UPDATED, DELETED = Event.CREATED, Event.UPDATED, Event.DELETED
T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
SECOND, MINUTE, HOUR = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)


def make(
    dispatch_id: int,
    start: datetime,
    duration: timedelta | None,
    *,
    active: bool = True,
    kind: str = "T",
    recurrence: RecurrenceRule | None = None,
) -> Dispatch:
    return Dispatch(
        metadata=DispatchMetadata(dispatch_id=dispatch_id),
        data=DispatchData(
            type=kind,
            start_time=start,
            duration=None if duration is None else round(duration.total_seconds()),
            is_active=active,
            recurrence=recurrence,
        ),
    )


def minutely(count: int, interval: int = 1) -> RecurrenceRule:
    return RecurrenceRule(
        freq=RecurrenceRuleFrequency.MINUTELY,
        interval=interval,
        end_criteria=RecurrenceRuleEndCriteria(count=count),
    )


def brief(transitions: list[RunTransition]) -> list[tuple[int, Transition, datetime]]:
    return [(t.dispatch.metadata.dispatch_id, t.kind, t.at) for t in transitions]  # type: ignore[union-attr]


# -- RunTracker: the logic, with hand-fed times ---------------------------------------


def test_single_run_starts_and_stops_on_schedule() -> None:
    tracker = RunTracker()
    assert tracker.observe(DispatchEvent(CREATED, make(1, T0, 30 * MINUTE)), T0 - HOUR) == []
    assert tracker.next_change == T0
    assert tracker.advance(T0 - SECOND) == []
    assert brief(tracker.advance(T0 + SECOND)) == [(1, STARTED, T0)]
    assert tracker.next_change == T0 + 30 * MINUTE
    assert brief(tracker.advance(T0 + HOUR)) == [(1, STOPPED, T0 + 30 * MINUTE)]
    assert tracker.next_change is None


def test_running_when_first_seen_starts_at_once() -> None:
    tracker = RunTracker()
    seen = T0 + 10 * MINUTE
    assert brief(tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), seen)) == [
        (1, STARTED, seen)
    ]
    assert tracker.next_change == T0 + HOUR


def test_recurring_runs_give_pairs_and_a_late_advance_replays_them_in_order() -> None:
    tracker = RunTracker()
    dispatch = make(1, T0, 10 * SECOND, recurrence=minutely(3))
    tracker.observe(DispatchEvent(CREATED, dispatch), T0 - SECOND)
    assert brief(tracker.advance(T0 + HOUR)) == [
        (1, STARTED, T0),
        (1, STOPPED, T0 + 10 * SECOND),
        (1, STARTED, T0 + MINUTE),
        (1, STOPPED, T0 + MINUTE + 10 * SECOND),
        (1, STARTED, T0 + 2 * MINUTE),
        (1, STOPPED, T0 + 2 * MINUTE + 10 * SECOND),
    ]
    assert tracker.next_change is None


@pytest.mark.parametrize("duration", [MINUTE, 3 * MINUTE])
def test_touching_or_overlapping_runs_make_one_running_period(duration: timedelta) -> None:
    tracker = RunTracker()
    dispatch = make(1, T0, duration, recurrence=minutely(5))
    tracker.observe(DispatchEvent(CREATED, dispatch), T0 - SECOND)
    assert brief(tracker.advance(T0 + HOUR)) == [
        (1, STARTED, T0),
        (1, STOPPED, T0 + 4 * MINUTE + duration),
    ]


def test_instantaneous_runs_start_and_stop_at_the_same_instant() -> None:
    tracker = RunTracker()
    dispatch = make(1, T0, timedelta(0), recurrence=minutely(2))
    tracker.observe(DispatchEvent(CREATED, dispatch), T0 - SECOND)
    assert brief(tracker.advance(T0 + HOUR)) == [
        (1, STARTED, T0),
        (1, STOPPED, T0),
        (1, STARTED, T0 + MINUTE),
        (1, STOPPED, T0 + MINUTE),
    ]


def test_endless_duration_never_stops() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0, None)), T0 - HOUR)
    assert brief(tracker.advance(T0 + 1000 * HOUR)) == [(1, STARTED, T0)]
    assert tracker.next_change is None


def test_updates_apply_at_once() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0 - HOUR)
    tracker.advance(T0)
    # Longer: still running, UPDATED with the new version; it now ends later.
    longer = tracker.observe(DispatchEvent(UPDATED, make(1, T0, 2 * HOUR)), T0 + MINUTE)
    assert brief(longer) == [(1, Transition.UPDATED, T0 + MINUTE)]
    assert longer[0].dispatch.data.duration == 7200  # type: ignore[union-attr]
    assert longer[0].members == (longer[0].dispatch,) and longer[0].key == 1
    assert tracker.next_change == T0 + 2 * HOUR
    # Shortened into the past: stops now, reporting the new version.
    now = T0 + 30 * MINUTE
    stop = tracker.observe(DispatchEvent(UPDATED, make(1, T0, 10 * MINUTE)), now)
    assert brief(stop) == [(1, STOPPED, now)]
    assert stop[0].dispatch.data.duration == 600  # type: ignore[union-attr]
    # Start moved ahead: waits for the new start.
    later = T0 + 5 * HOUR
    assert tracker.observe(DispatchEvent(UPDATED, make(1, later, HOUR)), now) == []
    assert tracker.next_change == later
    # Moved back to cover now: starts now.
    assert brief(tracker.observe(DispatchEvent(UPDATED, make(1, T0, HOUR)), now)) == [
        (1, STARTED, now)
    ]


def test_deactivating_stops_and_reactivating_starts() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0)
    off = tracker.observe(DispatchEvent(UPDATED, make(1, T0, HOUR, active=False)), T0 + MINUTE)
    assert brief(off) == [(1, STOPPED, T0 + MINUTE)]
    assert off[0].dispatch.data.is_active is False  # type: ignore[union-attr]
    assert tracker.next_change is None
    on = tracker.observe(DispatchEvent(UPDATED, make(1, T0, HOUR)), T0 + 2 * MINUTE)
    assert brief(on) == [(1, STARTED, T0 + 2 * MINUTE)]


def test_deleting_stops_a_running_dispatch_only() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0)
    tracker.observe(DispatchEvent(CREATED, make(2, T0 + 5 * HOUR, HOUR)), T0)
    assert brief(tracker.observe(DispatchEvent(DELETED, make(1, T0, HOUR)), T0 + SECOND)) == [
        (1, STOPPED, T0 + SECOND)
    ]
    assert tracker.observe(DispatchEvent(DELETED, make(2, T0 + 5 * HOUR, HOUR)), T0 + SECOND) == []
    assert tracker.observe(DispatchEvent(DELETED, make(3, T0, HOUR)), T0 + SECOND) == []
    assert tracker.next_change is None


def test_type_filter() -> None:
    tracker = RunTracker(type="CHARGE")
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR, kind="CHARGE")), T0 - HOUR)
    tracker.observe(DispatchEvent(CREATED, make(2, T0, HOUR, kind="DISCHARGE")), T0 - HOUR)
    assert brief(tracker.advance(T0 + 2 * HOUR)) == [(1, STARTED, T0), (1, STOPPED, T0 + HOUR)]


def test_stops_come_before_starts_at_the_same_instant() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(2, T0 + HOUR, HOUR)), T0 - SECOND)
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0 - SECOND)
    assert brief(tracker.advance(T0 + HOUR)) == [
        (1, STARTED, T0),
        (1, STOPPED, T0 + HOUR),
        (2, STARTED, T0 + HOUR),
    ]


def test_time_never_goes_backwards() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0 - HOUR)
    assert brief(tracker.advance(T0 + 2 * HOUR)) == [(1, STARTED, T0), (1, STOPPED, T0 + HOUR)]
    # A clock stepping back must not restart what already ended.
    assert tracker.observe(DispatchEvent(UPDATED, make(1, T0, HOUR)), T0 + MINUTE) == []


def test_malformed_dispatch_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0)
    broken = Dispatch(metadata=DispatchMetadata(dispatch_id=1), data=DispatchData(type="T"))
    assert brief(tracker.observe(DispatchEvent(UPDATED, broken), T0 + SECOND)) == [
        (1, STOPPED, T0 + SECOND)
    ]
    assert "ignoring dispatch 1" in caplog.text
    assert tracker.next_change is None


def test_naive_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="now"):
        RunTracker().advance(datetime(2030, 1, 1))


def merged_periods(dispatch: Dispatch, end: datetime) -> list[tuple[Transition, datetime]]:
    """The expected transitions, straight from `runs()`: touching runs merged."""
    expected: list[tuple[Transition, datetime]] = []
    period: list[datetime | None] | None = None
    for start, stop in runs(dispatch, T0 - HOUR, end):
        if stop == start:
            expected += [(STARTED, start), (STOPPED, start)]
            continue
        if period is not None and (period[1] is None or start <= period[1]):
            period[1] = None if stop is None or period[1] is None else max(period[1], stop)
            continue
        if period is not None:
            expected.append((STOPPED, period[1]))  # type: ignore[arg-type]
        expected.append((STARTED, start))
        period = [start, stop]
    if period is not None and period[1] is not None:
        expected.append((STOPPED, period[1]))
    return expected


@settings(max_examples=150, deadline=None)
@given(
    freq=st.sampled_from([RecurrenceRuleFrequency.MINUTELY, RecurrenceRuleFrequency.HOURLY]),
    interval=st.integers(1, 4),
    count=st.integers(1, 6),
    duration=st.sampled_from([0, 1, 30, 60, 90, 240, 3600, 7200, None]),
    offset=st.integers(0, 3600),
    steps=st.lists(st.integers(1, 3 * 3600), min_size=1, max_size=30),
)
def test_transitions_match_the_merged_runs_whatever_the_step(
    freq: RecurrenceRuleFrequency,
    interval: int,
    count: int,
    duration: int | None,
    offset: int,
    steps: list[int],
) -> None:
    rule = RecurrenceRule(
        freq=freq, interval=interval, end_criteria=RecurrenceRuleEndCriteria(count=count)
    )
    span = None if duration is None else timedelta(seconds=duration)
    dispatch = make(1, T0 + timedelta(seconds=offset), span, recurrence=rule)
    tracker = RunTracker()
    now = T0 - SECOND
    got = tracker.observe(DispatchEvent(CREATED, dispatch), now)
    for step in steps:
        now += timedelta(seconds=step)
        got += tracker.advance(now)
    assert [(t.kind, t.at) for t in got] == [
        (kind, at) for kind, at in merged_periods(dispatch, T0 + 1000 * HOUR) if at <= now
    ]
    assert all(a.at <= b.at for a, b in itertools.pairwise(got))


# -- running() over an in-memory events iterator --------------------------------------


def reader_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name() == "dispatch-running-reader" and not task.done()
    ]


@pytest.fixture(autouse=True)
async def nothing_left_behind(anyio_backend: Any) -> AsyncIterator[None]:
    errors = LoopErrors()
    errors.install()
    yield
    await wait_until(lambda: not reader_tasks() and not stream_tasks(), limit=2)
    assert errors.reports == []


class Feed:
    """An events iterator the test drives: what it was given, then whatever is pushed."""

    def __init__(self, *events: DispatchEvent) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[DispatchEvent | Exception](100)
        for event in events:
            self.send.send_nowait(event)
        self.closed = False

    async def events(self) -> AsyncGenerator[DispatchEvent, None]:
        try:
            with self.receive:
                async for item in self.receive:
                    if isinstance(item, Exception):
                        raise item
                    yield item
        finally:
            self.closed = True


@pytest.fixture
def feeds() -> Iterator[list[Feed]]:
    made: list[Feed] = []
    yield made
    for feed in made:
        feed.send.close()
        feed.receive.close()


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_change_wakes_the_scheduler_early(feeds: list[Feed]) -> None:
    feeds.append(feed := Feed(DispatchEvent(CREATED, make(1, now() + 30 * SECOND, 5 * SECOND))))
    async with aclosing(running(feed.events())) as transitions:
        await anyio.sleep(0.05)
        start = now() + 0.2 * SECOND
        feed.send.send_nowait(DispatchEvent(UPDATED, make(1, start, 5 * SECOND)))
        with anyio.fail_after(1):
            started = await anext(transitions)
        assert (started.kind, started.at) == (STARTED, start)
        assert abs(now() - start) < 0.1 * SECOND
    assert feed.closed


async def test_anext_under_a_timeout_scope_keeps_working(feeds: list[Feed]) -> None:
    # A cancel scope kept open across the generator's yield would break this.
    feeds.append(feed := Feed(DispatchEvent(CREATED, make(1, now() - SECOND, 30 * SECOND))))
    async with aclosing(running(feed.events())) as transitions:
        with anyio.fail_after(1):
            assert (await anext(transitions)).kind is STARTED
        feed.send.send_nowait(DispatchEvent(DELETED, make(1, now() - SECOND, 30 * SECOND)))
        with anyio.fail_after(1):
            assert (await anext(transitions)).kind is STOPPED


async def test_recurring_pairs_with_a_fast_clock(
    feeds: list[Feed], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fake time runs 120x faster; re-reading it often stands in for a faster sleep.
    monkeypatch.setattr(schedule_module, "_MAX_SLEEP", 0.005)
    origin, began = T0 - 30 * SECOND, time.monotonic()

    def fast_clock() -> datetime:
        return origin + (time.monotonic() - began) * 120 * SECOND

    dispatch = make(1, T0, 10 * SECOND, recurrence=minutely(3))
    feeds.append(feed := Feed(DispatchEvent(CREATED, dispatch)))
    got: list[RunTransition] = []
    async with aclosing(running(feed.events(), clock=fast_clock)) as transitions:
        with anyio.fail_after(5):
            async for transition in transitions:
                got.append(transition)
                if len(got) == 6:
                    break
    assert brief(got) == [
        (1, kind, T0 + run * MINUTE + (10 * SECOND if kind is STOPPED else timedelta(0)))
        for run in range(3)
        for kind in (STARTED, STOPPED)
    ]


async def test_errors_from_the_events_reach_the_consumer(feeds: list[Feed]) -> None:
    feeds.append(feed := Feed(DispatchEvent(CREATED, make(1, now() - SECOND, 30 * SECOND))))
    async with aclosing(running(feed.events())) as transitions:
        assert (await anext(transitions)).kind is STARTED
        feed.send.send_nowait(RuntimeError("stream broke"))
        with pytest.raises(RuntimeError, match="stream broke"), anyio.fail_after(1):
            await anext(transitions)
    assert feed.closed


async def test_ends_when_the_events_end(feeds: list[Feed]) -> None:
    feeds.append(feed := Feed(DispatchEvent(CREATED, make(1, now() - SECOND, 30 * SECOND))))
    feed.send.close()
    with anyio.fail_after(1):
        got = [t.kind async for t in running(feed.events())]
    assert got == [STARTED]


@pytest.mark.parametrize("how", ["aclose", "cancel", "asyncio-cancel", "break"])
async def test_leaving_closes_the_events_and_leaves_no_task(feeds: list[Feed], how: str) -> None:
    feeds.append(feed := Feed(DispatchEvent(CREATED, make(1, now() - SECOND, 30 * SECOND))))
    if how == "aclose":
        async with aclosing(running(feed.events())) as transitions:
            await anext(transitions)
            assert reader_tasks()
    elif how == "cancel":
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async with aclosing(running(feed.events())) as transitions:
                    async for _ in transitions:
                        tg.cancel_scope.cancel()

            tg.start_soon(consume)
    elif how == "asyncio-cancel":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1), aclosing(running(feed.events())) as transitions:
                async for _ in transitions:
                    pass
    else:
        # Without aclosing() the garbage collector closes it, soon after.
        async for _ in running(feed.events()):
            break
    await wait_until(lambda: feed.closed and not reader_tasks(), limit=2)


async def test_leaving_before_the_first_event(feeds: list[Feed]) -> None:
    feeds.append(feed := Feed())
    transitions = running(feed.events())
    with anyio.move_on_after(0.05):
        await anext(transitions)
    await transitions.aclose()
    assert feed.closed and not reader_tasks()


def test_arguments_are_checked(feeds: list[Feed]) -> None:
    feeds.append(feed := Feed())
    with pytest.raises(ValueError, match="type"):
        running(feed.events(), type=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock"):
        running(feed.events(), clock="now")  # type: ignore[arg-type]


async def test_a_naive_clock_is_rejected(feeds: list[Feed]) -> None:
    feeds.append(feed := Feed())
    async with aclosing(running(feed.events(), clock=datetime.now)) as transitions:
        with pytest.raises(ValueError, match=r"clock\(\) must be timezone-aware"):
            await anext(transitions)
    assert feed.closed


# -- running() over Client.watch() against the reference server -------------------------


def next_whole_second(ahead: timedelta) -> datetime:
    """The first whole second at least `ahead` from now (the server keeps whole seconds)."""
    moment = now() + ahead
    return moment.replace(microsecond=0) + (SECOND if moment.microsecond else timedelta(0))


async def next_transition(transitions: AsyncGenerator[RunTransition, None]) -> RunTransition:
    with anyio.fail_after(5):
        return await anext(transitions)


async def running_dispatch(client: Client, kind: str = "TEST") -> Dispatch:
    """Create a dispatch starting now for 30 s, and wait until its (rounded) start has passed."""
    created = await client.create(1, kind, "NOW", timedelta(seconds=30), [1, 2])
    assert created.data is not None and created.data.start_time is not None
    await anyio.sleep(max(0.0, (created.data.start_time - now()).total_seconds()))
    return created


def dispatch_id(transition: RunTransition) -> int:
    assert transition.dispatch.metadata is not None
    return transition.dispatch.metadata.dispatch_id


async def test_server_started_then_stopped_on_time(client: Client) -> None:
    async with aclosing(client.running(1)) as transitions:
        start = next_whole_second(0.5 * SECOND)
        created = await client.create(1, "TEST", start, timedelta(seconds=1), [1, 2])
        assert created.data is not None and created.data.start_time == start
        started = await next_transition(transitions)
        started_seen = now()
        stopped = await next_transition(transitions)
        stopped_seen = now()
    assert (started.kind, started.at) == (STARTED, start)
    assert (stopped.kind, stopped.at) == (STOPPED, start + SECOND)
    assert abs(started_seen - start) < 0.1 * SECOND
    assert abs(stopped_seen - (start + SECOND)) < 0.1 * SECOND


async def test_server_running_at_snapshot_starts_at_once(client: Client) -> None:
    created = await running_dispatch(client)
    began = now()
    async with aclosing(client.running(1)) as transitions:
        started = await next_transition(transitions)
    assert started.kind is STARTED and started.dispatch == created
    assert now() - began < SECOND


async def test_server_shortening_a_running_dispatch_stops_it(client: Client) -> None:
    created = await running_dispatch(client)
    assert created.metadata is not None and created.data is not None
    assert created.data.start_time is not None
    async with aclosing(client.running(1)) as transitions:
        assert (await next_transition(transitions)).kind is STARTED
        # Wait until a 1 s duration lies in the past, then shorten to it.
        end = created.data.start_time + SECOND
        await anyio.sleep((end - now()).total_seconds() + 0.05)
        await client.update(1, created.metadata.dispatch_id, {"duration": timedelta(seconds=1)})
        updated = now()
        stopped = await next_transition(transitions)
    assert stopped.kind is STOPPED and stopped.dispatch.data.duration == 1  # type: ignore[union-attr]
    assert now() - updated < 0.3 * SECOND


@pytest.mark.parametrize("change", ["delete", "deactivate"])
async def test_server_deleting_or_deactivating_stops(client: Client, change: str) -> None:
    created = await running_dispatch(client)
    assert created.metadata is not None
    async with aclosing(client.running(1)) as transitions:
        assert (await next_transition(transitions)).kind is STARTED
        if change == "delete":
            await client.delete(1, created.metadata.dispatch_id)
        else:
            await client.update(1, created.metadata.dispatch_id, {"active": False})
        changed = now()
        stopped = await next_transition(transitions)
    assert stopped.kind is STOPPED and dispatch_id(stopped) == created.metadata.dispatch_id
    assert stopped.dispatch.data.is_active is (change == "delete")  # type: ignore[union-attr]
    assert now() - changed < 0.3 * SECOND


async def test_server_type_filter(client: Client) -> None:
    charge = await running_dispatch(client, "CHARGE")
    other = await client.create(1, "DISCHARGE", "NOW", timedelta(seconds=30), [1])
    assert charge.metadata is not None and other.metadata is not None
    async with aclosing(client.running(1, type="CHARGE")) as transitions:
        started = await next_transition(transitions)
        await client.delete(1, other.metadata.dispatch_id)
        await client.delete(1, charge.metadata.dispatch_id)
        stopped = await next_transition(transitions)
    assert [(t.kind, dispatch_id(t)) for t in (started, stopped)] == [
        (STARTED, charge.metadata.dispatch_id),
        (STOPPED, charge.metadata.dispatch_id),
    ]


async def test_server_cancelling_the_consumer_closes_the_watch(client: Client) -> None:
    await running_dispatch(client)
    got: list[RunTransition] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async with aclosing(client.running(1)) as transitions:
                async for transition in transitions:
                    got.append(transition)
                    tg.cancel_scope.cancel()

        tg.start_soon(consume)
    assert [t.kind for t in got] == [STARTED]
    await wait_until(lambda: not client.streams and not reader_tasks() and not stream_tasks())
