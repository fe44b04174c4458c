"""Reference server: API keys, request signatures, replay protection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from multidict import MultiDict
from test_server_support import connect, expect_error, make_data

from dispatch_client._auth import auth_metadata, signature
from dispatch_client.server import RequestAuthenticator
from dispatch_client.testing import running_server
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    MicrogridDispatchServiceStub,
    StreamMicrogridDispatchesRequest,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

KEY = "key-that-must-not-leak-1234"
SECRET = "secret-that-must-not-leak-5678"
LIST = "/frequenz.api.dispatch.v1.MicrogridDispatchService/ListMicrogridDispatches"
CREATE = "/frequenz.api.dispatch.v1.MicrogridDispatchService/CreateMicrogridDispatch"
STREAM = "/frequenz.api.dispatch.v1.MicrogridDispatchService/StreamMicrogridDispatches"


async def _list(stub: MicrogridDispatchServiceStub, metadata: list[tuple[str, str]] | None) -> int:
    response = await stub.list_microgrid_dispatches(
        ListMicrogridDispatchesRequest(microgrid_id=1), metadata=metadata
    )
    assert response.pagination_info is not None
    return response.pagination_info.total_items


def _no_secrets_in(text: str) -> None:
    assert KEY not in text and SECRET not in text


async def test_keys_are_checked(caplog: pytest.LogCaptureFixture) -> None:
    # Our loggers and grpclib's; hpack's DEBUG output dumps every header by design.
    caplog.set_level(logging.DEBUG, logger="dispatch_client")
    caplog.set_level(logging.DEBUG, logger="grpclib")
    async with running_server(keys=[KEY, "other"]) as server, connect(server) as stub:
        assert await _list(stub, [("key", KEY)]) == 0
        assert await _list(stub, [("key", "other")]) == 0
        with expect_error(Status.UNAUTHENTICATED, "missing API key", "'key'"):
            await _list(stub, None)
        with expect_error(Status.UNAUTHENTICATED, "not accepted") as info:
            await _list(stub, [("key", KEY + "x")])
        _no_secrets_in(str(info.value))
        # Writes and streams are guarded the same way, and nothing is stored.
        with expect_error(Status.UNAUTHENTICATED):
            await stub.create_microgrid_dispatch(
                CreateMicrogridDispatchRequest(microgrid_id=1, dispatch_data=make_data()),
                metadata=[("key", "wrong")],
            )
        with expect_error(Status.UNAUTHENTICATED):
            async for _ in stub.stream_microgrid_dispatches(
                StreamMicrogridDispatchesRequest(microgrid_id=1), metadata=[("key", "wrong")]
            ):
                pass
        assert server.service.opened_stream_count() == 0
        assert await _list(stub, [("key", KEY)]) == 0
    _no_secrets_in(caplog.text)


async def test_signed_requests_are_accepted_for_every_rpc(caplog: pytest.LogCaptureFixture) -> None:
    # Our loggers and grpclib's; hpack's DEBUG output dumps every header by design.
    caplog.set_level(logging.DEBUG, logger="dispatch_client")
    caplog.set_level(logging.DEBUG, logger="grpclib")
    async with running_server(keys=[KEY], sign_secret=SECRET) as server, connect(server) as stub:
        created = await stub.create_microgrid_dispatch(
            CreateMicrogridDispatchRequest(microgrid_id=1, dispatch_data=make_data()),
            metadata=auth_metadata(KEY, SECRET, CREATE),
        )
        assert created.dispatch is not None
        assert await _list(stub, auth_metadata(KEY, SECRET, LIST)) == 1

        async def one_event() -> None:
            async for _ in stub.stream_microgrid_dispatches(
                StreamMicrogridDispatchesRequest(microgrid_id=1),
                metadata=auth_metadata(KEY, SECRET, STREAM),
            ):
                return

        async with anyio.create_task_group() as tg:
            tg.start_soon(one_event)
            with anyio.fail_after(5):
                await server.service.wait_for_streams(1, 1)
            await stub.create_microgrid_dispatch(
                CreateMicrogridDispatchRequest(microgrid_id=1, dispatch_data=make_data()),
                metadata=auth_metadata(KEY, SECRET, CREATE),
            )
    _no_secrets_in(caplog.text)


def _signed(
    *,
    key: str = KEY,
    secret: str = SECRET,
    method: str = "ListMicrogridDispatches",
    ts: int | None = None,
    nonce: str = "bm9uY2U",
) -> list[tuple[str, str]]:
    stamp = str(int(time.time()) if ts is None else ts)
    return [
        ("key", key),
        ("ts", stamp),
        ("nonce", nonce),
        ("sig", signature(secret, key, stamp, nonce, method)),
    ]


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        # Built when the test runs: a signature made at collection time goes
        # stale (ts outside the clock window) when the suite runs long.
        (lambda: [("key", KEY)], "not signed"),
        (lambda: [m for m in _signed() if m[0] != "nonce"], "'nonce'"),
        (lambda: [m for m in _signed() if m[0] != "ts"], "'ts'"),
        (lambda: _signed(secret="wrong secret"), "signature does not match"),
        (lambda: _signed(method="GetMicrogridDispatch"), "signature does not match"),
        (lambda: [("key", "other key"), *_signed()[1:]], "signature does not match"),
        (lambda: [*_signed()[:3], ("sig", "AAAA")], "signature does not match"),
        (lambda: _signed(ts=int(time.time()) - 3600), "away from the server's clock"),
        (lambda: _signed(ts=int(time.time()) + 3600), "away from the server's clock"),
        (lambda: [("key", KEY), ("ts", "soon"), ("nonce", "n"), ("sig", "s")], "unix seconds"),
    ],
)
async def test_bad_signatures_are_rejected(
    metadata: Callable[[], list[tuple[str, str]]], fragment: str
) -> None:
    async with running_server(sign_secret=SECRET) as server, connect(server) as stub:
        with expect_error(Status.UNAUTHENTICATED, fragment) as info:
            await _list(stub, metadata())
        _no_secrets_in(str(info.value))


async def test_replayed_nonce_is_rejected() -> None:
    async with running_server(sign_secret=SECRET) as server, connect(server) as stub:
        metadata = _signed(nonce="once")
        assert await _list(stub, metadata) == 0
        with expect_error(Status.UNAUTHENTICATED, "replay"):
            await _list(stub, metadata)
        assert await _list(stub, _signed(nonce="twice")) == 0


async def test_signature_without_key_list_accepts_any_signed_key() -> None:
    async with running_server(sign_secret=SECRET) as server, connect(server) as stub:
        assert await _list(stub, _signed(key="someone", nonce="a")) == 0


def test_nonce_memory_is_bounded_by_the_clock_window() -> None:
    now = 1_000_000.0
    checker = RequestAuthenticator(None, SECRET, clock_window_s=10, max_nonces=3, clock=lambda: now)

    def call(nonce: str) -> None:
        checker.check(MultiDict(_signed(ts=int(now), nonce=nonce)), "ListMicrogridDispatches")

    for nonce in "abc":
        call(nonce)
    with pytest.raises(GRPCError) as info:
        call("d")  # memory full: refuse rather than forget a nonce that is still valid
    assert info.value.status == Status.RESOURCE_EXHAUSTED
    with pytest.raises(GRPCError, match="replay"):
        call("a")
    now += 11  # the remembered nonces' timestamps have left the window
    call("d")
    call("a")  # forgotten: a fresh timestamp makes it a new request


def test_authenticator_repr_reveals_nothing() -> None:
    text = repr(RequestAuthenticator([KEY], SECRET))
    _no_secrets_in(text)
    assert "1 API key, signed requests" in text


def test_no_checks_when_nothing_is_configured() -> None:
    checker = RequestAuthenticator()
    assert not checker.enabled
    checker.check(MultiDict(), "ListMicrogridDispatches")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        # A str for keys was a set of one-character keys: "s" was accepted.
        ({"keys": "SECRETKEY"}, TypeError),
        ({"keys": ["ok", ""]}, ValueError),
        ({"keys": ["SECRET\nKEY"]}, ValueError),
        ({"keys": ["SECRETключ"]}, ValueError),
        ({"keys": [5]}, ValueError),
        # An empty secret silently turned signing off.
        ({"sign_secret": ""}, ValueError),
        ({"db": 5}, TypeError),
    ],
)
async def test_server_credentials_that_could_never_work_are_refused(
    options: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error) as raised:
        async with running_server(**options):  # type: ignore[arg-type]
            pass
    assert "SECRET" not in str(raised.value)
