"""Writing: `create` and `update`, with the recurrence options they share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import asyncclick as click

from .._proto.frequenz.api.dispatch.v1 import (
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    TargetComponents,
)
from .base import Settings, command_json_option, connect, microgrid_argument, usage_error
from .parsing import (
    DURATION_HELP,
    TARGET_HELP,
    TIME_HELP,
    duration_param,
    json_object_param,
    parse_int_list,
    parse_months,
    parse_weekdays,
    target_param,
    time_param,
    uint64_param,
)

__all__ = ["create_command", "update_command"]

F = TypeVar("F", bound=Callable[..., Any])

_FREQUENCIES = [f.name.lower() for f in RecurrenceRuleFrequency if f.name != "UNSPECIFIED"]
# --- create / update ------------------------------------------------------


def _recurrence_options(func: F) -> F:
    options = [
        click.option(
            "--freq",
            type=click.Choice(_FREQUENCIES, case_sensitive=False),
            help="Repeat minutely, hourly, daily, weekly, monthly or yearly.",
        ),
        click.option(
            "--interval", type=click.IntRange(1, 10_000), help="Every N periods (default 1)."
        ),
        click.option("--count", type=click.IntRange(1, 4096), help="Stop after N runs."),
        click.option(
            "--until", type=time_param(), help=f"Stop repeating at this time: {TIME_HELP}."
        ),
        click.option(
            "--by-minute",
            "by_minute",
            multiple=True,
            metavar="0..59",
            help="Only at these minutes (comma-separated or repeated).",
        ),
        click.option(
            "--by-hour", "by_hour", multiple=True, metavar="0..23", help="Only at these hours."
        ),
        click.option(
            "--by-weekday",
            "by_weekday",
            multiple=True,
            metavar="DAY",
            help="Only on these weekdays (mo,tu,... or full names).",
        ),
        click.option(
            "--by-monthday",
            "by_monthday",
            multiple=True,
            metavar="-31..31",
            help="Only on these days of the month (negative: from the end).",
        ),
        click.option(
            "--by-month",
            "by_month",
            multiple=True,
            metavar="1..12",
            help="Only in these months (numbers or names).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _recurrence_parts(
    freq: str | None,
    interval: int | None,
    count: int | None,
    until: dt.datetime | None,
    by_minute: tuple[str, ...],
    by_hour: tuple[str, ...],
    by_weekday: tuple[str, ...],
    by_monthday: tuple[str, ...],
    by_month: tuple[str, ...],
) -> dict[str, Any]:
    """Collect the recurrence fields the user gave, keyed like RecurrenceRule's fields."""
    if count is not None and until is not None:
        raise click.UsageError("--count and --until exclude each other; give one")
    parts: dict[str, Any] = {}
    if freq is not None:
        parts["freq"] = RecurrenceRuleFrequency[freq.upper()]
    if interval is not None:
        parts["interval"] = interval
    if count is not None:
        parts["end_criteria"] = RecurrenceRuleEndCriteria(count=count)
    if until is not None:
        parts["end_criteria"] = RecurrenceRuleEndCriteria(until_time=until)
    lists: list[tuple[str, str, tuple[str, ...], Callable[[tuple[str, ...]], list[Any]]]] = [
        ("byminutes", "--by-minute", by_minute, lambda v: parse_int_list(v, 0, 59, "minutes")),
        ("byhours", "--by-hour", by_hour, lambda v: parse_int_list(v, 0, 23, "hours")),
        ("byweekdays", "--by-weekday", by_weekday, parse_weekdays),
        (
            "bymonthdays",
            "--by-monthday",
            by_monthday,
            lambda v: parse_int_list(v, -31, 31, "days of month"),
        ),
        ("bymonths", "--by-month", by_month, parse_months),
    ]
    for name, option, values, parse in lists:
        if values:
            try:
                parts[name] = parse(values)
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint=f"'{option}'") from None
    return parts


@click.command(
    "create",
    # \b keeps click from re-wrapping the example lines.
    epilog="\b\nExamples:\n"
    "  dispatch-cli create 1 BATTERY_CHARGE BATTERY:LI_ION 'in 10 min' 1h30m\n"
    "  dispatch-cli create 1 PV_CURTAIL 7,8 'tomorrow 08:00' 2h --freq daily --count 5\n"
    "  dispatch-cli create 1 EV_LIMIT EV_CHARGER now --payload '{\"max_a\": 16}'",
)
@microgrid_argument
@click.argument("type_", metavar="TYPE")
@click.argument("target", type=target_param())
@click.argument("start", type=time_param(allow_now=True))
@click.argument("duration", type=duration_param(), required=False)
@click.option(
    "--active/--inactive", default=True, show_default=True, help="Whether the dispatch is active."
)
@click.option("--dry-run", is_flag=True, help="Announce the dispatch but do not act on hardware.")
@click.option(
    "--payload",
    type=json_object_param(),
    help="Free-form JSON object for the app, e.g. '{\"power\": 5000}'.",
)
@_recurrence_options
@command_json_option
@click.pass_obj
async def create_command(
    settings: Settings,
    /,
    microgrid_id: int,
    type_: str,
    target: TargetComponents,
    start: dt.datetime | Literal["NOW"],
    duration: dt.timedelta | None,
    active: bool,
    dry_run: bool,
    payload: dict[str, Any] | None,
    **recurrence: Any,
) -> None:
    """Create a dispatch of TYPE on TARGET from START for DURATION (unlimited if left out)."""
    parts = _recurrence_parts(**recurrence)
    if parts and "freq" not in parts:
        raise click.BadParameter(
            "is needed when any other recurrence option is given", param_hint="'--freq'"
        )
    rule = RecurrenceRule(**parts) if parts else None
    out = settings.output()
    async with connect(settings) as client:
        try:
            dispatch = await client.create(
                microgrid_id,
                type_,
                start,
                duration,
                target,
                active=active,
                dry_run=dry_run,
                payload=payload,
                recurrence=rule,
            )
        except ValueError as error:
            usage_error(error)
    out.dispatch_detail(dispatch)


@click.command("update")
@microgrid_argument
@click.argument("dispatch_id", metavar="ID", type=uint64_param())
@click.option("--start", type=time_param(), help=f"New start: {TIME_HELP}.")
@click.option("--duration", type=duration_param(), help=f"New duration: {DURATION_HELP}.")
@click.option("--no-duration", is_flag=True, help="Make runs unlimited (clear the duration).")
@click.option("--target", type=target_param(), help=f"New target: {TARGET_HELP}.")
@click.option("--active/--inactive", default=None, help="Activate or deactivate.")
@click.option("--payload", type=json_object_param(), help="New payload (a JSON object).")
@click.option("--no-payload", is_flag=True, help="Clear the payload.")
@click.option(
    "--no-recurrence", is_flag=True, help="Stop repeating (clear the whole recurrence rule)."
)
@_recurrence_options
@command_json_option
@click.pass_obj
async def update_command(
    settings: Settings,
    /,
    microgrid_id: int,
    dispatch_id: int,
    start: dt.datetime | None,
    duration: dt.timedelta | None,
    no_duration: bool,
    target: TargetComponents | None,
    active: bool | None,
    payload: dict[str, Any] | None,
    no_payload: bool,
    no_recurrence: bool,
    **recurrence: Any,
) -> None:
    """Change fields of dispatch ID; only the options given are changed."""
    if duration is not None and no_duration:
        raise click.UsageError("--duration and --no-duration exclude each other")
    if payload is not None and no_payload:
        raise click.UsageError("--payload and --no-payload exclude each other")
    new_fields: dict[str, Any] = {}
    if start is not None:
        new_fields["start_time"] = start
    if duration is not None or no_duration:
        new_fields["duration"] = duration
    if target is not None:
        new_fields["target"] = target
    if active is not None:
        new_fields["active"] = active
    if payload is not None or no_payload:
        new_fields["payload"] = payload
    parts = _recurrence_parts(**recurrence)
    if no_recurrence:
        if parts:
            raise click.UsageError("--no-recurrence excludes the other recurrence options")
        new_fields["recurrence"] = None
    new_fields.update({f"recurrence.{name}": value for name, value in parts.items()})
    if not new_fields:
        raise click.UsageError(
            "nothing to update: give at least one of --start, --duration, --no-duration, "
            "--target, --active/--inactive, --payload, --no-payload or a recurrence option"
        )
    out = settings.output()
    async with connect(settings) as client:
        try:
            dispatch = await client.update(microgrid_id, dispatch_id, new_fields)
        except ValueError as error:
            usage_error(error)
    out.dispatch_detail(dispatch)
