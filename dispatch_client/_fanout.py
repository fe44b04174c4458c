"""Each consumer's bounded buffer, what it is fed and what happens when it falls behind.

A shared stream feeds its consumers with `send_nowait`, so a slow consumer
never slows the reader or the others. What a consumer is fed depends on its
`Audience`:

- `CATCH_UP` (`stream()`, the default): events as the stream's own view of
  what its consumers were told lets them through; after a gap, the changes
  missed, then live events again.
- `RAW` (`stream(on_gap="raise")`): the server's events exactly as they come;
  at a gap the consumer ends with `StreamGap`.
- `WATCH` (`watch()`): a `Snapshot` first, then events; a `Snapshot` again
  when it fell behind with `overflow="resync"`.

When a consumer's buffer is full, its `overflow` policy applies: `"error"`
(default) ends it and, after it has read what was buffered, raises
`StreamOverflow` in it; `"drop_oldest"` discards its oldest event (the consumer
chose to lose events); `"resync"` (`watch()` only) discards its backlog and
queues a `Snapshot` of the stream's current state instead, which loses nothing
because the snapshot reflects every change the dropped events carried.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ._proto.frequenz.api.dispatch.v1 import Dispatch
from .errors import StreamOverflow
from .watchview import DispatchEvent

__all__ = ["Audience", "Batch", "Consumer", "Item", "Overflow", "Snapshot"]

Overflow: TypeAlias = Literal["error", "drop_oldest", "resync"]

YIELD_EVERY = 64
"""A consumer reading buffered items yields to the event loop once per this many."""


class Audience(enum.Enum):
    """What a consumer is fed (see the module docstring)."""

    CATCH_UP = "catch_up"
    RAW = "raw"
    WATCH = "watch"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every dispatch of the microgrid at one moment, by id: what a watcher becomes."""

    dispatches: Mapping[int, Dispatch]


@dataclass(frozen=True, slots=True)
class Batch:
    """Events delivered together, as one buffered item: a catch-up after a gap.

    One item, so a catch-up of any size fits in a buffer that has room for one.
    """

    events: tuple[DispatchEvent, ...]


Item: TypeAlias = DispatchEvent | Snapshot | Batch


class Consumer:
    """One consumer's bounded buffer and overflow policy."""

    def __init__(
        self,
        microgrid_id: int,
        buffer_size: int,
        overflow: Overflow,
        *,
        audience: Audience,
        server_url: str,
        snapshot: Callable[[], Snapshot] | None = None,
    ) -> None:
        """Make an empty buffer.

        Args:
            microgrid_id: for error messages.
            buffer_size: items it may fall behind by (>= 1).
            overflow: what happens when it falls further behind.
            audience: what it is fed.
            server_url: for error messages.
            snapshot: the stream's current state, for `overflow="resync"`.
        """
        self.microgrid_id = microgrid_id
        self.buffer_size = buffer_size
        self.overflow = overflow
        self.audience = audience
        self.server_url = server_url
        self.has_snapshot = audience is not Audience.WATCH
        """Whether it may be fed events (a watcher first needs its snapshot)."""
        self.ended = False
        """No more items will come: the stream ended, or this consumer overflowed or left."""
        self.error: BaseException | None = None
        self._snapshot = snapshot
        # A deque and one waiter rather than a memory object stream: anyio's
        # receive() yields to the event loop before every item, once per event
        # per consumer, which was most of the fan-out's cost. The waiter is a
        # bare asyncio future (an anyio.Event costs ten times as much to make,
        # once per wait): the hub runs on asyncio only, as grpclib does.
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._streak = 0

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _put(self, item: Item) -> None:
        self._items.append(item)
        if self._waiter is not None:
            self._wake()

    def offer(self, item: Item) -> bool:
        """Queue `item` without waiting.

        Args:
            item: an event, a batch of them, or a snapshot.

        Returns:
            False if the consumer must be detached (it left, or overflowed with
            `overflow="error"`).
        """
        if isinstance(item, Snapshot):
            self.has_snapshot = True
        if self.ended:
            return False
        if len(self._items) < self.buffer_size:
            self._put(item)
            return True
        if self.overflow == "drop_oldest":
            self._items.popleft()
            self._put(item)
            return True
        if self.overflow == "resync" and self._snapshot is not None:
            # The stream's state already includes `item` and every dropped event.
            self._items.clear()
            self._put(item if isinstance(item, Snapshot) else self._snapshot())
            return True
        self.end(
            StreamOverflow(
                f"a consumer of microgrid {self.microgrid_id} fell behind by more than "
                f"{self.buffer_size} events",
                server_url=self.server_url,
            )
        )
        return False

    def end(self, error: BaseException | None = None) -> None:
        """Stop feeding this consumer; it reads what is buffered, then sees `error` or the end."""
        if self.error is None:
            self.error = error
        self.ended = True
        self._wake()

    def close(self) -> None:
        """Release the buffer (the consumer left)."""
        self.end()
        self._items.clear()

    async def next(self) -> Item | None:
        """Return the next item, None at a clean end, or raise the error that ended the stream."""
        while True:
            if self._items:
                self._streak += 1
                if self._streak < YIELD_EVERY:
                    return self._items.popleft()
                # A consumer far behind still lets the loop (and a cancellation) in now and then
                # (what anyio's checkpoint does on asyncio, without loading anyio).
                self._streak = 0
                await asyncio.sleep(0)
                continue
            if self.ended:
                break
            self._streak = 0
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.error is not None:
            raise self.error
        return None

    def drain_nowait(self) -> Iterator[Item]:
        """Yield what is buffered right now without waiting."""
        while self._items:
            yield self._items.popleft()
