"""The client's exceptions, and the one place where transport failures become them.

Two branches share the base `DispatchApiError`:

- one class per gRPC status (`NotFound`, `Unavailable`, ...): what the server,
  or the way to it, reported. `map_errors` turns every transport failure
  (grpclib's `GRPCError` and deadline, TLS and socket errors, a broken HTTP/2
  stream) into one of them, keeping the server's details and trailing metadata;
- `ClientError` and its subclasses (`ClientNotConnected`, `StreamOverflow`):
  what the client decided itself, with nothing sent and so no gRPC status.

Whether a shared stream re-opens after an error is the `retryable` attribute
of its class.
"""

from __future__ import annotations

import copy
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol

from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from ._auth import KEY_HEADER, NONCE_HEADER, SIG_HEADER, TS_HEADER

__all__ = [
    "Aborted",
    "AlreadyExists",
    "CallRecord",
    "Cancelled",
    "ClientError",
    "ClientNotConnected",
    "DataLoss",
    "DeadlineExceeded",
    "DispatchApiError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Metadata",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "StreamGap",
    "StreamOverflow",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownError",
    "copy_error",
    "error_for_status",
    "error_from_grpc",
    "map_errors",
]

Metadata = tuple[tuple[str, str | bytes], ...]
"""Trailing metadata as (name, value) pairs in the order received; a name may repeat."""

# Names of the client's own authentication metadata: never kept in an error,
# even if a server were to echo them back.
_SECRET_METADATA = frozenset({KEY_HEADER, TS_HEADER, NONCE_HEADER, SIG_HEADER})


class DispatchApiError(Exception):
    """Base of every error the client raises for a call (bad input aside, which is `ValueError`).

    `str(error)` reads `"STATUS: message (server URL)"`, or `"message (server
    URL)"` for a `ClientError`, which has no status.

    Attributes:
        status: the gRPC status of this class; None for a `ClientError`.
        retryable: whether a shared stream re-opens (and `watch()` re-lists)
            after this error instead of ending with it. Unary calls are never
            retried by the client; the attribute tells the caller what is
            worth retrying.
        message: the server's message, or the client's own text.
        server_url: the server URL, which never carries credentials.
        details: the server's decoded `grpc-status-details-bin` (a list of
            protobuf messages such as `google.rpc.BadRequest`) when it sent
            some and `googleapis-common-protos` is installed, else None.
        metadata: the trailing metadata of the failed call as (name, value)
            pairs; empty when there was none or the call never got an answer.
            The client's own authentication metadata is never kept here.
    """

    status: ClassVar[Status | None] = Status.UNKNOWN
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        server_url: str | None = None,
        details: Any = None,
        metadata: Metadata = (),
    ) -> None:
        """Build the error.

        Args:
            message: what went wrong, as the server or the client put it.
            server_url: the server the call went to (without credentials).
            details: the decoded status details, if any (see the class docs).
            metadata: trailing metadata pairs; authentication names are dropped.
        """
        self.message = message
        self.server_url = server_url
        self.details = details
        self.metadata: Metadata = tuple(
            (name, value) for name, value in metadata if name.lower() not in _SECRET_METADATA
        )
        where = f" (server {server_url})" if server_url else ""
        prefix = f"{self.status.name}: " if self.status is not None else ""
        super().__init__(f"{prefix}{message}{where}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, server_url={self.server_url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the parts, not from the formatted text in `args` (which
        # would be formatted again), so copy.copy and pickle keep every field.
        return (_rebuild, (type(self), self.message, self.server_url), self.__dict__.copy())


def _rebuild(cls: type[DispatchApiError], message: str, server_url: str | None) -> DispatchApiError:
    error = cls.__new__(cls)
    DispatchApiError.__init__(error, message, server_url=server_url)
    return error


class Cancelled(DispatchApiError):
    """The call was cancelled (by the server or on the way); a stream re-opens."""

    status = Status.CANCELLED
    retryable = True


class UnknownError(DispatchApiError):
    """The server reported an unknown error, or answered without the expected content."""

    status = Status.UNKNOWN
    retryable = True


class InvalidArgument(DispatchApiError, ValueError):
    """The server rejected a value of the request (also a `ValueError`)."""

    status = Status.INVALID_ARGUMENT


class DeadlineExceeded(DispatchApiError):
    """The call, or opening a stream, did not finish within `call_timeout` (a stream has no deadline)."""

    status = Status.DEADLINE_EXCEEDED
    retryable = True


class NotFound(DispatchApiError):
    """The dispatch (or microgrid) does not exist."""

    status = Status.NOT_FOUND


class AlreadyExists(DispatchApiError):
    """The entity to create exists already."""

    status = Status.ALREADY_EXISTS


class PermissionDenied(DispatchApiError):
    """The API key may not do this."""

    status = Status.PERMISSION_DENIED


class ResourceExhausted(DispatchApiError):
    """A server quota or buffer ran out (e.g. it dropped a stream that fell behind)."""

    status = Status.RESOURCE_EXHAUSTED
    retryable = True


class FailedPrecondition(DispatchApiError):
    """The server is not in a state where the call can run."""

    status = Status.FAILED_PRECONDITION


class Aborted(DispatchApiError):
    """The call was aborted, typically by a concurrency conflict."""

    status = Status.ABORTED
    retryable = True


class OutOfRange(DispatchApiError):
    """A value was past the valid range."""

    status = Status.OUT_OF_RANGE


class Unimplemented(DispatchApiError):
    """The server does not implement this call."""

    status = Status.UNIMPLEMENTED


class Internal(DispatchApiError):
    """The server hit an internal error."""

    status = Status.INTERNAL
    retryable = True


class Unavailable(DispatchApiError):
    """The server cannot be reached (refused, DNS, TLS handshake, restart, broken connection)."""

    status = Status.UNAVAILABLE
    retryable = True


class DataLoss(DispatchApiError):
    """Unrecoverable data loss or corruption."""

    status = Status.DATA_LOSS


class Unauthenticated(DispatchApiError):
    """The API key (or request signature) is missing or not accepted."""

    status = Status.UNAUTHENTICATED


class ClientError(DispatchApiError):
    """An error the client raises itself, before or without asking the server.

    It has no gRPC status (`status` is None) and is never retried.
    """

    status = None

    def __init__(self, message: str, *, server_url: str | None = None) -> None:
        """Build the error.

        Args:
            message: what went wrong.
            server_url: the client's server URL (without credentials).
        """
        super().__init__(message, server_url=server_url)


class ClientNotConnected(ClientError):
    """The client is not connected (call `connect()` first) or was disconnected mid-call."""


class StreamOverflow(ClientError):
    """A stream consumer fell behind and its bounded buffer overflowed."""


class StreamGap(ClientError):
    """The shared stream broke and a `stream(on_gap="raise")` consumer may have missed changes.

    Raised after the events received before the gap. Subscribe again to go
    on, and list to learn what changed meanwhile; the default,
    `on_gap="catch_up"`, does both for the consumer.
    """


# The one table from status to exception type.
_BY_STATUS: dict[Status, type[DispatchApiError]] = {
    cls.status: cls
    for cls in (
        Cancelled,
        UnknownError,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
    if cls.status is not None
}


def error_for_status(status: Status) -> type[DispatchApiError]:
    """Return the exception class for a gRPC status.

    Args:
        status: a grpclib status; `OK` has no error class.

    Returns:
        The class whose `status` it is; `UnknownError` for `OK` or an unknown value.
    """
    return _BY_STATUS.get(status, UnknownError)


def error_from_grpc(
    error: GRPCError, *, server_url: str | None = None, metadata: Metadata = ()
) -> DispatchApiError:
    """Turn a grpclib `GRPCError` into the matching typed exception.

    Args:
        error: the error grpclib raised.
        server_url: the server the call went to.
        metadata: the call's trailing metadata, if known.

    Returns:
        An instance of `error_for_status(error.status)` with the server's
        message (or the status name when it sent none) and details.
    """
    cls = error_for_status(error.status)
    return cls(
        error.message or error.status.name.lower(),
        server_url=server_url,
        details=error.details,
        metadata=metadata,
    )


class _HasTrailers(Protocol):
    @property
    def trailing_metadata(self) -> Any: ...


class CallRecord:
    """What `map_errors` yields: the call whose trailing metadata a typed error should carry.

    Attributes:
        stream: set it to the grpclib client stream of the call once opened;
            grpclib stores the trailers on the stream before it raises.
    """

    __slots__ = ("stream",)

    def __init__(self) -> None:
        """Start with no stream."""
        self.stream: _HasTrailers | None = None

    def trailing_metadata(self) -> Metadata:
        """Return the stream's trailing metadata as pairs (empty if none arrived).

        Returns:
            (name, value) pairs; values of `-bin` names are bytes.
        """
        received = None if self.stream is None else self.stream.trailing_metadata
        if received is None:
            return ()
        return tuple((str(name), value) for name, value in received.items())


def _typed(exc: BaseException, server_url: str | None, call: CallRecord) -> DispatchApiError | None:
    if isinstance(exc, GRPCError):
        return error_from_grpc(exc, server_url=server_url, metadata=call.trailing_metadata())
    # grpclib signals its own deadline with a bare TimeoutError; an OS-level
    # connect timeout carries an errno and is an unreachable server instead.
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return DeadlineExceeded(
            "the call did not finish within its deadline", server_url=server_url
        )
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return Unavailable(_tls_failure(exc), server_url=server_url)
    if isinstance(exc, ConnectionRefusedError):
        return Unavailable("connection refused", server_url=server_url)
    if isinstance(exc, OSError):  # ConnectionError included
        return Unavailable(f"cannot reach the server: {exc}", server_url=server_url)
    if isinstance(exc, StreamTerminatedError | ProtocolError):
        return Unavailable(f"connection to the server broke: {exc}", server_url=server_url)
    return None


# OpenSSL's reasons when the peer's first bytes are no TLS record at all:
# the client spoke TLS to a server that does not.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"})


def _tls_failure(exc: ssl.SSLError | ssl.CertificateError) -> str:
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None) in _NOT_TLS:
        return (
            f"TLS handshake failed: the server does not speak TLS ({exc.reason});"
            " for a plaintext server (e.g. a local reference server) add ?ssl=false to the URL"
        )
    return f"TLS handshake failed: {exc}"


@contextmanager
def map_errors(server_url: str | None) -> Iterator[CallRecord]:
    """Turn a transport failure raised inside the block into its typed error.

    ```python
    with map_errors(client.server_url) as call:
        async with channel.request(...) as stream:
            call.stream = stream  # optional: lets errors carry the trailers
            ...
    ```

    A `DispatchApiError` and every exception that is not a transport failure
    pass through unchanged; so do `BaseException`s such as cancellation.

    Args:
        server_url: the server the call goes to, put on the errors.

    Yields:
        A `CallRecord`; setting its `stream` is optional.

    Raises:
        DispatchApiError: the typed error (a status subclass) for a
            `GRPCError` (by status, with its message, details and the
            stream's trailing metadata), grpclib's own deadline
            (`DeadlineExceeded`), a TLS, socket or connection error or a
            broken HTTP/2 stream (`Unavailable`); raised `from` the original.
    """
    call = CallRecord()
    try:
        yield call
    except DispatchApiError:
        raise
    except Exception as exc:
        typed = _typed(exc, server_url, call)
        if typed is None:
            raise
        raise typed from exc


def copy_error(error: BaseException) -> BaseException:
    """Return a fresh instance of `error` for one more consumer.

    One exception instance raised in many tasks gets one traceback tangled
    from all of them; each consumer raises its own copy instead.

    Args:
        error: the error that ended a shared stream.

    Returns:
        A new instance of the same class with the same fields (for a
        `DispatchApiError`: status, message, server URL, details, metadata)
        and `__cause__` set to `error`; `error` itself if it cannot be copied.
    """
    try:
        fresh = copy.copy(error)
    except Exception:
        return error
    if fresh is error:
        return error
    fresh.__cause__ = error
    return fresh
