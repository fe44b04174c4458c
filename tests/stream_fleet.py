"""Open many `stream()`s of one client at once and hold them open (tests of a fleet opening)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from dispatch_client import Client


@asynccontextmanager
async def streams_held(
    client: Client, server: Any, first: int, count: int
) -> AsyncIterator[list[Any]]:
    """Start a consumer on microgrids `first`..`first + count - 1`; yield once the server holds them all.

    Leaving cancels the consumers' first reads and closes their streams.
    """
    streams = [client.stream(first + i) for i in range(count)]
    tasks = [asyncio.ensure_future(anext(stream)) for stream in streams]
    try:
        await asyncio.wait_for(server.service.wait_for_streams(None, count), 20)
        yield streams
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()
