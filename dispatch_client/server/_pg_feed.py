"""The PostgreSQL store's change feed: LISTEN for committed seqs, read them back, publish.

`PgChangeFeed` is a base of `PgDispatchStore` (it holds the feed's half of the
store's methods); the store creates the state these methods use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import psycopg
import psycopg.sql

from .fanout import StreamEvent
from .replies import stream_event
from .store_api import (
    StoreEvents,
    redact,
)

# The store's logger: these lines were always logged (and password-filtered) under its name.
_log = logging.getLogger(__package__ + ".pg_store")

_EVENT_RETENTION = dt.timedelta(minutes=10)
"""Event rows only need to outlive their notification; older ones are deleted."""
_JANITOR_INTERVAL_S = 30.0
_RECONNECT_DELAYS_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class PgChangeFeed:
    """The LISTEN connection, the delivery of notified changes, the janitor and the feed's health."""

    url: str
    _timeout: float
    _heartbeat: float
    _channel: str
    _events: StoreEvents | None
    _notified: asyncio.Queue[int]
    _waiters: dict[int, asyncio.Event]
    _listening: bool
    _listening_changed: asyncio.Event

    if TYPE_CHECKING:

        async def _renew_pool(self) -> None: ...

        def _connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...

    async def _listen(self) -> None:
        attempt = 0
        lost = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))
                )
                async with conn:
                    await conn.execute(
                        psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._channel))
                    )
                    if lost:
                        await self._renew_pool()
                    attempt, lost = 0, False
                    self._set_listening(True)
                    await self._receive(conn)
            except (psycopg.Error, OSError, TimeoutError) as error:
                if self._listening or attempt == 0:
                    _log.warning(
                        "lost the PostgreSQL change feed: %s", redact(str(error), self.url)
                    )
            except Exception:
                # Never expected; without this the feed would stop while the
                # replica still reports itself healthy.
                _log.exception("the PostgreSQL change feed failed; reconnecting")
            lost = True
            if self._listening:
                self._set_listening(False)
                if self._events is not None:
                    self._events.feed_lost()
            await asyncio.sleep(_RECONNECT_DELAYS_S[min(attempt, len(_RECONNECT_DELAYS_S) - 1)])
            attempt += 1

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Queue the notified seqs; probe the connection whenever it stays silent.

        Returns only by raising: the connection broke, or its probe failed or
        took longer than `timeout_s` (a hung database, or a connection that a
        firewall dropped without a word, would otherwise look like a quiet one).
        """
        while True:
            async for notify in conn.notifies(timeout=self._heartbeat):
                try:
                    seq = int(notify.payload)
                except ValueError:
                    # Anyone with access to the database may NOTIFY this channel.
                    _log.warning(
                        "ignored a foreign notification on %s: %.40r", self._channel, notify
                    )
                    continue
                self._notified.put_nowait(seq)
            with anyio.move_on_after(self._timeout) as probe:
                await conn.execute("SELECT 1")
            if probe.cancelled_caught:
                raise TimeoutError(
                    f"the LISTEN connection did not answer a probe within {self._timeout:g} s"
                )

    async def _deliver(self) -> None:
        while True:
            seqs = [await self._notified.get()]
            while not self._notified.empty():
                seqs.append(self._notified.get_nowait())
            try:
                await self._deliver_batch(seqs)
            except Exception as error:
                # The changes are committed but did not reach this replica's
                # streams: end them, so their clients re-open and re-list.
                _log.warning(
                    "cannot read back %d change(s), ending the streams: %s",
                    len(seqs),
                    redact(str(error), self.url),
                )
                if self._events is not None:
                    self._events.feed_lost()
                for seq in seqs:
                    waiter = self._waiters.get(seq)
                    if waiter is not None:
                        waiter.set()

    async def _deliver_batch(self, seqs: Sequence[int]) -> None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT seq, microgrid_id, kind, dispatch FROM dispatch_events WHERE seq = ANY(%s)",
                (seqs,),
            )
            rows = {int(row[0]): row for row in await cursor.fetchall()}
        # Notification order is commit order; keep it.
        for seq in seqs:
            row = rows.get(seq)
            if row is not None and self._events is not None:
                _, microgrid_id, kind, blob = row
                # Sent as stored: parsed only if an in-process subscriber asks.
                self._events.publish(
                    microgrid_id if microgrid_id >= 0 else microgrid_id + 2**64,
                    StreamEvent(data=stream_event(blob, kind)),
                )
            waiter = self._waiters.get(seq)
            if waiter is not None:
                waiter.set()

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(_JANITOR_INTERVAL_S)
            try:
                async with self._connection() as conn:
                    await conn.execute(
                        "DELETE FROM dispatch_events WHERE created_at < now() - %s",
                        (_EVENT_RETENTION,),
                    )
                    await conn.execute(
                        "DELETE FROM used_nonces WHERE expires_at < %s", (int(time.time()),)
                    )
            except Exception as error:
                _log.debug("cleanup skipped: %s", redact(str(error), self.url))

    def _set_listening(self, listening: bool) -> None:
        if listening == self._listening:
            return
        self._listening = listening
        changed, self._listening_changed = self._listening_changed, asyncio.Event()
        changed.set()
        if self._events is not None:
            self._events.health_changed(listening)

    async def _wait_listening_changed(self) -> None:
        await self._listening_changed.wait()
