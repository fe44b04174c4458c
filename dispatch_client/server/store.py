"""SQLite storage of the reference server.

Each dispatch is one row: its `DispatchData` serialized as protobuf bytes (the
single source of truth) plus columns copied out of it for filtering and
sorting. All SQL runs in a worker thread, one call at a time, on one
connection; every write is one transaction, so a crash mid-write leaves either
the old row or the new one, never a mix.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread

from .._proto.frequenz.api.dispatch.v1 import Dispatch, DispatchData, DispatchMetadata
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
"""
_SCHEMA_VERSION = 1


def _signed(value: int) -> int:
    # SQLite integers are signed 64-bit; uint64 microgrid ids above 2**63-1
    # are stored as their two's complement so that equality still works.
    return value - 2**64 if value > _INT64_MAX else value


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
        # One connection, used by one thread at a time: the limiter keeps a
        # single worker busy, the lock guards against any other caller.
        self._limiter = anyio.CapacityLimiter(1)
        self._lock = threading.Lock()

    async def __aenter__(self) -> DispatchStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """Whether the database connection is open."""
        return self._conn is not None

    async def open(self) -> None:
        """Open (and if needed create) the database; no-op when already open."""
        if self._conn is None:
            self._conn = await anyio.to_thread.run_sync(self._connect, limiter=self._limiter)

    async def close(self) -> None:
        """Close the database; idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)

    def _connect(self) -> sqlite3.Connection:
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
        conn = self._conn
        if conn is None:
            raise RuntimeError("the dispatch store is not open")

        def call() -> _T:
            with self._lock:
                return func(conn)

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

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
        row = _columns(data, end_time)

        def write(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                cursor = conn.execute(
                    "INSERT INTO dispatches (microgrid_id, type, start_time, end_time,"
                    " create_time, update_time, is_active, is_dry_run, is_recurring,"
                    " target_key, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _signed(microgrid_id),
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
        return _dispatch(dispatch_id, data, now_us, now_us, row.end)

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
        row = _columns(data, end_time)

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
                        _signed(microgrid_id),
                    ),
                ).fetchone()
                return None if found is None else int(found[0])

        create_us = await self._run(write)
        if create_us is None:
            return None
        return _dispatch(dispatch_id, data, create_us, now_us, row.end)

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
                    f"DELETE FROM dispatches WHERE id = ? AND microgrid_id = ? RETURNING {_FIELDS}",
                    (dispatch_id, _signed(microgrid_id)),
                ).fetchone()
                return None if found is None else _from_row(found)

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
        if dispatch_id > _INT64_MAX:
            return None

        def read(conn: sqlite3.Connection) -> Dispatch | None:
            found = conn.execute(
                f"SELECT {_FIELDS} FROM dispatches WHERE id = ? AND microgrid_id = ?",
                (dispatch_id, _signed(microgrid_id)),
            ).fetchone()
            return None if found is None else _from_row(found)

        return await self._run(read)

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
        return await self._list(query, _from_row)

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
        return await self._list(query, _encoded_row)

    async def _list(
        self, query: ListQuery, convert: Callable[[Sequence[object]], _D]
    ) -> ListResult[_D]:
        if query.sort_column not in SORT_COLUMNS:
            raise ValueError(f"cannot sort by {query.sort_column!r}")
        where, params = _where(query)
        column = query.sort_column
        direction = "DESC" if query.descending else "ASC"
        page_where, page_params = where, list(params)
        if query.after is not None:
            op = "<" if query.descending else ">"
            page_where += f" AND ({column} {op} ? OR ({column} = ? AND id {op} ?))"
            key, last_id = query.after
            page_params += [key, key, last_id]

        def read(conn: sqlite3.Connection) -> ListResult[_D]:
            total = conn.execute(f"SELECT COUNT(*) FROM dispatches WHERE {where}", params)
            total_items = int(total.fetchone()[0])
            rows = conn.execute(
                f"SELECT {_FIELDS}, {column} FROM dispatches WHERE {page_where}"
                f" ORDER BY {column} {direction}, id {direction} LIMIT ?",
                [*page_params, query.limit + 1],
            ).fetchall()
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            keys = [(int(row[-1]), int(row[0])) for row in rows]
            return ListResult(
                dispatches=[convert(row[:-1]) for row in rows],
                total_items=total_items,
                last_key=keys[-1] if more and keys else None,
            )

        return await self._run(read)


_FIELDS = "id, create_time, update_time, end_time, data"


@dataclass(frozen=True)
class _Columns:
    type: str
    start: int
    end: int | None
    active: int
    dry_run: int
    recurring: int
    target: str
    blob: bytes


def _columns(data: DispatchData, end_time: dt.datetime | None) -> _Columns:
    assert data.start_time is not None, "start_time is checked before storing"
    return _Columns(
        type=data.type,
        start=to_micros(data.start_time),
        end=None if end_time is None else to_micros(end_time),
        active=int(data.is_active),
        dry_run=int(data.is_dry_run),
        recurring=int(is_recurring(data)),
        target=target_key(data.target),
        blob=bytes(data),
    )


def _dispatch(
    dispatch_id: int, data: DispatchData, create_us: int, update_us: int, end_us: int | None
) -> Dispatch:
    return Dispatch(metadata=_metadata(dispatch_id, create_us, update_us, end_us), data=data)


def _metadata(
    dispatch_id: int, create_us: int, update_us: int, end_us: int | None
) -> DispatchMetadata:
    return DispatchMetadata(
        dispatch_id=dispatch_id,
        create_time=from_micros(create_us),
        update_time=from_micros(update_us),
        end_time=None if end_us is None else from_micros(end_us),
    )


def _from_row(row: Sequence[object]) -> Dispatch:
    dispatch_id, create_us, update_us, end_us, blob = row
    assert isinstance(blob, bytes)
    return _dispatch(
        int(dispatch_id),  # type: ignore[call-overload]
        DispatchData.parse(blob),
        int(create_us),  # type: ignore[call-overload]
        int(update_us),  # type: ignore[call-overload]
        None if end_us is None else int(end_us),  # type: ignore[call-overload]
    )


def _encoded_row(row: Sequence[object]) -> bytes:
    """`bytes(_from_row(row))`, with the stored `DispatchData` bytes spliced in unparsed."""
    dispatch_id, create_us, update_us, end_us, blob = row
    assert isinstance(blob, bytes)
    metadata = _metadata(
        int(dispatch_id),  # type: ignore[call-overload]
        int(create_us),  # type: ignore[call-overload]
        int(update_us),  # type: ignore[call-overload]
        None if end_us is None else int(end_us),  # type: ignore[call-overload]
    )
    # Dispatch: metadata = 1, data = 2; both set, so both written, as betterproto2 does.
    return encode_message_field(1, bytes(metadata)) + encode_message_field(2, blob)


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


def _where(query: ListQuery) -> tuple[str, list[object]]:
    clauses = ["microgrid_id = ?"]
    params: list[object] = [_signed(query.microgrid_id)]

    def add(clause: str, *values: object) -> None:
        clauses.append(clause)
        params.extend(values)

    if query.target_keys is not None:
        add(f"target_key IN ({_marks(query.target_keys)})", *query.target_keys)
    for column, value in (
        ("is_active", query.is_active),
        ("is_dry_run", query.is_dry_run),
        ("is_recurring", query.is_recurring),
    ):
        if value is not None:
            add(f"{column} = ?", int(value))
    if query.start_from is not None:
        add("start_time >= ?", query.start_from)
    if query.start_to is not None:
        add("start_time < ?", query.start_to)
    # A NULL end_time means the series never ends: later than any bound.
    if query.end_from is not None:
        add("(end_time IS NULL OR end_time >= ?)", query.end_from)
    if query.end_to is not None:
        add("(end_time IS NOT NULL AND end_time < ?)", query.end_to)
    if query.update_from is not None:
        add("update_time >= ?", query.update_from)
    if query.update_to is not None:
        add("update_time < ?", query.update_to)
    if query.dispatch_ids is not None:
        ids = [i for i in query.dispatch_ids if i <= _INT64_MAX]
        add(f"id IN ({_marks(ids)})", *ids)
    if query.id_queries or query.type_queries:
        # Flat forms, not one OR per query: SQLite refuses expressions nested
        # 1000 deep, which a long OR chain is.
        alternatives = []
        if query.id_queries:
            alternatives.append(f"id IN ({_marks(query.id_queries)})")
        if query.type_queries:
            rows = ", ".join(["(?)"] * len(query.type_queries))
            alternatives.append(
                f"EXISTS (SELECT 1 FROM (VALUES {rows}) WHERE instr(type, column1) > 0)"
            )
        add("(" + " OR ".join(alternatives) + ")", *query.id_queries, *query.type_queries)
    return " AND ".join(clauses), params


def _marks(values: Sequence[object]) -> str:
    # "IN ()" is valid SQLite and matches nothing, which is what an empty set means.
    return ", ".join("?" * len(values))
