"""One owned thread that runs blocking calls one at a time, in submission order.

`SerialWorker` serves the SQLite store: its connection is used by this thread
only. Callers in the event loop queue calls; the thread takes everything
queued, runs it one call after the other, and hands the finished calls back to
the loop in one wake-up (`call_soon_threadsafe`, or trio's `run_sync_soon`),
so many concurrent callers cost one thread switch and one loop wake-up per
batch instead of one of each per call (`anyio.to_thread.run_sync` behind a
`CapacityLimiter(1)` woke one waiter per loop turn and paid both per call).

Cancellation of a caller, as `to_thread.run_sync` without abandoning:

- its call has started (or finished): the caller still waits for it to end,
  then the cancellation goes on; a started write is never left behind;
- its call is still queued: it is dropped, never run. Nobody waits for its
  result, so a write that would commit could not be published; a dropped one
  commits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio

_T = TypeVar("_T")

# Queued, then started by the thread or dropped by its cancelled caller (under
# the worker's lock, so exactly one of the two happens).
_QUEUED, _STARTED, _DROPPED = 0, 1, 2
# A batch of long calls hands back what is done after this long, so a quick
# call queued behind a slow one is not held until the whole batch ends.
_FLUSH_AFTER_S = 0.002
# How long `stop` waits for the thread to end once the last queued call has
# been handed back (it has nothing left to do but return).
_JOIN_TIMEOUT_S = 10.0

# The event loop's thread-safe "call this soon": (callback, *args) -> anything.
_Wake = Callable[..., object]


class _Call(Generic[_T]):
    __slots__ = ("done", "error", "func", "result", "state")

    def __init__(self, func: Callable[[], _T]) -> None:
        self.func = func
        self.state = _QUEUED
        self.result: _T | None = None
        self.error: BaseException | None = None
        # Set in the event loop's thread, by the batch's hand-back.
        self.done = anyio.Event()


def _loop_waker() -> _Wake:
    """Return the running event loop's thread-safe "call this soon" function."""
    if "trio" in sys.modules:
        import sniffio

        if sniffio.current_async_library() == "trio":
            import trio

            waker: _Wake = trio.lowlevel.current_trio_token().run_sync_soon
            return waker
    return asyncio.get_running_loop().call_soon_threadsafe


class SerialWorker:
    """A thread running submitted calls one at a time, in submission order.

    Start it with `start()` from the event loop it answers to; `run(func)`
    returns `func()`'s result (or raises its exception) to that caller only;
    `stop()` runs what is queued, then ends and joins the thread.

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Call[Any]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._wake: _Wake | None = None

    @property
    def running(self) -> bool:
        """Whether the thread has started and not been stopped."""
        return self._thread is not None and not self._stopping

    def start(self) -> None:
        """Start the thread, answering to the running event loop.

        Raises:
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self._name} has already been started")
        self._wake = _loop_waker()
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()

    async def run(self, func: Callable[[], _T]) -> _T:
        """Run `func()` in the thread after every call submitted before it.

        Args:
            func: the blocking call; it runs in the worker's thread.

        Returns:
            What `func` returned.

        Raises:
            RuntimeError: the worker is not running.
            BaseException: whatever `func` raised, unchanged.
        """
        call = _Call(func)
        with self._cond:
            if self._thread is None or self._stopping:
                raise RuntimeError(f"{self._name} is not running")
            self._queue.append(call)
            if len(self._queue) == 1:
                self._cond.notify()
        await self._wait(call)
        if call.error is not None:
            error, call.error = call.error, None
            raise error
        return call.result  # type: ignore[return-value]

    async def _wait(self, call: _Call[_T]) -> None:
        try:
            await call.done.wait()
        except BaseException:
            # Cancelled. A queued call is dropped; a started one is waited
            # for, shielded, so it never outlives the caller that ran it.
            with self._cond:
                if call.state == _QUEUED:
                    call.state = _DROPPED
                    raise
            with anyio.CancelScope(shield=True):
                while not call.done.is_set():
                    try:
                        await call.done.wait()
                    except anyio.get_cancelled_exc_class():
                        # A plain task.cancel() reaches through a shield: the
                        # caller still waits, and leaves cancelled.
                        continue
            raise

    async def stop(self) -> None:
        """Run what is queued, then end the thread and join it; idempotent.

        Shielded from cancellation: the calls queued before it still end. The
        join waits 10 s at most once the last call has been handed back.
        """
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            if self._stopping:
                return
        # The last call in the queue: when it is handed back every earlier
        # one has ended, and the thread ends after it.
        with anyio.CancelScope(shield=True):
            last = _Call(lambda: None)
            with self._cond:
                self._queue.append(last)
                self._stopping = True
                self._cond.notify()
            await last.done.wait()
        thread.join(_JOIN_TIMEOUT_S)

    def stop_now(self) -> None:
        """Tell the thread to end after what is queued, without waiting (the owner is gone)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _serve(self) -> None:
        cond, wake = self._cond, self._wake
        assert wake is not None
        while True:
            with cond:
                while not self._queue and not self._stopping:
                    cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            done: list[_Call[Any]] = []
            flushed = time.monotonic()
            for call in batch:
                with cond:
                    if call.state == _DROPPED:
                        continue
                    call.state = _STARTED
                try:
                    call.result = call.func()
                except BaseException as error:  # handed to its caller
                    call.error = error
                done.append(call)
                if time.monotonic() - flushed > _FLUSH_AFTER_S:
                    self._hand_back(wake, done)
                    done = []
                    flushed = time.monotonic()
            if done:
                self._hand_back(wake, done)

    @staticmethod
    def _hand_back(wake: _Wake, done: list[_Call[Any]]) -> None:
        # RuntimeError: the event loop has closed, nobody is left to wake.
        with contextlib.suppress(RuntimeError):
            wake(_set_done, done)


def _set_done(done: list[_Call[Any]]) -> None:
    for call in done:
        call.done.set()
