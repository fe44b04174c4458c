"""Picking a dispatch store by `--db`, and feeding its events to the stream fan-out.

`store_for(db)`: a `postgresql://` (or `postgres://`) URL selects
`PgDispatchStore` (PostgreSQL, shared by server replicas), anything else is an
SQLite file name or ":memory:" for `DispatchStore`. The `Store` protocol and
its companions live in `store_api` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

from .._proto.frequenz.api.dispatch.v1 import StreamMicrogridDispatchesResponse
from .fanout import Fanout, StreamEvent
from .store import DispatchStore
from .store_api import (
    Change,
    Replacement,
    Store,
    StoreEvents,
    StoreUnavailableError,
    db_secrets,
    describe_db,
    redact,
)

__all__ = [
    "POSTGRESQL_SCHEMES",
    "Change",
    "FanoutEvents",
    "Replacement",
    "Store",
    "StoreEvents",
    "StoreUnavailableError",
    "check_db",
    "db_secrets",
    "describe_db",
    "is_postgresql_url",
    "redact",
    "store_for",
]

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql_url(db: str) -> bool:
    """Whether `db` names a PostgreSQL database (a `postgresql://` or `postgres://` URL)."""
    return db.startswith(POSTGRESQL_SCHEMES)


def check_db(db: str) -> None:
    """Check a `--db` value before serving: a PostgreSQL URL must parse, with its driver installed.

    Args:
        db: the `--db` value (an SQLite file name or ":memory:" passes as is).

    Raises:
        ValueError: naming `--db` (its passwords masked) and what is wrong: a
            URL libpq cannot parse, or the `postgresql` extra missing.
    """
    if not is_postgresql_url(db):
        return
    try:
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as error:
        raise ValueError(
            f"--db {describe_db(db)} needs the PostgreSQL driver:"
            f" pip install 'dispatch-client[postgresql]' ({error})"
        ) from None
    try:
        conninfo_to_dict(db)
    except Error as error:
        # libpq's message may quote the offending part, a password included.
        raise ValueError(
            f"--db {describe_db(db)} is not a valid PostgreSQL URL: {redact(str(error), db)}"
        ) from None


def store_for(db: str) -> Store:
    """Return the (unopened) store that `db` names.

    Args:
        db: a `postgresql://user:password@host:port/database` URL (query
            parameters are libpq's), an SQLite file name, or ":memory:".

    Returns:
        A `PgDispatchStore` for a PostgreSQL URL, else a `DispatchStore`.

    Raises:
        ImportError: a PostgreSQL URL without the `postgresql` extra installed.
        TypeError: `db` is not a str.
    """
    if not isinstance(db, str):
        raise TypeError(
            f"db must be a str (a file name, ':memory:' or a URL), got {type(db).__name__}"
        )
    if is_postgresql_url(db):
        try:
            from .pg_store import PgDispatchStore
        except ImportError as error:
            raise ImportError(
                f"--db {db.split('://', 1)[0]}://... needs the PostgreSQL driver:"
                f" pip install 'dispatch-client[postgresql]' ({error})"
            ) from error
        return PgDispatchStore(db)
    return DispatchStore(db)


class FanoutEvents:
    """`StoreEvents` feeding a `Fanout`, and the store's health for whoever watches it."""

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self.healthy = False
        """The store's health as last reported."""
        self._watchers: list[Callable[[bool], object]] = []

    def publish(
        self, microgrid_id: int, event: StreamMicrogridDispatchesResponse | StreamEvent
    ) -> None:
        """Hand a committed change to the microgrid's subscribers."""
        self._fanout.publish(microgrid_id, event)

    def feed_lost(self) -> None:
        """End every open stream with UNAVAILABLE: changes may have been missed."""
        self._fanout.close(
            "the server lost its database's change feed; re-open the stream and re-list"
        )

    def health_changed(self, healthy: bool) -> None:
        """Remember the store's health and tell the watchers."""
        self.healthy = healthy
        for watcher in list(self._watchers):
            watcher(healthy)

    def watch_health(self, watcher: Callable[[bool], object]) -> None:
        """Call `watcher(healthy)` now and on every change of the store's health."""
        self._watchers.append(watcher)
        watcher(self.healthy)
