"""What a shared stream is given (`StreamSettings`) and what it reports (`StreamState`, `StreamStatus`).

Also the one piece of state the streams of a hub share, `Unacknowledged`. The
streams themselves are in `dispatch_client._shared_stream`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ._proto.frequenz.api.dispatch.v1 import Dispatch, StreamMicrogridDispatchesResponse
from ._reconnect import Backoff, ReachabilityProber
from ._tasks import wait_event
from .errors import map_errors

__all__ = ["StreamSettings", "StreamState", "StreamStatus", "Unacknowledged"]


class StreamState(enum.Enum):
    """Where a shared stream is in its life."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A state change of a microgrid's shared stream, as passed to `on_status`."""

    microgrid_id: int
    state: StreamState
    failures: int = 0
    """Consecutive failed attempts so far."""
    retry_in: float | None = None
    """Seconds until the next attempt (RECONNECTING only)."""
    error: BaseException | None = None
    """Why the stream broke (RECONNECTING) or ended (FAILED)."""


class Unacknowledged:
    """How many of a hub's gRPC streams have their request out but do not count as open yet.

    Shared by the streams of one hub: a stream's catch-up list waits until
    none is left (see "Opening many streams at once" in the module
    docstring), or until as many were done with as were counted when it
    began waiting: streams opening later, or failing and opening again
    without end, must not hold it back for good. Not bound to an event
    loop: a client may be used by one `asyncio.run` after another.
    """

    __slots__ = ("_count", "_none", "acknowledged", "server_acknowledges")

    def __init__(self) -> None:
        self._count = 0
        self.acknowledged = 0
        """How many streams stopped being counted so far: progress, for `wait_for_none`."""
        self.server_acknowledges = False
        """Whether the server has acknowledged a stream of the hub (its initial metadata)."""
        self._none: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        """Set when none is left; made by the first waiter, in its loop."""

    def add(self) -> None:
        """Count a stream whose request is about to be sent."""
        self._count += 1

    def remove(self) -> None:
        """Stop counting a stream: it counts as open, or its attempt ended."""
        self._count -= 1
        self.acknowledged += 1
        if not self._count and self._none is not None:
            loop, none = self._none
            self._none = None
            if not loop.is_closed():
                none.set()

    async def wait_for_none(self, stall: float) -> None:
        """Wait until the streams counted now are done with, or none was for `stall` seconds.

        Done with: none is left, or as many were (acknowledged or failed) as
        were counted when this began.

        Args:
            stall: seconds without progress after which waiting is given up (a
                server that holds back acknowledgements must not hold up lists).
        """
        goal = self.acknowledged + self._count
        loop = asyncio.get_running_loop()
        while self._count and self.acknowledged < goal:
            if self._none is None or self._none[0] is not loop:
                self._none = (loop, asyncio.Event())
            seen = self.acknowledged
            await wait_event(self._none[1], stall)
            if self.acknowledged == seen:
                return


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Everything a shared stream needs from its hub, fixed when the hub is made."""

    open_stream: Callable[[int], AsyncIterator[StreamMicrogridDispatchesResponse | None]]
    """Opens one gRPC stream of a microgrid; may yield None first (see the module docstring)."""
    list_dispatches: Callable[[int], AsyncIterator[Dispatch]]
    """Yields every current dispatch of a microgrid (all pages)."""
    server_url: str
    """For error messages; it never holds credentials."""
    backoff: Backoff
    """The reconnect policy."""
    open_grace: float
    """Seconds an unacknowledged, quiet stream must stay up before it counts as open
    (only while the server has acknowledged none of the hub's streams)."""
    on_status: Callable[[StreamStatus], None] | None = None
    """Told of every state change; its failures are logged, never raised."""
    probe: Callable[[], Awaitable[object]] | None = None
    """Connects the channel now if it is not (raises if it cannot).

    Awaited before every attempt opens its stream; between attempts `prober` runs it.
    """
    prober: ReachabilityProber = field(default_factory=ReachabilityProber)
    """Runs `probe` for all the hub's streams waiting to retry (see `Backoff.probe`);
    the hub closes it. The default never probes."""
    unacknowledged: Unacknowledged = field(default_factory=Unacknowledged)
    """The hub's streams whose request is out but that do not count as open yet."""

    def typed(self, error: BaseException) -> BaseException:
        """Return the client's typed error for a transport failure, or `error` itself."""
        try:
            with map_errors(self.server_url):
                raise error
        except Exception as mapped:
            return mapped
        return error  # not reached: the block always raises
