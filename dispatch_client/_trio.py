"""Run `Client` inside trio: grpclib on the client's own asyncio loop, in a thread.

Imported only when a client method is called inside trio (`_runtime` decides).

Why a thread, not trio-asyncio. grpclib needs an asyncio event loop, and the
client has to keep one for as long as it keeps a channel (one HTTP/2
connection for all calls) and shared streams (hub reader tasks that outlive
any single call). trio-asyncio provides that loop only inside
`async with trio_asyncio.open_loop()`, a nursery that must be entered and left
by the same task: the client cannot open it for the user in `get()` and close
it in a later `disconnect()`, and a client used without `async with` would
have nowhere to host it. Opening one per call would cost a connection per
call and could not host shared streams. trio-asyncio also replaces the
process-wide asyncio event loop policy. A private loop in a daemon thread
needs nothing but trio itself, keeps asyncio's own well-tested loop under
grpclib, and lets the client own its loop's whole life:

- The thread starts on the first call made inside trio and stops in
  `disconnect()` (so also at the end of `async with Client(...)`); a client
  dropped without disconnecting stops it when garbage-collected. A later call
  starts a new thread, like `connect()` after `disconnect()` opens a new
  channel.
- A coroutine method runs as an asyncio task on that loop; the trio caller
  waits for a reply that the task's completion sends back through the trio
  run's token, so no worker thread blocks on it. Errors are raised in the
  caller as they are.
- Cancellation: when the trio caller is cancelled, the task is cancelled
  (grpclib then resets the call's HTTP/2 stream) and the caller waits,
  shielded, until the task has finished before its `Cancelled` goes on, so
  nothing of the call outlives the cancel scope.
- An async generator (`list`, `stream`, `watch`, ...) is driven by one asyncio
  task for its whole life, one step per trio `__anext__`, as an asyncio
  consumer's task would drive it; closing the trio-side generator closes it.

Calls run in a fresh `contextvars` context: the caller's may carry sniffio's
"trio" marker (anyio sets it), which would make anyio inside the loop pick
its trio backend. Hooks the client calls itself, such as `on_stream_status`,
run in the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import aclosing, suppress
from typing import Any, Final, Generic, TypeVar

import trio

from .errors import ClientNotConnected

__all__ = ["bridged"]

_T = TypeVar("_T")

MIN_TRIO = (0, 27)
"""Oldest trio the bridge supports; keep in step with the `trio` extra in pyproject.toml."""


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version(trio.__version__) < MIN_TRIO:
    # `_runtime` adds the install hint when it imports this module.
    raise ImportError(
        f"trio {trio.__version__} is too old (need >= {'.'.join(map(str, MIN_TRIO))})"
    )


class _End:
    """Marks the end of a bridged async generator."""


_END: Final = _End()


class _Reply(Generic[_T]):
    """One outcome passed from the loop thread to a trio task waiting for it."""

    def __init__(self, loop: _LoopThread) -> None:
        self._loop = loop
        self._token = trio.lowlevel.current_trio_token()
        self._arrived = trio.Event()
        self._value: _T | None = None
        self._error: BaseException | None = None
        self.settled = False

    def settle(self, value: _T | None = None, error: BaseException | None = None) -> None:
        """Deliver the outcome; only the first call counts (called in the loop thread)."""
        if self.settled:
            return
        self.settled = True
        self._value, self._error = value, error
        self._loop._forget(self)
        # A trio run that has finished has nobody left to tell.
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._arrived.set)

    async def arrived(self) -> None:
        """Wait until the outcome is there, whatever it is."""
        await self._arrived.wait()

    async def wait(self, cancel: Callable[[], None]) -> _T:
        """Return the value or raise the error; if cancelled, call `cancel` and wait for the end."""
        try:
            await self._arrived.wait()
        except BaseException:
            # trio cancelled us: stop the asyncio side and wait until it has
            # stopped (its gRPC call reset), so nothing outlives the scope.
            cancel()
            with trio.CancelScope(shield=True):
                await self._arrived.wait()
            raise
        error, self._error = self._error, None
        if error is None:
            return self._value  # type: ignore[return-value]
        if isinstance(error, asyncio.CancelledError):
            # Not our cancellation (that one is raised above): the loop was shut down.
            raise self._loop.gone() from None
        try:
            raise error
        finally:
            del error


class _LoopThread:
    """A client's private asyncio event loop, running in a daemon thread until stopped."""

    _names = itertools.count(1)

    def __init__(self, client: object) -> None:
        self._client = weakref.ref(client)
        self._loop = asyncio.new_event_loop()
        self._stop_requested = self._loop.create_future()
        # Reentrant: the garbage collector may run the finalizer below while
        # this thread holds the lock.
        self._lock = threading.RLock()
        self._stopping = False
        self._ended = False
        self._unsettled: set[_Reply[Any]] = set()
        self._thread = threading.Thread(
            target=self._main, name=f"dispatch-client-loop-{next(self._names)}", daemon=True
        )
        # A client dropped without disconnect() must not leave its thread running.
        self._finalizer = weakref.finalize(client, self.request_stop)
        self._thread.start()

    @property
    def stopping(self) -> bool:
        """Whether `request_stop()` was called: the loop takes no new work."""
        return self._stopping

    def gone(self) -> ClientNotConnected:
        """Return the error for work that the stopping loop could not finish."""
        client = self._client()
        return ClientNotConnected(
            "the client was disconnected while the call was in flight",
            server_url=getattr(client, "server_url", None),
        )

    def _main(self) -> None:
        try:
            # The runner cancels what is left, finalizes async generators and closes the loop.
            with asyncio.Runner(loop_factory=lambda: self._loop) as runner:
                runner.run(self._until_stopped())
        finally:
            with self._lock:
                self._ended = True
                leftovers = list(self._unsettled)
            for reply in leftovers:
                reply.settle(error=self.gone())

    async def _until_stopped(self) -> None:
        await self._stop_requested

    # -- used from trio ----------------------------------------------------------

    def reply(self) -> _Reply[Any]:
        """Return a new reply, settled with an error if the thread has already ended."""
        reply: _Reply[Any] = _Reply(self)
        with self._lock:
            if not self._ended:
                self._unsettled.add(reply)
                return reply
        reply.settle(error=self.gone())
        return reply

    def _forget(self, reply: _Reply[Any]) -> None:
        with self._lock:
            self._unsettled.discard(reply)

    def submit(self, callback: Callable[[], object]) -> None:
        """Run `callback` in the loop thread soon; raise `ClientNotConnected` once stopping."""
        with self._lock:
            # Under the lock, so that no callback is queued behind the stop request.
            if self._stopping:
                raise self.gone()
            self._loop.call_soon_threadsafe(callback, context=contextvars.Context())

    def submit_quietly(self, callback: Callable[[], object]) -> None:
        """Like `submit`, but do nothing once stopping (the stop ends everything anyway)."""
        with suppress(ClientNotConnected):
            self.submit(callback)

    def request_stop(self) -> None:
        """Ask the loop to cancel what runs on it and end; safe from any thread, idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._finalizer.detach()
            # RuntimeError: the loop is closed already.
            with suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, self._stop_requested)

    async def stop(self) -> None:
        """Stop the loop and wait until its thread has ended."""
        ended = self.reply()
        self.request_stop()
        await ended.arrived()
        # Settled as the thread's last act: this join returns at once.
        self._thread.join()

    async def run(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run `make()` as a task on the loop and return its result (see the module docstring)."""
        reply: _Reply[_T] = self.reply()
        tasks: list[asyncio.Task[_T]] = []

        def start() -> None:
            try:
                task = self._loop.create_task(make())
            except BaseException as exc:
                reply.settle(error=exc)
                return
            tasks.append(task)
            task.add_done_callback(lambda done: _settle_from(reply, done))

        def cancel() -> None:
            for task in tasks:
                task.cancel()

        self.submit(start)
        return await reply.wait(lambda: self.submit_quietly(cancel))


class _Pump:
    """Drives one async generator from a single asyncio task, one step per request.

    Lives in the loop thread. A single task, as under asyncio where the
    consumer's task drives the generator: anyio cancel scopes and
    `asyncio.current_task()` inside it see the same task at every step.
    """

    def __init__(self, agen: AsyncGenerator[Any, None]) -> None:
        self._agen = agen
        self._inbox: asyncio.Queue[_Reply[Any] | None] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._drive())

    def request(self, step: _Reply[Any] | None) -> None:
        """Ask for the next item (settled into `step`), or for the end with None."""
        if self.task.done():
            if step is not None:
                step.settle(error=asyncio.CancelledError())
            return
        self._inbox.put_nowait(step)

    async def _drive(self) -> None:
        try:
            async with aclosing(self._agen):
                while (step := await self._inbox.get()) is not None:
                    try:
                        item = await anext(self._agen)
                    except StopAsyncIteration:
                        step.settle(_END)
                        return
                    except Exception as exc:
                        step.settle(error=exc)
                        return
                    except BaseException as exc:
                        step.settle(error=exc)
                        raise
                    step.settle(item)
        finally:
            # Requests that came in while the generator was ending get no item.
            while not self._inbox.empty():
                if (pending := self._inbox.get_nowait()) is not None:
                    pending.settle(error=asyncio.CancelledError())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle_from(reply: _Reply[_T], task: asyncio.Task[_T]) -> None:
    if task.cancelled():
        reply.settle(error=asyncio.CancelledError())
    elif (error := task.exception()) is not None:
        reply.settle(error=error)
    else:
        reply.settle(task.result())


# -- the entry point for `_runtime` --------------------------------------------------

_loops: weakref.WeakKeyDictionary[object, _LoopThread] = weakref.WeakKeyDictionary()
_loops_lock = threading.Lock()


def _loop_for(client: object) -> _LoopThread:
    with _loops_lock:
        loop = _loops.get(client)
        if loop is None or loop.stopping:
            loop = _loops[client] = _LoopThread(client)
        return loop


def bridged(
    kind: str, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call a `Client` method inside trio.

    Public methods call only undecorated internals, so a call never arrives
    here while another method's generator is being built.

    Args:
        kind: `"call"` (a coroutine method), `"iterate"` (a method returning
            an async generator) or `"disconnect"`.
        method: the undecorated method.
        args: its positional arguments, the client first.
        kwargs: its keyword arguments.

    Returns:
        A coroutine (for `"call"` and `"disconnect"`) or an async generator
        that runs the method on the client's asyncio loop thread.
    """
    client = args[0]
    if kind == "call":
        return _call(client, lambda: method(*args, **kwargs))
    if kind == "disconnect":
        return _disconnect(client, lambda: method(*args, **kwargs))
    # Built here, so that bad arguments raise at the call as under asyncio;
    # its body runs on the loop.
    return _iterate(client, method(*args, **kwargs))


async def _call(client: object, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    return await _loop_for(client).run(make)


async def _iterate(client: object, agen: AsyncGenerator[_T, None]) -> AsyncGenerator[_T, None]:
    """Yield what `agen` yields, driving it on the client's loop; closing this closes it."""
    loop = _loop_for(client)
    finished = loop.reply()
    pumps: list[_Pump] = []

    def start() -> None:
        try:
            pump = _Pump(agen)
        except BaseException as exc:
            finished.settle(error=exc)
            return
        pumps.append(pump)
        pump.task.add_done_callback(lambda _: finished.settle())

    def request(step: _Reply[Any] | None) -> None:
        if pumps:
            pumps[0].request(step)
        elif step is not None:
            step.settle(error=asyncio.CancelledError())

    def cancel() -> None:
        for pump in pumps:
            pump.task.cancel()

    loop.submit(start)
    try:
        while True:
            step: _Reply[_T | _End] = loop.reply()
            loop.submit(functools.partial(request, step))
            item = await step.wait(lambda: loop.submit_quietly(cancel))
            if isinstance(item, _End):
                return
            yield item
    finally:
        with trio.CancelScope(shield=True):
            if not finished.settled:
                loop.submit_quietly(lambda: request(None))
            await finished.arrived()


async def _disconnect(client: object, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with _loops_lock:
        loop = _loops.get(client)
    if loop is None:
        # Never used inside trio: there is no loop of ours, nor anything on one.
        await make()
        return
    try:
        await loop.run(make)
    except ClientNotConnected:
        if not loop.stopping:
            raise
        # Another disconnect() got there first; wait for it below.
    finally:
        with _loops_lock:
            if _loops.get(client) is loop:
                del _loops[client]
        with trio.CancelScope(shield=True):
            await loop.stop()
