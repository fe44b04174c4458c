"""Our client against a server built from the official grpcio stubs, and the same
checks against the reference server on PostgreSQL with two replicas.

The servicer below is written here, on `frequenz-api-dispatch`'s generated
grpcio code (a test-only dependency), and keeps dispatches in a dict. If our
betterproto2 messages, paths or metadata differed from the official wire
format in any way, these calls would fail to decode or route.

The checks hold as well against two reference servers sharing one PostgreSQL
database, with the client moving to the other replica before every call (as
behind a load balancer): ids, pages, page tokens and signatures work across
replicas.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
from frequenz.api.common.v1alpha8.pagination import pagination_info_pb2
from frequenz.api.dispatch.v1 import dispatch_pb2, dispatch_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from dispatch_client import (
    BatteryType,
    Client,
    Frequency,
    NotFound,
    RecurrenceRule,
    SortField,
    Unauthenticated,
    target_from_types,
)
from dispatch_client.testing import running_server

pytestmark = pytest.mark.anyio

KEY = "interop-key"
SECRET = "interop-secret"


def _expected_sig(metadata: dict[str, str], method: str) -> str:
    message = (metadata["key"] + metadata["ts"] + metadata["nonce"] + method).encode()
    digest = hmac.new(SECRET.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OfficialServicer(dispatch_pb2_grpc.MicrogridDispatchServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.dispatches: dict[tuple[int, int], dispatch_pb2.Dispatch] = {}
        self.next_id = 1

    async def _authenticate(self, context: Any, method: str) -> None:
        metadata = dict(context.invocation_metadata())
        if metadata.get("key") != KEY or metadata.get("sig") != _expected_sig(metadata, method):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad key or signature")

    async def CreateMicrogridDispatch(self, request: Any, context: Any) -> Any:
        await self._authenticate(context, "CreateMicrogridDispatch")
        now = Timestamp()
        now.GetCurrentTime()
        data = dispatch_pb2.DispatchData()
        data.CopyFrom(request.dispatch_data)
        if request.start_immediately:
            data.start_time.CopyFrom(now)
        dispatch = dispatch_pb2.Dispatch(
            metadata=dispatch_pb2.DispatchMetadata(
                dispatch_id=self.next_id, create_time=now, update_time=now
            ),
            data=data,
        )
        self.dispatches[(request.microgrid_id, self.next_id)] = dispatch
        self.next_id += 1
        return dispatch_pb2.CreateMicrogridDispatchResponse(dispatch=dispatch)

    async def GetMicrogridDispatch(self, request: Any, context: Any) -> Any:
        await self._authenticate(context, "GetMicrogridDispatch")
        dispatch = self.dispatches.get((request.microgrid_id, request.dispatch_id))
        if dispatch is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no dispatch {request.dispatch_id}")
        return dispatch_pb2.GetMicrogridDispatchResponse(
            microgrid_id=request.microgrid_id, dispatch=dispatch
        )

    async def ListMicrogridDispatches(self, request: Any, context: Any) -> Any:
        await self._authenticate(context, "ListMicrogridDispatches")
        mine = [d for (mid, _), d in sorted(self.dispatches.items()) if mid == request.microgrid_id]
        if request.filter.dispatch_ids:
            mine = [d for d in mine if d.metadata.dispatch_id in request.filter.dispatch_ids]
        params = request.pagination_params
        start = int(params.page_token) if params.WhichOneof("params") == "page_token" else 0
        size = params.page_size if params.WhichOneof("params") == "page_size" else 2
        page = mine[start : start + size]
        info: dict[str, Any] = {"total_items": len(mine)}
        if start + size < len(mine):
            info["next_page_token"] = str(start + size)
        return dispatch_pb2.ListMicrogridDispatchesResponse(
            dispatches=page, pagination_info=pagination_info_pb2.PaginationInfo(**info)
        )


@pytest.fixture(params=["official", "postgresql-2-replicas"])
async def server_urls(request: pytest.FixtureRequest) -> AsyncIterator[list[str]]:
    """URLs of the servers behind one address: the official servicer, or two replicas."""
    if request.param == "official":
        server = grpc.aio.server()
        dispatch_pb2_grpc.add_MicrogridDispatchServiceServicer_to_server(OfficialServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield [f"grpc://127.0.0.1:{port}?ssl=false"]
        finally:
            await server.stop(grace=None)
        return
    db = request.getfixturevalue("postgres_url")
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(running_server(db=db, keys=[KEY], sign_secret=SECRET))
            for _ in range(2)
        ]
        yield [replica.url for replica in replicas]


def _balancer(client: Client, urls: list[str]) -> Callable[[], None]:
    """Move `client` to the next server before each call (round robin)."""
    turn = 0

    def next_server() -> None:
        nonlocal turn
        client.connect(urls[turn % len(urls)])
        turn += 1

    return next_server


async def test_create_get_list_against_the_official_stubs(server_urls: list[str]) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    rule = RecurrenceRule(freq=Frequency.DAILY, interval=2, byhours=[6, 18])
    async with Client(server_urls[0], auth_key=KEY, sign_secret=SECRET) as client:
        next_server = _balancer(client, server_urls)
        next_server()
        created = await client.create(
            7,
            "CHARGE",
            start,
            dt.timedelta(minutes=30),
            target_from_types(BatteryType.LI_ION),
            payload={"power_w": -5000, "tags": ["a", True, None]},
            recurrence=rule,
        )
        assert created.metadata is not None
        assert created.data is not None
        assert created.data.start_time == start
        assert created.data.duration == 1800
        assert created.data.recurrence == rule
        assert created.data.payload is not None
        assert created.data.payload.to_dict() == {"power_w": -5000, "tags": ["a", True, None]}

        next_server()
        fetched = await client.get(7, created.metadata.dispatch_id)
        assert fetched == created

        next_server()
        now_dispatch = await client.create(7, "CURTAIL", "NOW", None, [1, 2])
        assert now_dispatch.data is not None
        assert now_dispatch.data.start_time is not None
        assert now_dispatch.data.duration is None
        for _ in range(3):
            next_server()
            await client.create(7, "FILLER", "NOW", dt.timedelta(seconds=1), [3])
        next_server()
        await client.create(8, "OTHER", "NOW", None, [3])

        # Two per page and oldest first: the official servicer's defaults, asked for
        # explicitly of the reference server (its own are 100, newest first).
        pages = []
        async for page in client.list(7, page_size=2, sort=SortField.CREATE_TIME):
            pages.append(page)
            next_server()  # the next page's token goes to the other replica
        assert [len(page) for page in pages] == [2, 2, 1]
        everything = [
            d async for d in client.dispatches(7, page_size=10, sort=SortField.CREATE_TIME)
        ]
        assert [d.metadata.dispatch_id for d in everything if d.metadata] == [1, 2, 3, 4, 5]
        assert [d for page in pages for d in page] == everything
        assert everything[0] == created
        next_server()
        only = [d async for d in client.dispatches(7, dispatch_ids=[2])]
        assert only == [now_dispatch]

        next_server()
        with pytest.raises(NotFound, match=r"\b99\b"):
            await client.get(7, 99)

    async with Client(server_urls[-1], auth_key=KEY, sign_secret="wrong") as client:
        with pytest.raises(Unauthenticated):
            await client.get(7, 1)
