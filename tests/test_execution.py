"""`Client.manage()` and the filtered `stream()`/`watch()`, against the reference server.

Short real runs (1-3 s, whole-second starts as the server stores them) with
tolerant timings. The scenarios follow what frequenz-dispatch documents and
tests for its Dispatcher and ActorDispatcher (merged overlapping runs,
hand-over at a shared boundary, infinite durations, updates and deletes while
running, retries after a failed start, ...), written anew for `manage()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import anyio
import pytest
from test_streaming_helpers import (
    FAST_BACKOFF,
    STREAM_KEY,
    dispatch_id,
    stream_tasks,
    wait_until,
)

from dispatch_client import Dispatch, Event, Unauthenticated
from dispatch_client.client import Client
from dispatch_client.execution import Run
from dispatch_client.schedule import Merge
from dispatch_client.streaming import DispatchEvent, StreamState
from dispatch_client.testing import RunningServer, running_server

pytest_plugins = ["test_streaming_helpers"]
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("error")]

MG = 1
SECOND = timedelta(seconds=1)
SLACK = 0.5
"""Seconds a handler may start or end away from its scheduled instant (a busy machine)."""


def now() -> datetime:
    return datetime.now(UTC)


def whole_second(ahead: float) -> datetime:
    """The first whole second at least `ahead` seconds from now (the server keeps whole seconds)."""
    moment = now() + timedelta(seconds=ahead)
    return moment.replace(microsecond=0) + (SECOND if moment.microsecond else timedelta(0))


def close_to(moment: datetime | None, expected: datetime, slack: float = SLACK) -> bool:
    return moment is not None and abs((moment - expected).total_seconds()) < slack


def ids(dispatches: tuple[Dispatch, ...] | list[Dispatch]) -> list[int]:
    return [dispatch_id(d) for d in dispatches]


@dataclass
class Call:
    """One call of the handler, as it saw it."""

    key: Hashable
    attempt: int
    dispatch: Dispatch
    members: list[int]
    began: datetime
    updates: list[tuple[Dispatch, list[int]]] = field(default_factory=list)
    ended: datetime | None = None
    how: str | None = None
    """"cancelled", "returned" or "raised"."""


class Recorder:
    """A handler that records its calls; it may fail its first calls or return at once."""

    def __init__(self, *, fail: int = 0, returns: bool = False) -> None:
        self.calls: list[Call] = []
        self.fail = fail
        self.returns = returns

    async def __call__(self, run: Run) -> None:
        call = Call(run.key, run.attempt, run.dispatch, ids(run.members), now())
        self.calls.append(call)
        try:
            if len(self.calls) <= self.fail:
                call.how, call.ended = "raised", now()
                raise RuntimeError(f"handler failure {len(self.calls)}")
            if self.returns:
                call.how, call.ended = "returned", now()
                return
            async for dispatch in run.updates():
                call.updates.append((dispatch, ids(run.members)))
        except anyio.get_cancelled_exc_class():
            call.how, call.ended = "cancelled", now()
            raise

    def live(self) -> list[Call]:
        return [call for call in self.calls if call.how is None]


@asynccontextmanager
async def managing(
    client: Client,
    recorder: Recorder,
    *,
    kind: str = "CHARGE",
    merge: Merge = None,
    retry: timedelta = 60 * SECOND,
) -> AsyncIterator[None]:
    """Run `client.manage()` for the block; leaving it cancels manage() and checks it left nothing."""
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                partial(client.manage, MG, kind, recorder, merge=merge, retry_interval=retry)
            )
            yield
            tg.cancel_scope.cancel()
    # Cancelling manage() cancelled every handler and closed the stream it read.
    assert recorder.live() == []
    await wait_until(lambda: not client.streams and not stream_tasks(), limit=2)


async def create(
    client: Client,
    start: datetime | str,
    seconds: int | None,
    *,
    kind: str = "CHARGE",
    target: list[int] | None = None,
    **kwargs: Any,
) -> Dispatch:
    duration = None if seconds is None else seconds * SECOND
    return await client.create(MG, kind, start, duration, target or [1], **kwargs)  # type: ignore[arg-type]


def started(dispatch: Dispatch) -> datetime:
    assert dispatch.data is not None and dispatch.data.start_time is not None
    return dispatch.data.start_time


# -- one run per dispatch ---------------------------------------------------------------------


async def test_a_run_starts_gets_updates_and_stops_on_time(client: Client) -> None:
    recorder = Recorder()
    async with managing(client, recorder):
        start = whole_second(0.7)
        dispatch = await create(client, start, 2, payload={"power": 1})
        await create(client, start, 2, kind="DISCHARGE")  # another type: not ours
        await wait_until(lambda: len(recorder.calls) == 1)
        call = recorder.calls[0]
        assert close_to(call.began, start)
        assert call.dispatch == dispatch and call.key == dispatch_id(dispatch)
        updated = await client.update(MG, dispatch_id(dispatch), {"payload": {"power": 2}})
        await wait_until(lambda: len(call.updates) == 1)
        assert call.updates[0][0] == updated
        await wait_until(lambda: call.how is not None)
        assert call.how == "cancelled" and close_to(call.ended, start + 2 * SECOND)
    assert len(recorder.calls) == 1


async def test_a_run_going_on_when_manage_starts_is_handled_at_once(client: Client) -> None:
    running = await create(client, "NOW", 30)
    await anyio.sleep(max(0.0, (started(running) - now()).total_seconds()) + 0.05)
    recorder = Recorder()
    began = now()
    async with managing(client, recorder):
        await wait_until(lambda: len(recorder.calls) == 1)
        assert (recorder.calls[0].began - began).total_seconds() < 1


async def test_infinite_duration_runs_until_deleted(client: Client) -> None:
    recorder = Recorder()
    async with managing(client, recorder):
        endless = await create(client, "NOW", None)
        await wait_until(lambda: len(recorder.calls) == 1)
        await anyio.sleep(1.2)
        assert recorder.calls[0].how is None  # still going
        await client.delete(MG, dispatch_id(endless))
        deleted = now()
        await wait_until(lambda: recorder.calls[0].how == "cancelled")
        assert close_to(recorder.calls[0].ended, deleted, 0.3)


async def test_infinite_duration_made_finite_stops_if_already_over(client: Client) -> None:
    recorder = Recorder()
    async with managing(client, recorder):
        endless = await create(client, "NOW", None)
        await wait_until(lambda: len(recorder.calls) == 1)
        # Still ahead: an update, then the stop on the new schedule.
        first = started(endless)
        await client.update(MG, dispatch_id(endless), {"duration": 2 * SECOND})
        await wait_until(lambda: len(recorder.calls[0].updates) == 1)
        await wait_until(lambda: recorder.calls[0].how == "cancelled")
        assert close_to(recorder.calls[0].ended, first + 2 * SECOND)
        # Already over: stops at once.
        other = await create(client, "NOW", None)
        await wait_until(lambda: len(recorder.calls) == 2)
        await anyio.sleep(max(0.0, (started(other) + SECOND - now()).total_seconds()) + 0.05)
        await client.update(MG, dispatch_id(other), {"duration": SECOND})
        shortened = now()
        await wait_until(lambda: recorder.calls[1].how == "cancelled")
        assert close_to(recorder.calls[1].ended, shortened, 0.3)
        assert recorder.calls[1].updates == []


async def test_deactivating_stops_and_reactivating_starts_a_new_call(client: Client) -> None:
    recorder = Recorder()
    async with managing(client, recorder):
        dispatch = await create(client, "NOW", None)
        await wait_until(lambda: len(recorder.calls) == 1)
        await client.update(MG, dispatch_id(dispatch), {"active": False})
        await wait_until(lambda: recorder.calls[0].how == "cancelled")
        await client.update(MG, dispatch_id(dispatch), {"active": True})
        await wait_until(lambda: len(recorder.calls) == 2)
        assert recorder.calls[1].attempt == 1 and recorder.calls[1].how is None


# -- merged runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", [None, "type", "type+target", "callable"])
async def test_overlapping_runs_of_one_type(client: Client, merge: str | None) -> None:
    """A runs [S, S+3) on [1]; B runs [S+1, S+2) on [2]."""
    strategy: Merge = (lambda d: "all") if merge == "callable" else merge  # type: ignore[assignment]
    recorder = Recorder()
    async with managing(client, recorder, merge=strategy):
        start = whole_second(0.7)
        a = await create(client, start, 3, target=[1])
        b = await create(client, start + SECOND, 1, target=[2])
        await wait_until(lambda: all(call.how is not None for call in recorder.calls), limit=6)
        await wait_until(lambda: now() > start + 3 * SECOND)
    calls = recorder.calls
    if merge in ("type", "callable"):
        # One call for the whole merged run; B joining and leaving are updates.
        assert len(calls) == 1
        (call,) = calls
        assert call.members == [dispatch_id(a)]
        assert [members for _, members in call.updates] == [ids([a, b]), ids([a])]
        assert close_to(call.began, start) and close_to(call.ended, start + 3 * SECOND)
    else:
        # One call per dispatch (or per target): each ends on its own schedule.
        assert sorted((dispatch_id(c.dispatch), c.how) for c in calls) == sorted(
            [(dispatch_id(a), "cancelled"), (dispatch_id(b), "cancelled")]
        )
        by_id = {dispatch_id(c.dispatch): c for c in calls}
        assert close_to(by_id[dispatch_id(b)].began, start + SECOND)
        assert close_to(by_id[dispatch_id(b)].ended, start + 2 * SECOND)
        assert close_to(by_id[dispatch_id(a)].ended, start + 3 * SECOND)
        assert all(c.updates == [] for c in calls)


@pytest.mark.parametrize("merge", [None, "type"])
async def test_hand_over_at_a_shared_boundary(client: Client, merge: Merge) -> None:
    recorder = Recorder()
    async with managing(client, recorder, merge=merge):
        start = whole_second(0.7)
        first = await create(client, start, 1)
        second = await create(client, start + SECOND, 1, payload={"power": 2})
        await wait_until(lambda: len(recorder.calls) >= 1)
        await wait_until(lambda: now() > start + 2 * SECOND + timedelta(seconds=0.3))
        await wait_until(lambda: not recorder.live())
    calls = recorder.calls
    if merge is None:
        assert [dispatch_id(c.dispatch) for c in calls] == ids([first, second])
        assert close_to(calls[0].ended, start + SECOND)
        assert close_to(calls[1].began, start + SECOND)
    else:
        # The run goes on across the boundary; the handler is told the new instructions
        # (second joining and first leaving at one instant may conflate into one update).
        (call,) = calls
        assert call.updates[-1] == (second, ids([second]))
        assert close_to(call.ended, start + 2 * SECOND)


async def test_members_deleted_while_running(client: Client) -> None:
    recorder = Recorder()
    async with managing(client, recorder, merge="type"):
        a = await create(client, "NOW", None, target=[1])
        await wait_until(lambda: len(recorder.calls) == 1)
        b = await create(client, "NOW", 30, target=[2])
        await wait_until(lambda: len(recorder.calls[0].updates) == 1)
        await client.delete(MG, dispatch_id(a))
        await wait_until(lambda: len(recorder.calls[0].updates) == 2)
        assert recorder.calls[0].updates[-1] == (b, ids([b]))
        await client.delete(MG, dispatch_id(b))
        await wait_until(lambda: recorder.calls[0].how == "cancelled")
    assert len(recorder.calls) == 1


# -- failures, restarts, the end of manage() ------------------------------------------------


async def test_a_failing_handler_is_retried_while_the_run_goes_on(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(fail=2)
    async with managing(client, recorder, retry=timedelta(seconds=0.3)):
        dispatch = await create(client, "NOW", None)
        await wait_until(lambda: len(recorder.calls) == 3)
        calls = recorder.calls
        assert [(c.attempt, c.how) for c in calls] == [(1, "raised"), (2, "raised"), (3, None)]
        gap = (calls[1].began - calls[0].ended).total_seconds()  # type: ignore[operator]
        assert 0.25 < gap < 0.3 + SLACK
        await anyio.sleep(0.5)
        assert len(recorder.calls) == 3  # the one that works is left alone
        await client.delete(MG, dispatch_id(dispatch))
        await wait_until(lambda: calls[2].how == "cancelled")
    failures = [r for r in caplog.records if r.name == "dispatch_client.execution"]
    assert len(failures) == 2 and all(r.levelno == logging.ERROR for r in failures)
    assert "handler failure 1" in (failures[0].exc_text or "")


async def test_an_update_during_the_retry_wait_retries_at_once(client: Client) -> None:
    recorder = Recorder(fail=1)
    async with managing(client, recorder, retry=timedelta(seconds=30)):
        dispatch = await create(client, "NOW", None, payload={"power": 1})
        await wait_until(lambda: len(recorder.calls) == 1)
        updated = await client.update(MG, dispatch_id(dispatch), {"payload": {"power": 2}})
        await wait_until(lambda: len(recorder.calls) == 2, limit=2)
        assert recorder.calls[1].dispatch == updated and recorder.calls[1].attempt == 2


async def test_a_handler_that_returns_is_not_called_again(client: Client) -> None:
    recorder = Recorder(returns=True)
    async with managing(client, recorder, retry=timedelta(seconds=0.1)):
        dispatch = await create(client, "NOW", None)
        await wait_until(lambda: len(recorder.calls) == 1)
        await client.update(MG, dispatch_id(dispatch), {"payload": {"power": 3}})
        await anyio.sleep(0.5)
    assert [(c.attempt, c.how) for c in recorder.calls] == [(1, "returned")]


class Halt(BaseException):
    """A BaseException of the application's own."""


def _stray_cancellation() -> BaseException:
    # What a handler sees when it awaits a future someone else cancelled (asyncio).
    return asyncio.CancelledError()


# Whatever a handler raises, manage() either calls it again (an Exception, or a
# cancellation nobody asked for, which the task group would otherwise take for
# the end of manage()) or ends, raising exactly that exception (anything else).
RAISED_BY_HANDLERS: list[tuple[str, Callable[[], BaseException], bool]] = [
    ("runtime-error", lambda: RuntimeError("boom"), True),
    ("exception-group", lambda: ExceptionGroup("two", [ValueError(1), KeyError(2)]), True),
    ("stray-cancellation", _stray_cancellation, True),
    ("system-exit", lambda: SystemExit(3), False),
    ("own-base-exception", Halt, False),
    ("base-exception-group", lambda: BaseExceptionGroup("halt", [Halt()]), False),
    # Last: were it to escape, pytest would stop the whole session.
    ("keyboard-interrupt", KeyboardInterrupt, False),
]


@pytest.mark.parametrize(
    ("make", "retried"),
    [pytest.param(make, retried, id=name) for name, make, retried in RAISED_BY_HANDLERS],
)
async def test_what_a_handler_raises_is_retried_or_ends_manage_as_is(
    client: Client, make: Callable[[], BaseException], retried: bool
) -> None:
    raised: list[BaseException] = []
    calls: list[int] = []

    async def handler(run: Run) -> None:
        calls.append(run.attempt)
        if run.attempt == 1:
            raised.append(make())
            raise raised[0]
        await anyio.sleep_forever()

    await create(client, "NOW", None)
    if retried:
        with anyio.move_on_after(1) as scope:
            await client.manage(MG, "CHARGE", handler, retry_interval=timedelta(seconds=0.05))
        # Still managing (never returned by itself), the handler called again.
        assert scope.cancelled_caught and calls == [1, 2]
    else:
        with anyio.fail_after(2), pytest.raises(BaseException) as caught:
            await client.manage(MG, "CHARGE", handler, retry_interval=timedelta(seconds=0.05))
        assert caught.value is raised[0] and calls == [1]
    await wait_until(lambda: not client.streams and not stream_tasks(), limit=2)


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(lambda run: None, id="sync-function"),
        pytest.param(lambda run: run.attempt, id="returns-an-int"),
    ],
)
async def test_a_handler_that_is_not_async_ends_manage_with_a_type_error(
    client: Client, handler: Any
) -> None:
    await create(client, "NOW", None, target=[1])
    await create(client, "NOW", None, target=[2])
    with anyio.fail_after(2), pytest.raises(TypeError, match="handler must be an async callable"):
        await client.manage(MG, "CHARGE", handler)
    await wait_until(lambda: not client.streams and not stream_tasks(), limit=2)


@pytest.fixture
async def fast_client(server: RunningServer) -> AsyncIterator[Client]:
    """A client of `server` that reconnects quickly."""
    async with Client(server.url, auth_key=STREAM_KEY, stream_backoff=FAST_BACKOFF) as client:
        yield client


async def test_a_server_restart_mid_run_neither_restarts_nor_stops_the_handler(
    fast_client: Client, server: RunningServer
) -> None:
    client = fast_client
    recorder = Recorder()
    async with managing(client, recorder):
        start = whole_second(0.5)
        long = await create(client, start, 30, target=[1])
        short = await create(client, start, 2, target=[2])
        await wait_until(lambda: len(recorder.calls) == 2)
        await server.stop()
        await wait_until(lambda: client.streams[MG].status.state is StreamState.RECONNECTING)
        # The short run ends on schedule with the server down.
        by_id = {dispatch_id(c.dispatch): c for c in recorder.calls}
        await wait_until(lambda: by_id[dispatch_id(short)].how == "cancelled")
        assert close_to(by_id[dispatch_id(short)].ended, start + 2 * SECOND)
        await server.start()
        await wait_until(lambda: client.streams[MG].connected)
        updated = await client.update(MG, dispatch_id(long), {"payload": {"after": "restart"}})
        await wait_until(lambda: len(by_id[dispatch_id(long)].updates) == 1)
        assert by_id[dispatch_id(long)].updates[0][0] == updated
        assert len(recorder.calls) == 2 and by_id[dispatch_id(long)].how is None


async def test_disconnecting_ends_manage_and_its_handlers(client: Client) -> None:
    recorder = Recorder()
    ended: list[str] = []

    async def run_manage() -> None:
        await client.manage(MG, "CHARGE", recorder)
        ended.append("returned")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_manage)
            await create(client, "NOW", None)
            await wait_until(lambda: len(recorder.calls) == 1)
            await client.disconnect()
    assert ended == ["returned"] and recorder.calls[0].how == "cancelled"


async def test_a_failed_stream_ends_manage_with_its_typed_error() -> None:
    recorder = Recorder()
    async with (
        running_server(keys=["the-right-key"]) as server,
        Client(server.url, auth_key="a-wrong-key") as client,
    ):
        with anyio.fail_after(5), pytest.raises(Unauthenticated):
            await client.manage(MG, "CHARGE", recorder)
        assert not client.streams


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"type": ""}, "type must be a non-empty str"),
        ({"type": None}, "type must be a non-empty str"),
        ({"handler": "run"}, "handler must be an async callable"),
        ({"merge": "target"}, "merge must be None, 'type' or 'type\\+target'"),
        ({"retry_interval": 5}, "retry_interval must be a positive timedelta"),
        ({"retry_interval": timedelta(0)}, "retry_interval must be a positive timedelta"),
        ({"microgrid_id": -1}, "microgrid_id"),
    ],
)
async def test_bad_arguments_fail_before_anything_starts(
    client: Client, arguments: dict[str, Any], message: str
) -> None:
    call: dict[str, Any] = {"microgrid_id": MG, "type": "CHARGE", "handler": Recorder()}
    call.update(arguments)
    with anyio.fail_after(1), pytest.raises(ValueError, match=message):
        await client.manage(**call)
    assert not client.streams


# -- stream(type=...) and watch(type=...) ---------------------------------------------------------


async def test_watch_and_stream_of_one_type(client: Client) -> None:
    old = await create(client, whole_second(3600), 60, kind="CHARGE")
    await create(client, whole_second(3600), 60, kind="DISCHARGE")
    watched: list[DispatchEvent] = []
    streamed: list[DispatchEvent] = []

    async def follow(events: Any, into: list[DispatchEvent]) -> None:
        async with aclosing(events):
            async for event in events:
                into.append(event)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, client.watch(MG, type="CHARGE"), watched)
            tg.start_soon(follow, client.stream(MG, type="CHARGE"), streamed)
            await wait_until(lambda: len(watched) == 1 and client.streams[MG].connected)
            other = await create(client, whole_second(3600), 60, kind="DISCHARGE")
            new = await create(client, whole_second(3600), 60, kind="CHARGE")
            await client.update(MG, dispatch_id(other), {"duration": 2 * SECOND})
            await client.update(MG, dispatch_id(new), {"duration": 2 * SECOND})
            await client.delete(MG, dispatch_id(other))
            await client.delete(MG, dispatch_id(old))  # created before the stream: still ours
            await wait_until(lambda: len(watched) == 4 and len(streamed) == 3)
            tg.cancel_scope.cancel()
    assert [(e.event, dispatch_id(e.dispatch)) for e in watched] == [
        (Event.CREATED, dispatch_id(old)),
        (Event.CREATED, dispatch_id(new)),
        (Event.UPDATED, dispatch_id(new)),
        (Event.DELETED, dispatch_id(old)),
    ]
    assert [(e.event, dispatch_id(e.dispatch)) for e in streamed] == [
        (Event.CREATED, dispatch_id(new)),
        (Event.UPDATED, dispatch_id(new)),
        (Event.DELETED, dispatch_id(old)),
    ]


@pytest.mark.parametrize("kind", ["", 5, b"CHARGE"])
async def test_a_bad_type_filter_is_rejected(client: Client, kind: Any) -> None:
    for method in (client.stream, client.watch, client.running):
        with pytest.raises(ValueError, match="type must be a non-empty str or None"):
            method(MG, type=kind)
