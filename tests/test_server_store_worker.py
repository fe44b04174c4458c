"""The SQLite store's thread (`SerialWorker`): order, results, errors, cancellation, close.

The worker runs every call of the store one at a time in submission order on
its own thread and hands finished calls back to the loop in batches. These
tests drive it directly (with calls that block on threading events, to pin a
call as queued or running), through `DispatchStore`, and end to end through
the reference server over a real channel.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server_support import connect, create, get, list_all

from dispatch_client import Dispatch
from dispatch_client.server import DispatchStore
from dispatch_client.server._worker import SerialWorker
from dispatch_client.server.store import ListQuery
from dispatch_client.testing import running_server
from dispatch_client.wire import (
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

WAIT_S = 5.0
_R = TypeVar("_R")


def _threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def _blocker() -> tuple[Callable[[], str], threading.Event, threading.Event]:
    """A call that reports it started and then blocks until released."""
    started, release = threading.Event(), threading.Event()

    def call() -> str:
        started.set()
        assert release.wait(WAIT_S), "never released"
        return "released"

    return call, started, release


async def _until(event: threading.Event) -> None:
    with anyio.fail_after(WAIT_S):
        while not event.is_set():  # noqa: ASYNC110 - a thread's event, nothing to await
            await anyio.sleep(0.001)


# A task's plan: a list of steps; each is a write (add the value) or a read
# (None), and whether the task yields to the loop before it.
_PLANS = st.lists(
    st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 99)), st.booleans()), max_size=12),
    min_size=1,
    max_size=24,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=_PLANS)
def test_concurrent_callers_see_a_serial_history_in_submission_order(
    plans: list[list[tuple[int | None, bool]]],
) -> None:
    """Reads and writes from many tasks run in submission order, each result to its caller."""

    async def main() -> None:
        worker = SerialWorker("test-worker")
        worker.start()
        state: list[int] = []  # touched only by the worker's thread
        ran: list[int] = []  # submission numbers, in the order they ran
        submitted: list[tuple[int, int | None]] = []  # (task, write value or None)
        results: dict[int, tuple[int, tuple[int, ...]]] = {}

        def operation(
            number: int, task: int, value: int | None
        ) -> Callable[[], tuple[int, tuple[int, ...]]]:
            def call() -> tuple[int, tuple[int, ...]]:
                assert threading.current_thread().name == "test-worker"
                ran.append(number)
                if value is not None:
                    state.append(value)
                return task, tuple(state)

            return call

        async def caller(task: int, plan: list[tuple[int | None, bool]]) -> None:
            for value, pause in plan:
                if pause:
                    await anyio.lowlevel.checkpoint()
                number = len(submitted)
                submitted.append((task, value))
                # Submission happens before run's first suspension.
                results[number] = await worker.run(operation(number, task, value))

        try:
            async with anyio.create_task_group() as group:
                for task, plan in enumerate(plans):
                    group.start_soon(caller, task, plan)
        finally:
            await worker.stop()
        assert ran == list(range(len(submitted)))
        # The serial history: each call saw exactly the writes submitted before it (and its own).
        expected: list[int] = []
        for number, (task, value) in enumerate(submitted):
            if value is not None:
                expected.append(value)
            assert results[number] == (task, tuple(expected))

    anyio.run(main)


async def test_an_exception_reaches_only_its_caller_unchanged() -> None:
    worker = SerialWorker("test-worker")
    worker.start()
    errors = {index: OSError(f"call {index}") for index in range(0, 30, 3)}

    def call(index: int) -> int:
        if index in errors:
            raise errors[index]
        return index * 10

    outcomes: dict[int, object] = {}

    async def caller(index: int) -> None:
        try:
            outcomes[index] = await worker.run(lambda: call(index))
        except OSError as error:
            outcomes[index] = error

    try:
        async with anyio.create_task_group() as group:
            for index in range(30):
                group.start_soon(caller, index)
    finally:
        await worker.stop()
    for index in range(30):
        if index in errors:
            assert outcomes[index] is errors[index]
        else:
            assert outcomes[index] == index * 10


@pytest.mark.parametrize("how", ["cancel scope", "task.cancel()"])
async def test_a_cancelled_caller_waits_for_its_started_call(how: str) -> None:
    worker = SerialWorker("test-worker")
    worker.start()
    block, started, release = _blocker()
    left_at: list[bool] = []  # whether the call had been released when the caller left
    try:
        if how == "cancel scope":
            scope = anyio.CancelScope()

            async def cancel_then_release() -> None:
                await _until(started)
                scope.cancel()
                await anyio.sleep(0.05)
                release.set()

            async with anyio.create_task_group() as group:
                group.start_soon(cancel_then_release)
                with scope:
                    try:
                        await worker.run(block)
                    finally:
                        left_at.append(release.is_set())
            assert scope.cancelled_caught
        else:
            import asyncio

            task = asyncio.get_running_loop().create_task(worker.run(block))
            await _until(started)
            task.cancel()
            await anyio.sleep(0.05)
            assert not task.done(), "the caller left while its call was running"
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            left_at.append(True)
    finally:
        release.set()
        await worker.stop()
    assert left_at == [True]


async def test_a_cancelled_queued_call_is_dropped_and_its_caller_leaves_at_once() -> None:
    worker = SerialWorker("test-worker")
    worker.start()
    block, started, release = _blocker()
    ran: list[str] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run, block)
            await _until(started)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await worker.run(lambda: ran.append("dropped"))
            assert scope.cancelled_caught
            # It left while the call ahead of it still runs, and its call never runs.
            assert not release.is_set()
            release.set()
            assert await worker.run(lambda: "after") == "after"
    finally:
        release.set()
        await worker.stop()
    assert ran == []


async def test_stop_runs_the_queued_calls_then_ends_the_thread() -> None:
    worker = SerialWorker("test-stop-worker")
    worker.start()
    block, started, release = _blocker()
    results: list[object] = []

    async def caller(index: int) -> None:
        results.append(await worker.run(lambda: index))

    async with anyio.create_task_group() as group:
        group.start_soon(worker.run, block)
        await _until(started)
        for index in range(5):
            group.start_soon(caller, index)
        await anyio.sleep(0.01)
        group.start_soon(worker.stop)
        await anyio.sleep(0.01)
        with pytest.raises(RuntimeError, match="not running"):
            await worker.run(lambda: "late")
        release.set()
    assert results == [0, 1, 2, 3, 4]
    assert _threads("test-stop-worker") == []
    await worker.stop()  # idempotent


async def test_the_store_thread_lives_from_open_to_close(tmp_path: Path) -> None:
    db = str(tmp_path / "d.sqlite")
    name = f"DispatchStore({db!r})"
    store = DispatchStore(db)
    for _ in range(2):  # a closed store opens again
        await store.open()
        assert len(_threads(name)) == 1
        page = await store.list(ListQuery(microgrid_id=1, limit=10))
        assert page.dispatches == []
        await store.close()
        assert _threads(name) == []
        with pytest.raises(RuntimeError, match="not open"):
            await store.get(1, 1)
    await store.close()


async def test_a_database_that_cannot_open_leaves_no_thread(tmp_path: Path) -> None:
    store = DispatchStore(str(tmp_path))  # a directory
    with pytest.raises(OSError, match="cannot open the SQLite database"):
        await store.open()
    assert _threads(f"DispatchStore({str(tmp_path)!r})") == []
    assert not store.is_open


async def test_closing_with_calls_queued_runs_them_and_does_not_hang() -> None:
    store = DispatchStore()
    await store.open()
    worker = store._worker
    assert worker is not None
    block, started, release = _blocker()
    got: list[object] = []

    async def getter(dispatch_id: int) -> None:
        got.append(await store.get(1, dispatch_id))

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run, block)
            await _until(started)
            for dispatch_id in range(10):
                group.start_soon(getter, dispatch_id)
            await anyio.sleep(0.01)
            group.start_soon(store.close)
            await anyio.sleep(0.01)
            release.set()
    assert got == [None] * 10
    assert _threads("DispatchStore(':memory:')") == []


async def test_concurrent_creates_gets_and_lists_over_a_real_channel() -> None:
    async with running_server() as server, connect(server) as stub:
        made = await _gather([partial(create, stub, 1 + i % 2) for i in range(16)])
        ids = sorted(_id(d) for d in made)
        assert ids == list(range(ids[0], ids[0] + 16))
        keys = [(1 + i % 2, _id(d)) for i, d in enumerate(made)]
        got = await _gather([partial(get, stub, *key) for key in keys * 4])
        assert [bytes(d) for d in got] == [bytes(d) for d in made * 4]
        microgrids = [1, 2] * 8
        listed = await _gather([partial(list_all, stub, m) for m in microgrids])
        for microgrid_id, dispatches in zip(microgrids, listed, strict=True):
            assert len(dispatches) == 8
            assert {bytes(d) for d in dispatches} == {
                bytes(d) for i, d in enumerate(made) if 1 + i % 2 == microgrid_id
            }


def _id(dispatch: Dispatch) -> int:
    assert dispatch.metadata is not None
    return dispatch.metadata.dispatch_id


async def _gather(calls: list[Callable[[], Awaitable[_R]]]) -> list[_R]:
    results: dict[int, _R] = {}

    async def one(index: int) -> None:
        results[index] = await calls[index]()

    async with anyio.create_task_group() as group:
        for index in range(len(calls)):
            group.start_soon(one, index)
    return [results[index] for index in range(len(calls))]


async def test_creates_their_clients_gave_up_on_are_committed_and_published_or_neither(
    tmp_path: Path,
) -> None:
    """Every create committed after its client gave up still reaches the stream.

    Another connection holds the database's write lock, so the first insert
    starts and waits inside SQLite while its client gives up (grpclib cancels
    the handler); the later ones give up while queued.
    """
    db = str(tmp_path / "d.sqlite")
    async with running_server(db=db) as server, connect(server) as stub:
        events: list[StreamMicrogridDispatchesResponse] = []

        async def follow() -> None:
            async for event in stub.stream_microgrid_dispatches(
                StreamMicrogridDispatchesRequest(microgrid_id=1)
            ):
                events.append(event)

        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            with anyio.fail_after(WAIT_S):
                while server.service.open_stream_count(1) < 1:  # noqa: ASYNC110 - a counter
                    await anyio.sleep(0.001)
            holder = sqlite3.connect(db, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")
                for _ in range(4):
                    with anyio.move_on_after(0.05):
                        await create(stub, 1)
                holder.execute("ROLLBACK")
            finally:
                holder.close()
            # Settled: no write holds or waits for the service's write lock;
            # then every committed create must reach the stream.
            lock = server.service._write_lock
            with anyio.fail_after(WAIT_S):
                while True:
                    await anyio.sleep(0.02)
                    if lock.locked() or lock.statistics().tasks_waiting:
                        continue
                    stored = await list_all(stub, 1)
                    if stored and len(events) == len(stored):
                        break
            group.cancel_scope.cancel()
        published = [_id(e.dispatch) for e in events if e.dispatch is not None]
        assert published == sorted(_id(d) for d in stored)
