"""What dispatch-cli prints: rich tables for people, NDJSON for programs.

JSON lines use the protobuf JSON mapping of the generated messages (camelCase,
int64 as strings, default values omitted), so `Dispatch.from_dict(json.loads(line))`
gives back the message.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import betterproto2
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._proto.frequenz.api.common.v1alpha8.microgrid.electrical_components import (
    ElectricalComponentCategory,
)
from .._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    RecurrenceRule,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    TargetComponents,
)
from .._proto.google.protobuf import NullValue, Struct, Value
from ..validation import dispatch_id_of, enum_label, known_member, to_utc
from .parsing import format_duration
from .timeline import Glyphs

__all__ = [
    "Output",
    "describe_recurrence",
    "describe_target",
    "format_time",
    "message_dict",
    "printable",
]

_FREQ_UNIT = {
    RecurrenceRuleFrequency.MINUTELY: ("minutely", "min"),
    RecurrenceRuleFrequency.HOURLY: ("hourly", "h"),
    RecurrenceRuleFrequency.DAILY: ("daily", "d"),
    RecurrenceRuleFrequency.WEEKLY: ("weekly", "w"),
    RecurrenceRuleFrequency.MONTHLY: ("monthly", "mo"),
    RecurrenceRuleFrequency.YEARLY: ("yearly", "y"),
}

_EVENT_STYLE = {"CREATED": "green", "UPDATED": "yellow", "DELETED": "red"}


def format_time(value: dt.datetime | None) -> str:
    """Format a timestamp in UTC, to the second (what the service stores).

    Args:
        value: an aware datetime, or None.

    Returns:
        e.g. "2025-01-31 08:00:00"; "-" for None.

    Raises:
        ValueError: `value` is naive.
    """
    if value is None:
        return "-"
    return to_utc(value, "time").strftime("%Y-%m-%d %H:%M:%S")


def describe_target(target: TargetComponents | None) -> str:
    """Render a target the way the TARGET argument is written.

    Args:
        target: the target, or None.

    Returns:
        e.g. "1,2", "BATTERY,INVERTER" or "BATTERY:LI_ION"; "-" for none.
        Values this schema does not know (from a newer server) show raw,
        e.g. "99 (unknown)".
    """
    if target is None:
        return "-"
    if target.component_ids is not None:
        return ",".join(str(i) for i in target.component_ids.ids)
    if target.component_categories is not None:
        return ",".join(
            enum_label(ElectricalComponentCategory, c)
            for c in target.component_categories.categories
        )
    if target.component_categories_types is not None:
        parts = []
        for entry in target.component_categories_types.categories:
            _, kind = betterproto2.which_one_of(entry, "type")
            category = enum_label(ElectricalComponentCategory, entry.category)
            parts.append(
                category + (f":{enum_label(type(kind), kind)}" if kind is not None else "")
            )
        return ",".join(parts)
    return "-"


def describe_recurrence(rule: RecurrenceRule | None, *, short: bool = False) -> str:
    """Summarise a recurrence rule, e.g. "every 3 h, on MO,FR, 10 times".

    Args:
        rule: the rule, or None.
        short: the form for table cells: "every 3h, MO,FR, 10 runs", other
            by-rules only as "+rules".

    Returns:
        The summary; "once" for no rule or one without a frequency. Values
        this schema does not know (from a newer server) show raw, e.g.
        "frequency 9 (unknown)".
    """
    if rule is None or not rule.freq:
        return "once"
    freq = known_member(RecurrenceRuleFrequency, rule.freq)
    if freq is None:
        name, unit = f"frequency {enum_label(RecurrenceRuleFrequency, rule.freq)}", "?"
    else:
        name, unit = _FREQ_UNIT[freq]
    if rule.interval > 1:
        name = f"every {rule.interval}{'' if short else ' '}{unit}"
        if freq is None:
            name += f" ({enum_label(RecurrenceRuleFrequency, rule.freq)} frequency)"
    words = [name]
    if rule.byweekdays:
        words.append(("" if short else "on ") + ",".join(map(_weekday, rule.byweekdays)))
    others = [
        ("days", rule.bymonthdays),
        ("months", rule.bymonths),
        ("hours", rule.byhours),
        ("minutes", rule.byminutes),
    ]
    if short and any(values for _, values in others):
        words.append("+rules")
    elif not short:
        words.extend(f"{label} {','.join(map(str, values))}" for label, values in others if values)
    if rule.end_criteria is not None:
        which, value = betterproto2.which_one_of(rule.end_criteria, "count_or_until")
        if which == "count":
            words.append(f"{value} {'runs' if short else 'times'}")
        elif which == "until_time":
            words.append(f"until {format_time(value)[: 10 if short else None]}")
    return ", ".join(words)


def _weekday(day: int) -> str:
    member = known_member(RecurrenceRuleWeekday, day)
    if member is None or not member.value:
        return f"weekday {enum_label(RecurrenceRuleWeekday, day)}"
    return member.name[:2]


def _short_time(value: dt.datetime | None, fmt: str) -> str:
    return "-" if value is None else to_utc(value, "time").strftime(fmt)


def printable(text: str) -> str:
    r"""Return `text` with control characters escaped, for showing server text to people.

    A dispatch type is whatever a client stored: an escape sequence in it
    would recolour or clear the terminal, a newline would break a table row.

    Args:
        text: text received from the server.

    Returns:
        `text`, each control or format character (Unicode category C*) as
        `\xNN` / `\uNNNN`.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch == " " or unicodedata.category(ch)[0] != "C" else ascii(ch)[1:-1] for ch in text
    )


def _json_safe_values(message: betterproto2.Message) -> None:
    """Make every payload Value in `message` one the JSON mapping can write, in place.

    betterproto2's `to_dict()` raises on a Value with no kind set, and JSON
    has no NaN: a server other than ours may send either. Such values become
    null and the strings "NaN", "Infinity", "-Infinity".
    """
    stack: list[Any] = [message]
    while stack:
        node = stack.pop()
        if isinstance(node, Value):
            which, inner = betterproto2.which_one_of(node, "kind")
            if not which:
                node.null_value = NullValue.NULL_VALUE
            elif isinstance(inner, float) and not math.isfinite(inner):
                node.number_value = None
                node.string_value = (
                    "NaN" if math.isnan(inner) else ("-" if inner < 0 else "") + "Infinity"
                )
        if isinstance(node, betterproto2.Message):
            meta: Any = cast(Any, node)._betterproto
            for name in meta.meta_by_field_name:
                value = getattr(node, name, None)
                if isinstance(value, betterproto2.Message):
                    stack.append(value)
                elif isinstance(value, list | tuple):
                    stack.extend(v for v in value if isinstance(v, betterproto2.Message))
                elif isinstance(value, dict):
                    stack.extend(v for v in value.values() if isinstance(v, betterproto2.Message))


def message_dict(message: betterproto2.Message) -> dict[str, Any]:
    """Return the protobuf JSON mapping of `message`, also when its payload has odd values.

    Args:
        message: a generated message, e.g. a `Dispatch`.

    Returns:
        `message.to_dict()`; if that fails on a payload Value JSON cannot hold,
        the mapping of a copy where such values are replaced (see
        `_json_safe_values`).
    """
    try:
        document: dict[str, Any] = message.to_dict()
        json.dumps(document, allow_nan=False)
        return document
    except ValueError:
        safe = copy.deepcopy(message)
        _json_safe_values(safe)
        return safe.to_dict()


def _payload_text(payload: Struct) -> str:
    return json.dumps(_plain(message_dict(payload)), sort_keys=True)


def _plain(value: Any) -> Any:
    """Undo Struct's doubles for display: 5000.0 reads better as 5000."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _status(dispatch: Dispatch) -> Text:
    data = dispatch.data
    if data is None:
        return Text("-")
    text = Text("active", style="green") if data.is_active else Text("off", style="dim")
    if data.is_dry_run:
        text.append(", dry-run", style="cyan")
    return text


class Output:
    """Prints results either as rich text (people) or as NDJSON (programs).

    Colour and spinners appear only when the stream is a terminal (rich's own
    detection, which also honours NO_COLOR and FORCE_COLOR).

    Args:
        json_mode: print one JSON document per line instead of text.
    """

    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        # Bound to the current sys.stdout/stderr at call time, so test runners
        # that swap the streams see the output.
        self.console = Console(file=sys.stdout, highlight=False, soft_wrap=False)
        self.errors = Console(file=sys.stderr, highlight=False)

    # --- JSON ---

    def json_line(self, document: dict[str, Any]) -> None:
        """Write one JSON document on its own line and flush (pipes see it at once).

        Args:
            document: a JSON-serialisable mapping.
        """
        sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def message_json(self, message: betterproto2.Message) -> None:
        """Write a generated message as one JSON line (protobuf JSON mapping).

        Args:
            message: any generated message, e.g. a `Dispatch`.
        """
        self.json_line(message_dict(message))

    # --- human ---

    def line(self, text: str | Text) -> None:
        """Print a line for people on stdout (never wrapped: one event, one line).

        Args:
            text: plain text or rich `Text`.
        """
        self.console.print(text, soft_wrap=True)
        sys.stdout.flush()

    def chart_line(self, line: str, glyphs: Glyphs) -> None:
        """Print a timeline line, runs coloured (on a terminal).

        Args:
            line: one line from `timeline.render`.
            glyphs: the glyphs it was drawn with.
        """
        text = Text(line)
        text.highlight_regex(f"{re.escape(glyphs.run)}+", "green")
        text.highlight_regex(f"{re.escape(glyphs.dry_run)}+", "cyan")
        self.line(text)

    @contextmanager
    def progress(self, text: str) -> Iterator[Any]:
        """Show a spinner on stderr while slow work runs; do nothing off a terminal.

        Args:
            text: the status shown next to the spinner.

        Yields:
            A callable taking a new status text (e.g. a running count).
        """
        if not self.errors.is_terminal:
            yield lambda _text: None
            return
        with self.errors.status(text) as status:
            yield status.update

    def dispatch_table(self, dispatches: Sequence[Dispatch]) -> None:
        """Print dispatches as a table, one row each (one JSON line each in JSON mode).

        Args:
            dispatches: the dispatches, in the order to show them.
        """
        if self.json_mode:
            for dispatch in dispatches:
                self.message_json(dispatch)
            return
        if not dispatches:
            self.line("No dispatches.")
            return
        # Without the year, a row fits in 80 columns; keep it when any start is
        # in another year, so a table never mixes the two formats.
        this_year = dt.datetime.now(dt.UTC).year
        same_year = all(
            d.data is None or d.data.start_time is None or d.data.start_time.year == this_year
            for d in dispatches
        )
        start_format = "%m-%d %H:%M" if same_year else "%Y-%m-%d %H:%M"
        rows = [
            (
                str(dispatch_id_of(d)),
                printable(d.data.type),
                _short_time(d.data.start_time, start_format),
                format_duration(d.data.duration),
                describe_target(d.data.target),
                describe_recurrence(d.data.recurrence, short=True),
                _status(d),
            )
            for d in dispatches
            if d.data is not None
        ]
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("ID", justify="right", no_wrap=True)
        # Types and targets are single tokens: shrink the prose columns first.
        table.add_column("Type", min_width=min(14, max(len(r[1]) for r in rows)))
        table.add_column("Start (UTC)", no_wrap=True)
        table.add_column("Dur.", justify="right", no_wrap=True)
        table.add_column("Target", min_width=min(14, max(len(r[4]) for r in rows)))
        table.add_column("Recurrence")
        table.add_column("Status", min_width=7)
        for row in rows:
            table.add_row(*row)
        self.console.print(table)

    def dispatch_detail(self, dispatch: Dispatch, *, next_run: dt.datetime | None = None) -> None:
        """Print one dispatch, every field on its own line (a JSON line in JSON mode).

        Args:
            dispatch: the dispatch.
            next_run: when it next starts, shown when given.
        """
        if self.json_mode:
            self.message_json(dispatch)
            return
        data = dispatch.data
        meta = dispatch.metadata
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_row("Dispatch", str(dispatch_id_of(dispatch)))
        if data is not None:
            grid.add_row("Type", printable(data.type))
            grid.add_row("Start", format_time(data.start_time) + " UTC")
            grid.add_row("Duration", format_duration(data.duration))
            grid.add_row("Target", describe_target(data.target))
            grid.add_row("Recurrence", describe_recurrence(data.recurrence))
            grid.add_row("Status", _status(dispatch))  # "off": inactive, it will not run
            if data.payload is not None and data.payload.fields:
                grid.add_row("Payload", _payload_text(data.payload))
        if next_run is not None:
            grid.add_row("Next run", format_time(next_run) + " UTC")
        if meta is not None:
            grid.add_row("Created", format_time(meta.create_time) + " UTC")
            grid.add_row("Updated", format_time(meta.update_time) + " UTC")
            if meta.end_time is not None:
                grid.add_row("Ends", format_time(meta.end_time) + " UTC")
        self.console.print(grid)

    def event(self, kind: str, dispatch: Dispatch, document: dict[str, Any]) -> None:
        """Print one stream event: a JSON line, or a coloured one-line summary.

        Args:
            kind: the event's name, "CREATED", "UPDATED" or "DELETED".
            dispatch: the dispatch after the event (before it, for DELETED).
            document: the event's JSON document, printed in JSON mode.
        """
        if self.json_mode:
            self.json_line(document)
            return
        data = dispatch.data
        text = Text(dt.datetime.now(dt.UTC).strftime("%H:%M:%S "), style="dim")
        text.append(f"{kind:<8}", style=_EVENT_STYLE.get(kind, "bold"))
        text.append(f" #{dispatch_id_of(dispatch)}")
        if data is not None:
            text.append(
                f" {printable(data.type)} start {format_time(data.start_time)}"
                f" for {format_duration(data.duration)}"
                f" on {describe_target(data.target)}"
                f" ({describe_recurrence(data.recurrence)}"
                f"{'' if data.is_active else ', inactive'})"
            )
        self.line(text)
