"""PostgreSQL storage of the reference server, shared by several server replicas.

Same rows, SQL and semantics as the SQLite store (`store.py`: the list SQL is
built by the same code), plus what several processes on one database need:

- Every write is one transaction that also inserts a row into
  `dispatch_events` (the change's kind and the dispatch as it was committed)
  and sends that row's `seq` with `NOTIFY dispatch_events`. Each replica
  LISTENs on one connection of its own and reads each notified row back by its
  seq, then hands it to its stream subscribers. PostgreSQL delivers the
  notifications of committed transactions in commit order, so every replica
  sees the events of a dispatch in commit order; a write returns once its own
  event has been handed to this replica's subscribers.
- Updates lock the row (`SELECT ... FOR UPDATE`), so concurrent updates of one
  dispatch through different replicas never lose one another.
- Used request nonces live in `used_nonces`, so a signed request replayed to
  another replica is refused too.
- When the LISTEN connection breaks (the database went away), events may have
  been missed: the open streams are ended (UNAVAILABLE, clients re-open and
  re-list) and the store reports itself unhealthy until it listens again.
  Calls that cannot reach the database fail with UNAVAILABLE.

Driver: psycopg 3 (with psycopg_pool), not asyncpg. The schema migrations run
through yoyo, which drives psycopg 3 (synchronously, once, at open), so one
driver serves both; psycopg's async connections give LISTEN/NOTIFY as an
async iterator (`notifies()`); it ships type hints (mypy --strict checks our
calls; asyncpg has none); and its `binary` wheel bundles libpq. asyncpg is
faster per query, but a request's time here is dominated by grpclib and
message handling, not by the driver.

Migrations: yoyo-migrations, plain SQL files in `migrations/postgresql/`
(each with a rollback file), applied at open under yoyo's lock, so replicas
that start together apply them once. Alembic would bring SQLAlchemy for
nothing: there are no ORM models to diff against.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import psycopg
import psycopg.sql
import psycopg_pool

from .._proto.frequenz.api.common.v1alpha8.streaming import Event
from .._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    DispatchData,
)
from ._pg_feed import PgChangeFeed
from ._pg_schema import _check_may_migrate, _first, _one, _schema_is_current, migrate
from ._pg_schema import known_migrations as known_migrations
from .records import SORT_COLUMNS, ListQuery, ListResult, to_micros
from .replies import encode_dispatch
from .sql import (
    FIELDS,
    SqlDialect,
    columns,
    dispatch_of,
    encoded_row,
    from_row,
    list_statements,
    page_result,
    signed,
)
from .store_api import (
    Change,
    StoreEvents,
    StoreUnavailableError,
    db_secrets,
    describe_db,
    redact,
)

__all__ = ["CHANNEL", "POSTGRESQL", "PgDispatchStore", "channel_for", "migrate"]

_log = logging.getLogger(__name__)
_D = TypeVar("_D")
_INT64_MAX = 2**63 - 1

CHANNEL = "dispatch_events"
"""The NOTIFY channel of a store in schema `public`; payload: the `dispatch_events.seq`
of a committed change. Channels belong to the database, not to a schema: a store
in another schema (`?options=-csearch_path=...`) uses `channel_for(schema)`, so
two stores sharing a database never read each other's seqs as their own."""


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the store whose tables are in `schema`."""
    if schema == "public":
        return CHANNEL
    # A channel name is at most 63 bytes; a schema name may be that long itself.
    return f"{CHANNEL}_{hashlib.sha256(schema.encode()).hexdigest()[:16]}"


_DELIVERY_TIMEOUT_S = 2.0
"""How long a write waits for its own event to reach this replica's subscribers."""
_HEARTBEAT_S = 5.0
"""How long the LISTEN connection may stay silent before it is probed with a query."""
# Loggers that may echo a connection's parameters (libpq's messages quote them).
_DRIVER_LOGGERS = ("psycopg", "psycopg.pool", "yoyo", "yoyo.migrations", "yoyo.backends", __name__)


def _pg_in(column: str, values: Sequence[object]) -> tuple[str, list[object]]:
    # An empty array matches nothing, as an empty set should.
    return f"{column} = ANY(%s)", [list(values)]


def _pg_contains_any(texts: Sequence[str]) -> tuple[str, list[object]]:
    # `type` is bytea (text cannot hold NUL); position() on bytea is a byte
    # substring test, the same as SQLite's instr() on the UTF-8 text.
    return (
        "EXISTS (SELECT 1 FROM unnest(%s::bytea[]) AS q(text) WHERE position(q.text IN type) > 0)",
        [[text.encode() for text in texts]],
    )


POSTGRESQL = SqlDialect(
    mark="%s",
    in_list=_pg_in,
    contains_any=_pg_contains_any,
)


class PgDispatchStore(PgChangeFeed):
    """Dispatches of all microgrids in one PostgreSQL database, shared by replicas.

    Args:
        url: `postgresql://user:password@host:port/database` (libpq query
            parameters allowed).
        min_connections: connections the pool keeps open.
        max_connections: upper bound of the pool (plus one LISTEN connection).
        timeout_s: how long a call waits for a connection before failing with
            UNAVAILABLE, and how long the LISTEN connection's probe may take.
        heartbeat_s: how long the LISTEN connection may stay silent before it
            is probed; a probe that fails or takes longer than `timeout_s`
            counts as a lost change feed (a hung or unreachable database, a
            connection dropped without notice).

    Open with `await open()` (applies migrations, starts listening) or `async with`.
    """

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 2,
        max_connections: int = 10,
        timeout_s: float = 5.0,
        heartbeat_s: float = _HEARTBEAT_S,
    ) -> None:
        self.url = url
        self._heartbeat = heartbeat_s
        _protect_password(url)
        self._min = min_connections
        self._max = max_connections
        self._timeout = timeout_s
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        self._events: StoreEvents | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._notified: asyncio.Queue[int] = asyncio.Queue()
        self._waiters: dict[int, asyncio.Event] = {}
        self._listening = False
        self._listening_changed = asyncio.Event()
        self._next_nonce_prune = 0
        self._background: set[asyncio.Task[None]] = set()
        self._channel = CHANNEL

    def __repr__(self) -> str:
        return f"PgDispatchStore({describe_db(self.url)!r}, open={self.is_open})"

    async def __aenter__(self) -> PgDispatchStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Store protocol -------------------------------------------------------------

    @property
    def publishes_events(self) -> bool:
        """True: every committed change (from any replica) goes to the attached events."""
        return True

    @property
    def is_open(self) -> bool:
        """Whether the store is open."""
        return self._pool is not None

    @property
    def healthy(self) -> bool:
        """Whether the store is open and listening for changes (so the database is reachable)."""
        return self._pool is not None and self._listening

    def attach(self, events: StoreEvents) -> None:
        """Send committed changes, feed losses and health changes to `events`."""
        self._events = events

    @property
    def nonces_known_since(self) -> float | None:
        """None: used nonces live in the database and outlive every server process."""
        return None

    async def open(self) -> None:
        """Migrate the schema, open the pool and start listening; no-op when open.

        Raises:
            ConnectionError: the database cannot be reached (an OSError, as for
                an SQLite file that cannot be opened).
            OSError: the database refuses the schema's migration (e.g. the role
                may not create tables) or the URL's parameters.
        """
        if self._pool is not None:
            return
        try:
            async with await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))
            ) as conn:
                current = await _schema_is_current(conn)
                cursor = await conn.execute("SELECT current_schema()")
                self._channel = channel_for(str(_first(await cursor.fetchone())))
                if not current:
                    await _check_may_migrate(conn)
        except psycopg.OperationalError as error:
            raise ConnectionError(
                f"cannot reach the PostgreSQL database {describe_db(self.url)}:"
                f" {redact(str(error), self.url)}"
            ) from None
        except psycopg.errors.InsufficientPrivilege as error:
            raise OSError(
                f"cannot migrate the schema of the PostgreSQL database {describe_db(self.url)}:"
                f" {redact(str(error), self.url)}; make the role the database's owner"
                " (or GRANT CREATE ON SCHEMA to it)"
            ) from None
        except psycopg.Error as error:
            raise OSError(
                f"cannot open the PostgreSQL database {describe_db(self.url)}:"
                f" {redact(str(error), self.url)}"
            ) from None
        if not current:
            try:
                applied = await anyio.to_thread.run_sync(migrate, self.url)
            except Exception as error:
                raise OSError(
                    f"cannot migrate the schema of the PostgreSQL database"
                    f" {describe_db(self.url)}: {redact(str(error), self.url)}"
                ) from None
            _log.info("applied schema migrations %s to %s", applied, describe_db(self.url))
        pool = self._new_pool()
        # Reachability was just checked; the pool fills in the background.
        await pool.open(wait=False)
        self._pool = pool
        self._tasks = [
            asyncio.create_task(self._listen(), name="dispatch-pg-listen"),
            asyncio.create_task(self._deliver(), name="dispatch-pg-deliver"),
            asyncio.create_task(self._janitor(), name="dispatch-pg-janitor"),
        ]
        # Serve only once listening: a change committed after open() returns
        # must reach the streams opened after it.
        with anyio.move_on_after(self._timeout):
            while not self._listening:
                await self._wait_listening_changed()
        if not self._listening:
            await self.close()
            raise ConnectionError(
                f"cannot LISTEN on the PostgreSQL database {describe_db(self.url)}"
            )

    async def close(self) -> None:
        """Stop listening and close the pool; idempotent."""
        pool, self._pool = self._pool, None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            # Old pools being closed finish closing (bounded by their own timeout).
            for task in [*tasks, *self._background]:
                # A task that failed has said so in the log already.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._background.clear()
            self._set_listening(False)
            for waiter in self._waiters.values():
                waiter.set()
            self._waiters.clear()
            if pool is not None:
                await pool.close()

    # Writes ---------------------------------------------------------------------

    async def insert(
        self,
        microgrid_id: int,
        data: DispatchData,
        *,
        now: dt.datetime,
        end_time: dt.datetime | None,
    ) -> Dispatch:
        """Store a new dispatch; the database assigns its id (never reused)."""
        now_us = to_micros(now)
        row = columns(data, end_time)
        async with self._transaction() as (conn, record):
            cursor = await conn.execute(
                "INSERT INTO dispatches (microgrid_id, type, start_time, end_time,"
                " create_time, update_time, is_active, is_dry_run, is_recurring,"
                " target_key, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id",
                (
                    signed(microgrid_id),
                    row.type.encode(),
                    row.start,
                    row.end,
                    now_us,
                    now_us,
                    bool(row.active),
                    bool(row.dry_run),
                    bool(row.recurring),
                    row.target,
                    row.blob,
                ),
            )
            dispatch = dispatch_of(_one(await cursor.fetchone()), data, now_us, now_us, row.end)
            await record(microgrid_id, Event.CREATED, dispatch)
        return dispatch

    async def update(self, microgrid_id: int, dispatch_id: int, change: Change) -> Dispatch | None:
        """Replace a dispatch's data with `await change(current)` under a row lock."""
        if dispatch_id > _INT64_MAX:
            return None
        async with self._transaction() as (conn, record):
            cursor = await conn.execute(
                f"SELECT {FIELDS} FROM dispatches WHERE id = %s AND microgrid_id = %s FOR UPDATE",
                (dispatch_id, signed(microgrid_id)),
            )
            found = await cursor.fetchone()
            if found is None:
                return None
            current = from_row(found)
            new = await change(current)
            row = columns(new.data, new.end_time)
            now_us = to_micros(new.now)
            await conn.execute(
                "UPDATE dispatches SET type = %s, start_time = %s, end_time = %s,"
                " update_time = %s, is_active = %s, is_dry_run = %s, is_recurring = %s,"
                " target_key = %s, data = %s WHERE id = %s",
                (
                    row.type.encode(),
                    row.start,
                    row.end,
                    now_us,
                    bool(row.active),
                    bool(row.dry_run),
                    bool(row.recurring),
                    row.target,
                    row.blob,
                    dispatch_id,
                ),
            )
            assert current.metadata is not None and current.metadata.create_time is not None
            dispatch = dispatch_of(
                dispatch_id, new.data, to_micros(current.metadata.create_time), now_us, row.end
            )
            await record(microgrid_id, Event.UPDATED, dispatch)
        return dispatch

    async def delete(self, microgrid_id: int, dispatch_id: int) -> Dispatch | None:
        """Remove a dispatch; return it as it was, or None when it does not exist."""
        if dispatch_id > _INT64_MAX:
            return None
        async with self._transaction() as (conn, record):
            cursor = await conn.execute(
                f"DELETE FROM dispatches WHERE id = %s AND microgrid_id = %s RETURNING {FIELDS}",
                (dispatch_id, signed(microgrid_id)),
            )
            found = await cursor.fetchone()
            if found is None:
                return None
            dispatch = from_row(found)
            await record(microgrid_id, Event.DELETED, dispatch)
        return dispatch

    # Reads ----------------------------------------------------------------------

    async def get(self, microgrid_id: int, dispatch_id: int) -> Dispatch | None:
        """Return one dispatch of a microgrid, or None."""
        return await self._get(microgrid_id, dispatch_id, from_row)

    async def get_encoded(self, microgrid_id: int, dispatch_id: int) -> bytes | None:
        """Return what `get` returns as `Dispatch` wire bytes (stored data unparsed), or None."""
        return await self._get(microgrid_id, dispatch_id, encoded_row)

    async def _get(
        self, microgrid_id: int, dispatch_id: int, convert: Callable[[Sequence[object]], _D]
    ) -> _D | None:
        if dispatch_id > _INT64_MAX:
            return None
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {FIELDS} FROM dispatches WHERE id = %s AND microgrid_id = %s",
                (dispatch_id, signed(microgrid_id)),
            )
            found = await cursor.fetchone()
        return None if found is None else convert(found)

    async def list(self, query: ListQuery) -> ListResult[Dispatch]:
        """Return one page of the dispatches matching `query`, and their total count."""
        return await self._list(query, from_row)

    async def list_encoded(self, query: ListQuery) -> ListResult[bytes]:
        """Return the page `list` returns with each dispatch as `Dispatch` wire bytes."""
        return await self._list(query, encoded_row)

    async def _list(
        self, query: ListQuery, convert: Callable[[Sequence[object]], _D]
    ) -> ListResult[_D]:
        if query.sort_column not in SORT_COLUMNS:
            raise ValueError(f"cannot sort by {query.sort_column!r}")
        statements = list_statements(query, POSTGRESQL)
        async with self._connection() as conn:
            # One snapshot for the count and the page, as SQLite's single connection gives.
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                cursor = await conn.execute(statements.count_sql, statements.count_params)
                total = _one(await cursor.fetchone())
                cursor = await conn.execute(statements.page_sql, statements.page_params)
                rows = await cursor.fetchall()
            finally:
                await conn.execute("COMMIT")
        return page_result(query, total, rows, convert)

    # Replay protection ----------------------------------------------------------

    async def use_nonce(self, nonce: str, expires_at: int, *, now: int) -> bool:
        """Record a request nonce for all replicas; False when it is live already (a replay)."""
        async with self._connection() as conn:
            if now >= self._next_nonce_prune:
                self._next_nonce_prune = now + 10
                await conn.execute("DELETE FROM used_nonces WHERE expires_at < %s", (now,))
            # An expired entry not yet pruned is taken over, not a replay.
            cursor = await conn.execute(
                "INSERT INTO used_nonces (nonce, expires_at) VALUES (%s, %s)"
                " ON CONFLICT (nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at"
                " WHERE used_nonces.expires_at < %s RETURNING 1",
                (nonce, expires_at, now),
            )
            return await cursor.fetchone() is not None

    # Plumbing -------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the dispatch store is not open")
        try:
            async with pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
            raise StoreUnavailableError(
                f"the dispatch database is unreachable: {redact(str(error), self.url)}"
            ) from error
        except psycopg.Error as error:
            # The database refuses what worked before: a read-only standby after
            # a failover, revoked privileges, a table dropped or renamed. Not the
            # request's fault: UNAVAILABLE (another replica may do better), never
            # grpclib's UNKNOWN.
            _log.error(
                "the dispatch database refused a statement: %s", redact(str(error), self.url)
            )
            raise StoreUnavailableError(
                f"the dispatch database refused the operation"
                f" ({type(error).__name__}: {redact(str(error), self.url)})"
            ) from error

    @asynccontextmanager
    async def _transaction(
        self,
    ) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], Callable[..., Any]]]:
        """Yield a connection in a transaction and `record(microgrid_id, kind, dispatch)`.

        `record` writes the change's event row and NOTIFY in the same
        transaction. After the commit, this waits (bounded) until the event
        came back through LISTEN and went to this replica's subscribers.
        """
        seqs: list[int] = []
        async with self._connection() as conn:

            async def record(microgrid_id: int, kind: Event, dispatch: Dispatch) -> None:
                cursor = await conn.execute(
                    "WITH e AS (INSERT INTO dispatch_events (microgrid_id, kind, dispatch)"
                    " VALUES (%s, %s, %s) RETURNING seq)"
                    " SELECT seq, pg_notify(%s, seq::text) FROM e",
                    (signed(microgrid_id), int(kind), encode_dispatch(dispatch), self._channel),
                )
                seq = _one(await cursor.fetchone())
                self._waiters[seq] = asyncio.Event()
                seqs.append(seq)

            try:
                async with conn.transaction():
                    yield conn, record
            except BaseException:
                for seq in seqs:
                    self._waiters.pop(seq, None)
                raise
        await self._delivered(seqs)

    async def _delivered(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            waiter = self._waiters.get(seq)
            if waiter is None:
                continue
            with anyio.move_on_after(_DELIVERY_TIMEOUT_S) as scope:
                await waiter.wait()
            self._waiters.pop(seq, None)
            if scope.cancelled_caught:
                _log.warning("change %d was committed but its event did not come back in time", seq)

    def _new_pool(self) -> psycopg_pool.AsyncConnectionPool:
        return psycopg_pool.AsyncConnectionPool(
            self.url,
            min_size=self._min,
            max_size=self._max,
            timeout=self._timeout,
            kwargs={"autocommit": True},
            open=False,
        )

    async def _renew_pool(self) -> None:
        """Replace the pool by a full new one (the database is back after a loss).

        The old pool's connections died with the database, and it retries
        connecting with a backoff that has grown during the outage (doubling
        from 1 s): calls would wait for it, or take a dead connection, long
        after the database is back. The old pool is closed in the background;
        calls still waiting on it fail with UNAVAILABLE.
        """
        fresh = self._new_pool()
        try:
            await fresh.open(wait=True, timeout=self._timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await fresh.close()
            raise
        old, self._pool = self._pool, fresh
        if old is not None:
            task = asyncio.create_task(
                old.close(timeout=self._timeout), name="dispatch-pg-close-old-pool"
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def wait_healthy(self, healthy: bool = True) -> None:
        """Wait until `healthy` is as given (bound it with `anyio.fail_after`)."""
        while self.healthy != healthy:
            await self._wait_listening_changed()


class _PasswordFilter(logging.Filter):
    """Masks the passwords of the database URLs in use in the driver's log records."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            masked = message
            for secret in sorted(self.secrets, key=len, reverse=True):
                masked = masked.replace(secret, "***")
            if masked != message:
                record.msg, record.args = masked, None
        return True


_PASSWORDS = _PasswordFilter()


def _protect_password(url: str) -> None:
    # libpq's messages may quote the connection parameters; psycopg's pool and
    # yoyo log them.
    _PASSWORDS.secrets.update(db_secrets(url))
    for name in _DRIVER_LOGGERS:
        logger = logging.getLogger(name)
        if _PASSWORDS not in logger.filters:
            logger.addFilter(_PASSWORDS)
