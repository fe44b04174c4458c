"""Authentication metadata, request signing, and keeping secrets out of sight."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import time
import traceback
from collections.abc import AsyncIterator

import pytest
from grpclib.events import SendRequest, listen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_client import (
    Client,
    DispatchApiError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from dispatch_client.testing import RunningServer, running_server

pytestmark = pytest.mark.anyio

KEY = "KEY-7f3a9c1e-do-not-leak"
SECRET = "SECRET-b41d22e8-do-not-leak"


@pytest.fixture
async def signed_server() -> AsyncIterator[RunningServer]:
    async with running_server(keys={KEY}, sign_secret=SECRET) as srv:
        yield srv


def independent_signature(secret: str, key: str, ts: str, nonce: str, method: str) -> str:
    """The scheme from the spec, written out again without the library's helper."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
    for part in (key, ts, nonce, method):
        mac.update(part.encode("utf-8"))
    return base64.urlsafe_b64encode(mac.digest()).decode("ascii").rstrip("=")


async def test_signed_calls_are_accepted(signed_server: RunningServer) -> None:
    async with Client(signed_server.url, auth_key=KEY, sign_secret=SECRET) as client:
        created = await client.create(1, "X", "NOW", None, [1])
        assert created.metadata is not None
        assert await client.get(1, created.metadata.dispatch_id) == created
        assert len([d async for d in client.dispatches(1)]) == 1


async def test_metadata_on_the_wire_matches_the_spec(signed_server: RunningServer) -> None:
    seen: list[tuple[str, dict[str, str]]] = []
    async with Client(signed_server.url, key=KEY, sign_secret=SECRET) as client:

        async def record(event: SendRequest) -> None:
            seen.append((event.method_name, dict(event.metadata)))

        listen(client.channel, SendRequest, record)
        await client.create(1, "X", "NOW", None, [1])
        async for _ in client.list(1):
            pass
        with pytest.raises(NotFound):
            await client.delete(1, 999)
    assert [path.rsplit("/", 1)[-1] for path, _ in seen] == [
        "CreateMicrogridDispatch",
        "ListMicrogridDispatches",
        "DeleteMicrogridDispatch",
    ]
    nonces = set()
    for path, metadata in seen:
        assert metadata["key"] == KEY
        assert abs(int(metadata["ts"]) - time.time()) < 5
        assert len(base64.urlsafe_b64decode(metadata["nonce"])) == 16
        nonces.add(metadata["nonce"])
        method = path.rsplit("/", 1)[-1]
        expected = independent_signature(
            SECRET, metadata["key"], metadata["ts"], metadata["nonce"], method
        )
        assert metadata["sig"] == expected
        assert "=" not in metadata["sig"]
    assert len(nonces) == len(seen)


async def test_unsigned_client_sends_only_the_key(signed_server: RunningServer) -> None:
    seen: list[dict[str, str]] = []
    async with Client(signed_server.url, auth_key=KEY) as client:

        async def record(event: SendRequest) -> None:
            seen.append(dict(event.metadata))

        listen(client.channel, SendRequest, record)
        with pytest.raises(Unauthenticated):
            await client.get(1, 1)
    assert seen == [{"key": KEY}]


@pytest.mark.parametrize(
    ("key", "secret"),
    [(KEY, "wrong-secret"), ("wrong-key", SECRET), (None, None), (KEY, None)],
)
async def test_bad_credentials_are_unauthenticated(
    signed_server: RunningServer, key: str | None, secret: str | None
) -> None:
    async with Client(signed_server.url, auth_key=key, sign_secret=secret) as client:
        with pytest.raises(Unauthenticated) as info:
            await client.get(1, 1)
    assert info.value.server_url == signed_server.url


def _all_text(error: BaseException) -> str:
    parts = ["".join(traceback.format_exception(error)), repr(error)]
    cause: BaseException | None = error
    while cause is not None:
        parts += [str(cause), repr(cause), repr(vars(cause)) if hasattr(cause, "__dict__") else ""]
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


async def test_secrets_never_appear_in_errors_reprs_or_logs(
    signed_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    wrong = Client(signed_server.url, auth_key=KEY, sign_secret="not-" + SECRET)
    right = Client(signed_server.url, auth_key=KEY, sign_secret=SECRET)
    async with wrong, right:
        for call in (
            wrong.get(1, 1),
            right.get(1, 1),
            right.create(1, "X", dt.datetime(2000, 1, 1, tzinfo=dt.UTC), None, [1]),
            right.update(1, 1, {"type": "Y"}),
        ):
            with pytest.raises((DispatchApiError, ValueError)) as info:
                await call
            errors.append(info.value)
        texts = [repr(wrong), str(right), repr(vars(right))]
    async with running_server() as gone:
        url = gone.url
    async with Client(url, auth_key=KEY, sign_secret=SECRET) as offline:
        with pytest.raises(Unavailable) as info:
            await offline.get(1, 1)
        errors.append(info.value)
    for text in [*texts, *map(_all_text, errors), caplog.text]:
        assert KEY not in text
        assert SECRET not in text


@pytest.mark.parametrize(
    "tail",
    ["a\nb", "\r\nx-evil: 1", "ключ", "\x00", "é", "\x7f", "tab\there"],
)
async def test_a_key_no_header_can_carry_is_refused_without_showing_it(
    dispatch_server: RunningServer, tail: str
) -> None:
    # grpclib refused such a key at the first call with "Invalid metadata value:
    # '<the key>'": the secret in an error message, and only once sending.
    key = "SECRET-KEY-" + tail
    with pytest.raises(ValueError, match="auth_key has a character") as error:
        Client(dispatch_server.url, auth_key=key, connect=False)
    rendered = "".join(traceback.format_exception(error.value))
    assert "SECRET-KEY" not in rendered and tail not in rendered.replace("auth_key", "")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tail=st.text(min_size=1, max_size=12))
async def test_no_key_appears_in_any_error(dispatch_server: RunningServer, tail: str) -> None:
    key = "SECRET-KEY-" + tail
    try:
        async with Client(dispatch_server.url, auth_key=key) as client:
            await client.get(1, 1)
    except NotFound:
        return
    except Exception as error:  # every failure, whatever its type
        rendered = "".join(traceback.format_exception(error))
        assert "SECRET-KEY" not in rendered, rendered
