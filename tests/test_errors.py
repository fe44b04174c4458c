"""The one mapping from transport failures to typed errors, and the error classes themselves."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import errno
import pickle
import ssl
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import pytest
from google.rpc.error_details_pb2 import BadRequest
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.server import Server, Stream
from hypothesis import given
from hypothesis import strategies as st

import dispatch_client.errors as errors
from dispatch_client import (
    Client,
    ClientError,
    ClientNotConnected,
    DeadlineExceeded,
    DispatchApiError,
    NotFound,
    PermissionDenied,
    StreamOverflow,
    Unavailable,
    UnknownError,
)
from dispatch_client.errors import copy_error, error_for_status, map_errors
from dispatch_client.testing import running_server
from dispatch_client.wire import (
    GetMicrogridDispatchRequest,
    GetMicrogridDispatchResponse,
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
)

URL = "grpc://h:1"
FAILING_STATUSES = [s for s in Status if s is not Status.OK]
RETRYABLE = {
    Status.UNAVAILABLE,
    Status.DEADLINE_EXCEEDED,
    Status.ABORTED,
    Status.INTERNAL,
    Status.UNKNOWN,
    Status.RESOURCE_EXHAUSTED,
    Status.CANCELLED,
}


def mapped(exc: BaseException) -> BaseException:
    """What leaves `map_errors` when `exc` is raised inside it."""
    try:
        with map_errors(URL):
            raise exc
    except BaseException as out:
        return out
    raise AssertionError("not reached")


# -- the mapping -------------------------------------------------------------------


@pytest.mark.parametrize("status", FAILING_STATUSES, ids=lambda s: s.name)
def test_every_status_maps_to_its_class_keeping_message_details_and_cause(status: Status) -> None:
    details = [BadRequest(field_violations=[BadRequest.FieldViolation(field="x")])]
    original = GRPCError(status, "what the server said", details)
    error = mapped(original)
    assert type(error) is error_for_status(status)
    assert isinstance(error, DispatchApiError)
    assert error.status is status
    assert error.message == "what the server said"
    assert error.server_url == URL
    assert error.details is details
    assert error.metadata == ()
    assert error.__cause__ is original
    assert str(error) == f"{status.name}: what the server said (server {URL})"
    assert type(error).retryable is (status in RETRYABLE)


def test_status_classes_are_one_per_status() -> None:
    classes = {error_for_status(s) for s in FAILING_STATUSES}
    assert len(classes) == len(FAILING_STATUSES)
    assert error_for_status(Status.OK) is UnknownError


def test_a_status_without_message_reads_its_name() -> None:
    error = mapped(GRPCError(Status.NOT_FOUND))
    assert isinstance(error, NotFound)
    assert error.message == "not_found"


@pytest.mark.parametrize(
    ("raised", "expected", "text"),
    [
        pytest.param(TimeoutError(), DeadlineExceeded, "deadline", id="grpclib-deadline"),
        pytest.param(
            TimeoutError(errno.ETIMEDOUT, "timed out"), Unavailable, "cannot reach", id="os-timeout"
        ),
        pytest.param(
            ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
            Unavailable,
            "connection refused",
            id="refused",
        ),
        pytest.param(ConnectionResetError("reset"), Unavailable, "cannot reach", id="reset"),
        pytest.param(OSError("no route"), Unavailable, "cannot reach", id="oserror"),
        pytest.param(ssl.SSLError(1, "bad cert"), Unavailable, "TLS handshake", id="ssl"),
        pytest.param(
            ssl.CertificateError("hostname mismatch"), Unavailable, "TLS handshake", id="cert"
        ),
        pytest.param(StreamTerminatedError("lost"), Unavailable, "broke", id="rst-stream"),
        pytest.param(ProtocolError("bad frame"), Unavailable, "broke", id="protocol"),
    ],
)
def test_transport_failures_map_to_typed_errors(
    raised: Exception, expected: type[DispatchApiError], text: str
) -> None:
    error = mapped(raised)
    assert type(error) is expected
    assert text in str(error)
    assert error.server_url == URL  # type: ignore[attr-defined]
    assert error.__cause__ is raised


@pytest.mark.parametrize(
    "raised",
    [KeyError("x"), ValueError("bad input"), NotFound("gone", server_url="grpc://other")],
    ids=["KeyError", "ValueError", "typed"],
)
def test_other_exceptions_pass_through_unchanged(raised: Exception) -> None:
    out = mapped(raised)
    assert out is raised
    assert out.__cause__ is None


def test_cancellation_passes_through() -> None:
    cancelled = asyncio.CancelledError()
    assert mapped(cancelled) is cancelled


def test_trailing_metadata_never_keeps_auth_names() -> None:
    error = NotFound(
        "gone",
        metadata=(
            ("retry-after", "3"),
            ("key", "SECRET"),
            ("Sig", "s"),
            ("ts", "1"),
            ("nonce", "n"),
        ),
    )
    assert error.metadata == (("retry-after", "3"),)
    assert "SECRET" not in repr(error) + str(error)


# -- errors the client raises itself -----------------------------------------------


@pytest.mark.parametrize("cls", [ClientError, ClientNotConnected, StreamOverflow])
def test_client_errors_have_no_grpc_status(cls: type[ClientError]) -> None:
    error = cls("the client is not connected; call connect() first", server_url=URL)
    assert isinstance(error, DispatchApiError)
    assert error.status is None
    assert cls.retryable is False
    assert str(error) == f"the client is not connected; call connect() first (server {URL})"
    assert not any(s.name in str(error) for s in Status)
    assert error.details is None
    assert error.metadata == ()


@pytest.mark.anyio
async def test_client_not_connected_names_no_status() -> None:
    client = Client(URL.replace("h:1", "127.0.0.1:1") + "?ssl=false", connect=False)
    with pytest.raises(ClientNotConnected) as info:
        await client.get(1, 1)
    assert "FAILED_PRECONDITION" not in str(info.value)
    assert info.value.status is None


def test_retryable_is_a_documented_class_attribute() -> None:
    retryable = {
        cls.__name__
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, DispatchApiError) and cls.retryable
    }
    assert retryable == {error_for_status(s).__name__ for s in RETRYABLE}
    assert "retryable" in (DispatchApiError.__doc__ or "")


# -- copies for many consumers -----------------------------------------------------


def test_copy_error_keeps_every_field_and_points_at_the_original() -> None:
    details = [BadRequest()]
    original = PermissionDenied(
        "no", server_url=URL, details=details, metadata=(("retry-after", "3"),)
    )
    fresh = copy_error(original)
    assert fresh is not original
    assert type(fresh) is PermissionDenied
    assert isinstance(fresh, PermissionDenied)
    assert (fresh.status, fresh.message, fresh.server_url) == (Status.PERMISSION_DENIED, "no", URL)
    assert fresh.details is details
    assert fresh.metadata == (("retry-after", "3"),)
    assert str(fresh) == str(original)
    assert fresh.__cause__ is original
    assert fresh.__traceback__ is None


def test_copy_error_of_a_client_error_and_a_plain_exception() -> None:
    overflow = StreamOverflow("fell behind", server_url=URL)
    fresh = copy_error(overflow)
    assert type(fresh) is StreamOverflow and str(fresh) == str(overflow)
    plain = RuntimeError("boom")
    fresh_plain = copy_error(plain)
    assert type(fresh_plain) is RuntimeError and fresh_plain.args == ("boom",)
    assert fresh_plain.__cause__ is plain


def test_copy_error_returns_the_original_when_it_cannot_copy() -> None:
    class Stubborn(Exception):
        def __reduce_ex__(self, protocol: Any) -> Any:
            raise TypeError("no copies")

    stubborn = Stubborn()
    assert copy_error(stubborn) is stubborn


@given(
    status=st.sampled_from(FAILING_STATUSES),
    message=st.text(),
    url=st.none() | st.just(URL),
    metadata=st.lists(st.tuples(st.sampled_from(["a", "b-bin", "key"]), st.text())),
)
def test_copies_and_pickles_equal_the_original(
    status: Status, message: str, url: str | None, metadata: list[tuple[str, str]]
) -> None:
    original = error_for_status(status)(message, server_url=url, metadata=tuple(metadata))
    for other in (copy_error(original), copy.copy(original), pickle.loads(pickle.dumps(original))):
        assert type(other) is type(original)
        assert str(other) == str(original)
        assert repr(other) == repr(original)
        assert other.metadata == original.metadata  # type: ignore[attr-defined]


# -- end to end: a real server sending details and trailing metadata ---------------

TRAILERS = [("retry-after", "3"), ("key", "echoed-secret")]
DETAILS = [BadRequest(field_violations=[BadRequest.FieldViolation(field="dispatch_id")])]


class _Refusing:
    """A raw grpclib service that fails Get and Stream with details and trailing metadata."""

    def __init__(self, *, initial_metadata_first: bool) -> None:
        self.initial_metadata_first = initial_metadata_first

    async def _fail(self, stream: Stream[Any, Any], status: Status) -> None:
        await stream.recv_message()
        if self.initial_metadata_first:
            await stream.send_initial_metadata()
        await stream.send_trailing_metadata(
            status=status, status_message="refused", status_details=DETAILS, metadata=TRAILERS
        )

    async def get(self, stream: Stream[Any, Any]) -> None:
        await self._fail(stream, Status.NOT_FOUND)

    async def stream(self, stream: Stream[Any, Any]) -> None:
        await self._fail(stream, Status.PERMISSION_DENIED)

    async def list(self, stream: Stream[Any, Any]) -> None:
        # A shared stream lists once before it opens (its catch-up baseline).
        await stream.recv_message()
        await stream.send_message(ListMicrogridDispatchesResponse())

    def __mapping__(self) -> dict[str, Handler]:
        prefix = "/frequenz.api.dispatch.v1.MicrogridDispatchService/"
        return {
            prefix + "GetMicrogridDispatch": Handler(
                self.get,
                Cardinality.UNARY_UNARY,
                GetMicrogridDispatchRequest,
                GetMicrogridDispatchResponse,
            ),
            prefix + "ListMicrogridDispatches": Handler(
                self.list,
                Cardinality.UNARY_UNARY,
                ListMicrogridDispatchesRequest,
                ListMicrogridDispatchesResponse,
            ),
            prefix + "StreamMicrogridDispatches": Handler(
                self.stream,
                Cardinality.UNARY_STREAM,
                StreamMicrogridDispatchesRequest,
                StreamMicrogridDispatchesResponse,
            ),
        }


@asynccontextmanager
async def refusing_server(*, initial_metadata_first: bool) -> AsyncIterator[str]:
    server = Server(
        [_Refusing(initial_metadata_first=initial_metadata_first)],
        status_details_codec=ProtoStatusDetailsCodec(),
    )
    await server.start("127.0.0.1", 0)
    try:
        port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"grpc://127.0.0.1:{port}?ssl=false"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.anyio
@pytest.mark.parametrize("initial_metadata_first", [False, True], ids=["trailers-only", "full"])
async def test_unary_errors_carry_details_and_trailing_metadata(
    initial_metadata_first: bool,
) -> None:
    async with (
        refusing_server(initial_metadata_first=initial_metadata_first) as url,
        Client(url, auth_key="echoed-secret") as client,
    ):
        with pytest.raises(NotFound) as info:
            await client.get(1, 2)
    error = info.value
    assert error.message == "refused"
    assert error.metadata == (("retry-after", "3"),)
    assert [d.field_violations[0].field for d in error.details] == ["dispatch_id"]
    assert isinstance(error.__cause__, GRPCError)
    assert "echoed-secret" not in repr(error) + str(error) + repr(error.metadata)


@pytest.mark.anyio
async def test_stream_errors_carry_trailing_metadata_to_every_consumer() -> None:
    async with (
        refusing_server(initial_metadata_first=True) as url,
        Client(url) as client,
    ):
        with anyio.fail_after(10), pytest.raises(PermissionDenied) as info:
            async with aclosing(client.stream(1)) as events:
                async for _ in events:
                    pass
    assert info.value.metadata == (("retry-after", "3"),)
    assert info.value.details is not None


@pytest.mark.anyio
async def test_reference_server_errors_keep_their_cause() -> None:
    async with running_server() as server, Client(server.url) as client:
        with pytest.raises(NotFound) as info:
            await client.get(1, 12345)
        assert isinstance(info.value.__cause__, GRPCError)
        assert info.value.server_url == server.url
        made = await client.create(1, "T", "NOW", dt.timedelta(minutes=1), [1])
        assert made.metadata is not None
