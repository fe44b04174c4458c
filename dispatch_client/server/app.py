"""Listening on a socket: `DispatchServer` (start/stop/restart) and `serve()`."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import socket
import ssl as _ssl
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import anyio
import anyio.lowlevel
import grpclib.exceptions
import grpclib.protocol
import grpclib.server
import h2.exceptions
from grpclib.const import Status
from grpclib.metadata import Deadline, encode_grpc_message
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from .._h2_protocol import _quiet_received_frames as quiet_received_frames
from .._unary import CachingDecoder, CachingEncoder
from ..connection import _CoalescedWrites as CoalescedWrites
from ._h2_frames import ServerH2Connection
from .auth import RequestAuthenticator
from .operability import OPEN_SERVICES, Operability
from .operability import available as operability_available
from .service import DEFAULT_STREAM_BUFFER_SIZE, DispatchService
from .stores import describe_db

__all__ = ["DispatchServer", "serve", "server_ssl_context"]

_log = logging.getLogger(__name__)

MAX_STREAMS_PER_CONNECTION = 100_000
"""Calls one connection may have open at once (HTTP/2 MAX_CONCURRENT_STREAMS).

h2 advertises 100 unless told otherwise; a client following more microgrids
than that over one channel would then see its later streams wait, unopened,
for earlier ones to end. gRPC's own servers advertise no practical limit.
"""


GC_THRESHOLDS: Final = (10_000, 10, 10)
"""The cyclic garbage collector's thresholds while `serve()` runs (Python's: 700, 10, 10).

A server following a fleet holds about a hundred objects per open stream, and
each request it answers allocates about as many: with Python's thresholds the
collector ran every few requests, a fifth of the server's time as a client
opened 1,000 streams (about 160 of 800 ms; 70 ms with these). Garbage cycles
are still collected, after 10,000 allocations instead of 700.
"""


@contextmanager
def _collecting_for_a_server() -> Iterator[None]:
    """Set `GC_THRESHOLDS`, and leave the objects made so far out of the collector's walks.

    What exists once the server listens (modules, the store) lives as long
    as the process: frozen (`gc.freeze`), full collections no longer walk it.
    Both are undone on exit (the freeze only if it was not the caller's).
    """
    previous = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        if not frozen_before:
            gc.unfreeze()


def server_ssl_context(cert_file: str, key_file: str) -> _ssl.SSLContext:
    """Build a TLS context for the server from a certificate chain and its private key.

    Args:
        cert_file: path of the PEM certificate chain, server certificate first.
        key_file: path of the PEM private key of that certificate.

    Returns:
        A server-side context offering HTTP/2 ("h2") by ALPN.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the files are not a matching PEM certificate and key.
    """
    context = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    return context


class _ConnectionTracker(asyncio.Protocol):
    """Wraps grpclib's per-connection protocol to remember its transport.

    grpclib's `Server.close()` stops accepting and cancels handlers but keeps
    established connections open; `DispatchServer.stop()` closes them too, so
    that stopping looks like a server going down to connected clients.
    """

    def __init__(self, inner: asyncio.Protocol, open_transports: set[asyncio.BaseTransport]):
        self._inner = inner
        self._open = open_transports
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._open.add(transport)
        # An answer is three writes (headers, message, trailers), each a send():
        # joined per loop turn, and with the header blocks every answer repeats
        # cached, as on the client (see `dispatch_client.connection`).
        inner_transport: Any = transport
        if isinstance(transport, asyncio.Transport):
            inner_transport = CoalescedWrites(transport, asyncio.get_running_loop())
        self._inner.connection_made(inner_transport)
        connection = getattr(self._inner, "connection", None)
        if connection is not None:
            h2 = connection._connection
            # Each stream a client opens would otherwise cost a walk over all
            # it holds open: quadratic for a client following many microgrids.
            h2.__class__ = ServerH2Connection
            h2.enable_answer_frames()
            h2.encoder = CachingEncoder()
            h2.decoder = CachingDecoder(h2.decoder)
            quiet_received_frames(h2)
            # No limit until the client has our SETTINGS, as RFC 9113 (6.5.2)
            # has it: h2 held it to 100 meanwhile and dropped the connection
            # at the 101st stream, so a client opening more than 50 microgrids
            # as it connects (a stream and a baseline list each) lost them all.
            del h2.local_settings[SettingCodes.MAX_CONCURRENT_STREAMS]
            h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS_PER_CONNECTION})
            connection.flush()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._open.discard(self._transport)
        self._inner.connection_lost(exc)


_LEAST_TIME_S = 0.001
"""A call arriving with less time than this to its deadline is answered DEADLINE_EXCEEDED at once."""


async def _request_handler(
    mapping: dict[str, Any],
    stream: grpclib.protocol.Stream,
    headers: Any,
    *args: Any,
) -> None:
    """Grpclib's `request_handler`, answering a call's bad or spent `grpc-timeout` itself.

    grpclib answers a `grpc-timeout` it cannot read with UNKNOWN, and a call
    whose deadline has passed before its handler starts (`0n`, or `1m` on a
    busy server) with UNKNOWN "Internal Server Error" and an ERROR log line
    with a traceback. Here they get INVALID_ARGUMENT naming the header and
    DEADLINE_EXCEEDED, for the paths grpclib serves; nothing awaits between
    this check and grpclib starting the deadline's timer. A request without
    `:method` or `:path` is reset (PROTOCOL_ERROR) instead of left unanswered.
    """
    release_stream = args[-1]
    pseudo = dict(headers)
    if ":method" not in pseudo or ":path" not in pseudo:
        # Malformed (RFC 9113, 8.3.1): grpclib met a KeyError, logged it as an
        # ERROR and left the stream without an answer.
        try:
            stream.reset_nowait(ErrorCodes.PROTOCOL_ERROR)
        except h2.exceptions.ProtocolError:  # the stream is gone already
            pass
        finally:
            release_stream()
        return
    refusal = None
    if "grpc-timeout" in pseudo and pseudo[":path"] in mapping:
        refusal = _deadline_refusal(headers)
    if refusal is None:
        await grpclib.server.request_handler(mapping, stream, headers, *args)
        return
    try:
        status, message = refusal
        await stream.send_headers(
            [
                (":status", "200"),
                ("content-type", "application/grpc+proto"),
                ("grpc-status", str(status.value)),
                ("grpc-message", encode_grpc_message(message)),
            ],
            end_stream=True,
        )
        if stream.closable:
            stream.reset_nowait()
    except (grpclib.exceptions.ProtocolError, grpclib.exceptions.StreamTerminatedError):
        pass  # the connection or the stream is gone: no one to answer
    finally:
        release_stream()


def _deadline_refusal(headers: Any) -> tuple[Status, str] | None:
    """(status, message) for a call whose `grpc-timeout` is unreadable or spent; None to serve it."""
    try:
        deadline = Deadline.from_headers(headers)
    except (ValueError, OverflowError):
        values = [value for name, value in headers if name == "grpc-timeout"]
        shown = ", ".join(repr(value[:24]) for value in values[:3])
        return Status.INVALID_ARGUMENT, (
            f"header grpc-timeout: {shown} is not a timeout"
            " (allowed: digits and a unit H, M, S, m, u or n, e.g. 30S)"
        )
    if deadline is not None and deadline.time_remaining() < _LEAST_TIME_S:
        return (
            Status.DEADLINE_EXCEEDED,
            "the call's deadline (grpc-timeout) passed before it started",
        )
    return None


class _Handler(grpclib.server.Handler):
    """grpclib's per-connection handler, forgetting each call's task as it ends.

    grpclib keeps every call's task until a sweep, every tenth call, rebuilds
    its tables without the finished ones: a walk over all the calls the
    connection has open, so for a client following a thousand microgrids
    opening them cost O(n²) (a fifth of the server's time opening a fleet).
    Here a task leaves the tables when it is done, and there is no sweep.
    """

    def __gc_collect__(self) -> None:
        pass  # nothing to sweep: finished tasks are gone already (see `_forget`)

    def accept(
        self,
        stream: grpclib.protocol.Stream,
        headers: Any,
        release_stream: Callable[[], Any],
    ) -> None:
        task = self.loop.create_task(
            _request_handler(
                self.mapping,
                stream,
                headers,
                self.codec,
                self.status_details_codec,
                self.dispatch,
                release_stream,
            )
        )
        self._tasks[stream] = task
        task.add_done_callback(functools.partial(self._forget, stream))

    def _forget(self, stream: grpclib.protocol.Stream, task: asyncio.Task[None]) -> None:
        if self._tasks.get(stream) is task:
            del self._tasks[stream]
        self._cancelled.discard(task)

    def cancel(self, stream: grpclib.protocol.Stream) -> None:
        task = self._tasks.pop(stream, None)
        if task is not None and not task.done():
            task.cancel()
            self._cancelled.add(task)


class _Server(grpclib.server.Server):
    def __init__(self, handlers: Iterable[Any]) -> None:
        super().__init__(list(handlers))
        self.open_transports: set[asyncio.BaseTransport] = set()

    def _protocol_factory(self) -> Any:
        # grpclib's own factory, with `_Handler` for its `Handler`.
        self.__gc_step__()
        handler = _Handler(
            self._mapping, self._codec, self._status_details_codec, self.__dispatch__
        )
        self._handlers.add(handler)
        protocol = grpclib.protocol.H2Protocol(handler, self._config, self._h2_config)
        return _ConnectionTracker(protocol, self.open_transports)


class DispatchServer:
    """A `DispatchService` listening on `host:port` (port 0 picks a free one).

    `start()` binds (again on the same port after a `stop()`, so a client can
    reconnect), `stop()` stops listening and drops open connections and
    streams. The service (and its store) are not closed by `stop()`; that is
    the caller's job. Also an async context manager (start/stop).

    Args:
        service: the servicer, already open.
        host: address to listen on.
        port: TCP port; 0 picks a free one (`port` then holds it once started).
        ssl: TLS context (see `server_ssl_context`); None serves plain HTTP/2.
        keys: accepted API keys; None means keys are not checked.
        sign_secret: require requests signed with this secret; None for no signatures.
        shutdown_grace_s: seconds `stop()` keeps serving while the health service
            already says NOT_SERVING, so that load balancers stop routing here
            before open streams are ended.

    Next to the dispatch service it serves the standard health service and
    server reflection (`operability`), when protobuf is installed.
    """

    def __init__(
        self,
        service: DispatchService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: _ssl.SSLContext | None = None,
        keys: Iterable[str] | None = None,
        sign_secret: str | None = None,
        shutdown_grace_s: float = 0.0,
    ) -> None:
        self.service = service
        self.shutdown_grace_s = shutdown_grace_s
        self.operability = Operability(service) if operability_available() else None
        """Health status and reflection; None without protobuf."""
        self.host = host
        self.port = port
        self.ssl = ssl
        # Used nonces live in the store, so replicas sharing it refuse each other's replays.
        self.authenticator = RequestAuthenticator(
            keys, sign_secret, nonces=service.store, open_services=OPEN_SERVICES
        )
        self._server: _Server | None = None

    def __repr__(self) -> str:
        return f"DispatchServer({self.url!r}, running={self.is_running})"

    async def __aenter__(self) -> DispatchServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The URL a client connects with, e.g. `grpc://127.0.0.1:50051?ssl=false`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"grpc://{host}:{self.port}" + ("" if self.ssl else "?ssl=false")

    @property
    def is_running(self) -> bool:
        """Whether the server is listening."""
        return self._server is not None

    async def start(self) -> None:
        """Start listening; no-op when already listening."""
        if self._server is not None:
            return
        sock = await _bind(self.host, self.port)
        extra = self.operability.handlers() if self.operability is not None else ()
        server = _Server([self.service, *extra])
        self.authenticator.install(server)
        try:
            await server.start(sock=sock, ssl=self.ssl)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._server = server
        if self.operability is not None:
            self.operability.serving()

    async def stop(self) -> None:
        """Stop listening, cancel running calls and close connections; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        with anyio.CancelScope(shield=True):
            if self.operability is not None:
                self.operability.shutting_down()
                # Let health watchers receive NOT_SERVING (and balancers act on
                # it) before their connections and the streams go away.
                await anyio.sleep(self.shutdown_grace_s)
                for _ in range(3):
                    await anyio.lowlevel.checkpoint()
            server.close()
            for transport in list(server.open_transports):
                transport.close()
            await server.wait_closed()


async def _bind(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, address = infos[0]
    # proto must say TCP: grpclib only sets TCP_NODELAY on accepted sockets
    # that do, and without it every response waits for a delayed ACK (~40 ms).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        # So that a restart on the same port does not wait for TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(100)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 50051,
    db: str = ":memory:",
    keys: Iterable[str] | None = None,
    sign_secret: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    stream_buffer_size: int | None = None,
    shutdown_grace_s: float = 0.0,
    on_ready: Callable[[DispatchServer], object] | None = None,
) -> None:
    """Run a dispatch server until cancelled, then stop it cleanly.

    Logs one line with the URL to connect to; `on_ready` (if given) is called
    with the running `DispatchServer` once it listens. Meanwhile the process's
    cyclic garbage collector runs less often (`GC_THRESHOLDS`), and what was
    made before the server listened is left out of its walks (`gc.freeze`).

    Args:
        host: address to listen on.
        port: TCP port; 0 picks a free one.
        db: SQLite file that keeps dispatches, ":memory:", or a `postgresql://` URL.
        keys: accepted API keys; None (or none given) means keys are not checked.
        sign_secret: require requests signed with this secret; None for no signatures.
        ssl: TLS context (see `server_ssl_context`); None serves plain HTTP/2.
        stream_buffer_size: events buffered per stream before a slow subscriber
            is cut off; None for `DEFAULT_STREAM_BUFFER_SIZE`.
        shutdown_grace_s: seconds to keep serving, health NOT_SERVING, once stopping.
        on_ready: called with the running server once it listens.

    Raises:
        OSError: the address cannot be bound or the database cannot be opened.
    """
    service = DispatchService(
        db=db, stream_buffer_size=stream_buffer_size or DEFAULT_STREAM_BUFFER_SIZE
    )
    async with service:
        server = DispatchServer(
            service,
            host=host,
            port=port,
            ssl=ssl,
            keys=keys,
            sign_secret=sign_secret,
            shutdown_grace_s=shutdown_grace_s,
        )
        async with server:
            with _collecting_for_a_server():
                _log.info(
                    "Dispatch server listening (db %s, %s); connect with %s",
                    describe_db(db),
                    server.authenticator.describe(),
                    server.url,
                )
                if on_ready is not None:
                    on_ready(server)
                await anyio.sleep_forever()
