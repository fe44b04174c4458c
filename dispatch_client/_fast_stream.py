"""Server-streaming calls on grpclib's HTTP/2 connection, without its per-call stream objects.

The streaming counterpart of `dispatch_client._unary` (read its docstring
first: the same reasons, the same rules, the same fallback). grpclib's client
stream costs, per call, the objects and event dispatches listed there, and per
message a queue-backed buffer read, three awaits and an event dispatch. Here a
`PendingStream` is registered with grpclib's `EventsProcessor`, which feeds it
the HTTP/2 events; it cuts the received DATA into messages as they arrive
and wakes the one reader, `PendingStream.responses`. DATA is acknowledged
(flow control) on arrival while the reader keeps up; once more than
`_READ_AHEAD` bytes wait unread, further DATA is acknowledged only when the
reader has taken what waits. A slow reader then holds the server back as on
grpclib's path (which acknowledges on read): the client buffers at most
`_READ_AHEAD` plus the stream's window, and the server's slow-subscriber
cut-off still sees a slow subscriber.

What the reader sees is what grpclib's stream gives: `None` once the response
headers have arrived and passed grpclib's checks (HTTP status, content type,
the status of a trailers-only answer), then each message, then the end, with
the trailers' status checked (a non-OK status is the `GRPCError` grpclib
raises). A broken stream or connection raises `StreamTerminatedError` once the
messages that arrived before are read, unless the trailers or headers already
carry an error status, which is raised instead (as grpclib does). A
compressed or truncated message is a `GRPCError` (INTERNAL), where grpclib
lets an `AssertionError` or `NotImplementedError` out. Leaving the reader
early resets the stream (the server sees the call cancelled).

`start_stream` returns None, having sent nothing, in the cases where
`start_call` does; the caller then takes grpclib's path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ._unary import (
    FastPath,
    FedStream,
    check_headers,
    check_status,
    raise_for_what_arrived,
    release,
    send_request,
)

if TYPE_CHECKING:
    from grpclib.client import Channel

__all__ = ["PendingStream", "start_stream"]

_PREFIX = 5  # compressed flag (1 byte) + big-endian length (4 bytes)
_READ_AHEAD = 1 << 18
"""Unread bytes past which received DATA waits for the reader to be acknowledged."""


class PendingStream(FedStream):
    """One server-streaming call's HTTP/2 stream, read by `responses`."""

    __slots__ = ("_owed", "_partial", "_unread", "_wake", "ended", "failure", "messages")

    def __init__(self, stream_id: int, h2: Any) -> None:
        super().__init__(stream_id, h2)
        self.messages: deque[bytes] = deque()
        """Complete messages received and not read yet (without their 5-byte prefix)."""
        self._partial = b""
        """The start of a message whose rest has not arrived."""
        self._unread = 0
        """Bytes received and not read yet (messages with their prefixes, and `_partial`)."""
        self._owed = 0
        """Flow-controlled bytes received and not acknowledged yet (see `_READ_AHEAD`)."""
        self.ended = False
        self.failure: BaseException | None = None
        """Raised once the messages before it are read."""
        self._wake: asyncio.Future[None] | None = None

    def _headers_arrived(self, headers: list[tuple[str, str]]) -> None:
        self._notify()

    def add(self, data: bytes, ack_size: int) -> None:
        self._owed += ack_size
        if self.failure is not None:
            self._acknowledge()
            return
        self._unread += len(data)
        self._parse(data)
        if self._owed and (self._unread <= _READ_AHEAD or not self.messages):
            # Nothing to read (a message's start), or the reader keeps up. The
            # processor's protocol sends the window updates after this batch of events.
            self._acknowledge()

    def _acknowledge(self) -> None:
        owed = self._owed
        if owed:
            self._owed = 0
            self.h2.acknowledge_received_data(owed, self.id)

    def _send_acknowledgement(self) -> None:
        connection = self.connection
        if not connection.is_closing():
            self._acknowledge()
            connection.flush()

    def _parse(self, data: bytes) -> None:
        received = self._partial + data if self._partial else data
        start, size = 0, len(received)
        while size - start >= _PREFIX:
            end = start + _PREFIX + int.from_bytes(received[start + 1 : start + _PREFIX], "big")
            if end > size:
                break
            if received[start]:
                self.failure = GRPCError(
                    Status.INTERNAL,
                    "the server sent a compressed message (compression is not supported)",
                )
                self._partial = b""
                self._notify()
                return
            self.messages.append(received[start + _PREFIX : end])
            start = end
        self._partial = received[start:]
        self._notify()

    def __ended__(self) -> None:
        self.ended = True
        self._notify()

    def __terminated__(self, reason: str) -> None:
        if self.failure is None:
            self.failure = StreamTerminatedError(reason)
        self._notify()

    def close(self) -> None:
        """Reset the stream if it is left open, and unregister it."""
        if self._owed and self.streams is not None:
            self._send_acknowledgement()  # the connection's window: unread DATA is dropped
        release(self)

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _next_event(self) -> None:
        self._wake = wake = asyncio.get_running_loop().create_future()
        try:
            await wake
        finally:
            self._wake = None

    async def responses(
        self, channel: Channel, response_type: type[Any]
    ) -> AsyncGenerator[Any | None, None]:
        """Yield None once the headers have arrived and passed, then each message, decoded.

        Args:
            channel: the channel (its codecs).
            response_type: the response message class.

        Yields:
            None, then each response message.

        Raises:
            GRPCError: the server's non-OK status, or an answer grpclib would refuse.
            StreamTerminatedError: the stream or the connection broke.
        """
        try:
            while self._headers is None:
                if self.failure is not None or self.ended:
                    self._raise_for_end(channel)
                await self._next_event()
            trailers_only = check_headers(self._headers, channel)
            yield None
            if trailers_only:
                return
            decode = channel._codec.decode
            messages = self.messages
            while True:
                while messages:
                    message = messages.popleft()
                    self._unread -= len(message) + _PREFIX
                    yield decode(message, response_type)
                if self.failure is not None:
                    self._raise_for_end(channel)
                if self.ended:
                    break
                if self._owed:  # held back while the reader was behind: it has caught up
                    self._send_acknowledgement()
                await self._next_event()
            if self._partial:
                raise GRPCError(Status.INTERNAL, "the server sent an incomplete message")
            if self.trailers is None:
                raise GRPCError(Status.UNKNOWN, "Missing grpc-status header")
            check_status(dict(self.trailers), channel)
        finally:
            self.close()

    def _raise_for_end(self, channel: Channel) -> None:
        failure = self.failure
        if isinstance(failure, StreamTerminatedError):
            raise_for_what_arrived(self, channel)  # as grpclib does for a broken stream
        if failure is not None:
            raise failure
        check_headers(self._headers, channel)  # ended before headers: raises


def start_stream(
    channel: Channel,
    fast: FastPath,
    path: str,
    request: Any,
    loop: asyncio.AbstractEventLoop,
) -> PendingStream | None:
    """Open one server-streaming call on `channel`'s connection, or return None having sent nothing.

    Read it through `PendingStream.responses` (which closes it), or `close()` it.

    Args:
        channel: the grpclib channel.
        fast: the channel's prepared headers and credentials.
        path: the method path, e.g. `/pkg.Service/Method`.
        request: the request message.
        loop: the running loop.

    Returns:
        The call, sent; None when grpclib's path must take it.
    """
    return send_request(channel, fast, path, request, None, loop, PendingStream)
