"""The dispatch-cli command tree (asyncclick, so every command is a coroutine on anyio)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeVar

import anyio
import asyncclick as click

from .. import __version__
from .._proto.frequenz.api.common.v1alpha8.types import Interval
from .._proto.frequenz.api.dispatch.v1 import (
    DeleteMicrogridDispatchResponse,
    Dispatch,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    SortField,
    SortOptions,
    SortOrder,
    StreamMicrogridDispatchesResponse,
    TargetComponents,
)
from ..client import Client
from ..errors import DispatchApiError, NotFound
from .output import Output
from .parsing import (
    DURATION_HELP,
    TARGET_HELP,
    TIME_HELP,
    duration_param,
    id_range_param,
    json_object_param,
    parse_int_list,
    parse_months,
    parse_weekdays,
    target_param,
    time_param,
)
from .timeline import Glyphs, Row, render

__all__ = ["cli"]

F = TypeVar("F", bound=Callable[..., Any])

_FREQUENCIES = [f.name.lower() for f in RecurrenceRuleFrequency if f.name != "UNSPECIFIED"]
_SORT_FIELDS = {
    "start": SortField.START_TIME,
    "created": SortField.CREATE_TIME,
    "updated": SortField.LAST_UPDATE_TIME,
}
# Recurring dispatches can have thousands of runs in a window (minutely ones);
# a chart row cannot show more than a few hundred anyway.
_MAX_RUNS_PER_ROW = 2000


@dataclass
class Settings:
    """Global options, shared by every command through the click context."""

    url: str | None
    key: str | None = field(repr=False)  # never shown, not even in a debug repr
    sign_secret: str | None = field(repr=False)
    json_mode: bool = False

    def output(self) -> Output:
        """Return the printer for this invocation."""
        return Output(json_mode=self.json_mode)


class ApiFailure(click.ClickException):
    """An error from the API: one line, exit code 1, no traceback."""

    exit_code = 1

    def __init__(self, error: DispatchApiError) -> None:
        where = f" (server {error.server_url})" if error.server_url else ""
        super().__init__(f"{type(error).__name__}: {error.message}{where}")


class _OneLineErrors(click.Group):
    """A group whose errors print as a single `Error: ...` line.

    Click would print the usage and a hint before a usage error; a script
    reading stderr wants just the one line naming the argument.
    """

    async def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; in standalone mode, exit with 0, 1 (API error) or 2 (usage)."""
        if not standalone_mode:
            return await super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = await super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as error:
            click.echo(f"Error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        # Without standalone mode click returns an Exit's code (e.g. 0 after
        # --help) or the command's return value (None for ours).
        sys.exit(result if isinstance(result, int) else 0)

    async def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, turning typed API errors into one-line failures."""
        try:
            return await super().invoke(ctx)
        except DispatchApiError as error:
            raise ApiFailure(error) from None


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    assert settings is not None, "the group callback always sets Settings"
    return settings


def _json_flag(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _settings(ctx).json_mode = True


def _command_json_option(func: F) -> F:
    # `dispatch-cli list 1 --json` reads naturally; accept it as well as the global flag.
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_json_flag,
        help="Same as the global --json.",
    )(func)


def _microgrid(func: F) -> F:
    return click.argument("microgrid_id", metavar="MICROGRID", type=click.IntRange(min=0))(func)


@asynccontextmanager
async def _connect(settings: Settings) -> AsyncIterator[Client]:
    if not settings.url:
        raise click.UsageError("no server URL: pass --url or set DISPATCH_API_URL")
    try:
        client = Client(
            settings.url,
            auth_key=settings.key or None,
            sign_secret=settings.sign_secret or None,
        )
    except ValueError as error:
        hint = "'--sign-secret'" if "sign_secret" in str(error) else "'--url' / DISPATCH_API_URL"
        raise click.BadParameter(str(error), param_hint=hint) from None
    async with client:
        yield client


def _usage(error: ValueError) -> NoReturn:
    # A ValueError from the client is its check of our input, before sending:
    # the user's argument was wrong (exit 2), not the API.
    if isinstance(error, DispatchApiError):
        raise error
    raise click.UsageError(str(error)) from None


@click.group(
    cls=_OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--url",
    envvar="DISPATCH_API_URL",
    show_envvar=True,
    metavar="URL",
    help="Server URL, e.g. grpc://dispatch.example.com or grpc://127.0.0.1:50051?ssl=false.",
)
@click.option(
    "--key",
    envvar="DISPATCH_API_KEY",
    show_envvar=True,
    metavar="KEY",
    help="API key (sent with every call, never printed).",
)
@click.option(
    "--sign-secret",
    envvar="DISPATCH_API_SIGN_SECRET",
    show_envvar=True,
    metavar="SECRET",
    help="Secret to sign each call with (HMAC-SHA256), if the server wants signatures.",
)
@click.option(
    "--json",
    "json_mode",
    is_flag=True,
    help="Machine-readable output: one JSON document per line (protobuf JSON of the messages).",
)
@click.version_option(__version__, "-V", "--version", prog_name="dispatch-cli")
@click.pass_context
async def cli(
    ctx: click.Context,
    url: str | None,
    key: str | None,
    sign_secret: str | None,
    json_mode: bool,
) -> None:
    """Manage dispatches of the Frequenz Dispatch API.

    Times are UTC unless they say otherwise. START accepts ISO 8601, 'now' or
    phrases like 'in 10 min' and 'tomorrow 08:00'; DURATION accepts 90s, 15m,
    1h30m or PT1H30M; TARGET accepts ids (1,2,3), categories (BATTERY,INVERTER)
    or category:type (BATTERY:LI_ION).
    """
    ctx.obj = Settings(url=url, key=key, sign_secret=sign_secret, json_mode=json_mode)


# --- list -----------------------------------------------------------------


@cli.command("list")
@_microgrid
@click.option(
    "--target",
    "targets",
    type=target_param(),
    multiple=True,
    help=f"Only dispatches for this target: {TARGET_HELP}. Repeatable.",
)
@click.option("--start-from", type=time_param(), help="Only runs starting at or after this time.")
@click.option("--start-to", type=time_param(), help="Only runs starting before this time.")
@click.option("--end-from", type=time_param(), help="Only dispatches ending at or after this time.")
@click.option("--end-to", type=time_param(), help="Only dispatches ending before this time.")
@click.option("--active/--inactive", default=None, help="Only active (or inactive) dispatches.")
@click.option(
    "--dry-run/--no-dry-run", "dry_run", default=None, help="Only dry runs (or real ones)."
)
@click.option(
    "--recurring/--one-off",
    "recurring",
    default=None,
    help="Only recurring (or one-off) dispatches.",
)
@click.option(
    "--id",
    "ids",
    type=id_range_param(),
    multiple=True,
    help="Only these ids (5, 5-9, 5,7). Repeatable.",
)
@click.option(
    "--query",
    "queries",
    multiple=True,
    help="Server-side search: '#5' matches id 5, other text matches types containing it. Repeatable (OR).",
)
@click.option("--type", "type_", metavar="TYPE", help="Only dispatches of exactly this type.")
@click.option("--running", is_flag=True, help="Only dispatches running right now.")
@click.option("--page-size", type=click.IntRange(1, 1000), help="Dispatches per page fetched.")
@click.option(
    "--sort",
    type=click.Choice(list(_SORT_FIELDS)),
    help="Sort by this field (default: newest created first).",
)
@click.option("--desc", is_flag=True, help="Sort descending.")
@_command_json_option
@click.pass_obj
async def list_command(
    settings: Settings,
    microgrid_id: int,
    targets: tuple[TargetComponents, ...],
    start_from: dt.datetime | None,
    start_to: dt.datetime | None,
    end_from: dt.datetime | None,
    end_to: dt.datetime | None,
    active: bool | None,
    dry_run: bool | None,
    recurring: bool | None,
    ids: tuple[list[int], ...],
    queries: tuple[str, ...],
    type_: str | None,
    running: bool,
    page_size: int | None,
    sort: str | None,
    desc: bool,
) -> None:
    """List the dispatches of MICROGRID, as a table (or NDJSON with --json)."""
    out = settings.output()
    now = dt.datetime.now(dt.UTC)
    is_running = _is_running if running else None
    # The server's queries match types by substring and are OR-ed with the
    # user's own queries, so --type only narrows server-side when alone.
    server_queries = list(queries) or ([type_] if type_ else [])
    sort_options = None
    if sort is not None:
        order = SortOrder.DESCENDING if desc else SortOrder.ASCENDING
        sort_options = SortOptions(sort_field=_SORT_FIELDS[sort], sort_order=order)
    found: list[Dispatch] = []
    async with _connect(settings) as client:
        with out.progress("Listing dispatches…") as status:
            pages = client.list(
                microgrid_id,
                target_components=list(targets),
                start_from=start_from,
                start_to=start_to,
                end_from=end_from,
                end_to=end_to,
                active=active,
                dry_run=dry_run,
                recurring=recurring,
                dispatch_ids=list(itertools.chain.from_iterable(ids)),
                filter_queries=server_queries,
                sort=sort_options,
                page_size=page_size,
            )
            try:
                async for page in pages:
                    for dispatch in page:
                        if type_ is not None and (
                            dispatch.data is None or dispatch.data.type != type_
                        ):
                            continue
                        if is_running is not None and not is_running(dispatch, now):
                            continue
                        if out.json_mode:
                            out.message_json(dispatch)  # NDJSON goes out page by page
                        found.append(dispatch)
                    status(f"Listing dispatches… {len(found)} so far")
            except ValueError as error:
                _usage(error)
    if not out.json_mode:
        out.dispatch_table(found)


def _is_running(dispatch: Dispatch, at: dt.datetime) -> bool:
    from ..recurrence import is_running

    return bool(dispatch.data is not None and dispatch.data.is_active and is_running(dispatch, at))


# --- get / delete ---------------------------------------------------------


@cli.command("get")
@_microgrid
@click.argument("ids", metavar="ID...", type=id_range_param(), nargs=-1, required=True)
@_command_json_option
@click.pass_obj
async def get_command(settings: Settings, microgrid_id: int, ids: tuple[list[int], ...]) -> None:
    """Show dispatches by id (ranges like 5-9 allowed)."""
    from ..recurrence import next_run

    out = settings.output()
    now = dt.datetime.now(dt.UTC)
    async with _connect(settings) as client:
        for dispatch_id in itertools.chain.from_iterable(ids):
            dispatch = await client.get(microgrid_id, dispatch_id)
            upcoming = next_run(dispatch, now) if not out.json_mode else None
            out.dispatch_detail(dispatch, next_run=upcoming)


@cli.command("delete")
@_microgrid
@click.argument("ids", metavar="ID...", type=id_range_param(), nargs=-1, required=True)
@_command_json_option
@click.pass_obj
async def delete_command(settings: Settings, microgrid_id: int, ids: tuple[list[int], ...]) -> None:
    """Delete dispatches by id (ranges like 5-9 allowed).

    Every id is tried; ids that do not exist are reported one per line on
    stderr and make the exit code 1.
    """
    out = settings.output()
    failed = False
    async with _connect(settings) as client:
        for dispatch_id in itertools.chain.from_iterable(ids):
            try:
                await client.delete(microgrid_id, dispatch_id)
            except NotFound as error:
                # Keep going: in a range like 5-9 some ids may be gone already.
                failed = True
                click.echo(f"Error: {ApiFailure(error).format_message()}", err=True)
                continue
            if out.json_mode:
                out.message_json(
                    DeleteMicrogridDispatchResponse(
                        microgrid_id=microgrid_id, dispatch_id=dispatch_id
                    )
                )
            else:
                out.line(f"Deleted dispatch {dispatch_id}.")
    if failed:
        raise click.exceptions.Exit(1)


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


@cli.command(
    "create",
    # \b keeps click from re-wrapping the example lines.
    epilog="\b\nExamples:\n"
    "  dispatch-cli create 1 BATTERY_CHARGE BATTERY:LI_ION 'in 10 min' 1h30m\n"
    "  dispatch-cli create 1 PV_CURTAIL 7,8 'tomorrow 08:00' 2h --freq daily --count 5\n"
    "  dispatch-cli create 1 EV_LIMIT EV_CHARGER now --payload '{\"max_a\": 16}'",
)
@_microgrid
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
@_command_json_option
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
    async with _connect(settings) as client:
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
            _usage(error)
    out.dispatch_detail(dispatch)


@cli.command("update")
@_microgrid
@click.argument("dispatch_id", metavar="ID", type=click.IntRange(min=0))
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
@_command_json_option
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
    async with _connect(settings) as client:
        try:
            dispatch = await client.update(microgrid_id, dispatch_id, new_fields)
        except ValueError as error:
            _usage(error)
    out.dispatch_detail(dispatch)


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

    async with _connect(settings) as client, anyio.create_task_group() as tasks:
        tasks.start_soon(announce_when_open)
        tasks.start_soon(_cancel_on_signal, tasks.cancel_scope)
        with anyio.move_on_after(time_limit.total_seconds() if time_limit is not None else None):
            events = client.watch(microgrid_id) if watch else client.stream(microgrid_id)
            # Caught here, not outside: leaving the task group would wrap it in
            # an ExceptionGroup, and the user should see the typed error.
            try:
                # Closed explicitly so the shared stream is left at once, also on timeout.
                async with aclosing(events):
                    async for event in events:
                        announce()
                        document = StreamMicrogridDispatchesResponse(
                            dispatch=event.dispatch, event=event.event
                        ).to_dict()
                        out.event(event.event.name, event.dispatch, document)
                        seen += 1
                        if max_events is not None and seen >= max_events:
                            break
            except DispatchApiError as error:
                failure = error
        tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    """Treat Ctrl-C / SIGTERM as the normal end of a long-running command (exit 0)."""
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                scope.cancel()
                return
    except NotImplementedError:
        return  # Windows: Ctrl-C arrives as KeyboardInterrupt, handled in main()


@cli.command("stream")
@_microgrid
@_follow_options
@_command_json_option
@click.pass_obj
async def stream_command(
    settings: Settings, microgrid_id: int, max_events: int | None, time_limit: dt.timedelta | None
) -> None:
    """Print create/update/delete events of MICROGRID as they happen (NDJSON with --json)."""
    await _follow(settings, microgrid_id, max_events, time_limit, watch=False)


@cli.command("watch")
@_microgrid
@_follow_options
@_command_json_option
@click.pass_obj
async def watch_command(
    settings: Settings, microgrid_id: int, max_events: int | None, time_limit: dt.timedelta | None
) -> None:
    """Like stream, but first the current dispatches, and no change lost over reconnects."""
    await _follow(settings, microgrid_id, max_events, time_limit, watch=True)


# --- timeline / ical ------------------------------------------------------


@cli.command("timeline")
@_microgrid
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
@_command_json_option
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
    idle = 0
    async with _connect(settings) as client:
        with out.progress("Collecting dispatches…"):
            dispatches = [
                d
                async for d in client.dispatches(
                    microgrid_id, active=None if include_inactive else True
                )
            ]
    for dispatch in sorted(dispatches, key=lambda d: d.metadata.dispatch_id if d.metadata else 0):
        data = dispatch.data
        if data is None:
            continue
        # An inactive dispatch has no runs; with --all, show what it would run.
        schedule = data if data.is_active else dataclasses.replace(data, is_active=True)
        window_runs = list(itertools.islice(runs(schedule, start, end), _MAX_RUNS_PER_ROW))
        if out.json_mode:
            out.json_line(
                {
                    "dispatch": dispatch.to_dict(),
                    "runs": [Interval(start_time=s, end_time=e).to_dict() for s, e in window_runs],
                }
            )
            continue
        if not window_runs:
            idle += 1
            continue
        dispatch_id = dispatch.metadata.dispatch_id if dispatch.metadata else 0
        label = f"#{dispatch_id} {data.type}" + ("" if data.is_active else " (off)")
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


def _can_encode(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


@cli.command("ical")
@_microgrid
@click.argument("dispatch_id", metavar="ID", type=click.IntRange(min=0))
@click.option(
    "-o",
    "--output",
    "output_file",
    type=click.File("wb"),
    help="Write to this file instead of stdout.",
)
@_command_json_option
@click.pass_obj
async def ical_command(
    settings: Settings, microgrid_id: int, dispatch_id: int, output_file: Any
) -> None:
    """Export dispatch ID as an iCalendar (.ics) event, recurrence included."""
    from ..ical import to_ical

    out = settings.output()
    async with _connect(settings) as client:
        dispatch = await client.get(microgrid_id, dispatch_id)
    calendar = to_ical(dispatch)
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


# --- serve ----------------------------------------------------------------


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=50051,
    show_default=True,
    help="Port (0: any free port).",
)
@click.option(
    "--db", default=":memory:", show_default=True, help="SQLite file to keep dispatches in."
)
@click.option(
    "--key", "keys", multiple=True, help="Accept this API key (repeatable; none: accept any)."
)
@click.option("--sign-secret", "server_sign_secret", help="Require calls signed with this secret.")
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate chain (PEM)."
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM)."
)
@_command_json_option
@click.pass_obj
async def serve_command(
    settings: Settings,
    host: str,
    port: int,
    db: str,
    keys: tuple[str, ...],
    server_sign_secret: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the reference Dispatch API server until Ctrl-C (or SIGTERM).

    Prints the URL to connect to as soon as it listens (with --json:
    {"url": ...}); logs go to stderr.
    """
    from ..server import DispatchServer, serve, server_ssl_context

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together; give both or neither")
    out = settings.output()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def ready(server: DispatchServer) -> None:
        if out.json_mode:
            out.json_line({"url": server.url, "host": server.host, "port": server.port})
        else:
            out.line(f"Serving the Dispatch API on {server.url} (db {db}); Ctrl-C to stop")

    failure: OSError | None = None

    async def run_server() -> None:
        nonlocal failure
        try:
            await serve(
                host=host,
                port=port,
                db=db,
                keys=keys or None,
                sign_secret=server_sign_secret,
                ssl=server_ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None,
                on_ready=ready,
            )
        except OSError as error:  # port taken, unreadable certificate, bad db path
            failure = error
        tasks.cancel_scope.cancel()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_server)
        tasks.start_soon(_cancel_on_signal, tasks.cancel_scope)
    if failure is not None:
        raise click.ClickException(f"cannot serve on {host}:{port}: {failure}")
