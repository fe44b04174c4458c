"""Background tasks owned by one object, and closing async iterators without masking errors.

An object that must keep reading while its users come and go (a shared stream,
the reader behind `running()`) hosts that work in a task of its own. Such a
task must never outlive its owner: `OwnedTask` is started, cancelled and waited
for by the owner only, and waiting is shielded (a consumer that is itself being
cancelled still waits for the task to finish) and bounded (a hung clean-up cannot
hang the consumer).

The task is an asyncio task because grpclib only runs on asyncio (under trio
the client runs its own asyncio loop in a thread, see `dispatch_client._trio`),
and this module uses asyncio's own primitives, not anyio's: a stream opened in
an asyncio program loads none of anyio (its asyncio backend alone costs about
20 ms of CPU, paid inside the first `stream()` call).

Cancellation stays level-triggered, as in a cancelled anyio scope: once the
owner called `cancel()`, the task is cancelled again at every await (at most
once per event-loop cycle) until its body has ended. A single `task.cancel()`
could be lost: grpclib turns a cancellation that arrives while its connection
dies into its own error, the hub then withdraws the cancel requests such an
error leaves counted (`connection.withdraw_leaked_cancels`), takes the error
for a broken stream and would reconnect, with nobody left to stop it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = ["CLOSE_TIMEOUT", "OwnedTask", "aclose_quietly", "wait_event"]

_log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
"""Upper bound, in seconds, for waiting on a cancelled task, so a hung close cannot hang its owner."""

_hosts: dict[asyncio.Task[None], OwnedTask] = {}
"""The owned tasks running their body, by task: `wait_closed()` holds off their owner's cancel."""


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set, for at most `seconds` (anyio's `move_on_after` around a wait).

    Args:
        event: the event to wait for.
        seconds: the longest wait, >= 0 (`math.inf`: no bound).

    Returns:
        Whether the event is set; False when the time ran out.

    Raises:
        CancelledError: the caller was cancelled meanwhile (never turned into a timeout).
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds) as window:
            await event.wait()
    except TimeoutError:
        # Only this window's own expiry: a TimeoutError from anywhere else goes on.
        if not window.expired():
            raise
        return False
    return True


def _anyio_loaded() -> bool:
    """Whether anyio's asyncio backend is loaded: without it, no anyio cancel scope can exist."""
    return "anyio._backends._asyncio" in sys.modules


class OwnedTask:
    """One background task, started, cancelled and awaited by the object that owns it.

    The task runs `body` until it ends or `cancel()` stops it, then `cleanup`
    (which the owner's cancellation no longer reaches), then marks itself done.
    The owner's cancellation ends the body quietly, as a cancelled cancel
    scope would; a cancellation by anyone else (loop shutdown) goes on.
    """

    def __init__(self, name: str, *, close_timeout: float = CLOSE_TIMEOUT) -> None:
        """Prepare a task; nothing runs until `start()`.

        Args:
            name: the asyncio task's name (shown in task dumps and debug logs).
            close_timeout: how long `wait_closed()` waits at most, in seconds.
        """
        self.name = name
        self._close_timeout = close_timeout
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cancel_called = False
        self._in_body = False
        """The body runs: the owner's cancellation is delivered (again) while this holds."""
        self._delivered = 0
        """Cancel requests made on the task by `cancel()`, withdrawn when the body ends."""
        self._shields = 0
        """`wait_closed()` calls the task is in: the owner's cancellation waits until they end."""
        self._redelivery: asyncio.Handle | None = None

    def __repr__(self) -> str:
        state = (
            "done"
            if self._done.is_set()
            else "running"
            if self._task is not None
            else "not started"
        )
        return f"OwnedTask({self.name!r}, {state})"

    @property
    def started(self) -> bool:
        """Whether `start()` was called."""
        return self._task is not None

    @property
    def cancel_called(self) -> bool:
        """Whether the owner asked the task to stop (a cancellation by anyone else does not count)."""
        return self._cancel_called

    @property
    def done(self) -> bool:
        """Whether the task has finished, clean-up included."""
        return self._done.is_set()

    def start(
        self,
        body: Callable[[], Awaitable[None]],
        *,
        cleanup: Callable[[], Awaitable[None]] | None = None,
        needs_loop: str = "needs a running asyncio event loop",
    ) -> None:
        """Start the task in the running asyncio loop.

        Args:
            body: the work; cancelled by `cancel()`.
            cleanup: run after `body` has ended, however it ended; `cancel()`
                does not reach it.
            needs_loop: the message of the RuntimeError raised without a running
                asyncio loop (say what needs it and what to do instead).

        Raises:
            RuntimeError: there is no running asyncio event loop, or the task was
                started already.
        """
        if self._task is not None:
            raise RuntimeError(f"{self.name} was started already")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(needs_loop) from None
        self._task = loop.create_task(self._main(body, cleanup), name=self.name)

    def cancel(self) -> None:
        """Ask the task to stop; `wait_closed()` waits until it has.

        The request sticks: the task is cancelled at every await until its
        body has ended (see the module docstring). Before the task runs, its
        body is cancelled at its first await.
        """
        if self._cancel_called:
            return
        self._cancel_called = True
        if self._in_body:
            self._deliver()

    async def wait_closed(self) -> None:
        """Wait until the task has finished, even while being cancelled, for at most the close timeout.

        Shielded as an anyio shielded scope is: an owner's `cancel()` of the
        calling task, when it is an `OwnedTask` too, and an anyio cancel scope
        around the caller take effect once the wait is over; a plain
        `task.cancel()` of the caller ends the wait at once.
        """
        if self._task is None or self._done.is_set():
            return
        caller = asyncio.current_task()
        host = _hosts.get(caller) if caller is not None else None
        if host is not None:
            host._shields += 1
        try:
            if _anyio_loaded():
                # An anyio scope around the caller would cancel it again at every
                # await: only anyio's own shield holds that off. With anyio's
                # backend not loaded there is no such scope, nor its cost.
                import anyio

                with anyio.move_on_after(self._close_timeout, shield=True):
                    await self._done.wait()
            else:
                await wait_event(self._done, self._close_timeout)
        finally:
            if host is not None:
                host._shields -= 1
                if not host._shields and host._cancel_called and host._redelivery is None:
                    host._deliver()

    def _deliver(self) -> None:
        """Cancel the task unless a cancellation is on its way; come back next cycle while the body runs."""
        self._redelivery = None
        task = self._task
        if task is None or not self._in_body or self._shields:
            return
        loop = task.get_loop()
        # As anyio delivers a scope's cancellation: not to the task that is
        # running (it is cancelled at its next await, a cycle later), not twice
        # before the task saw the first, and not to a task already woken with
        # a result (that result would be lost).
        if task is not asyncio.current_task(loop) and not task._must_cancel:  # type: ignore[attr-defined]
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if waiter is None or not waiter.done():
                task.cancel()
                self._delivered += 1
        self._redelivery = loop.call_soon(self._deliver)

    async def _main(
        self, body: Callable[[], Awaitable[None]], cleanup: Callable[[], Awaitable[None]] | None
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            _hosts[task] = self
            self._in_body = True
            if self._cancel_called:
                # Cancelled before it ran: at the body's first await, as a scope
                # cancelled before it is entered.
                self._deliver()
            try:
                await body()
            finally:
                self._in_body = False
                del _hosts[task]
                if self._redelivery is not None:
                    self._redelivery.cancel()
                    self._redelivery = None
                # The owner's requests are withdrawn (the clean-up runs without
                # them), except those the body withdrew itself.
                while self._delivered and task.cancelling():
                    task.uncancel()
                    self._delivered -= 1
                self._delivered = 0
        except asyncio.CancelledError:
            # The owner's cancellation ends the body quietly; one that another
            # request still stands behind (loop shutdown) goes on.
            if not self._cancel_called or task.cancelling():
                raise
        finally:
            try:
                if cleanup is not None:
                    await cleanup()
            finally:
                self._done.set()


async def aclose_quietly(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator now (not at garbage collection), logging rather than raising a failure.

    The caller is leaving, or already holds the error that ended the iterator;
    a failure while closing must not mask that.

    Args:
        iterator: any async iterator; one without `aclose()` is left alone.
    """
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        _log.warning("closing %r failed", iterator, exc_info=True)
