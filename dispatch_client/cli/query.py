"""Reading and deleting: `list`, `get` and `delete`."""

from __future__ import annotations

import datetime as dt
import itertools

import asyncclick as click

from .._proto.frequenz.api.dispatch.v1 import (
    DeleteMicrogridDispatchResponse,
    Dispatch,
    SortField,
    SortOptions,
    SortOrder,
    TargetComponents,
)
from ..errors import NotFound
from ..validation import dispatch_id_of
from .base import (
    ApiFailure,
    Settings,
    command_json_option,
    connect,
    microgrid_argument,
    usage_error,
)
from .parsing import TARGET_HELP, id_range_param, target_param, time_param

__all__ = ["delete_command", "get_command", "list_command"]

_SORT_FIELDS = {
    "start": SortField.START_TIME,
    "created": SortField.CREATE_TIME,
    "updated": SortField.LAST_UPDATE_TIME,
}
# --- list -----------------------------------------------------------------


@click.command("list")
@microgrid_argument
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
@command_json_option
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
    async with connect(settings) as client:
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
                usage_error(error)
    if not out.json_mode:
        out.dispatch_table(found)


def _is_running(dispatch: Dispatch, at: dt.datetime) -> bool:
    from ..recurrence import is_running

    if dispatch.data is None or not dispatch.data.is_active:
        return False
    try:
        return is_running(dispatch, at)
    except ValueError as error:
        # Values from a newer server this client cannot evaluate: say so, go on.
        _warn(dispatch, "cannot tell whether it is running", error)
        return False


def _warn(dispatch: Dispatch, what: str, error: ValueError) -> None:
    click.echo(f"Warning: dispatch {dispatch_id_of(dispatch)}: {what}: {error}", err=True)


# --- get / delete ---------------------------------------------------------


@click.command("get")
@microgrid_argument
@click.argument("ids", metavar="ID...", type=id_range_param(), nargs=-1, required=True)
@command_json_option
@click.pass_obj
async def get_command(settings: Settings, microgrid_id: int, ids: tuple[list[int], ...]) -> None:
    """Show dispatches by id (ranges like 5-9 allowed).

    Every id is tried; ids that do not exist are reported one per line on
    stderr and make the exit code 1.
    """
    from ..recurrence import next_run

    out = settings.output()
    now = dt.datetime.now(dt.UTC)
    failed = False
    async with connect(settings) as client:
        for dispatch_id in itertools.chain.from_iterable(ids):
            try:
                dispatch = await client.get(microgrid_id, dispatch_id)
            except NotFound as error:
                # Keep going, as delete does: in a range some ids may not exist.
                failed = True
                click.echo(f"Error: {ApiFailure(error).format_message()}", err=True)
                continue
            upcoming = None
            if not out.json_mode:
                try:
                    upcoming = next_run(dispatch, now)
                except ValueError as error:
                    _warn(dispatch, "cannot compute its next run", error)
            out.dispatch_detail(dispatch, next_run=upcoming)
    if failed:
        raise click.exceptions.Exit(1)


@click.command("delete")
@microgrid_argument
@click.argument("ids", metavar="ID...", type=id_range_param(), nargs=-1, required=True)
@command_json_option
@click.pass_obj
async def delete_command(settings: Settings, microgrid_id: int, ids: tuple[list[int], ...]) -> None:
    """Delete dispatches by id (ranges like 5-9 allowed).

    Every id is tried; ids that do not exist are reported one per line on
    stderr and make the exit code 1.
    """
    out = settings.output()
    failed = False
    async with connect(settings) as client:
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
