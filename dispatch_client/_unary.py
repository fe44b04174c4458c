"""Unary calls on grpclib's HTTP/2 connection, without its per-call stream objects.

Why. A unary call through `grpclib.client.Stream` builds, per call, a client
stream, a protocol stream with three `asyncio.Event`s and a queue-backed
buffer, a deadline wrapper that arms a task cancellation, and five event
dispatches (each an `await`, even with no listener), and it reads the answer
in three waits (headers, message, trailers). A unary call needs one wait: the
answer is complete when its stream ends. This module registers a small
`PendingCall` with grpclib's own `EventsProcessor`, which feeds it the same
HTTP/2 events, and resolves one future when the stream ends or breaks.

What stays grpclib's: the connection (connecting, the h2 state machine,
flow-control bookkeeping, keep-alive pings, closing), the codec, the status
details codec, and every rule about the answer (HTTP status, content type,
`grpc-status`/`grpc-message`, trailers-only answers, the status details); the
headers sent are the ones grpclib sends, in its order, plus the channel's
authentication metadata. Errors are grpclib's exception types, so one mapping
(`errors`) turns both paths into the same typed errors; where grpclib lets a
raw error out for a broken answer (a compressed or truncated message,
undecodable status details, no `:status`), this raises a `GRPCError` instead.
Received DATA is acknowledged as it arrives, as grpclib's reader does, so an
answer larger than the receive windows does not stall.

When grpclib's own path is taken instead (`start_call` returns None before
sending anything): the channel has event listeners other than its own
authentication hook (a user's hook must see every call), the connection's
write buffer is full, the request does not fit the flow-control windows at
once, or the server's limit of concurrent streams is reached.

The header block caches are in `_hpack_cache` (see there).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from grpclib.const import Status
from grpclib.encoding.base import GRPC_CONTENT_TYPE
from grpclib.events import SendRequest
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import (
    _STATUS_DETAILS_KEY,
    USER_AGENT,
    decode_bin_value,
    decode_grpc_message,
    decode_metadata,
    encode_metadata,
    encode_timeout,
)
from h2.connection import ConnectionState
from h2.exceptions import TooManyStreamsError
from hpack import NeverIndexedHeaderTuple

from ._auth import auth_metadata
from ._hpack_cache import CachingDecoder as CachingDecoder  # re-exported (connection, server)
from ._hpack_cache import CachingEncoder as CachingEncoder  # re-exported (connection, server)

if TYPE_CHECKING:
    from grpclib.client import Channel

# grpclib's mapping of HTTP statuses to gRPC ones (the gRPC HTTP/2 protocol
# document's table), for answers that are not HTTP 200.
_HTTP_TO_GRPC: Final = {
    "400": Status.INTERNAL,
    "401": Status.UNAUTHENTICATED,
    "403": Status.PERMISSION_DENIED,
    "404": Status.UNIMPLEMENTED,
    "502": Status.UNAVAILABLE,
    "503": Status.UNAVAILABLE,
    "504": Status.UNAVAILABLE,
}
_MESSAGE_PREFIX: Final = 5  # compressed flag (1 byte) + big-endian length (4 bytes)
_HTTP_OK: Final = (":status", "200")
# The usual answer's headers per codec subtype, and its trailers: `answer` lets them
# through at a glance, as grpclib's rules would (HTTP 200, a content type of the
# codec, no status in the headers; grpc-status 0 and nothing else in the trailers).
_PLAIN_HEADERS: Final = {
    "proto": (
        [_HTTP_OK, ("content-type", GRPC_CONTENT_TYPE)],
        [_HTTP_OK, ("content-type", f"{GRPC_CONTENT_TYPE}+proto")],
    )
}
_OK_TRAILERS: Final = [("grpc-status", "0")]


class _NoWait:
    """Stands in for the `asyncio.Event`s grpclib sets on a stream nobody waits on."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_WAIT: Final = _NoWait()


class FedStream:
    """An HTTP/2 stream of ours as grpclib's `EventsProcessor` sees one: what it sets and calls.

    The processor sets `headers` and `trailers`, adds DATA through
    `buffer.add`, and calls `__ended__` or `__terminated__`; subclasses say
    what each means for their call (`PendingCall`, `_fast_stream.PendingStream`).
    `send_request` fills in `connection` and `streams` when it registers one.
    """

    __slots__ = ("_headers", "connection", "data_received", "h2", "id", "streams", "trailers")

    headers_received = trailers_received = window_updated = _NO_WAIT

    def __init__(self, stream_id: int, h2: Any) -> None:
        self.id = stream_id
        self.h2 = h2
        self._headers: list[tuple[str, str]] | None = None
        self.trailers: list[tuple[str, str]] | None = None
        self.data_received = 0
        self.connection: Any = None
        self.streams: dict[int, Any] | None = None

    @property
    def headers(self) -> list[tuple[str, str]] | None:
        return self._headers

    @headers.setter
    def headers(self, headers: list[tuple[str, str]]) -> None:
        self._headers = headers
        self._headers_arrived(headers)

    def _headers_arrived(self, headers: list[tuple[str, str]]) -> None:
        """Told when the response headers arrive."""

    @property
    def buffer(self) -> FedStream:
        return self

    def unacked_size(self) -> int:
        return 0  # subclasses acknowledge DATA themselves

    @property
    def trailing_metadata(self) -> Any:
        """The trailers as grpclib's metadata (what a typed error carries)."""
        sent = self.trailers if self.trailers is not None else self._headers
        return None if sent is None else decode_metadata(sent)


class PendingCall(FedStream):
    """One unary call's HTTP/2 stream.

    `done` resolves when the stream ends or breaks, or as soon as the headers
    carry an HTTP status other than 200 (grpclib fails the call there too,
    whether or not the stream goes on). DATA is acknowledged (flow control) as
    it arrives, as grpclib's reader does: an answer larger than the receive
    windows, or many concurrent answers, must not wait for a window update
    that only the end of the answer would send.
    """

    __slots__ = ("chunks", "done", "timer")

    def __init__(self, stream_id: int, done: asyncio.Future[None], h2: Any) -> None:
        super().__init__(stream_id, h2)
        self.done = done
        self.chunks: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None

    def _headers_arrived(self, headers: list[tuple[str, str]]) -> None:
        if (not headers or headers[0] != _HTTP_OK) and dict(headers).get(":status") != "200":
            self.__ended__()  # `answer` raises what grpclib raises for these headers

    def add(self, data: bytes, ack_size: int) -> None:
        self.chunks.append(data)
        if ack_size:
            # The processor's protocol sends the window updates after this batch of events.
            self.h2.acknowledge_received_data(ack_size, self.id)

    def __ended__(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def __terminated__(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(StreamTerminatedError(reason))

    def expire(self) -> None:
        # grpclib's deadline raises a bare TimeoutError; so does this one.
        if not self.done.done():
            self.done.set_exception(TimeoutError())

    def close(self) -> None:
        """Stop the deadline, reset the stream if the call leaves it open, unregister it."""
        if self.timer is not None:
            self.timer.cancel()
        release(self)


class _Deadlines:
    """Expires the calls of one channel at their deadlines, with one timer for them all.

    asyncio's timer per call is a handle made and cancelled for every call (and
    kept in the loop's heap until cleaned out). The calls of one client share
    its call timeout, so their deadlines come in the order the calls start: a
    queue, and one timer for its first entry, moved on as entries are done. A
    deadline earlier than the last one queued (another timeout) gets a timer
    of its own. Entries of finished calls leave the front as calls are added,
    and the whole queue is swept when it has doubled since the last sweep.
    """

    __slots__ = ("_loop", "_queue", "_resolution", "_sweep_at", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[tuple[float, PendingCall]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._sweep_at = 64
        # asyncio runs a timer once the clock is within its resolution of the time.
        self._resolution = time.get_clock_info("monotonic").resolution

    def add(self, call: PendingCall, deadline: float) -> None:
        """Expire `call` at `deadline` (the loop's clock) unless it is done by then."""
        queue = self._queue
        if queue and deadline < queue[-1][0]:
            call.timer = self._loop.call_at(deadline, call.expire)
            return
        while queue and queue[0][1].done.done():
            queue.popleft()
        queue.append((deadline, call))
        if len(queue) > self._sweep_at:
            self._queue = queue = deque(entry for entry in queue if not entry[1].done.done())
            self._sweep_at = 2 * len(queue) + 64
        if self._timer is None:
            self._timer = self._loop.call_at(queue[0][0], self._fire)

    def _fire(self) -> None:
        self._timer = None
        queue = self._queue
        now = self._loop.time() + self._resolution
        while queue:
            deadline, call = queue[0]
            if deadline <= now:
                call.expire()
            elif not call.done.done():
                break
            queue.popleft()
        if queue:
            self._timer = self._loop.call_at(queue[0][0], self._fire)


class FastPath:
    """What a channel needs to make unary calls itself: its headers and credentials."""

    __slots__ = ("_content_type", "_deadlines", "_headers", "_hook", "_key", "_secret", "_site")

    def __init__(self, channel: Channel, key: str | None, secret: str | None, hook: Any) -> None:
        """Prepare the fixed headers of `channel`'s calls.

        Args:
            channel: the grpclib channel the calls go on.
            key: the API key sent as `key` metadata, or None.
            secret: the signing secret, or None.
            hook: the channel's own `SendRequest` listener (the only one allowed).
        """
        self._key = key
        self._secret = secret
        self._hook = hook
        self._deadlines: _Deadlines | None = None
        self._headers: dict[tuple[str, str | None], list[tuple[bytes, bytes]]] = {}
        self._site: tuple[str, str] = (channel._scheme, channel._authority)
        subtype: str = channel._codec.__content_subtype__
        self._content_type = (
            GRPC_CONTENT_TYPE if subtype == "proto" else f"{GRPC_CONTENT_TYPE}+{subtype}"
        )

    def eligible(self, channel: Channel) -> bool:
        """Whether the call may skip grpclib's stream: connected, and no other listener to tell."""
        if not channel._connected:
            return False  # grpclib's path connects within the call's deadline
        for event_type, callbacks in channel.__dispatch__._listeners.items():
            if not callbacks:
                continue
            if (
                event_type is not SendRequest
                or len(callbacks) != 1
                or callbacks[0] is not self._hook
            ):
                return False
        return True

    def headers(self, path: str, timeout: str | None) -> list[Any]:
        """The request headers grpclib would send for `path`, in its order, as bytes."""
        fixed = self._headers.get((path, timeout))
        if fixed is None:
            scheme, authority = self._site
            pairs = [(":method", "POST"), (":scheme", scheme), (":path", path)]
            pairs.append((":authority", authority))
            if timeout is not None:
                pairs.append(("grpc-timeout", timeout))
            pairs += [("te", "trailers"), ("content-type", self._content_type)]
            pairs.append(("user-agent", USER_AGENT))
            if self._key is not None:
                pairs += encode_metadata([("key", self._key)])
            fixed = [(name.encode(), value.encode()) for name, value in pairs]
            if len(self._headers) >= 64:  # a deadline under 10 s varies per call
                self._headers.clear()
            self._headers[path, timeout] = fixed
        if self._key is None or not self._secret:
            return fixed
        signed = auth_metadata(self._key, self._secret, path)[1:]
        return fixed + [
            NeverIndexedHeaderTuple(name.encode(), value.encode())
            for name, value in encode_metadata(signed)
        ]


def start_call(
    channel: Channel,
    fast: FastPath,
    path: str,
    request: Any,
    time_limit: float | None,
    loop: asyncio.AbstractEventLoop,
) -> PendingCall | None:
    """Send one unary call on `channel`'s connection, or return None having sent nothing.

    The caller awaits the returned call's `done`, then calls its `close()`
    (always) and `answer()`; see `connection.unary`.

    Args:
        channel: the grpclib channel.
        fast: the channel's prepared headers and credentials.
        path: the method path, e.g. `/pkg.Service/Method`.
        request: the request message.
        time_limit: the deadline in seconds from now, or None.
        loop: the running loop.

    Returns:
        The call, sent; None when grpclib's path must take it (see the module's docstring).

    Raises:
        TimeoutError: the deadline passed before anything was sent.
    """
    deadline = None if time_limit is None else loop.time() + time_limit
    call = send_request(
        channel,
        fast,
        path,
        request,
        deadline,
        loop,
        lambda stream_id, h2: PendingCall(stream_id, loop.create_future(), h2),
    )
    if call is not None and deadline is not None:
        try:
            deadlines = fast._deadlines
            if deadlines is None or deadlines._loop is not loop:
                deadlines = fast._deadlines = _Deadlines(loop)
            deadlines.add(call, deadline)
        except BaseException:
            call.close()
            raise
    return call


_Call = TypeVar("_Call", bound="FedStream")


def send_request(
    channel: Channel,
    fast: FastPath,
    path: str,
    request: Any,
    deadline: float | None,
    loop: asyncio.AbstractEventLoop,
    make: Callable[[int, Any], _Call],
) -> _Call | None:
    """Open a stream on `channel`'s connection and send `request` on it, or return None having sent nothing.

    Args:
        channel: the grpclib channel.
        fast: the channel's prepared headers and credentials.
        path: the method path, e.g. `/pkg.Service/Method`.
        request: the request message.
        deadline: the call's deadline on the loop's clock (sent as `grpc-timeout`), or None.
        loop: the running loop.
        make: `make(stream_id, h2)` builds the call object grpclib's processor
            feeds (with `id`, `connection` and `streams` slots).

    Returns:
        The call, registered with the processor and sent; None when grpclib's
        path must take it (see the module's docstring).

    Raises:
        TimeoutError: the deadline passed before anything was sent.
    """
    if not fast.eligible(channel):
        return None
    # `eligible` saw the channel connected: grpclib's `__connect__` would return this.
    protocol = channel._protocol
    assert protocol is not None
    processor = protocol.processor
    connection = processor.connection
    h2 = connection._connection
    # `_h2_protocol._H2Connection`'s (every channel with a fast path has one).
    send: Callable[[int, list[Any], bytes], None] | None = getattr(h2, "send_request", None)
    if send is None or not connection.write_ready.is_set() or connection.is_closing():
        return None
    body = channel._codec.encode(request, type(request))
    framed = b"\0" + len(body).to_bytes(4, "big") + body
    size = len(framed)
    if size > h2.outbound_flow_control_window or size > h2.remote_settings.initial_window_size:
        return None
    timeout = None
    if deadline is not None:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError()
        timeout = encode_timeout(remaining)
    headers = fast.headers(path, timeout)
    stream_id = h2.get_next_available_stream_id()
    try:
        send(stream_id, headers, framed)
    except TooManyStreamsError:
        # h2 checks the server's limit before it changes anything: nothing was sent.
        return None
    except BaseException:
        reset_if_open(connection, stream_id)
        raise
    call = make(stream_id, h2)
    call.connection = connection
    # What grpclib's `processor.register` does, without a closure per call; see `release`.
    call.streams = processor.streams
    processor.streams[stream_id] = cast(Any, call)  # grpclib types it as its Stream
    try:
        connection._transport.write(h2.data_to_send())
        connection.headers_send_process()
        connection.data_send_process()
    except BaseException:
        release(call)
        raise
    return call


def raise_for_what_arrived(call: FedStream, channel: Channel) -> None:
    """Raise the error that the headers or trailers received before a stream broke carry."""
    if call.trailers is not None:
        check_status(dict(call.trailers), channel)
    elif call._headers is not None and "grpc-status" in dict(call._headers):
        check_status(dict(call._headers), channel)


def release(call: FedStream) -> None:
    """Reset `call`'s stream if it is left open, and unregister it (once; later calls do nothing).

    `call` is a `PendingCall` or a `_fast_stream.PendingStream`: an object with
    `id`, `connection` and `streams` (the processor's streams while registered).
    """
    streams = call.streams
    if streams is not None:
        call.streams = None
        connection = call.connection
        reset_if_open(connection, call.id)
        # grpclib's release of a stream: forget it, wake whoever waits for a
        # stream to close (its path, at the server's stream limit). Its
        # acknowledgement of unread data is not needed: DATA is acknowledged on arrival.
        streams.pop(call.id, None)
        connection.stream_close_waiter.set()


def reset_if_open(connection: Any, stream_id: int) -> None:
    """Reset a stream the call leaves unfinished (cancelled, timed out), as grpclib does."""
    h2 = connection._connection
    if connection.is_closing() or h2.state_machine.state is ConnectionState.CLOSED:
        return
    stream = h2.streams.get(stream_id)
    if stream is None or stream.closed:
        return
    h2.reset_stream(stream_id)
    if connection.write_ready.is_set():
        connection._transport.write(h2.data_to_send())


def answer(call: PendingCall, channel: Channel, response_type: type[Any]) -> Any:
    """Check the answer by grpclib's rules and decode its message."""
    headers = call._headers
    if (
        call.trailers == _OK_TRAILERS
        and headers is not None
        and headers in _PLAIN_HEADERS.get(channel._codec.__content_subtype__, ())
    ):
        pass  # nearly every answer: what grpclib's rules below let through, at a glance
    elif _trailers_only(call, channel):
        return None
    chunks = call.chunks
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not data:
        return None
    # grpclib raises an AssertionError and a NotImplementedError here, which no
    # caller expects: these are the server's faults, INTERNAL as gRPC has them.
    if len(data) < _MESSAGE_PREFIX:
        raise GRPCError(Status.INTERNAL, "the server sent an incomplete message")
    if data[0]:
        raise GRPCError(
            Status.INTERNAL, "the server sent a compressed message (compression is not supported)"
        )
    length = int.from_bytes(data[1:_MESSAGE_PREFIX], "big")
    if len(data) < _MESSAGE_PREFIX + length:
        raise GRPCError(Status.INTERNAL, "the server sent an incomplete message")
    return channel._codec.decode(data[_MESSAGE_PREFIX : _MESSAGE_PREFIX + length], response_type)


def _trailers_only(call: PendingCall, channel: Channel) -> bool:
    """Check the headers and trailers by grpclib's rules: raise, or tell a trailers-only answer."""
    if check_headers(call._headers, channel):
        return True
    if call.trailers is None:
        raise GRPCError(Status.UNKNOWN, "Missing grpc-status header")
    check_status(dict(call.trailers), channel)
    return False


def check_headers(sent: list[tuple[str, str]] | None, channel: Channel) -> bool:
    """Check an answer's headers by grpclib's rules: raise, or tell a trailers-only answer.

    Args:
        sent: the response headers, None if none arrived.
        channel: the channel (its codec and status details codec).

    Returns:
        Whether the headers are a trailers-only answer with status OK.

    Raises:
        GRPCError: what grpclib raises for these headers (HTTP status, content
            type, or the status of a trailers-only answer).
    """
    if sent is None:
        raise GRPCError(Status.UNKNOWN, "the stream ended without response headers")
    headers = dict(sent)
    http_status = headers.get(":status")
    if http_status is None:
        raise GRPCError(Status.UNKNOWN, "Missing :status header")
    if http_status != "200":
        grpc_status = _HTTP_TO_GRPC.get(http_status, Status.UNKNOWN)
        raise GRPCError(grpc_status, f"Received :status = {http_status!r}")
    content_type = headers.get("content-type")
    if content_type is None:
        raise GRPCError(Status.UNKNOWN, "Missing content-type header")
    base, _, subtype = content_type.partition("+")
    if base != GRPC_CONTENT_TYPE or (subtype or "proto") != channel._codec.__content_subtype__:
        raise GRPCError(Status.UNKNOWN, f"Invalid content-type: {content_type!r}")
    if "grpc-status" in headers:  # a trailers-only answer
        check_status(headers, channel)
        return True
    return False


def check_status(headers: dict[str, str], channel: Channel) -> None:
    """Raise the `GRPCError` grpclib raises for `grpc-status` (and its message, details), if not OK."""
    raw = headers.get("grpc-status")
    if raw is None:
        raise GRPCError(Status.UNKNOWN, "Missing grpc-status header")
    try:
        status = Status(int(raw))
    except ValueError:
        raise GRPCError(Status.UNKNOWN, f"Invalid grpc-status: {raw!r}") from None
    if status is Status.OK:
        return
    message = headers.get("grpc-message")
    if message is not None:
        message = decode_grpc_message(message)
    details = None
    details_codec = channel._status_details_codec
    if details_codec is not None:
        details_bin = headers.get(_STATUS_DETAILS_KEY)
        if details_bin is not None:
            # Details are extra: undecodable ones (bad base64 or protobuf) must not
            # hide the status and message, as grpclib's raw decoding error does.
            try:
                details = details_codec.decode(
                    status, message, decode_bin_value(details_bin.encode("ascii"))
                )
            except Exception:
                details = None
    raise GRPCError(status, message, details)
