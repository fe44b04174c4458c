"""Helpers shared by the reference-server tests (no tests here).

Test modules load it with `pytest_plugins = ["test_server_support"]`, which
also brings in the `dispatch_server` fixture of `dispatch_client.testing`.

The tests talk to the server over a real loopback grpclib channel with the
generated stub, never through the client facade.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from dispatch_client import (
    Dispatch,
    DispatchData,
    TargetComponents,
    TargetComponentsIdSet,
)
from dispatch_client.testing import RunningServer, dispatch_server, running_server
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    GetMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    MicrogridDispatchServiceStub,
)

__all__ = [
    "GRPCError",
    "Status",
    "connect",
    "create",
    "dispatch_server",
    "expect_error",
    "future",
    "get",
    "list_all",
    "make_data",
    "server_db",
    "store_server",
    "stub",
]

STORES = ["sqlite", "postgresql"]


def future(seconds: float = 600) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


def make_data(**overrides: Any) -> DispatchData:
    fields: dict[str, Any] = {
        "type": "BATTERY_CHARGE",
        "start_time": future(),
        "duration": 3600,
        "target": TargetComponents(component_ids=TargetComponentsIdSet(ids=[1, 2])),
        "is_active": True,
    }
    fields.update(overrides)
    return DispatchData(**fields)


@asynccontextmanager
async def connect(
    server: RunningServer, **channel_options: Any
) -> AsyncIterator[MicrogridDispatchServiceStub]:
    channel = Channel(server.host, server.port, **channel_options)
    try:
        yield MicrogridDispatchServiceStub(channel)
    finally:
        channel.close()


@pytest.fixture(params=STORES)
def server_db(request: pytest.FixtureRequest) -> str:
    """The `--db` of each store: SQLite in memory, and an emptied PostgreSQL database."""
    if request.param == "sqlite":
        return ":memory:"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store_server(server_db: str) -> AsyncIterator[RunningServer]:
    """A fresh reference server on each store: the server tests run once per store."""
    async with running_server(db=server_db) as server:
        yield server


@pytest.fixture
async def stub(store_server: RunningServer) -> AsyncIterator[MicrogridDispatchServiceStub]:
    async with connect(store_server) as s:
        yield s


async def create(
    stub: MicrogridDispatchServiceStub, microgrid_id: int = 1, **overrides: Any
) -> Dispatch:
    start_immediately = overrides.pop("start_immediately", None)
    response = await stub.create_microgrid_dispatch(
        CreateMicrogridDispatchRequest(
            microgrid_id=microgrid_id,
            dispatch_data=make_data(**overrides),
            start_immediately=start_immediately,
        )
    )
    assert response.dispatch is not None
    return response.dispatch


async def get(stub: MicrogridDispatchServiceStub, microgrid_id: int, dispatch_id: int) -> Dispatch:
    response = await stub.get_microgrid_dispatch(
        GetMicrogridDispatchRequest(microgrid_id=microgrid_id, dispatch_id=dispatch_id)
    )
    assert response.dispatch is not None
    return response.dispatch


async def list_all(stub: MicrogridDispatchServiceStub, microgrid_id: int = 1) -> list[Dispatch]:
    response = await stub.list_microgrid_dispatches(
        ListMicrogridDispatchesRequest(microgrid_id=microgrid_id)
    )
    return list(response.dispatches)


@contextmanager
def expect_error(status: Status, *fragments: str) -> Iterator[pytest.ExceptionInfo[GRPCError]]:
    with pytest.raises(GRPCError) as info:
        yield info
    assert info.value.status == status, info.value
    for fragment in fragments:
        assert fragment in (info.value.message or ""), info.value.message


def ids(dispatches: list[Dispatch]) -> list[int]:
    return [d.metadata.dispatch_id for d in dispatches if d.metadata is not None]
