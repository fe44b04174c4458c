"""When to re-open a broken stream: backoff with jitter, cut short once the server is back.

A failure is retried when its class says so (`DispatchApiError.retryable`). The
delay before attempt n+1 is drawn uniformly from [0, min(maximum, initial *
multiplier ** n)] ("full jitter", so many clients do not reconnect in lock
step). A long outage grows that bound to its cap, which would leave consumers
waiting long after the server is back; so while the server cannot be reached,
the wait probes it every `Backoff.probe` seconds (the channel tries to connect;
a connected channel costs nothing) and ends as soon as a probe succeeds. A
server found reachable is probed no more during that wait: its delay is for an
error it answered.

One prober for all the streams of a hub. They share one channel, so one
probe tells them all whether the server can be reached: `ReachabilityProber`
runs at most one probe per `Backoff.probe` seconds in a task of its own, on a
grid with a random phase (so many clients do not probe in lock step), for as
long as any stream waits, and hands every waiting stream its outcome. A
thousand streams waiting out an outage used to run a probe each, two a second
apiece (a timeout, the channel's shared connection attempt and a copy of its
failure each time): a quarter of a core. A stream that cannot reach the server
waits only for a success, so failed probes wake nobody. Only the outcome of a
probe started after a stream began waiting counts for it, as when each stream
probed for itself. A stream's own connection before an attempt counts as a
probe too: after an outage, the first stream whose delay is over finds the
server back and ends every other wait at once, without waiting for the
prober's next probe. `wait_to_retry` is the same wait with a prober of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from grpclib.exceptions import StreamTerminatedError

from ._tasks import OwnedTask, wait_event
from .connection import absorb_leaked_cancel
from .errors import DispatchApiError

__all__ = [
    "Backoff",
    "ReachabilityProber",
    "is_retryable",
    "next_probe_time",
    "unreachable",
    "wait_to_retry",
]

_log = logging.getLogger("dispatch_client.streaming")

_PROBE_TIMEOUT = 2.0
"""Longest a single reachability probe may take, in seconds."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """When to re-open a broken stream: exponential backoff with full jitter, cut short once the server is back."""

    initial: float = 0.2
    """Upper bound of the first delay, in seconds."""
    maximum: float = 30.0
    """Upper bound of any delay, in seconds (the cap)."""
    multiplier: float = 2.0
    """Growth of the bound per consecutive failure."""
    jitter: bool = True
    """Draw each delay uniformly from [0, bound]; False waits exactly the bound."""
    probe: float | None = 0.5
    """While the server cannot be reached, seconds between checks whether it can again;
    once it can, the stream re-opens at once instead of waiting out the delay. None: never
    cut a delay short."""

    def __post_init__(self) -> None:
        """Reject settings that would spin or never retry.

        Raises:
            ValueError: `initial` is not in (0, maximum], `maximum` is not
                finite, `multiplier` is below 1, or `probe` is not positive.
        """
        if not 0 < self.initial <= self.maximum or not math.isfinite(self.maximum):
            raise ValueError(
                f"Backoff needs 0 < initial <= maximum < inf, got {self.initial!r}, {self.maximum!r}"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"Backoff multiplier must be >= 1, got {self.multiplier!r}")
        if self.probe is not None and not (0 < self.probe < math.inf):
            raise ValueError(
                f"Backoff probe must be a positive number of seconds or None, got {self.probe!r}"
            )

    def delay(self, failures: int) -> float:
        """Return the delay before the next attempt.

        Args:
            failures: consecutive failed attempts so far.

        Returns:
            Seconds to wait.
        """
        try:
            bound = min(self.maximum, self.initial * self.multiplier**failures)
        except OverflowError:
            bound = self.maximum
        # Jitter spreads the reconnects of many clients after a server restart.
        return random.uniform(0.0, bound) if self.jitter else bound


def is_retryable(error: BaseException) -> bool:
    """Tell whether a stream or list failure is worth trying again after a delay."""
    return isinstance(error, DispatchApiError) and error.retryable


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the server could not be reached (rather than answered with an error)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError | StreamTerminatedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def next_probe_time(now: float, last: float, every: float, phase: float) -> float:
    """Return when the next probe may start: the first point of its grid not before `now` or `last + every`.

    The grid (`phase + k * every`) keeps probes at least `every` apart, however
    long one took, and its random phase keeps many clients out of lock step.

    Args:
        now: the current time, in seconds (the event loop's clock).
        last: when the previous probe started (`-math.inf`: none yet).
        every: seconds between probes, > 0.
        phase: the grid's offset, in seconds.

    Returns:
        The start time, in seconds on the same clock.
    """
    earliest = max(now, last + every)
    # The tolerance keeps float rounding from skipping the grid point `last + every`.
    return phase + math.ceil((earliest - phase) / every - 1e-9) * every


class _Outcome:
    """The result of one probe, for the streams that wait for it."""

    __slots__ = ("event", "number", "reached")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.number = 0
        """Which probe it is (they are numbered from 1 as they start); set before `event`."""
        self.reached = False


class ReachabilityProber:
    """Probes the server for all the streams of a hub that wait to retry (see the module docstring).

    Owned by the hub: its task runs only while a stream waits, and `aclose()`
    ends it. Not bound to an event loop: a client may be used by one
    `asyncio.run` after another.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]] | None = None,
        every: float | None = None,
        *,
        timeout: float = _PROBE_TIMEOUT,
    ) -> None:
        """Prepare a prober; nothing runs until a stream waits.

        Args:
            probe: connects the channel if it is not connected, raising if it
                cannot. None: never probe, every wait is slept out.
            every: seconds between probes (`Backoff.probe`); None: never probe.
            timeout: the longest a probe may take, in seconds; one taking longer failed.
        """
        self._probe = probe
        self._every = every
        self._timeout = timeout
        self._phase = random.uniform(0.0, every) if every is not None else 0.0
        self._last_start = -math.inf
        self._started = 0
        """Probes started so far: a waiter counts only those numbered above its start."""
        self._waiters = 0
        self._any = _Outcome()
        """Set when the next probe ends, whatever its outcome (for waiters that could reach the server)."""
        self._success = _Outcome()
        """Set when a probe next succeeds (for waiters that could not)."""
        self._task: OwnedTask | None = None
        self._ending: list[OwnedTask] = []
        """Tasks asked to stop (no waiter left) that `aclose()` must still wait for."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._epoch = 0
        """Counts event loops: a waiter left over from an earlier loop must not count down this one's."""

    async def wait_to_retry(self, delay: float, *, unreachable: bool) -> bool:
        """Sleep `delay` seconds, or less once a server that could not be reached can be again.

        Args:
            delay: the backoff delay, in seconds.
            unreachable: whether the failure that led here says the server could
                not be reached. A server found reachable by the first probe
                instead has the delay slept out; one that fails a probe counts
                as unreachable from then on.

        Returns:
            True if a probe cut the wait short.
        """
        if self._probe is None or self._every is None:
            await asyncio.sleep(delay)
            return False
        # asyncio's clock and events, not anyio's: this runs in a shared
        # stream's reader task, on asyncio only (see `dispatch_client._tasks`).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        epoch = self._enter(loop)
        try:
            if not unreachable:
                outcome = await self._next(deadline, success_only=False)
                if outcome is None:
                    return False
                unreachable = not outcome.reached
            if unreachable:
                return await self._next(deadline, success_only=True) is not None
        finally:
            self._leave(epoch)
        # Reachable all along: the delay is for an error the server answered.
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return False

    async def aclose(self) -> None:
        """Stop probing and wait, shielded and bounded, until the prober's tasks have finished."""
        tasks, self._ending = self._ending, []
        if self._task is not None:
            tasks.append(self._task)
            self._task = None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            # Tasks of an earlier event loop: they ended with it or never will.
            return
        for task in tasks:
            task.cancel()
        for task in tasks:
            await task.wait_closed()

    def _enter(self, loop: asyncio.AbstractEventLoop) -> int:
        if loop is not self._loop:
            # A new event loop (a later `asyncio.run`): the old one's events and
            # task are of no use here.
            self._loop = loop
            self._epoch += 1
            self._any, self._success = _Outcome(), _Outcome()
            self._task, self._ending, self._waiters = None, [], 0
        self._waiters += 1
        # A task that ended while streams still wait (a probe raised what
        # `_probe_once` does not catch, e.g. a CancelledError that was not the
        # hub's) is replaced: left, every wait would be slept out.
        if self._task is None or self._task.done:
            self._ending = [task for task in self._ending if not task.done]
            self._task = OwnedTask("dispatch-reachability-probe")
            self._task.start(self._run)
        return self._epoch

    def _leave(self, epoch: int) -> None:
        if epoch != self._epoch:
            return
        self._waiters -= 1
        if not self._waiters and self._task is not None:
            # Nobody waits: stop at once rather than at the next probe, so no
            # task lingers once the streams are closed.
            self._task.cancel()
            self._ending.append(self._task)
            self._task = None

    async def _next(self, deadline: float, *, success_only: bool) -> _Outcome | None:
        """Wait for the outcome of the next probe started after now (the next success with `success_only`).

        Returns:
            The outcome, or None if the deadline came first.
        """
        after = self._started
        loop = asyncio.get_running_loop()
        while True:
            outcome = self._success if success_only else self._any
            if not await wait_event(outcome.event, max(0.0, deadline - loop.time())):
                return None
            if outcome.number > after:
                return outcome
            # A probe that started before this wait says nothing about the
            # failure that led here: wait for the next one.

    async def _run(self) -> None:
        every = self._every
        assert every is not None
        loop = asyncio.get_running_loop()
        while self._waiters:
            now = loop.time()
            start = next_probe_time(now, self._last_start, every, self._phase)
            await asyncio.sleep(start - now)
            self._last_start = start
            number = self.probe_started()
            self._publish(number, reached=await self._probe_once())

    def probe_started(self) -> int:
        """Count a probe as started now; pass the number to `reached` if it succeeds.

        For the streams' own calls of the probe (each attempt connects first):
        one that succeeds is as good as the prober's, and comes sooner.

        Returns:
            The probe's number.
        """
        self._started += 1
        return self._started

    def reached(self, number: int) -> None:
        """Tell the waiting streams that probe `number` (from `probe_started`) succeeded."""
        # Only this event loop's waiters: a stream's first attempt in a later
        # loop comes before any wait there resets the count, and waking the
        # waiters of a loop closed with them raises "Event loop is closed".
        if self._waiters and asyncio.get_running_loop() is self._loop:
            self._publish(number, reached=True)

    def _publish(self, number: int, *, reached: bool) -> None:
        # Fresh outcomes first: a waiter woken by these waits for the next.
        ended, self._any = self._any, _Outcome()
        ended.number, ended.reached = number, reached
        ended.event.set()
        if reached:
            success, self._success = self._success, _Outcome()
            success.number, success.reached = number, True
            success.event.set()

    async def _probe_once(self) -> bool:
        assert self._probe is not None
        try:
            # The timeout inside: it withdraws its own cancel request, also when
            # grpclib turned it into an error, before the leaked ones are.
            with absorb_leaked_cancel():
                async with asyncio.timeout(self._timeout):
                    await self._probe()
        except Exception:
            # A failed or timed-out probe (its TimeoutError included): unreachable.
            return False
        return True


async def wait_to_retry(
    delay: float,
    backoff: Backoff,
    probe: Callable[[], Awaitable[object]] | None,
    *,
    unreachable: bool,
) -> bool:
    """Sleep `delay` seconds, or less once a server that could not be reached can be again.

    The wait of one stream with a prober of its own; a hub's streams share
    theirs (`ReachabilityProber.wait_to_retry`, same rules).

    Args:
        delay: the backoff delay, in seconds.
        backoff: its `probe` is the time between probes (None: never probe).
        probe: connects the channel if it is not connected, raising if it cannot.
        unreachable: whether the failure that led here says the server could not be reached.

    Returns:
        True if a probe cut the wait short.
    """
    prober = ReachabilityProber(probe, backoff.probe)
    try:
        return await prober.wait_to_retry(delay, unreachable=unreachable)
    finally:
        await prober.aclose()
