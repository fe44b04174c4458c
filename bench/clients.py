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


class Adapter(Protocol):
    """What a benchmark needs from a client."""

    name: str

    async def open(self, url: str) -> None: ...
    async def close(self) -> None: ...
    async def get(self, microgrid_id: int, dispatch_id: int) -> Any: ...
    async def create(self, microgrid_id: int, type: str, payload: dict[str, Any]) -> Any: ...
    async def list_all(self, microgrid_id: int, page_size: int) -> list[Any]: ...
    async def first_page(self, microgrid_id: int, page_size: int) -> list[Any]: ...
    def events(self, microgrid_id: int) -> AsyncIterator[tuple[str, float | None]]: ...


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

    async def create(self, microgrid_id: int, type: str, payload: dict[str, Any]) -> Any:
        return await self._client.create(
            microgrid_id, type, "NOW", DURATION, list(TARGET_IDS), payload=payload
        )

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

    async def create(self, microgrid_id: int, type: str, payload: dict[str, Any]) -> Any:
        return await self._client.create(
            self._mid(microgrid_id), type, "NOW", DURATION, self._target, payload=payload
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


def adapter(name: str) -> Adapter:
    """The adapter for "ours", "official" or "ours-pure"."""
    return {"ours": Ours, "official": Official, "ours-pure": OursPure}[name]()
