"""Exception tree of the client: one base, one subclass per gRPC status."""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ClientNotConnected",
    "DataLoss",
    "DeadlineExceeded",
    "DispatchApiError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "StreamOverflow",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownError",
    "error_from_grpc",
]


class DispatchApiError(Exception):
    """An error reported by (or on the way to) the Dispatch API.

    Carries the gRPC `status`, the server's `message` and the `server_url`
    (without credentials: URLs never carry the API key).
    """

    status: Status = Status.UNKNOWN

    def __init__(self, message: str, *, server_url: str | None = None) -> None:
        self.message = message
        self.server_url = server_url
        where = f" (server {server_url})" if server_url else ""
        super().__init__(f"{self.status.name}: {message}{where}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, server_url={self.server_url!r})"


class Cancelled(DispatchApiError):
    """The call was cancelled."""

    status = Status.CANCELLED


class UnknownError(DispatchApiError):
    """The server reported an unknown error."""

    status = Status.UNKNOWN


class InvalidArgument(DispatchApiError, ValueError):
    """The server rejected a value of the request."""

    status = Status.INVALID_ARGUMENT


class DeadlineExceeded(DispatchApiError):
    """The call did not finish within its deadline."""

    status = Status.DEADLINE_EXCEEDED


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
    """A quota or buffer ran out (e.g. a stream that fell behind was dropped)."""

    status = Status.RESOURCE_EXHAUSTED


class FailedPrecondition(DispatchApiError):
    """The system is not in a state where the call can run."""

    status = Status.FAILED_PRECONDITION


class Aborted(DispatchApiError):
    """The call was aborted, typically by a concurrency conflict."""

    status = Status.ABORTED


class OutOfRange(DispatchApiError):
    """A value was past the valid range."""

    status = Status.OUT_OF_RANGE


class Unimplemented(DispatchApiError):
    """The server does not implement this call."""

    status = Status.UNIMPLEMENTED


class Internal(DispatchApiError):
    """The server hit an internal error."""

    status = Status.INTERNAL


class Unavailable(DispatchApiError):
    """The server cannot be reached (refused, DNS, TLS handshake, restart)."""

    status = Status.UNAVAILABLE


class DataLoss(DispatchApiError):
    """Unrecoverable data loss or corruption."""

    status = Status.DATA_LOSS


class Unauthenticated(DispatchApiError):
    """The API key (or request signature) is missing or not accepted."""

    status = Status.UNAUTHENTICATED


class ClientNotConnected(DispatchApiError):
    """The client has no open channel; call `connect()` first."""

    status = Status.FAILED_PRECONDITION


class StreamOverflow(DispatchApiError):
    """A stream consumer fell behind and its bounded buffer overflowed."""

    status = Status.RESOURCE_EXHAUSTED


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
}


def error_for_status(status: Status) -> type[DispatchApiError]:
    """Return the exception class for a gRPC status."""
    return _BY_STATUS.get(status, UnknownError)


def error_from_grpc(error: GRPCError, *, server_url: str | None = None) -> DispatchApiError:
    """Turn a grpclib `GRPCError` into the matching typed exception."""
    cls = error_for_status(error.status)
    return cls(error.message or error.status.name.lower(), server_url=server_url)
