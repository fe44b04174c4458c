"""Execute dispatches: one handler task per running dispatch (or merged run).

`manage(client, microgrid_id, type, handler)` (also `Client.manage`) follows
`Client.running()` and, for every run that starts, calls `await handler(run)`
in a task of a task group it owns:

- `run.dispatch` is the current version of the dispatch (for a merged run: of
  the member that joined or changed last), `run.members` every member running,
  and `async for dispatch in run.updates()` yields each new version. Updates
  conflate: a handler busy elsewhere sees the latest version next, not every
  one in between, which is what an executor wants (the current instruction).
- When the run stops, the handler's task is cancelled (a cancel scope per run).
- A handler that raises an `Exception` is logged and called again after
  `retry_interval` while the run goes on; an update of the run during that wait
  calls it again at once with the new version. So is one that raises the
  cancellation exception without having been cancelled (say, it awaited a
  future someone else cancelled): left alone, the task group would take that
  for a cancellation of all of `manage()`. A handler that returns is not called
  again for this run (the next run of the same dispatch or group calls it anew).
- A handler that raises a `BaseException` that is no `Exception` (such as
  `KeyboardInterrupt` or `SystemExit`), or a handler that is not async (its call
  returns no awaitable), ends `manage()`: the other handlers are cancelled and
  that exception (for the latter a `TypeError`) is raised by `manage()` as is,
  not wrapped in an exception group.
- `manage()` runs until cancelled, or until `running()` ends because the client
  disconnected; then it cancels the handlers still running and returns. An
  error that ends `running()` (say, the server rejects the key) is raised here
  once the handlers are gone. No task outlives `manage()`.

Everything here is anyio, so `manage()` runs under asyncio, anyio on either
backend, and trio: under trio, `client.running()` goes through the client's
bridge (`dispatch_client._trio`) and the handlers run as trio tasks.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from . import _defaults
from ._proto.frequenz.api.dispatch.v1 import Dispatch
from .schedule import Merge, RunTransition, Transition, merge_key

if TYPE_CHECKING:
    from .client import Client

__all__ = ["DEFAULT_RETRY_INTERVAL", "Handler", "Run", "manage"]

_log = logging.getLogger(__name__)

DEFAULT_RETRY_INTERVAL = _defaults.RETRY_INTERVAL
"""How long `manage()` waits before calling a failed handler again."""


def _dispatch_id(dispatch: Dispatch) -> int:
    return dispatch.metadata.dispatch_id if dispatch.metadata is not None else 0


class Run:
    """A run being executed, as its handler sees it: the current versions and their updates."""

    def __init__(self, started: RunTransition) -> None:
        """Start following the run that `started` (a STARTED transition) began."""
        self._key = started.key
        self._started_at = started.at
        # Member ids, least recently joined or changed first (a dict: ordered, O(1) membership).
        self._recency: dict[int, None] = {}
        self._version = 0
        self._seen = 0
        self._attempt = 0
        self._changed = anyio.Event()
        self._latest = started
        self._apply(started)

    def __repr__(self) -> str:
        return (
            f"Run(key={self._key!r}, dispatch={_dispatch_id(self.dispatch)},"
            f" members={[_dispatch_id(m) for m in self.members]}, attempt={self._attempt})"
        )

    @property
    def key(self) -> Hashable:
        """The run's group key: the dispatch id, or what the merge strategy made of it."""
        return self._key

    @property
    def started_at(self) -> datetime:
        """When the run started (the `at` of its STARTED transition, UTC)."""
        return self._started_at

    @property
    def dispatch(self) -> Dispatch:
        """The current version of the dispatch (merged: the member that joined or changed last)."""
        latest = self._latest.dispatch
        wanted = next(reversed(self._recency))
        if wanted == _dispatch_id(latest):
            return latest
        return next(m for m in self._latest.members if _dispatch_id(m) == wanted)

    @property
    def members(self) -> tuple[Dispatch, ...]:
        """Every dispatch running in this run, current versions, in the order they joined."""
        return self._latest.members

    @property
    def attempt(self) -> int:
        """How many times the handler has been called for this run, this call included."""
        return self._attempt

    def updates(self) -> AsyncIterator[Dispatch]:
        """Yield `dispatch` each time the run is UPDATED, from the handler call's start on.

        Versions that arrive while the handler is busy elsewhere conflate into
        the latest. In a merged run a member leaving yields too (`dispatch`
        may then be a version already seen; read `members`). The iterator
        never ends by itself: the handler's task is cancelled when the run
        stops. Use one iterator at a time per handler call.

        Yields:
            The current `dispatch` after each change not yet yielded.
        """
        return self._updates()

    async def _updates(self) -> AsyncIterator[Dispatch]:
        while True:
            await self._wait_change()
            self._seen = self._version
            yield self.dispatch

    async def _wait_change(self) -> None:
        """Wait until there is a version this handler call has not seen."""
        while self._seen == self._version:
            await self._changed.wait()

    def _apply(self, transition: RunTransition) -> None:
        # O(1) per transition: each transition of `RunTracker` changes exactly
        # its cause (joined, changed or left), and `members` comes built. A
        # rebuild from all members, O(members) per transition, made 1000
        # members joining at one instant cost seconds.
        self._latest = transition
        cause = _dispatch_id(transition.dispatch)
        self._recency.pop(cause, None)
        running = len(transition.members)
        if running == len(self._recency) + 1:
            self._recency[cause] = None
        elif running != len(self._recency):
            # Not one change of its cause: start over from the members.
            ids = [_dispatch_id(m) for m in transition.members]
            self._recency = dict.fromkeys(i for i in ids if i != cause)
            if cause in ids:
                self._recency[cause] = None

    def _update(self, transition: RunTransition) -> None:
        self._apply(transition)
        self._version += 1
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def _begin_attempt(self) -> None:
        self._attempt += 1
        self._seen = self._version


Handler = Callable[[Run], Awaitable[None]]
"""What `manage()` calls for each run: `async def handler(run: Run) -> None`."""


class _Supervisor:
    """What ends `manage()` early: the first fatal error, which cancels every task."""

    def __init__(self, tasks: TaskGroup) -> None:
        self.failure: BaseException | None = None
        self._tasks = tasks

    def fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        self._tasks.cancel_scope.cancel()


def _cancelled_from_outside() -> bool:
    """Whether a scope around the current task has been cancelled or is past its deadline."""
    return anyio.current_effective_deadline() <= anyio.current_time()


class _Execution:
    """One run's handler task: calls, retries, and the cancel scope that ends it."""

    def __init__(
        self, run: Run, handler: Handler, retry_interval: float, supervisor: _Supervisor
    ) -> None:
        self.run = run
        self._handler = handler
        self._retry_interval = retry_interval
        self._supervisor = supervisor
        self._scope = anyio.CancelScope()

    def stop(self) -> None:
        # Cancelling before the task entered the scope works too: it is entered cancelled.
        self._scope.cancel()

    async def execute(self) -> None:
        run = self.run
        with self._scope:
            while True:
                run._begin_attempt()
                try:
                    awaitable = self._handler(run)
                    if not inspect.isawaitable(awaitable):
                        self._supervisor.fail(
                            TypeError(
                                f"handler must be an async callable taking a Run: {self._handler!r}"
                                f" returned {awaitable!r}, not an awaitable"
                            )
                        )
                        return
                    await awaitable
                except anyio.get_cancelled_exc_class():
                    if _cancelled_from_outside():
                        raise
                    _log.exception(
                        "the handler of run %r raised a cancellation without being cancelled;"
                        " calling it again in %g s or on an update",
                        run.key,
                        self._retry_interval,
                    )
                except Exception:
                    _log.exception(
                        "the handler of run %r failed; calling it again in %g s or on an update",
                        run.key,
                        self._retry_interval,
                    )
                except BaseException as error:
                    # KeyboardInterrupt, SystemExit and the like end manage(), raised as they are.
                    self._supervisor.fail(error)
                    return
                else:
                    _log.debug("the handler of run %r returned", run.key)
                    return
                # An update during the wait means new instructions: retry with them now.
                with anyio.move_on_after(self._retry_interval):
                    await run._wait_change()


def _check(type: object, handler: object, retry_interval: object) -> float:
    if not isinstance(type, str) or not type:
        raise ValueError(f"type must be a non-empty str, not {type!r}")
    if not callable(handler):
        raise ValueError(f"handler must be an async callable taking a Run, not {handler!r}")
    if not isinstance(retry_interval, timedelta) or retry_interval <= timedelta(0):
        raise ValueError(f"retry_interval must be a positive timedelta, not {retry_interval!r}")
    return retry_interval.total_seconds()


async def manage(
    client: Client,
    microgrid_id: int,
    type: str,
    handler: Handler,
    *,
    merge: Merge = None,
    retry_interval: timedelta = DEFAULT_RETRY_INTERVAL,
) -> None:
    """Call `await handler(run)` for each run of dispatches of `type`, until cancelled.

    See the module docstring for the life of a handler's task.

    Args:
        client: A connected client.
        microgrid_id: The microgrid whose dispatches to execute.
        type: The dispatch type to execute.
        handler: `async def handler(run: Run) -> None`, called in a task of its
            own when a run starts; cancelled when it stops.
        merge: How dispatches group into runs: None (one run, and one handler
            task, per dispatch), `"type"`, `"type+target"` or a callable
            `Dispatch -> Hashable` (see `dispatch_client.schedule`).
        retry_interval: How long to wait before calling a handler that raised
            again (sooner if the run is updated meanwhile).

    Raises:
        ValueError: An argument is not what is allowed (before anything starts).
        TypeError: The handler is not async (its call returned no awaitable),
            or the merge callable returned an unhashable key.
        DispatchApiError: The stream of changes failed for good (after the
            handlers were cancelled).
        BaseException: What a handler raised that is no `Exception` (say,
            `KeyboardInterrupt`), as is, after the other handlers were cancelled.
    """
    retry = _check(type, handler, retry_interval)
    merge_key(merge)  # Raises for a bad strategy before anything starts.
    transitions = client.running(microgrid_id, type=type, merge=merge)
    executions: dict[Hashable, _Execution] = {}
    async with anyio.create_task_group() as tasks:
        # Errors are raised once the handlers are gone, not wrapped in an exception group.
        supervisor = _Supervisor(tasks)
        try:
            async with aclosing(transitions):
                async for transition in transitions:
                    _follow(transition, executions, tasks, handler, retry, supervisor)
        except Exception as error:
            supervisor.fail(error)
        tasks.cancel_scope.cancel()
    if supervisor.failure is not None:
        raise supervisor.failure


def _follow(
    transition: RunTransition,
    executions: dict[Hashable, _Execution],
    tasks: TaskGroup,
    handler: Handler,
    retry: float,
    supervisor: _Supervisor,
) -> None:
    if transition.kind is Transition.STARTED:
        execution = _Execution(Run(transition), handler, retry, supervisor)
        executions[transition.key] = execution
        tasks.start_soon(execution.execute, name=f"dispatch run {transition.key!r}")
        return
    execution_or_none = executions.get(transition.key)
    if execution_or_none is None:
        return
    if transition.kind is Transition.UPDATED:
        execution_or_none.run._update(transition)
    else:
        del executions[transition.key]
        execution_or_none.stop()
