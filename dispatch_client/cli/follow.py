"""Following changes as they happen: `stream` and `watch`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import aclosing
from typing import Any, TypeVar

import anyio
import asyncclick as click

from .._proto.frequenz.api.common.v1alpha8.streaming import Event
from .._proto.frequenz.api.dispatch.v1 import StreamMicrogridDispatchesResponse
from ..errors import DispatchApiError
from ..server.config import StopSignal, cancel_on_signal
from ..validation import enum_label
from .base import Settings, command_json_option, connect, microgrid_argument
from .output import message_dict
from .parsing import duration_param

__all__ = ["stream_command", "watch_command"]

F = TypeVar("F", bound=Callable[..., Any])
# --- stream / watch -------------------------------------------------------


def _follow_options(func: F) -> F:
    func = click.option(
        "--timeout",
        "time_limit",
        type=duration_param(),
        help="Stop after this long (exit 0), e.g. 30s. Default: run until Ctrl-C.",
    )(func)
    return click.option(
        "--max-events",
        type=click.IntRange(min=1),
        help="Stop after this many events (exit 0).",
    )(func)


async def _follow(
    settings: Settings,
    microgrid_id: int,
    max_events: int | None,
    time_limit: dt.timedelta | None,
    *,
    watch: bool,
) -> None:
    out = settings.output()
    seen = 0
    failure: DispatchApiError | None = None
    announced = False
    stop = StopSignal()

    def announce() -> None:
        # Once, on stderr: when the stream is open, or with the first event at the latest.
        nonlocal announced
        if not announced:
            announced = True
            what = "Watching" if watch else "Listening for"
            click.echo(f"{what} events of microgrid {microgrid_id} (Ctrl-C to stop)", err=True)

    async def announce_when_open() -> None:
        # The client has no "stream open" notification to wait on, so poll its state.
        while not ((stream := client.streams.get(microgrid_id)) and stream.connected):  # noqa: ASYNC110
            await anyio.sleep(0.02)
        announce()

    async with connect(settings) as client, anyio.create_task_group() as tasks:
        tasks.start_soon(announce_when_open)
        tasks.start_soon(cancel_on_signal, tasks.cancel_scope, stop)
        with anyio.move_on_after(time_limit.total_seconds() if time_limit is not None else None):
            events = client.watch(microgrid_id) if watch else client.stream(microgrid_id)
            # Caught here, not outside: leaving the task group would wrap it in
            # an ExceptionGroup, and the user should see the typed error.
            try:
                # Closed explicitly so the shared stream is left at once, also on timeout.
                async with aclosing(events):
                    async for event in events:
                        announce()
                        document = message_dict(
                            StreamMicrogridDispatchesResponse(
                                dispatch=event.dispatch, event=event.event
                            )
                        )
                        out.event(enum_label(Event, event.event), event.dispatch, document)
                        seen += 1
                        if max_events is not None and seen >= max_events:
                            break
            except DispatchApiError as error:
                failure = error
        tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if stop.exit_status:
        raise click.exceptions.Exit(stop.exit_status)  # 130 after Ctrl-C


@click.command("stream")
@microgrid_argument
@_follow_options
@command_json_option
@click.pass_obj
async def stream_command(
    settings: Settings, microgrid_id: int, max_events: int | None, time_limit: dt.timedelta | None
) -> None:
    """Print create/update/delete events of MICROGRID as they happen (NDJSON with --json)."""
    await _follow(settings, microgrid_id, max_events, time_limit, watch=False)


@click.command("watch")
@microgrid_argument
@_follow_options
@command_json_option
@click.pass_obj
async def watch_command(
    settings: Settings, microgrid_id: int, max_events: int | None, time_limit: dt.timedelta | None
) -> None:
    """Like stream, but first the current dispatches, and no change lost over reconnects."""
    await _follow(settings, microgrid_id, max_events, time_limit, watch=True)
