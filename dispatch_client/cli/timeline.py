"""A terminal Gantt chart of dispatch runs: one row per dispatch, one column per time slice.

Rendering is a pure function of rows, window and width, so it is tested without
a terminal; the `timeline` command only gathers the runs.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Glyphs", "Row", "render"]

# Tick spacings the axis may use, smallest first; the first one leaving room
# for a label between ticks wins.
_STEPS = [
    dt.timedelta(minutes=m)
    for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080, 20160)
]
_LABEL_WIDTH = 5  # "14:00" or "11-24"
_MIN_BAR_WIDTH = 10
_MAX_LABEL = 24


@dataclass(frozen=True)
class Glyphs:
    """The characters a chart is drawn with (ASCII ones for terminals without UTF-8)."""

    run: str = "█"
    dry_run: str = "▒"
    idle: str = "·"
    tick: str = "┬"
    rule: str = "─"
    about: str = "≈"

    @classmethod
    def ascii(cls) -> Glyphs:
        """Glyphs that every terminal can show.

        Returns:
            The ASCII set: `#` runs, `%` dry runs, `.` idle.
        """
        return cls(run="#", dry_run="%", idle=".", tick="+", rule="-", about="~")


@dataclass
class Row:
    """One chart row: a label and its runs as (start, end) pairs (end None: open-ended)."""

    label: str
    runs: Sequence[tuple[dt.datetime, dt.datetime | None]] = field(default_factory=list)
    dry_run: bool = False


def _fit(label: str, width: int) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _step_for(span: dt.timedelta, bar_width: int) -> dt.timedelta:
    for step in _STEPS:
        if step / span * bar_width >= _LABEL_WIDTH + 2:
            return step
    return _STEPS[-1]


def _ticks(start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> list[dt.datetime]:
    # Ticks sit on multiples of the step since the epoch, so hour ticks land on
    # whole hours and day ticks on UTC midnight.
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    first = epoch + step * math.ceil((start - epoch) / step)
    ticks = []
    tick = first
    while tick < end:
        ticks.append(tick)
        tick += step
    return ticks


def _tick_label(tick: dt.datetime, step: dt.timedelta) -> str:
    tick = tick.astimezone(dt.UTC)
    at_midnight = tick.hour == 0 and tick.minute == 0
    return tick.strftime("%m-%d" if step >= dt.timedelta(days=1) or at_midnight else "%H:%M")


def _bar(
    runs: Sequence[tuple[dt.datetime, dt.datetime | None]],
    start: dt.datetime,
    end: dt.datetime,
    width: int,
    fill: str,
    idle: str,
) -> str:
    span = end - start
    cells = [idle] * width
    for run_start, run_end in runs:
        stop = end if run_end is None else min(run_end, end)
        if stop < start or run_start >= end:
            continue
        first = max(0, int((run_start - start) / span * width))
        # A run ending exactly on a cell boundary must not paint the next cell,
        # but a zero-length run still shows in the cell it falls in.
        last = math.ceil((stop - start) / span * width) - 1
        for column in range(first, min(max(first, last), width - 1) + 1):
            cells[column] = fill
    return "".join(cells)


def render(
    rows: Sequence[Row],
    start: dt.datetime,
    end: dt.datetime,
    *,
    width: int = 80,
    glyphs: Glyphs | None = None,
) -> list[str]:
    """Draw the chart as lines no longer than `width`: axis, one line per row, legend.

    Args:
        rows: the rows, in display order.
        start: the window's aware start.
        end: the window's aware end.
        width: the most characters per line.
        glyphs: the characters to draw with; None for the Unicode set.

    Returns:
        The lines, without newlines.

    Raises:
        ValueError: `end` is not after `start`.
    """
    if end <= start:
        raise ValueError("timeline window must end after it starts")
    glyphs = glyphs or Glyphs()
    label_width = max(4, min(_MAX_LABEL, max((len(r.label) for r in rows), default=4)))
    bar_width = max(_MIN_BAR_WIDTH, width - label_width - 1)
    span = end - start
    step = _step_for(span, bar_width)

    labels = [" "] * bar_width
    rule = [glyphs.rule] * bar_width
    for tick in _ticks(start, end, step):
        column = int((tick - start) / span * bar_width)
        rule[column] = glyphs.tick
        text = _tick_label(tick, step)
        # Skip a label that would run off the edge or into the previous one.
        free = labels[max(0, column - 1) : column + len(text)]
        if column + len(text) <= bar_width and all(c == " " for c in free):
            labels[column : column + len(text)] = list(text)

    pad = " " * (label_width + 1)
    lines = [pad + "".join(labels).rstrip(), pad + "".join(rule)]
    for row in rows:
        fill = glyphs.dry_run if row.dry_run else glyphs.run
        bar = _bar(row.runs, start, end, bar_width, fill, glyphs.idle)
        lines.append(f"{_fit(row.label, label_width):<{label_width}} {bar}")
    minutes = span / bar_width / dt.timedelta(minutes=1)
    scale = f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
    legend = [
        f"{glyphs.run} running  {glyphs.dry_run} dry run  {glyphs.idle} idle",
        f"(1 column {glyphs.about} {scale})",
    ]
    joined = "  ".join(legend)
    if len(pad) + len(joined) <= width:
        lines.append(pad + joined)
    elif len(joined) <= width:
        lines.append(joined)
    else:
        lines.extend(legend)
    return lines
