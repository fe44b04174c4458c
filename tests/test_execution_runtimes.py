"""`Client.manage()` under anyio's asyncio and trio backends, `asyncio.run` and `trio.run`.

The reference server runs in a thread (`threaded_server`), so one scenario
drives it from every runtime: a merged run whose handler fails once, is
retried, sees a member join and leave, and is cancelled when the run stops;
then cancelling `manage()` leaves no task (and under trio no loop thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import anyio
import pytest
import trio

from dispatch_client import Backoff, Client
from dispatch_client.execution import Run
from dispatch_client.testing import ThreadedServer, threaded_server

MG = 1
SECOND = timedelta(seconds=1)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dispatch-client-loop-")]


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    with threaded_server() as server:
        yield server
    deadline = time.monotonic() + 5
    while loop_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop_threads() == []


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - the state is the handler's, nothing to wait on
            await anyio.sleep(0.01)


async def scenario(url: str) -> list[tuple[Any, ...]]:
    """Run the scenario (any async library); return what the handler saw."""
    seen: list[tuple[Any, ...]] = []
    cancelled = anyio.get_cancelled_exc_class()

    async def handler(run: Run) -> None:
        seen.append(("call", run.attempt, len(run.members)))
        if run.attempt == 1:
            raise RuntimeError("first call fails")
        try:
            async for _ in run.updates():
                seen.append(("update", len(run.members)))
        except cancelled:
            seen.append(("cancelled",))
            raise

    async with Client(url, stream_backoff=Backoff(initial=0.02, maximum=0.1)) as client:
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: client.manage(
                        MG, "RT", handler, merge="type", retry_interval=timedelta(seconds=0.2)
                    )
                )
                first = await client.create(MG, "RT", "NOW", 2 * SECOND, [1])
                await until(lambda: ("call", 2, 1) in seen)
                second = await client.create(MG, "RT", "NOW", None, [2])
                await until(lambda: ("update", 2) in seen)
                await until(lambda: ("update", 1) in seen)  # first ended on schedule
                assert first.metadata is not None and second.metadata is not None
                await client.delete(MG, second.metadata.dispatch_id)
                await until(lambda: ("cancelled",) in seen)
                # A new run, then manage() itself is cancelled.
                await client.create(MG, "RT", "NOW", None, [3])
                await until(lambda: seen[-1] == ("call", 2, 1) and len(seen) == 7)
                tg.cancel_scope.cancel()
        assert not client.streams
    return seen


EXPECTED = [
    ("call", 1, 1),
    ("call", 2, 1),
    ("update", 2),
    ("update", 1),
    ("cancelled",),
    ("call", 1, 1),
    ("call", 2, 1),
    ("cancelled",),
]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_under_anyio(anyio_backend: str, server: ThreadedServer) -> None:
    assert await scenario(server.url) == EXPECTED


def test_under_asyncio_run(server: ThreadedServer) -> None:
    assert asyncio.run(scenario(server.url)) == EXPECTED


def test_under_trio_run(server: ThreadedServer) -> None:
    assert trio.run(scenario, server.url) == EXPECTED
