"""Helpers shared by the stream and watch tests (this module holds no tests).

Its fixtures reach a test module that says `pytest_plugins = ["test_streaming_helpers"]`;
a module's own fixture of the same name wins over them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from grpclib.const import Cardinality

from dispatch_client import (
    Dispatch,
    DispatchData,
    Event,
    TargetComponents,
    TargetComponentsIdSet,
)
from dispatch_client._proto.google.protobuf import FieldMask
from dispatch_client.client import Client
from dispatch_client.errors import map_errors
from dispatch_client.server.service import DispatchService
from dispatch_client.streaming import Backoff, DispatchEvent, StreamHub
from dispatch_client.testing import RunningServer, running_server
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
)

STREAM_PATH = "/frequenz.api.dispatch.v1.MicrogridDispatchService/StreamMicrogridDispatches"
FAST_BACKOFF = Backoff(initial=0.02, maximum=0.1)
STREAM_KEY = "stream-test-secret-key"


def stream_tasks() -> list[asyncio.Task[Any]]:
    """The hub's reader tasks still alive."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("dispatch-stream-") and not task.done()
    ]


def foreign_tasks() -> set[asyncio.Task[Any]]:
    """Running tasks other than the current one and the pytest runner's."""
    current = asyncio.current_task()
    return {
        task
        for task in asyncio.all_tasks()
        if task is not current
        and not getattr(task.get_coro(), "__qualname__", "").startswith("TestRunner.")
    }


async def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll `predicate` (state owned by the server or the hub) until it holds."""
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await anyio.sleep(0.005)


def dispatch_id(dispatch: Dispatch) -> int:
    assert dispatch.metadata is not None
    return dispatch.metadata.dispatch_id


class Writer:
    """Changes dispatches through the in-process servicer.

    The writes are not what these tests are about, and going through the
    servicer keeps 1,000 of them fast; every event still reaches the consumers
    over the real gRPC stream.
    """

    def __init__(self, service: DispatchService, microgrid_id: int = 1) -> None:
        self.service = service
        """Where writes go; swap it to keep writing to the same data after a restart."""
        self.microgrid_id = microgrid_id
        self.log: list[DispatchEvent] = []
        self.current: dict[int, Dispatch] = {}

    async def create(self, kind: str = "TEST") -> Dispatch:
        response = await self.service.create_microgrid_dispatch(
            CreateMicrogridDispatchRequest(
                microgrid_id=self.microgrid_id,
                dispatch_data=DispatchData(
                    type=kind,
                    duration=60,
                    target=TargetComponents(component_ids=TargetComponentsIdSet(ids=[1])),
                    is_active=True,
                ),
                start_immediately=True,
            )
        )
        assert response.dispatch is not None
        return self._record(Event.CREATED, response.dispatch)

    async def update(self, dispatch_id: int, duration: int) -> Dispatch:
        response = await self.service.update_microgrid_dispatch(
            UpdateMicrogridDispatchRequest(
                microgrid_id=self.microgrid_id,
                dispatch_id=dispatch_id,
                update_mask=FieldMask(paths=["duration"]),
                update=UpdateMicrogridDispatchRequestDispatchUpdate(duration=duration),
            )
        )
        assert response.dispatch is not None
        return self._record(Event.UPDATED, response.dispatch)

    async def delete(self, dispatch_id: int) -> None:
        await self.service.delete_microgrid_dispatch(
            DeleteMicrogridDispatchRequest(microgrid_id=self.microgrid_id, dispatch_id=dispatch_id)
        )
        self._record(Event.DELETED, self.current[dispatch_id])

    def _record(self, event: Event, dispatch: Dispatch) -> Dispatch:
        self.log.append(DispatchEvent(event, dispatch))
        if event == Event.DELETED:
            del self.current[dispatch_id(dispatch)]
        else:
            self.current[dispatch_id(dispatch)] = dispatch
        return dispatch

    async def churn(self, operations: int) -> None:
        """Make `operations` changes: creates, updates of live dispatches, and deletes."""
        for step in range(operations):
            live = sorted(self.current)
            if len(live) < 3 or step % 5 in (0, 1):
                await self.create(kind=f"K{step}")
            elif step % 5 in (2, 3):
                await self.update(live[step % len(live)], duration=step + 1)
            else:
                await self.delete(live[(step * 7) % len(live)])


async def current_set(client: Client, microgrid_id: int = 1) -> dict[int, Dispatch]:
    async with aclosing(client.dispatches(microgrid_id)) as dispatches:
        return {dispatch_id(d): d async for d in dispatches}


def apply(view: dict[int, Dispatch], event: DispatchEvent) -> None:
    """Apply a watch event, checking that its kind is consistent with the view."""
    key = dispatch_id(event.dispatch)
    if event.event == Event.CREATED:
        assert key not in view, f"CREATED for known dispatch {key}"
        view[key] = event.dispatch
    elif event.event == Event.UPDATED:
        assert key in view, f"UPDATED for unknown dispatch {key}"
        view[key] = event.dispatch
    else:
        assert event.event == Event.DELETED
        assert view.pop(key, None) is not None, f"DELETED for unknown dispatch {key}"


class Watcher:
    """Follows one watch generator, keeping the view its events describe."""

    def __init__(self) -> None:
        self.view: dict[int, Dispatch] = {}
        self.events: list[DispatchEvent] = []

    async def follow(self, events: AsyncGenerator[DispatchEvent, None]) -> None:
        async with aclosing(events):
            async for event in events:
                apply(self.view, event)
                self.events.append(event)


def acked_open_stream(
    client: Client,
) -> Callable[[int], AsyncIterator[StreamMicrogridDispatchesResponse | None]]:
    """An `open_stream` that yields None once the server has sent initial metadata."""

    async def open_stream(
        microgrid_id: int,
    ) -> AsyncGenerator[StreamMicrogridDispatchesResponse | None, None]:
        with map_errors(client.server_url):
            async with client.channel.request(
                STREAM_PATH,
                Cardinality.UNARY_STREAM,
                StreamMicrogridDispatchesRequest,
                StreamMicrogridDispatchesResponse,
            ) as stream:
                await stream.send_message(
                    StreamMicrogridDispatchesRequest(microgrid_id=microgrid_id), end=True
                )
                await stream.recv_initial_metadata()
                yield None
                async for response in stream:
                    yield response

    return open_stream


def hub_for(client: Client, *, acked: bool = False, **kwargs: Any) -> StreamHub:
    """A hub on `client`'s channel with test-friendly backoff."""
    kwargs.setdefault("backoff", FAST_BACKOFF)
    kwargs.setdefault("list_dispatches", client.dispatches)
    kwargs.setdefault("open_stream", acked_open_stream(client) if acked else client._open_stream)
    return StreamHub(server_url=client.server_url, **kwargs)


@asynccontextmanager
async def closing_hub(hub: StreamHub) -> AsyncIterator[StreamHub]:
    try:
        yield hub
    finally:
        await hub.aclose()


class LoopErrors:
    """Collects what the event loop reports to its exception handler (lost exceptions)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def install(self) -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: self.reports.append(context)
        )


# -- fixtures (see the module docstring) --------------------------------------


@pytest.fixture
async def no_stream_leftovers(anyio_backend: Any) -> AsyncIterator[None]:
    """Fail the test if a reader task or a lost exception outlives it."""
    errors = LoopErrors()
    errors.install()
    yield
    assert stream_tasks() == []
    assert errors.reports == []


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A reference server on a SQLite file, so it can be restarted with its data."""
    async with running_server(db=str(tmp_path / "dispatches.sqlite")) as server:
        yield server


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[Client]:
    """A connected client of `server`."""
    async with Client(server.url, auth_key=STREAM_KEY) as client:
        yield client


@pytest.fixture
def writer(server: RunningServer) -> Writer:
    """Changes dispatches through `server`'s servicer, bypassing any client."""
    return Writer(server.service)


async def collect(
    source: Client | StreamHub, microgrid_id: int, count: int, into: list[DispatchEvent]
) -> None:
    """Append `count` events of `source.stream(microgrid_id)` (a hub's `subscribe`) to `into`, then leave."""
    opened = source.subscribe if isinstance(source, StreamHub) else source.stream
    async with aclosing(opened(microgrid_id)) as events:
        async for event in events:
            into.append(event)
            if len(into) == count:
                return


__all__ = [
    "FAST_BACKOFF",
    "STREAM_KEY",
    "LoopErrors",
    "Watcher",
    "Writer",
    "acked_open_stream",
    "apply",
    "closing_hub",
    "collect",
    "current_set",
    "dispatch_id",
    "foreign_tasks",
    "hub_for",
    "stream_tasks",
    "wait_until",
]
