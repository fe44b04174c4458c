"""When to re-open a broken stream: backoff with jitter, cut short once the server is back.

A failure is retried when its class says so (`DispatchApiError.retryable`). The
delay before attempt n+1 is drawn uniformly from [0, min(maximum, initial *
multiplier ** n)] ("full jitter", so many clients do not reconnect in lock
step). A long outage grows that bound to its cap, which would leave consumers
waiting long after the server is back; so while the server cannot be reached,
`wait_to_retry` probes it every `Backoff.probe` seconds (the channel tries to
connect, once for all streams that probe within `RETRY_AFTER` of a failure, see
`connect_shared`; a connected channel costs nothing) and returns as soon as a probe succeeds. A server found reachable is
probed no more during that wait: its delay is for an error it answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from grpclib.exceptions import StreamTerminatedError

from .connection import absorb_leaked_cancel
from .errors import DispatchApiError

__all__ = ["Backoff", "is_retryable", "unreachable", "wait_to_retry"]

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


async def wait_to_retry(
    delay: float,
    backoff: Backoff,
    probe: Callable[[], Awaitable[object]] | None,
    *,
    unreachable: bool,
) -> bool:
    """Sleep `delay` seconds, or less once a server that could not be reached can be again.

    Args:
        delay: the backoff delay, in seconds.
        backoff: its `probe` is the time between probes (None: never probe).
        probe: connects the channel if it is not connected, raising if it cannot.
        unreachable: whether the failure that led here says the server could not be reached.

    Returns:
        True if a probe cut the wait short.
    """
    every = backoff.probe
    if probe is None or every is None:
        await asyncio.sleep(delay)
        return False
    # asyncio's clock and timeouts, not anyio's: this runs in a shared
    # stream's reader task, on asyncio only (see `dispatch_client._tasks`).
    clock = asyncio.get_running_loop().time
    deadline = clock() + delay
    # A random first step, so many clients do not probe in lock step.
    step = random.uniform(0.0, every)
    while (left := deadline - clock()) > 0:
        await asyncio.sleep(min(step, left))
        step = every
        left = deadline - clock()
        if left <= 0:
            return False
        reached = False
        try:
            # The timeout inside: it withdraws its own cancel request, also when
            # grpclib turned it into an error, before the leaked ones are.
            with absorb_leaked_cancel():
                async with asyncio.timeout(min(left, _PROBE_TIMEOUT)):
                    await probe()
            reached = True
        except Exception:
            # A failed or timed-out probe (its TimeoutError included): unreachable.
            pass
        if not reached:
            unreachable = True
        elif unreachable:
            return True
        else:
            # Reachable all along: the delay is for an error the server answered.
            await asyncio.sleep(max(0.0, deadline - clock()))
            return False
    return False
