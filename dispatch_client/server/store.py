"""SQLite storage of the reference server.

Each dispatch is one row: its `DispatchData` serialized as protobuf bytes (the
single source of truth) plus columns copied out of it for filtering and
sorting. All SQL runs in the store's own thread (`SerialWorker`), one call at
a time in the order they were made, on one connection; every write is one
transaction, so a crash mid-write leaves either the old row or the new one,
never a mix.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import anyio

from .._proto.frequenz.api.dispatch.v1 import Dispatch, DispatchData
from ._worker import SerialWorker
from .records import (
    SORT_COLUMNS,
    ListQuery,
    ListResult,
    encode_message_field,
    from_micros,
    is_recurring,
    target_key,
    to_micros,
)
from .sql import (
    FIELDS,
    SQLITE,
    columns,
    dispatch_of,
    encoded_row,
    from_row,
    list_statements,
    page_result,
    signed,
)

if TYPE_CHECKING:
    from .store_api import Change, StoreEvents

# The records' names are re-exported: callers have imported them from here.
__all__ = [
    "SORT_COLUMNS",
    "DispatchStore",
    "ListQuery",
    "ListResult",
    "encode_message_field",
    "from_micros",
    "is_recurring",
    "target_key",
    "to_micros",
]

_T = TypeVar("_T")
_D = TypeVar("_D")
_INT64_MAX = 2**63 - 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS dispatches (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    microgrid_id  INTEGER NOT NULL,
    type          TEXT    NOT NULL,
    start_time    INTEGER NOT NULL,
    end_time      INTEGER,
    create_time   INTEGER NOT NULL,
    update_time   INTEGER NOT NULL,
    is_active     INTEGER NOT NULL,
    is_dry_run    INTEGER NOT NULL,
    is_recurring  INTEGER NOT NULL,
    target_key    TEXT    NOT NULL,
    data          BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS dispatches_by_create ON dispatches (microgrid_id, create_time, id);
CREATE INDEX IF NOT EXISTS dispatches_by_start ON dispatches (microgrid_id, start_time, id);
CREATE INDEX IF NOT EXISTS dispatches_by_update ON dispatches (microgrid_id, update_time, id);
CREATE TABLE IF NOT EXISTS used_nonces (
    nonce       TEXT    PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);
"""
_SCHEMA_VERSION = 1
# used_nonces came after version 1 without a version bump: it is only added
# (IF NOT EXISTS), and a server that does not know it ignores it.
_NONCE_PRUNE_INTERVAL_S = 10


class DispatchStore:
    """Dispatches of all microgrids in one SQLite database.

    Use `await open()` / `await close()`, or `async with`.

    Args:
        path: a file name, or ":memory:" (the default) for a database that
            lives as long as the store.
    """

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        # The connection's only user, from open to close.
        self._worker: SerialWorker | None = None
        self._stop_worker_on_gc: weakref.finalize[[], DispatchStore] | None = None
        self._opening = anyio.Lock()
        self._next_nonce_prune = 0
        self._opened_at: float | None = None
        self._events: StoreEvents | None = None

    async def __aenter__(self) -> DispatchStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """Whether the database connection is open."""
        return self._conn is not None

    @property
    def publishes_events(self) -> bool:
        """False: the service publishes each change itself, after writing it."""
        return False

    @property
    def nonces_known_since(self) -> float | None:
        """When an in-memory database opened (its nonces start then); None for a file."""
        return self._opened_at if self.path in (":memory:", "") else None

    @property
    def healthy(self) -> bool:
        """Whether the database is open (a local file or memory is always reachable)."""
        return self.is_open

    def attach(self, events: StoreEvents) -> None:
        """Report health changes (open/close) to `events`; events are the service's job here.

        Args:
            events: told `health_changed(True)` on open and `(False)` on close.
        """
        self._events = events

    async def open(self) -> None:
        """Open (and if needed create) the database; no-op when already open.

        Starts the store's thread, which runs all its SQL until `close`.

        Raises:
            OSError: `path` is no SQLite database (or cannot be created).
            RuntimeError: the database has another schema version.
        """
        async with self._opening:
            if self._conn is not None:
                return
            worker = SerialWorker(f"DispatchStore({self.path!r})")
            worker.start()
            try:
                # Shielded: a connection made for a cancelled caller would leak.
                with anyio.CancelScope(shield=True):
                    self._conn = await worker.run(self._connect)
            except BaseException:
                await worker.stop()
                raise
            self._worker = worker
            # A store dropped without close still ends its thread.
            self._stop_worker_on_gc = weakref.finalize(self, worker.stop_now)
            self._opened_at = time.time()
            if self._events is not None:
                self._events.health_changed(True)

    async def close(self) -> None:
        """Close the database; idempotent.

        Calls made before it still run; calls made after it raise RuntimeError.
        Returns once the store's thread has ended (or after 10 s at most
        waiting for it to end once the last queued call has run).
        """
        conn, self._conn = self._conn, None
        worker, self._worker = self._worker, None
        if conn is None or worker is None:
            return
        if self._stop_worker_on_gc is not None:
            self._stop_worker_on_gc.detach()
        if self._events is not None:
            self._events.health_changed(False)
        # Shielded: a cancelled close must not leave the connection or the
        # thread behind.
        with anyio.CancelScope(shield=True):
            try:
                await worker.run(conn.close)
            finally:
                await worker.stop()

    def _connect(self) -> sqlite3.Connection:
        # A path that is no database (a directory, another file, a missing
        # folder) is the caller's environment failing: an OSError naming it,
        # as for a port in use, not an sqlite3 error from deep inside.
        try:
            return self._connect_sqlite()
        except sqlite3.Error as error:
            raise OSError(f"cannot open the SQLite database {self.path!r}: {error}") from error

    def _connect_sqlite(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, each write opens its own.
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                # In WAL mode NORMAL keeps every transaction atomic across a
                # process crash; only a power loss can drop the last commits.
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise RuntimeError(
                    f"database {self.path} has schema version {version}, "
                    f"this server knows {_SCHEMA_VERSION}"
                )
        except BaseException:
            conn.close()
            raise
        return conn

    async def _run(self, func: Callable[[sqlite3.Connection], _T]) -> _T:
        conn, worker = self._conn, self._worker
        if conn is None or worker is None:
            raise RuntimeError("the dispatch store is not open")
        return await worker.run(lambda: func(conn))

    # Writes -------------------------------------------------------------------

    async def insert(
        self,
        microgrid_id: int,
        data: DispatchData,
        *,
        now: dt.datetime,
        end_time: dt.datetime | None,
    ) -> Dispatch:
        """Store a new dispatch; the store assigns its id (never reused).

        Args:
            microgrid_id: the microgrid it belongs to.
            data: the checked data, stored as given.
            now: its create and update time.
            end_time: when its last run ends (None: never), for the end-time filter.

        Returns:
            The stored dispatch with its id and metadata.

        Raises:
            RuntimeError: the store is not open.
        """
        now_us = to_micros(now)
        row = columns(data, end_time)

        def write(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                cursor = conn.execute(
                    "INSERT INTO dispatches (microgrid_id, type, start_time, end_time,"
                    " create_time, update_time, is_active, is_dry_run, is_recurring,"
                    " target_key, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        signed(microgrid_id),
                        row.type,
                        row.start,
                        row.end,
                        now_us,
                        now_us,
                        row.active,
                        row.dry_run,
                        row.recurring,
                        row.target,
                        row.blob,
                    ),
                )
                assert cursor.lastrowid is not None
                return cursor.lastrowid

        dispatch_id = await self._run(write)
        return dispatch_of(dispatch_id, data, now_us, now_us, row.end)

    async def replace(
        self,
        microgrid_id: int,
        dispatch_id: int,
        data: DispatchData,
        *,
        now: dt.datetime,
        end_time: dt.datetime | None,
    ) -> Dispatch | None:
        """Overwrite a dispatch's data.

        Args:
            microgrid_id: the microgrid it belongs to.
            dispatch_id: its id.
            data: the new, checked data.
            now: its new update time.
            end_time: when its last run ends (None: never).

        Returns:
            The dispatch after the change, or None when it does not exist in that microgrid.

        Raises:
            RuntimeError: the store is not open.
        """
        if dispatch_id > _INT64_MAX:
            return None
        now_us = to_micros(now)
        row = columns(data, end_time)

        def write(conn: sqlite3.Connection) -> int | None:
            with _transaction(conn):
                found = conn.execute(
                    "UPDATE dispatches SET type = ?, start_time = ?, end_time = ?,"
                    " update_time = ?, is_active = ?, is_dry_run = ?, is_recurring = ?,"
                    " target_key = ?, data = ? WHERE id = ? AND microgrid_id = ?"
                    " RETURNING create_time",
                    (
                        row.type,
                        row.start,
                        row.end,
                        now_us,
                        row.active,
                        row.dry_run,
                        row.recurring,
                        row.target,
                        row.blob,
                        dispatch_id,
                        signed(microgrid_id),
                    ),
                ).fetchone()
                return None if found is None else int(found[0])

        create_us = await self._run(write)
        if create_us is None:
            return None
        return dispatch_of(dispatch_id, data, create_us, now_us, row.end)

    async def update(self, microgrid_id: int, dispatch_id: int, change: Change) -> Dispatch | None:
        """Replace a dispatch's data with `await change(current)`; None when it does not exist.

        Read and write are two steps: callers in one process serialize updates
        (the service's write lock), which one SQLite connection needs anyway.
        """
        current = await self.get(microgrid_id, dispatch_id)
        if current is None:
            return None
        new = await change(current)
        return await self.replace(
            microgrid_id, dispatch_id, new.data, now=new.now, end_time=new.end_time
        )

    async def delete(self, microgrid_id: int, dispatch_id: int) -> Dispatch | None:
        """Remove a dispatch.

        Args:
            microgrid_id: the microgrid it belongs to.
            dispatch_id: its id.

        Returns:
            The dispatch as it was, or None when it does not exist in that microgrid.

        Raises:
            RuntimeError: the store is not open.
        """
        if dispatch_id > _INT64_MAX:
            return None

        def write(conn: sqlite3.Connection) -> Dispatch | None:
            with _transaction(conn):
                found = conn.execute(
                    f"DELETE FROM dispatches WHERE id = ? AND microgrid_id = ? RETURNING {FIELDS}",
                    (dispatch_id, signed(microgrid_id)),
                ).fetchone()
                return None if found is None else from_row(found)

        return await self._run(write)

    # Reads --------------------------------------------------------------------

    async def get(self, microgrid_id: int, dispatch_id: int) -> Dispatch | None:
        """Return one dispatch of a microgrid.

        Args:
            microgrid_id: the microgrid it belongs to.
            dispatch_id: its id.

        Returns:
            The dispatch, or None when it does not exist in that microgrid.

        Raises:
            RuntimeError: the store is not open.
        """
        return await self._get(microgrid_id, dispatch_id, from_row)

    async def get_encoded(self, microgrid_id: int, dispatch_id: int) -> bytes | None:
        """Return what `get` returns as `Dispatch` wire bytes, the stored data unparsed.

        Args:
            microgrid_id: the microgrid it belongs to.
            dispatch_id: its id.

        Returns:
            `bytes(await get(...))`, or None when it does not exist in that microgrid.

        Raises:
            RuntimeError: the store is not open.
        """
        return await self._get(microgrid_id, dispatch_id, encoded_row)

    async def list(self, query: ListQuery) -> ListResult[Dispatch]:
        """Return one page of the dispatches matching `query`, and their total count.

        Args:
            query: criteria, sort, position and page size.

        Returns:
            Up to `query.limit` dispatches, the total count of matches and the
            sort key of the last one (None on the last page).

        Raises:
            RuntimeError: the store is not open.
            ValueError: `query.sort_column` is not a sortable column.
        """
        return await self._list(query, from_row)

    async def list_encoded(self, query: ListQuery) -> ListResult[bytes]:
        """Return the page `list` returns with each dispatch as `Dispatch` wire bytes.

        The stored `DispatchData` bytes go in as they are, never parsed and
        re-encoded, which was most of the cost of serving a list.

        Args:
            query: criteria, sort, position and page size.

        Returns:
            As `list`, with encoded dispatches.

        Raises:
            RuntimeError: the store is not open.
            ValueError: `query.sort_column` is not a sortable column.
        """
        return await self._list(query, encoded_row)

    async def _get(
        self, microgrid_id: int, dispatch_id: int, convert: Callable[[Sequence[object]], _D]
    ) -> _D | None:
        if dispatch_id > _INT64_MAX:
            return None

        def read(conn: sqlite3.Connection) -> _D | None:
            found = conn.execute(
                f"SELECT {FIELDS} FROM dispatches WHERE id = ? AND microgrid_id = ?",
                (dispatch_id, signed(microgrid_id)),
            ).fetchone()
            return None if found is None else convert(found)

        return await self._run(read)

    async def _list(
        self, query: ListQuery, convert: Callable[[Sequence[object]], _D]
    ) -> ListResult[_D]:
        statements = list_statements(query, SQLITE)

        def read(conn: sqlite3.Connection) -> ListResult[_D]:
            total = conn.execute(statements.count_sql, statements.count_params)
            rows = conn.execute(statements.page_sql, statements.page_params).fetchall()
            return page_result(query, int(total.fetchone()[0]), rows, convert)

        return await self._run(read)

    # Replay protection ----------------------------------------------------------

    async def use_nonce(self, nonce: str, expires_at: int, *, now: int) -> bool:
        """Record a request nonce; False when it is already recorded and not yet expired."""

        def write(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                if now >= self._next_nonce_prune:
                    conn.execute("DELETE FROM used_nonces WHERE expires_at < ?", (now,))
                    self._next_nonce_prune = now + _NONCE_PRUNE_INTERVAL_S
                # An expired entry may still be there: it is taken over, not a replay.
                found = conn.execute(
                    "INSERT INTO used_nonces (nonce, expires_at) VALUES (?, ?)"
                    " ON CONFLICT (nonce) DO UPDATE SET expires_at = excluded.expires_at"
                    " WHERE used_nonces.expires_at < ? RETURNING 1",
                    (nonce, expires_at, now),
                ).fetchone()
                return found is not None

        return await self._run(write)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a transaction never has to
    # be retried half-way; anything raised inside rolls the whole write back.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
