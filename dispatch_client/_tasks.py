"""Background tasks owned by one object, and closing async iterators without masking errors.

An object that must keep reading while its users come and go (a shared stream,
the reader behind `running()`) hosts that work in a task of its own. Such a
task must never outlive its owner: `OwnedTask` is started, cancelled and waited
for by the owner only, and waiting is shielded (a consumer that is itself being
cancelled still waits for the task to finish) and bounded (a hung clean-up cannot
hang the consumer). The task is an asyncio task because grpclib only runs on
asyncio; everything inside it uses anyio.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

__all__ = ["CLOSE_TIMEOUT", "OwnedTask", "aclose_quietly"]

_log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
"""Upper bound, in seconds, for waiting on a cancelled task, so a hung close cannot hang its owner."""


class OwnedTask:
    """One background task, started, cancelled and awaited by the object that owns it.

    The task runs `body` inside a cancel scope that only `cancel()` cancels, then
    `cleanup` outside that scope (so clean-up is not cancelled by the owner's own
    request), then marks itself done.
    """

    def __init__(self, name: str, *, close_timeout: float = CLOSE_TIMEOUT) -> None:
        """Prepare a task; nothing runs until `start()`.

        Args:
            name: the asyncio task's name (shown in task dumps and debug logs).
            close_timeout: how long `wait_closed()` waits at most, in seconds.
        """
        self.name = name
        self._close_timeout = close_timeout
        self._scope = anyio.CancelScope()
        # asyncio's: the task is an asyncio task, and an anyio.Event costs a
        # backend lookup more to make, once per shared stream.
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
        return self._scope.cancel_called

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
            cleanup: run after `body` has ended, however it ended, outside the
                cancel scope of `cancel()`.
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
        """Ask the task to stop; `wait_closed()` waits until it has."""
        self._scope.cancel()

    async def wait_closed(self) -> None:
        """Wait until the task has finished, even while being cancelled, for at most the close timeout."""
        if self._task is None:
            return
        # Shielded so a consumer that is itself being cancelled still waits for
        # the task; bounded so a hung close cannot hang the consumer.
        with anyio.move_on_after(self._close_timeout, shield=True):
            await self._done.wait()

    async def _main(
        self, body: Callable[[], Awaitable[None]], cleanup: Callable[[], Awaitable[None]] | None
    ) -> None:
        try:
            with self._scope:
                await body()
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
