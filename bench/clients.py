"""One small adapter per client, so every measurement runs the same code for both.

Each adapter imports its own package only when it is opened, so a worker
process that measures one client never loads the other.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

DURATION = dt.timedelta(hours=1)
TARGET_IDS = (1, 2, 3)
UPDATE = {"duration": dt.timedelta(hours=2)}


class Adapter(Protocol):
    """What a benchmark needs from a client."""

    name: str

    async def open(self, url: str) -> None: ...
    async def close(self) -> None: ...
    async def get(self, microgrid_id: int, dispatch_id: int) -> Any: ...
    async def create(self, microgrid_id: int, type: str, payload: dict[str, Any]) -> int: ...
    def prepare(self, microgrid_id: int, dispatch_ids: list[int]) -> None: ...
    async def update(self, microgrid_id: int, dispatch_id: int) -> Any: ...
    async def delete(self, microgrid_id: int, dispatch_id: int) -> None: ...
    async def list_all(self, microgrid_id: int, page_size: int) -> list[Any]: ...
    async def first_page(self, microgrid_id: int, page_size: int) -> list[Any]: ...
    def events(self, microgrid_id: int) -> AsyncIterator[tuple[str, float | None]]: ...
    def opening(self) -> bool: ...


class Ours:
    """dispatch_client.Client."""

    name = "ours"

    def __init__(self) -> None:
        self._client: Any = None

    async def open(self, url: str) -> None:
        from dispatch_client import Client

        self._client = Client(url, auth_key="bench")

    async def close(self) -> None:
        await self._client.disconnect()

    async def get(self, microgrid_id: int, dispatch_id: int) -> Any:
        return await self._client.get(microgrid_id, dispatch_id)

    async def create(self, microgrid_id: int, type: str, payload: dict[str, Any]) -> int:
        dispatch = await self._client.create(
            microgrid_id, type, "NOW", DURATION, list(TARGET_IDS), payload=payload
        )
        return int(dispatch.metadata.dispatch_id)

    def prepare(self, microgrid_id: int, dispatch_ids: list[int]) -> None:
        pass

    async def update(self, microgrid_id: int, dispatch_id: int) -> Any:
        return await self._client.update(microgrid_id, dispatch_id, UPDATE)

    async def delete(self, microgrid_id: int, dispatch_id: int) -> None:
        await self._client.delete(microgrid_id, dispatch_id)

    async def list_all(self, microgrid_id: int, page_size: int) -> list[Any]:
        found: list[Any] = []
        async for page in self._client.list(microgrid_id, page_size=page_size):
            found.extend(page)
        return found

    async def first_page(self, microgrid_id: int, page_size: int) -> list[Any]:
        pages = self._client.list(microgrid_id, page_size=page_size)
        try:
            return list(await anext(pages))
        finally:
            await pages.aclose()

    async def events(self, microgrid_id: int) -> AsyncIterator[tuple[str, float | None]]:
        stream = self._client.stream(microgrid_id)
        try:
            async for event in stream:
                data = event.dispatch.data
                sent = None
                if data.payload is not None and "sent" in data.payload.fields:
                    sent = data.payload.fields["sent"].number_value
                yield data.type, sent
        finally:
            await stream.aclose()

    def opening(self) -> bool:
        """Whether a stream still has its opening work to do (the catch-up list after the open)."""
        return not all(stream.synced for stream in self._client.streams.values())


class OursPure(Ours):
    """dispatch_client.Client with the fast decode path turned off: betterproto2 only.

    What a user without the `fast` extra gets; only the channel's codec differs.
    """

    name = "ours-pure"

    async def open(self, url: str) -> None:
        use_pure_decode()
        await super().open(url)


def use_pure_decode() -> None:
    """Make every channel our client opens in this process decode with betterproto2 only."""
    from dispatch_client._fastdecode import ENV_VAR

    os.environ[ENV_VAR] = "0"


class Official:
    """frequenz.client.dispatch.DispatchApiClient."""

    name = "official"

    def __init__(self) -> None:
        self._client: Any = None

    async def open(self, url: str) -> None:
        from frequenz.client.common.microgrid import MicrogridId
        from frequenz.client.dispatch import DispatchApiClient
        from frequenz.client.dispatch.types import DispatchId, TargetIds

        self._mid, self._did, self._target = MicrogridId, DispatchId, TargetIds(*TARGET_IDS)
        self._client = DispatchApiClient(server_url=url, auth_key="bench")

    async def close(self) -> None:
        await self._client.disconnect()

    async def get(self, microgrid_id: int, dispatch_id: int) -> Any:
        return await self._client.get(
            microgrid_id=self._mid(microgrid_id), dispatch_id=self._did(dispatch_id)
        )

    async def create(self, microgrid_id: int, type: str, payload: dict[str, Any]) -> int:
        dispatch = await self._client.create(
            self._mid(microgrid_id), type, "NOW", DURATION, self._target, payload=payload
        )
        return int(dispatch.id)

    def prepare(self, microgrid_id: int, dispatch_ids: list[int]) -> None:
        pass

    async def update(self, microgrid_id: int, dispatch_id: int) -> Any:
        return await self._client.update(
            microgrid_id=self._mid(microgrid_id),
            dispatch_id=self._did(dispatch_id),
            new_fields=UPDATE,
        )

    async def delete(self, microgrid_id: int, dispatch_id: int) -> None:
        await self._client.delete(
            microgrid_id=self._mid(microgrid_id), dispatch_id=self._did(dispatch_id)
        )

    async def list_all(self, microgrid_id: int, page_size: int) -> list[Any]:
        found: list[Any] = []
        async for page in self._client.list(self._mid(microgrid_id), page_size=page_size):
            found.extend(page)
        return found

    async def first_page(self, microgrid_id: int, page_size: int) -> list[Any]:
        pages = self._client.list(self._mid(microgrid_id), page_size=page_size)
        try:
            return list(await anext(pages))
        finally:
            await pages.aclose()

    async def events(self, microgrid_id: int) -> AsyncIterator[tuple[str, float | None]]:
        receiver = self._client.stream(self._mid(microgrid_id))
        async for event in receiver:
            yield event.dispatch.type, event.dispatch.payload.get("sent")

    def opening(self) -> bool:
        """Never: once the server holds a stream, it is open (the client does not catch up)."""
        return False


class Raw:
    """The raw stack under our client: the generated grpclib stub, called directly.

    A stock grpclib `Channel` with our codec (upb decoding and encoding) and
    the same `key` metadata, every request built once before it is timed, and
    no facade: no argument checks, no error mapping, no deadline. What our
    client costs above this row is the cost of its facade, less what its own
    channel saves (joined writes, see `dispatch_client.connection`).
    """

    name = "raw"

    def __init__(self) -> None:
        self._channel: Any = None
        self._stub: Any = None
        self._requests: dict[tuple[str, int, int], Any] = {}
        self._create: Any = None

    async def open(self, url: str) -> None:
        from grpclib.client import Channel

        from dispatch_client._fastdecode import ResponseCodec
        from dispatch_client.connection import grpclib_config, parse_server_url
        from dispatch_client.wire import MicrogridDispatchServiceStub

        target = parse_server_url(url)
        self._channel = Channel(
            target.host,
            target.port,
            ssl=target.ssl_context,
            config=grpclib_config(target.options),
            codec=ResponseCodec(),
        )
        self._stub = MicrogridDispatchServiceStub(self._channel, metadata={"key": "bench"})

    async def close(self) -> None:
        self._channel.close()

    async def get(self, microgrid_id: int, dispatch_id: int) -> Any:
        request = self._requests.get(("get", microgrid_id, dispatch_id))
        if request is None:
            from dispatch_client.wire import GetMicrogridDispatchRequest

            request = self._requests[("get", microgrid_id, dispatch_id)] = (
                GetMicrogridDispatchRequest(microgrid_id=microgrid_id, dispatch_id=dispatch_id)
            )
        return (await self._stub.get_microgrid_dispatch(request)).dispatch

    async def create(self, microgrid_id: int, type: str, payload: dict[str, Any]) -> int:
        if self._create is None or self._create[0] != (microgrid_id, type):
            from dispatch_client import requests

            # The same request our client sends; built once, so its cost is not timed.
            call = requests.create(
                microgrid_id, type, "NOW", DURATION, list(TARGET_IDS), payload=payload
            )
            self._create = ((microgrid_id, type), call.request)
        response = await self._stub.create_microgrid_dispatch(self._create[1])
        return int(response.dispatch.metadata.dispatch_id)

    def prepare(self, microgrid_id: int, dispatch_ids: list[int]) -> None:
        from dispatch_client import requests

        for dispatch_id in dispatch_ids:
            self._requests[("update", microgrid_id, dispatch_id)] = requests.update(
                microgrid_id, dispatch_id, UPDATE
            ).request
            self._requests[("delete", microgrid_id, dispatch_id)] = requests.delete(
                microgrid_id, dispatch_id
            ).request

    async def update(self, microgrid_id: int, dispatch_id: int) -> Any:
        request = self._requests[("update", microgrid_id, dispatch_id)]
        return (await self._stub.update_microgrid_dispatch(request)).dispatch

    async def delete(self, microgrid_id: int, dispatch_id: int) -> None:
        await self._stub.delete_microgrid_dispatch(
            self._requests[("delete", microgrid_id, dispatch_id)]
        )

    async def list_all(self, microgrid_id: int, page_size: int) -> list[Any]:
        from dispatch_client.wire import ListMicrogridDispatchesRequest, PaginationParams

        request = ListMicrogridDispatchesRequest(
            microgrid_id=microgrid_id, pagination_params=PaginationParams(page_size=page_size)
        )
        found: list[Any] = []
        while True:
            response = await self._stub.list_microgrid_dispatches(request)
            found.extend(response.dispatches)
            token = response.pagination_info.next_page_token if response.pagination_info else ""
            if not token:
                return found
            request = ListMicrogridDispatchesRequest(
                microgrid_id=microgrid_id, pagination_params=PaginationParams(page_token=token)
            )

    async def first_page(self, microgrid_id: int, page_size: int) -> list[Any]:
        from dispatch_client.wire import ListMicrogridDispatchesRequest, PaginationParams

        request = ListMicrogridDispatchesRequest(
            microgrid_id=microgrid_id, pagination_params=PaginationParams(page_size=page_size)
        )
        return list((await self._stub.list_microgrid_dispatches(request)).dispatches)

    def opening(self) -> bool:
        return False

    def events(self, microgrid_id: int) -> AsyncIterator[tuple[str, float | None]]:
        raise NotImplementedError("the raw stack is measured for unary calls only")


def adapter(name: str) -> Adapter:
    """The adapter for "ours", "official", "ours-pure" or "raw"."""
    return {"ours": Ours, "official": Official, "ours-pure": OursPure, "raw": Raw}[name]()
