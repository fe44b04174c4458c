"""Other views of dispatches: `timeline` (a Gantt chart of runs) and `ical` (an export)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import sys
from typing import Any

import asyncclick as click

from .._proto.frequenz.api.common.v1alpha8.types import Interval
from ..validation import dispatch_id_of
from .base import Settings, command_json_option, connect, microgrid_argument
from .output import message_dict, printable
from .parsing import uint64_param
from .timeline import Glyphs, Row, render

__all__ = ["ical_command", "timeline_command"]

# Recurring dispatches can have thousands of runs in a window (minutely ones);
# a chart row cannot show more than a few hundred anyway.
_MAX_RUNS_PER_ROW = 2000
# --- timeline / ical ------------------------------------------------------


@click.command("timeline")
@microgrid_argument
@click.option(
    "--hours",
    type=click.FloatRange(min=0.1, max=24 * 366),
    default=24.0,
    show_default=True,
    help="How far ahead to look.",
)
@click.option(
    "--width",
    type=click.IntRange(40, 400),
    help="Chart width in columns (default: terminal width, at most 120).",
)
@click.option("--all", "include_inactive", is_flag=True, help="Include inactive dispatches.")
@command_json_option
@click.pass_obj
async def timeline_command(
    settings: Settings,
    microgrid_id: int,
    hours: float,
    width: int | None,
    include_inactive: bool,
) -> None:
    """Draw upcoming runs per dispatch as a Gantt chart (one row per dispatch)."""
    from ..recurrence import runs

    out = settings.output()
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    end = start + dt.timedelta(hours=hours)
    rows: list[Row] = []
    unreadable: list[str] = []
    idle = 0
    async with connect(settings) as client:
        with out.progress("Collecting dispatches…"):
            dispatches = [
                d
                async for d in client.dispatches(
                    microgrid_id, active=None if include_inactive else True
                )
            ]
    for dispatch in sorted(dispatches, key=dispatch_id_of):
        data = dispatch.data
        if data is None:
            continue
        # An inactive dispatch has no runs; with --all, show what it would run.
        schedule = data if data.is_active else dataclasses.replace(data, is_active=True)
        try:
            window_runs = list(itertools.islice(runs(schedule, start, end), _MAX_RUNS_PER_ROW))
        except ValueError as error:
            # e.g. a frequency from a newer server: this row cannot be drawn, the others can.
            if out.json_mode:
                out.json_line({"dispatch": message_dict(dispatch), "error": str(error)})
            else:
                unreadable.append(f"#{dispatch_id_of(dispatch)}: {error}")
            continue
        if out.json_mode:
            out.json_line(
                {
                    "dispatch": message_dict(dispatch),
                    "runs": [Interval(start_time=s, end_time=e).to_dict() for s, e in window_runs],
                }
            )
            continue
        if not window_runs:
            idle += 1
            continue
        label = f"#{dispatch_id_of(dispatch)} {printable(data.type)}" + (
            "" if data.is_active else " (off)"
        )
        rows.append(Row(label=label, runs=window_runs, dry_run=data.is_dry_run))
    if out.json_mode:
        return
    chart_width = width or min(out.console.width, 120)
    out.line(f"Runs on microgrid {microgrid_id}, {start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC")
    if not rows:
        out.line("No runs in this window.")
    else:
        glyphs = Glyphs() if _can_encode("█▒·┬─≈…") else Glyphs.ascii()
        for line in render(rows, start, end, width=chart_width, glyphs=glyphs):
            out.chart_line(line, glyphs)
    if idle:
        out.line(
            f"({idle} dispatch{'es' if idle > 1 else ''} without runs in this window not shown)"
        )
    for note in unreadable:
        click.echo(f"Warning: dispatch {note}; not drawn", err=True)


def _can_encode(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


@click.command("ical")
@microgrid_argument
@click.argument("dispatch_id", metavar="ID", type=uint64_param())
@click.option(
    "-o",
    "--output",
    "output_file",
    type=click.File("wb"),
    help="Write to this file instead of stdout.",
)
@command_json_option
@click.pass_obj
async def ical_command(
    settings: Settings, microgrid_id: int, dispatch_id: int, output_file: Any
) -> None:
    """Export dispatch ID as an iCalendar (.ics) event, recurrence included."""
    from ..ical import to_ical

    out = settings.output()
    async with connect(settings) as client:
        dispatch = await client.get(microgrid_id, dispatch_id)
    try:
        calendar = to_ical(dispatch)
    except ValueError as error:
        raise click.ClickException(f"dispatch {dispatch_id} cannot be exported: {error}") from None
    if output_file is not None:
        output_file.write(calendar)
    elif out.json_mode:
        out.json_line(
            {
                "microgridId": str(microgrid_id),
                "dispatchId": str(dispatch_id),
                "ical": calendar.decode(),
            }
        )
    else:
        click.echo(calendar, nl=False)
