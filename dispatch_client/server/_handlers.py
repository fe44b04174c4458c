"""The grpclib side of `DispatchService`'s handlers: raw request bytes in, encoded replies out.

Every handler receives its request undecoded (`_RawRequest`) and decodes it
itself (`_decoding`), so a bad request is INVALID_ARGUMENT, never UNKNOWN; a
list reply goes out pre-encoded (`_Encoded`); grpclib's log line for every
cancelled call is demoted to DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, cast

import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .decoding import decode_request

# The service's logger: these lines were always logged under its name.
_log = logging.getLogger(__package__ + ".service")

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Largest request message a call may announce (gRPC's usual default); larger is RESOURCE_EXHAUSTED.

The largest valid request (a list filter of 1000 ids and queries, a 50 KiB
payload) is far below it.
"""


def _invalid(message: str) -> NoReturn:
    raise GRPCError(Status.INVALID_ARGUMENT, message)


class _RawRequest:
    """A request's bytes as received: the codec hands them over undecoded."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> _RawRequest:
        """Wrap the bytes; the protobuf method grpclib's codec calls to decode."""
        return cls(data)


def _decoding(
    serve: Callable[[grpclib.server.Stream[Any, Any], Any], Awaitable[None]],
    request_type: type[Any],
) -> Callable[[grpclib.server.Stream[Any, Any]], Awaitable[None]]:
    """Wrap a handler taking `(stream, request)`: receive, decode and check the request first.

    This is the handlers' error boundary: a request that cannot be decoded,
    and any `ValueError`/`OverflowError` a handler lets escape (a check
    forgotten, never expected), answer INVALID_ARGUMENT instead of grpclib's
    UNKNOWN "Internal Server Error".
    """

    async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
        raw = await _receive_request(stream)
        if raw is None:
            _invalid(f"the call carries no {request_type.__name__}")
        try:
            request = decode_request(request_type, raw.data)
        except ValueError as error:
            _invalid(str(error))
        try:
            await serve(stream, request)
        except (ValueError, OverflowError) as error:
            _log.warning("%s answered INVALID_ARGUMENT late", request_type.__name__, exc_info=True)
            _invalid(str(error))

    return handle


async def _receive_request(stream: grpclib.server.Stream[Any, Any]) -> _RawRequest | None:
    """Grpclib's `Stream.recv_message`, refusing a badly framed message with a clear status.

    grpclib asserts that the call carries as many bytes as the message's
    5-byte prefix announces (UNKNOWN "Internal Server Error" when the call
    ends sooner) and waits for, and buffers, whatever length is announced,
    up to 4 GiB. Here the announced length is checked before anything more
    is read.

    Returns:
        The request's bytes, or None when the call ended without a message.

    Raises:
        GRPCError: INVALID_ARGUMENT when the call ends inside the prefix or the
            message, RESOURCE_EXHAUSTED for a message over `MAX_REQUEST_BYTES`,
            UNIMPLEMENTED for a compressed one.
    """
    inner = stream._stream
    try:
        prefix = await inner.recv_data(5)
    except AssertionError:  # grpclib's signal that the call ended before 5 bytes
        _invalid("the call ends inside a message's 5-byte prefix (flag and length)")
    if not prefix:
        return None
    if prefix[0]:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    length = int.from_bytes(prefix[1:5], "big")
    if length > MAX_REQUEST_BYTES:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"the request message announces {length} bytes; at most {MAX_REQUEST_BYTES} are accepted",
        )
    try:
        data = await inner.recv_data(length)
    except AssertionError:  # as above: fewer bytes than announced
        data = b""
    if len(data) != length:
        _invalid(f"the call ends before the {length} bytes its message announces")
    # What grpclib's recv_message does after decoding: events and counters.
    (raw,) = await stream._dispatch.recv_message(_RawRequest(data))
    stream._messages_received += 1
    inner.connection.messages_received += 1
    inner.connection.last_message_received = time.monotonic()
    return cast(_RawRequest, raw)


def _unary(
    method: Callable[[Any], Awaitable[Any]],
) -> Callable[[grpclib.server.Stream[Any, Any], Any], Awaitable[None]]:
    async def serve(stream: grpclib.server.Stream[Any, Any], request: Any) -> None:
        await stream.send_message(await method(request))

    return serve


class _DemoteCancellations(logging.Filter):
    """grpclib logs every cancelled call (a client leaving a stream) at INFO: make it DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Request was cancelled: %s" and record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_DEMOTER = _DemoteCancellations()


def _quiet_cancellations() -> None:
    grpclib_server_log = logging.getLogger("grpclib.server")
    if _DEMOTER not in grpclib_server_log.filters:
        grpclib_server_log.addFilter(_DEMOTER)


class _Encoded:
    """A response already encoded: grpclib's protobuf codec sends `SerializeToString()`."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def SerializeToString(self) -> bytes:
        """Return the encoded response; the protobuf method grpclib's codec calls."""
        return self._data
