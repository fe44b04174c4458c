"""Run the reference server inside your tests.

    from dispatch_client.testing import running_server

    async with running_server() as server:
        async with Client(server.url, auth_key="any") as client:
            ...

With pytest, load this module as a plugin (`pytest_plugins =
["dispatch_client.testing"]` in your `conftest.py`) and request the
`dispatch_server` fixture in anyio tests. `in_memory_channel()` skips the
sockets altogether and yields a grpclib `Channel` wired to a server in
memory.

The server is grpclib, so it needs an asyncio event loop.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from grpclib.client import Channel
from grpclib.testing import ChannelFor

from .server.app import DispatchServer
from .server.service import DEFAULT_STREAM_BUFFER_SIZE, DispatchService

__all__ = ["RunningServer", "dispatch_server", "in_memory_channel", "running_server"]


class RunningServer:
    """A reference server listening on a loopback port, with its service at hand."""

    def __init__(self, server: DispatchServer) -> None:
        self._server = server

    def __repr__(self) -> str:
        return f"RunningServer({self.url!r})"

    @property
    def url(self) -> str:
        """URL for `Client`: `grpc://127.0.0.1:PORT?ssl=false` (no `?ssl=false` with TLS)."""
        return self._server.url

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._server.host

    @property
    def port(self) -> int:
        """The port the server listens on (the same across `stop()`/`start()`)."""
        return self._server.port

    @property
    def service(self) -> DispatchService:
        """The servicer: its store, and stream counters such as `open_stream_count()`."""
        return self._server.service

    @property
    def is_running(self) -> bool:
        """Whether the server is listening now."""
        return self._server.is_running

    async def stop(self) -> None:
        """Go down: stop listening, drop connections and open streams (data is kept)."""
        await self._server.stop()

    async def start(self) -> None:
        """Come back up on the same port with the same database."""
        await self._server.start()


@asynccontextmanager
async def running_server(
    *,
    db: str = ":memory:",
    keys: Iterable[str] | None = None,
    sign_secret: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    stream_buffer_size: int = DEFAULT_STREAM_BUFFER_SIZE,
) -> AsyncIterator[RunningServer]:
    """Start a reference server (port 0 = a free port) for the duration of the block.

    `db` is ":memory:" or an SQLite file; `keys` are the accepted API keys
    (None: any key); `sign_secret` makes it require signed requests; `ssl`
    serves TLS.
    """
    _require_asyncio()
    async with DispatchService(db=db, stream_buffer_size=stream_buffer_size) as service:
        server = DispatchServer(
            service, host=host, port=port, ssl=ssl, keys=keys, sign_secret=sign_secret
        )
        async with server:
            yield RunningServer(server)


@asynccontextmanager
async def in_memory_channel(service: DispatchService | None = None) -> AsyncIterator[Channel]:
    """Yield a grpclib `Channel` connected in memory to `service` (default: a new in-memory one).

    No sockets, no authentication. The given service must be open; a default
    one is opened and closed here.
    """
    _require_asyncio()
    if service is not None:
        async with ChannelFor([service]) as channel:
            yield channel
        return
    async with DispatchService() as own, ChannelFor([own]) as channel:
        yield channel


def _require_asyncio() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "the reference server is built on grpclib and needs an asyncio event loop"
            " (with trio, run it through trio-asyncio or in another process)"
        ) from None


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pass
else:

    @pytest.fixture
    async def dispatch_server(anyio_backend: Any) -> AsyncIterator[RunningServer]:
        """Yield a fresh reference server (in-memory database, no auth) for one test.

        Tests parametrized over other anyio backends than asyncio are skipped.
        """
        backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
        if backend != "asyncio":
            pytest.skip("dispatch_server runs on grpclib, which needs the asyncio backend")
        async with running_server() as server:
            yield server
