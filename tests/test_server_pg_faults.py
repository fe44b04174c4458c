"""The PostgreSQL store when its database misbehaves, and what its errors and logs may show.

Kinds of fault, each with the input that found it as a named case:

- The change feed must never stop while the replica still says SERVING:
  a foreign NOTIFY on the store's channel (payload "hello" killed the listener),
  a LISTEN connection that hangs (its backend stopped: a hung database, or a
  connection a firewall dropped silently), a read-back of notified changes that
  fails (the event table renamed away) -- each either keeps the feed going or
  ends the streams and reports the store unhealthy, never silence.
- A database URL's password appears in no error, log line or repr, whichever
  way the URL carries it (user info, `password=` parameter, percent-encoded,
  quoted back by libpq in a parse error).
- Startup failures are one clear OSError (the server exits 1 with one line):
  a role that may not create the schema's tables.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from conftest import require_postgresql_driver
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_server_auth import SECRET, _signed
from test_server_stream import receive, subscribed
from test_server_support import connect, create, make_data

from dispatch_client.server import DispatchServer, DispatchService
from dispatch_client.server.stores import check_db, db_secrets, describe_db, redact
from dispatch_client.wire import CreateMicrogridDispatchRequest, ListMicrogridDispatchesRequest

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

require_postgresql_driver()

import psycopg  # noqa: E402

from dispatch_client.server import pg_store  # noqa: E402


@asynccontextmanager
async def serving(store: Any) -> AsyncIterator[tuple[DispatchService, DispatchServer]]:
    async with DispatchService(store=store) as service, DispatchServer(service) as server:
        yield service, server


async def ended_status(stream: Any) -> GRPCError:
    """Read a stream to its end; return the error it ended with."""
    with anyio.fail_after(5), pytest.raises(GRPCError) as ended:
        while await stream.recv_message() is not None:
            pass
        await stream.recv_trailing_metadata()
    return ended.value


def _execute(url: str, *statements: str) -> list[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows: list[Any] = []
        for statement in statements:
            cursor = conn.execute(statement)
            if cursor.description is not None:
                rows += cursor.fetchall()
        return rows


# -- the change feed never goes silent ---------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("hello", id="hello"),  # killed the listener: SERVING, no events
        pytest.param("", id="empty"),
        pytest.param("99999999999999", id="unknown-seq"),
    ],
)
async def test_a_foreign_notification_is_ignored(postgres_url: str, payload: str) -> None:
    store = pg_store.PgDispatchStore(postgres_url)
    async with serving(store) as (_, server), connect(server) as stub:  # type: ignore[arg-type]
        async with subscribed(stub.channel, 1) as stream:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (pg_store.CHANNEL, payload))
            await anyio.sleep(0.1)
            started = time.monotonic()
            created = await create(stub, 1)
            # A write waits for its own event; a dead feed made that 2 s.
            assert time.monotonic() - started < 1.0
            (event,) = await receive(stream, 1)
            assert event.dispatch == created
        assert store.healthy


async def test_a_hung_listen_connection_is_noticed_and_replaced(postgres_server: Any) -> None:
    url = postgres_server.create_database(f"hung_{time.monotonic_ns()}")
    store = pg_store.PgDispatchStore(url, heartbeat_s=0.2, timeout_s=1.0)
    async with serving(store) as (_, server), connect(server) as stub:  # type: ignore[arg-type]
        rows = _execute(
            url,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND (query LIKE 'LISTEN %' OR query = 'SELECT 1')"
            " AND pid <> pg_backend_pid()",
        )
        assert len(rows) == 1, rows
        (pid,) = rows[0]
        async with subscribed(stub.channel, 1) as stream:
            # The backend stops answering but its socket stays open: only a probe tells.
            os.kill(pid, signal.SIGSTOP)
            try:
                with anyio.fail_after(5):
                    await store.wait_healthy(False)
                assert (await ended_status(stream)).status == Status.UNAVAILABLE
            finally:
                os.kill(pid, signal.SIGCONT)
        with anyio.fail_after(10):
            await store.wait_healthy(True)
        async with subscribed(stub.channel, 1) as stream:
            created = await create(stub, 1)
            (event,) = await receive(stream, 1)
            assert event.dispatch == created


async def test_a_failed_read_back_ends_the_streams_and_the_feed_goes_on(
    postgres_url: str,
) -> None:
    store = pg_store.PgDispatchStore(postgres_url)
    async with serving(store) as (_, server), connect(server) as stub:  # type: ignore[arg-type]
        async with subscribed(stub.channel, 1) as stream:
            # The notified change cannot be read back: the event table is gone.
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE dispatch_events RENAME TO dispatch_events_away")
                try:
                    conn.execute("SELECT pg_notify(%s, '1')", (pg_store.CHANNEL,))
                    ended = await ended_status(stream)
                finally:
                    conn.execute("ALTER TABLE dispatch_events_away RENAME TO dispatch_events")
            assert ended.status == Status.UNAVAILABLE
            assert "re-list" in (ended.message or "")
        assert store.healthy
        async with subscribed(stub.channel, 1) as stream:
            created = await create(stub, 1)
            (event,) = await receive(stream, 1)
            assert event.dispatch == created


async def test_stores_in_two_schemas_of_one_database_do_not_hear_each_other(
    postgres_server: Any,
) -> None:
    # NOTIFY channels belong to the database: on one channel, schema a's seq 1
    # was read back from schema b's table and replayed b's old event.
    name = f"schemas_{time.monotonic_ns()}"
    url = postgres_server.create_database(name)
    _execute(url, "CREATE SCHEMA a", "CREATE SCHEMA b")
    in_a = pg_store.PgDispatchStore(f"{url}?options=-csearch_path%3Da")
    in_b = pg_store.PgDispatchStore(f"{url}?options=-csearch_path%3Db")
    async with (
        serving(in_a) as (_, server_a),
        serving(in_b) as (_, server_b),
        connect(server_a) as stub_a,  # type: ignore[arg-type]
        connect(server_b) as stub_b,  # type: ignore[arg-type]
    ):
        await create(stub_b, 1)
        async with subscribed(stub_b.channel, 1) as stream_b:
            await create(stub_a, 1)
            created = await create(stub_b, 1, type="ONLY_B")
            (event,) = await receive(stream_b, 1)
            assert event.dispatch == created


@pytest.mark.parametrize(
    "sabotage",
    [
        pytest.param("ALTER TABLE dispatches RENAME TO dispatches_away", id="table-renamed"),
        pytest.param("ALTER TABLE used_nonces RENAME TO used_nonces_away", id="nonces-renamed"),
        pytest.param("ALTER TABLE dispatch_events RENAME TO events_away", id="events-renamed"),
    ],
)
async def test_a_database_refusing_statements_is_unavailable_never_unknown(
    postgres_server: Any, sabotage: str
) -> None:
    url = postgres_server.create_database(f"refuse_{time.monotonic_ns()}")
    store = pg_store.PgDispatchStore(url)
    async with (
        DispatchService(store=store) as service,
        DispatchServer(service, sign_secret=SECRET) as server,
        connect(server) as stub,  # type: ignore[arg-type]
    ):
        request = ListMicrogridDispatchesRequest(microgrid_id=1)
        await stub.list_microgrid_dispatches(request, metadata=_signed(nonce="before"))
        _execute(url, sabotage)
        with pytest.raises(GRPCError) as error:
            await stub.list_microgrid_dispatches(request, metadata=_signed(nonce="after"))
            await stub.create_microgrid_dispatch(
                CreateMicrogridDispatchRequest(microgrid_id=1, dispatch_data=make_data()),
                metadata=_signed(nonce="create", method="CreateMicrogridDispatch"),
            )
        assert error.value.status == Status.UNAVAILABLE, error.value


# -- no password anywhere ------------------------------------------------------------------

_PASSWORD = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=4, max_size=20
)


_URLS = [
    "postgresql://dispatch:{}@db.example:5432/dispatches",
    "postgres://dispatch:{}@db.example/dispatches?sslmode=disable",
    "postgresql://dispatch@db.example/dispatches?password={}",
    "postgresql://db.example/dispatches?application_name=x&password={}&sslmode=disable",
]


@settings(max_examples=60, deadline=None)
@given(password=_PASSWORD)
@example(password="hunter2").via("the README's form")
@example(password="WRONG%PW").via("a bad percent escape, quoted back by libpq")
@example(password="p@ss:w/rd?&=").via("URL delimiters")
@example(password="post").via("also part of the scheme")
def test_describe_db_and_redact_hide_every_form_of_the_password(password: str) -> None:
    quoted = urllib.parse.quote(password, safe="")
    for template in _URLS:
        url = template.format(quoted)
        assert describe_db(url) == template.format("***")
        assert quoted in db_secrets(url) and password in db_secrets(url)
        message = f"failed: {password} / {quoted}"
        assert redact(message, url) == "failed: *** / ***"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://dispatch:WRONG%PW@127.0.0.1:5432/d", id="bad-percent-escape"),
        pytest.param("postgresql://dispatch:WRONG%PW@127.0.0.1:port/d", id="bad-port"),
        pytest.param("postgresql://d@127.0.0.1/d?password=WRONG%PW&sslmode=no", id="in-query"),
    ],
)
def test_a_url_libpq_cannot_parse_is_a_usage_error_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match=r"^--db postgresql://") as error:
        check_db(url)
    assert "WRONG" not in str(error.value)


def test_the_server_exits_2_naming_db_for_a_url_libpq_cannot_parse() -> None:
    url = "postgresql://dispatch:WRONG%PW@127.0.0.1:5432/d"
    result = subprocess.run(
        [sys.executable, "-m", "dispatch_client.server", "--port", "0", "--db", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--db" in result.stderr and "WRONG" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("postgresql://dispatch:S3cr%2Ft@127.0.0.1:{port}/d", id="user-info"),
        pytest.param("postgresql://dispatch@127.0.0.1:{port}/d?password=S3cr%2Ft", id="query"),
    ],
)
async def test_an_unreachable_database_is_a_connection_error_without_its_password(
    template: str, caplog: pytest.LogCaptureFixture
) -> None:
    from dispatch_client.server.pgtemp import free_port

    url = template.format(port=free_port())
    store = pg_store.PgDispatchStore(url, timeout_s=1.0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectionError, match="cannot reach") as error:
        await store.open()
    for text in (str(error.value), repr(store), caplog.text):
        assert "S3cr" not in text


async def test_a_role_that_may_not_create_tables_gets_one_clear_error(
    postgres_server: Any,
) -> None:
    name = f"noperm_{time.monotonic_ns()}"
    postgres_server.create_database(name)
    admin = postgres_server.url(name)
    _execute(admin, f"CREATE ROLE {name} LOGIN")
    try:
        # PostgreSQL 15: only the database's owner may create in schema public.
        url = admin.replace("postgres@", f"{name}@", 1)
        with pytest.raises(OSError, match="cannot migrate the schema") as error:
            await pg_store.PgDispatchStore(url, timeout_s=2.0).open()
        assert "owner" in str(error.value)
    finally:
        _execute(postgres_server.url("postgres"), f"DROP DATABASE {name}", f"DROP ROLE {name}")
