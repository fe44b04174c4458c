"""Run the reference server inside your tests.

    from dispatch_client.testing import running_server

    async with running_server() as server:
        async with Client(server.url, auth_key="any") as client:
            ...

With pytest, the `dispatch_server` fixture is there in anyio tests as soon as
the package is installed: its `pytest11` entry point registers this module
as a plugin (do not also list it in `pytest_plugins`, pytest refuses to
register a plugin twice). `in_memory_channel()` skips the
sockets altogether and yields a grpclib `Channel` wired to a server in
memory.

The server is grpclib, so it needs an asyncio event loop. Code that runs on
trio (or in no event loop at all) starts it in a thread of its own:

    from dispatch_client.testing import threaded_server

    with threaded_server() as server:
        trio.run(my_app, server.url)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ssl as _ssl
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar

import anyio
from grpclib.client import Channel
from grpclib.testing import ChannelFor

from .server.app import DispatchServer
from .server.service import DEFAULT_STREAM_BUFFER_SIZE, DispatchService

__all__ = [
    "RunningServer",
    "ThreadedServer",
    "dispatch_server",
    "in_memory_channel",
    "running_server",
    "threaded_server",
]

_T = TypeVar("_T")
_THREAD_TIMEOUT = 30.0
"""Seconds to wait for the server thread to come up or to end."""


class RunningServer:
    """A reference server listening on a loopback port, with its service at hand.

    Args:
        server: the running `DispatchServer` it wraps.
    """

    def __init__(self, server: DispatchServer) -> None:
        self._server = server

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

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
    """Start a reference server for the duration of the block.

    Args:
        db: ":memory:" or an SQLite file.
        keys: the accepted API keys; None accepts any (and no) key.
        sign_secret: require requests signed with this secret; None for no signatures.
        ssl: serve TLS with this context (see `server_ssl_context`); None for plain HTTP/2.
        host: loopback address to listen on.
        port: TCP port; 0 (the default) picks a free one.
        stream_buffer_size: events buffered per stream before a slow subscriber is cut off.

    Yields:
        The running server; it is stopped and its database closed on exit.

    Raises:
        RuntimeError: not called on an asyncio loop (under trio use `threaded_server`).
        OSError: the address cannot be bound or the database cannot be opened.
    """
    _require_asyncio()
    async with DispatchService(db=db, stream_buffer_size=stream_buffer_size) as service:
        server = DispatchServer(
            service, host=host, port=port, ssl=ssl, keys=keys, sign_secret=sign_secret
        )
        async with server:
            yield RunningServer(server)


class ThreadedServer(RunningServer):
    """A reference server on an asyncio loop in a background thread (see `threaded_server`).

    It has the attributes of `RunningServer`, and its `stop()`, `start()` and
    `call()` can be awaited from asyncio and trio alike. The service lives on
    the server's loop: reading its counters (`service.open_stream_count(1)`)
    is fine from any thread, but run its coroutines through `call()`.

    Args:
        server: the server, running on `loop`.
        loop: the background thread's event loop.
    """

    def __init__(self, server: RunningServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(server._server)
        self._loop = loop

    def submit(
        self, function: Callable[..., Coroutine[Any, Any, _T]], *args: Any
    ) -> concurrent.futures.Future[_T]:
        """Start `function(*args)` on the server's loop.

        Args:
            function: a coroutine function to run there.
            *args: its positional arguments.

        Returns:
            A thread-safe future of its result.
        """
        # Scheduled from an empty context: the caller's may carry sniffio's
        # "trio" marker (anyio sets it), which would make anyio on the
        # server's loop pick its trio backend.
        return contextvars.Context().run(
            asyncio.run_coroutine_threadsafe, function(*args), self._loop
        )

    async def call(self, function: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
        """Run `function(*args)` on the server's loop and wait for it (any anyio backend).

        Args:
            function: a coroutine function to run there.
            *args: its positional arguments.

        Returns:
            Its result.

        Raises:
            Exception: whatever `function` raises. Cancelling the wait cancels the call.
        """
        future = self.submit(function, *args)
        try:
            return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except BaseException:
            future.cancel()
            raise

    async def stop(self) -> None:
        """Go down: stop listening, drop connections and open streams (data is kept)."""
        await self.call(self._server.stop)

    async def start(self) -> None:
        """Come back up on the same port with the same database."""
        await self.call(self._server.start)


@contextmanager
def threaded_server(
    *,
    db: str = ":memory:",
    keys: Iterable[str] | None = None,
    sign_secret: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    stream_buffer_size: int = DEFAULT_STREAM_BUFFER_SIZE,
) -> Iterator[ThreadedServer]:
    """Run `running_server(...)` on an asyncio loop in a thread for the duration of the block.

    Usable where no asyncio loop runs, such as trio tests and applications.
    Leaving the block stops the server and joins its thread.

    Args:
        db: ":memory:" or an SQLite file.
        keys: the accepted API keys; None accepts any (and no) key.
        sign_secret: require requests signed with this secret; None for no signatures.
        ssl: serve TLS with this context; None for plain HTTP/2.
        host: loopback address to listen on.
        port: TCP port; 0 (the default) picks a free one.
        stream_buffer_size: events buffered per stream before a slow subscriber is cut off.

    Yields:
        The running server.

    Raises:
        OSError: the server could not start (raised from its thread).
        TimeoutError: the thread did not come up or end within 30 s.
    """
    loop = asyncio.new_event_loop()
    stop_requested = loop.create_future()
    started: concurrent.futures.Future[RunningServer] = concurrent.futures.Future()
    ended: concurrent.futures.Future[None] = concurrent.futures.Future()

    async def serve() -> None:
        async with running_server(
            db=db,
            keys=keys,
            sign_secret=sign_secret,
            ssl=ssl,
            host=host,
            port=port,
            stream_buffer_size=stream_buffer_size,
        ) as server:
            started.set_result(server)
            await stop_requested

    def main() -> None:
        try:
            with asyncio.Runner(loop_factory=lambda: loop) as runner:
                runner.run(serve())
        except BaseException as exc:
            for future in (started, ended):
                if not future.done():
                    future.set_exception(exc)
        else:
            ended.set_result(None)

    thread = threading.Thread(target=main, name="dispatch-reference-server", daemon=True)
    thread.start()
    try:
        server = ThreadedServer(started.result(timeout=_THREAD_TIMEOUT), loop)
        yield server
    finally:
        # RuntimeError: the loop has closed, so the server thread has ended.
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, stop_requested)
        thread.join(_THREAD_TIMEOUT)
    ended.result(timeout=0)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@asynccontextmanager
async def in_memory_channel(service: DispatchService | None = None) -> AsyncIterator[Channel]:
    """Connect a grpclib `Channel` in memory to a service: no sockets, no authentication.

    Args:
        service: an open service; None opens (and afterwards closes) a new in-memory one.

    Yields:
        The channel, e.g. for `MicrogridDispatchServiceStub(channel)`.

    Raises:
        RuntimeError: not called on an asyncio loop.
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
            " (elsewhere, such as under trio, use threaded_server())"
        ) from None


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pass
else:

    @pytest.fixture
    async def dispatch_server(anyio_backend: Any) -> AsyncIterator[RunningServer | ThreadedServer]:
        """Yield a fresh reference server (in-memory database, no auth) for one test.

        On the asyncio backend it runs in the test's loop (a `RunningServer`);
        on trio in a thread of its own (a `ThreadedServer`: run the service's
        coroutines through its `call()`).
        """
        backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
        if backend == "asyncio":
            async with running_server() as server:
                yield server
            return
        with threaded_server() as threaded:
            yield threaded
