"""What the service needs from a dispatch store: the `Store` protocol and its companions.

Two stores implement `Store`: `DispatchStore` (SQLite, one process, the
default) and `PgDispatchStore` (PostgreSQL, shared by any number of server
replicas); `stores.store_for(db)` picks one by the value of `--db`.

Events: a store with `publishes_events` False (SQLite) leaves publishing to the
service, which publishes after each write while holding its write lock, so
events leave in commit order. A store with `publishes_events` True
(PostgreSQL) delivers every committed change, made by this process or any
other sharing the database, to the `StoreEvents` given to `attach()`, in commit
order; the service then neither publishes nor serializes writes itself.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    DispatchData,
    StreamMicrogridDispatchesResponse,
)
from .fanout import StreamEvent
from .records import ListQuery, ListResult

__all__ = [
    "Change",
    "Replacement",
    "Store",
    "StoreEvents",
    "StoreUnavailableError",
    "db_secrets",
    "describe_db",
    "redact",
]


class StoreUnavailableError(GRPCError):
    """The store cannot be reached; the call fails with UNAVAILABLE (the client may retry)."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.UNAVAILABLE, message)


class Replacement(NamedTuple):
    """A dispatch's new data, as computed by an update from its current state."""

    data: DispatchData
    now: dt.datetime
    """The update time."""
    end_time: dt.datetime | None
    """The end of the new data's series, None when it never ends."""


Change = Callable[[Dispatch], Awaitable[Replacement]]
"""Computes a `Replacement` from a dispatch's current state (may raise to abort the update)."""


class StoreEvents(Protocol):
    """Where a store that publishes events (`publishes_events`) sends them."""

    def publish(
        self, microgrid_id: int, event: StreamMicrogridDispatchesResponse | StreamEvent
    ) -> None:
        """Hand a committed change to the microgrid's subscribers (must not block)."""

    def feed_lost(self) -> None:
        """Changes may have been missed (the feed broke): end the open streams."""

    def health_changed(self, healthy: bool) -> None:
        """The store became reachable (True) or unreachable (False)."""


class Store(Protocol):
    """A dispatch store: what `DispatchService` calls.

    Ids are assigned by the store, increase and are never reused. All writes
    are transactions. Times are stored as microseconds since the epoch; lists
    are ordered by a sort column then id, and paged by (sort key, id) of the
    last row, so page tokens stay valid while rows come and go.
    """

    @property
    def publishes_events(self) -> bool:
        """Whether the store delivers changes to the attached `StoreEvents` (see module doc)."""

    @property
    def is_open(self) -> bool:
        """Whether the store is open."""

    @property
    def healthy(self) -> bool:
        """Whether the store is open and reachable now."""

    def attach(self, events: StoreEvents) -> None:
        """Deliver events and health changes to `events` from now on (call before `open`)."""

    async def open(self) -> None:
        """Open (and if needed create or migrate) the store; no-op when open."""

    async def close(self) -> None:
        """Close the store; idempotent."""

    async def insert(
        self,
        microgrid_id: int,
        data: DispatchData,
        *,
        now: dt.datetime,
        end_time: dt.datetime | None,
    ) -> Dispatch:
        """Store a new dispatch and return it with its metadata (id, times)."""

    async def update(self, microgrid_id: int, dispatch_id: int, change: Change) -> Dispatch | None:
        """Replace a dispatch's data with `await change(current)`, atomically.

        Returns:
            The updated dispatch, or None when it does not exist.

        Raises:
            Exception: whatever `change` raises; nothing is written then.
        """

    async def delete(self, microgrid_id: int, dispatch_id: int) -> Dispatch | None:
        """Remove a dispatch; return it as it was, or None when it does not exist."""

    async def get(self, microgrid_id: int, dispatch_id: int) -> Dispatch | None:
        """Return one dispatch of a microgrid, or None."""

    async def get_encoded(self, microgrid_id: int, dispatch_id: int) -> bytes | None:
        """Return what `get` returns as `Dispatch` wire bytes (stored data unparsed), or None."""

    async def list(self, query: ListQuery) -> ListResult[Dispatch]:
        """Return one page of the dispatches matching `query`, and their total count."""

    async def list_encoded(self, query: ListQuery) -> ListResult[bytes]:
        """Return the page `list` returns with each dispatch as `Dispatch` wire bytes."""

    @property
    def nonces_known_since(self) -> float | None:
        """Unix time since which every used nonce is recorded; None if they outlive restarts.

        A store whose nonces die with the process (SQLite in memory) knows
        nothing of requests signed before it opened; the authenticator refuses
        those, since it cannot tell a replay from a first use.
        """

    async def use_nonce(self, nonce: str, expires_at: int, *, now: int) -> bool:
        """Record a request nonce; False when it is already recorded and not yet expired.

        Args:
            nonce: the nonce as sent.
            expires_at: unix seconds after which the nonce may be forgotten.
            now: the current unix time in seconds (entries older than it are expired).

        Returns:
            True for a nonce not seen before (or seen but expired), False for a replay.
        """


def db_secrets(db: str) -> list[str]:
    """The passwords a `--db` URL carries, as written and percent-decoded.

    A URL may hold one in its user info (`user:PASSWORD@host`) and in its
    `password=` query parameter; anything that is not a URL (an SQLite file
    name) carries none.

    Args:
        db: the `--db` value.

    Returns:
        Each password in every form it may be echoed in (may be empty).
    """
    _, sep, rest = db.partition("://")
    if not sep:
        return []
    found: list[str] = []
    location, _, query = rest.partition("?")
    credentials, at, _ = location.rpartition("@")
    if at and ":" in credentials:
        found.append(credentials.split(":", 1)[1])
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and urllib.parse.unquote(name) == "password":
            found.append(value)
    secrets = {form for raw in found for form in (raw, urllib.parse.unquote(raw)) if form}
    # Longest first, so that replacing one never leaves part of a longer one.
    return sorted(secrets, key=len, reverse=True)


def redact(text: str, db: str) -> str:
    """`text` with every password of `db` (see `db_secrets`) replaced by `***`."""
    for secret in db_secrets(db):
        text = text.replace(secret, "***")
    return text


def describe_db(db: str) -> str:
    """`db` as logs and errors may show it: a URL's passwords are replaced by `***`.

    Both places a PostgreSQL URL may carry a password are masked: the user
    info (`user:***@host`) and a `password=` query parameter.
    """
    scheme, sep, rest = db.partition("://")
    if not sep:
        return db
    location, question, query = rest.partition("?")
    credentials, at, host = location.rpartition("@")
    if at and ":" in credentials:
        location = f"{credentials.split(':', 1)[0]}:***@{host}"
    if question:
        pairs = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            if equals and urllib.parse.unquote(name) == "password":
                pair = f"{name}=***"
            pairs.append(pair)
        query = "&".join(pairs)
    return f"{scheme}{sep}{location}{question}{query}"
