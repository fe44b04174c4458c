"""Every request the client sends, built and checked here before anything goes on the wire.

Each builder takes the arguments of the `Client` method of the same name,
raises `ValueError` naming the argument, the value and what is allowed, and
returns a `Call`: the request with its RPC path and response type. A `Client`
method then reads build → call → unwrap.
"""

from __future__ import annotations

import builtins
import datetime as dt
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from ._proto.frequenz.api.common.v1alpha8.pagination import PaginationParams
from ._proto.frequenz.api.common.v1alpha8.types import Interval
from ._proto.frequenz.api.dispatch.v1 import (
    CreateMicrogridDispatchRequest,
    CreateMicrogridDispatchResponse,
    DeleteMicrogridDispatchRequest,
    DeleteMicrogridDispatchResponse,
    DispatchData,
    DispatchFilter,
    GetMicrogridDispatchRequest,
    GetMicrogridDispatchResponse,
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    RecurrenceRule,
    SortField,
    SortOptions,
    SortOrder,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchResponse,
)
from .targets import TargetLike, to_target
from .update import build_update
from .validation import (
    MAX_FILTER_ITEMS,
    check_aware,
    check_bool,
    check_dispatch_filter,
    check_duration,
    check_positive_int,
    check_recurrence,
    check_sort_options,
    check_start_time,
    check_uint64,
    payload_to_struct,
    shown,
)

__all__ = [
    "START_TIME_GRACE",
    "Call",
    "SortSpec",
    "create",
    "delete",
    "get",
    "list_all",
    "list_page",
    "next_page",
    "stream",
    "update",
]

_SERVICE = "/frequenz.api.dispatch.v1.MicrogridDispatchService/"
_MAX_UINT32 = 2**32 - 1

START_TIME_GRACE = dt.timedelta(seconds=1)
"""How far in the past a start time may be and still count as "now".

`datetime.now(UTC)` computed just before a call is a moment old when checked;
that is not the mistake the past-start check is meant to catch.
"""

SortSpec = SortOptions | SortField | tuple[SortField, SortOrder]
"""A sort for `Client.list`: a field (ascending), a (field, order) pair or `SortOptions`."""

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


@dataclass(frozen=True, slots=True)
class Call(Generic[_Req, _Resp]):
    """One RPC ready to send.

    Attributes:
        path: the gRPC method path, e.g.
            `/frequenz.api.dispatch.v1.MicrogridDispatchService/GetMicrogridDispatch`.
        request: the checked request message.
        response_type: the message class the server answers with.
    """

    path: str
    request: _Req
    response_type: type[_Resp]


def create(
    microgrid_id: int,
    type: str,
    start_time: dt.datetime | Literal["NOW"],
    duration: dt.timedelta | None,
    target: TargetLike,
    *,
    active: bool = True,
    dry_run: bool = False,
    payload: Mapping[str, Any] | None = None,
    recurrence: RecurrenceRule | None = None,
    now: dt.datetime | None = None,
) -> Call[CreateMicrogridDispatchRequest, CreateMicrogridDispatchResponse]:
    """Check the arguments of `Client.create` and build its request.

    Args:
        microgrid_id: the microgrid, an int in 0..2**64-1.
        type: the dispatch type, a non-empty str.
        start_time: an aware datetime, at most `START_TIME_GRACE` in the past,
            or `"NOW"` (any case) for the server's clock.
        duration: how long each run lasts (whole seconds on the wire), or
            None for unlimited.
        target: anything `targets.to_target` takes.
        active: whether the dispatch is active.
        dry_run: whether the dispatch is a dry run.
        payload: a JSON-like dict, at most 5 levels deep and 50 KB encoded.
        recurrence: the recurrence rule, or None for a single run.
        now: the time the start time is checked against; the current time if None.

    Returns:
        The `CreateMicrogridDispatch` call.

    Raises:
        ValueError: an argument is out of range or of the wrong type.
    """
    now = now or dt.datetime.now(dt.UTC)
    check_uint64(microgrid_id, "microgrid_id")
    if not isinstance(type, str) or not type:
        raise ValueError(f"type must be a non-empty str, got {shown(type)}")
    start_immediately = isinstance(start_time, str) and start_time.upper() == "NOW"
    if isinstance(start_time, str) and not start_immediately:
        raise ValueError(f'start_time must be an aware datetime or "NOW", got {shown(start_time)}')
    start = (
        None
        if start_immediately
        else check_start_time(start_time, now=now, allowance=START_TIME_GRACE)
    )
    check_bool(active, "active")
    check_bool(dry_run, "dry_run")
    if recurrence is not None and not isinstance(recurrence, RecurrenceRule):
        raise ValueError(
            f"recurrence must be a RecurrenceRule, got {recurrence.__class__.__name__}"
        )
    data = DispatchData(
        type=type,
        start_time=start,
        duration=check_duration(duration),
        target=to_target(target, "target"),
        is_active=active,
        is_dry_run=dry_run,
        payload=payload_to_struct(payload),
        recurrence=recurrence,
    )
    # What `check_dispatch_data` checks beyond the arguments' checks above, in its
    # order (walking the whole message again cost more than building it);
    # tests/test_client_validation.py holds the two to the same verdicts.
    if recurrence is not None:
        check_recurrence(recurrence, start=now if start is None else start)
    try:
        type.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"type is not valid Unicode text: {error.reason}") from None
    request = CreateMicrogridDispatchRequest(
        microgrid_id=microgrid_id,
        dispatch_data=data,
        start_immediately=True if start_immediately else None,
    )
    return Call(_SERVICE + "CreateMicrogridDispatch", request, CreateMicrogridDispatchResponse)


def get(
    microgrid_id: int, dispatch_id: int
) -> Call[GetMicrogridDispatchRequest, GetMicrogridDispatchResponse]:
    """Build the request of `Client.get`.

    Args:
        microgrid_id: the microgrid, an int in 0..2**64-1.
        dispatch_id: the dispatch, an int in 0..2**64-1.

    Returns:
        The `GetMicrogridDispatch` call.

    Raises:
        ValueError: an id is not an int in range.
    """
    request = GetMicrogridDispatchRequest(
        microgrid_id=check_uint64(microgrid_id, "microgrid_id"),
        dispatch_id=check_uint64(dispatch_id, "dispatch_id"),
    )
    return Call(_SERVICE + "GetMicrogridDispatch", request, GetMicrogridDispatchResponse)


def delete(
    microgrid_id: int, dispatch_id: int
) -> Call[DeleteMicrogridDispatchRequest, DeleteMicrogridDispatchResponse]:
    """Build the request of `Client.delete`.

    Args:
        microgrid_id: the microgrid, an int in 0..2**64-1.
        dispatch_id: the dispatch, an int in 0..2**64-1.

    Returns:
        The `DeleteMicrogridDispatch` call.

    Raises:
        ValueError: an id is not an int in range.
    """
    request = DeleteMicrogridDispatchRequest(
        microgrid_id=check_uint64(microgrid_id, "microgrid_id"),
        dispatch_id=check_uint64(dispatch_id, "dispatch_id"),
    )
    return Call(_SERVICE + "DeleteMicrogridDispatch", request, DeleteMicrogridDispatchResponse)


def update(
    microgrid_id: int,
    dispatch_id: int,
    new_fields: Mapping[str, Any],
    *,
    now: dt.datetime | None = None,
) -> Call[UpdateMicrogridDispatchRequest, UpdateMicrogridDispatchResponse]:
    """Build the request of `Client.update`: the changed fields and their mask.

    Args:
        microgrid_id: the microgrid, an int in 0..2**64-1.
        dispatch_id: the dispatch, an int in 0..2**64-1.
        new_fields: field name → new value; the keys `dispatch_client.update`
            lists (`start_time`, `duration`, `target`, `active`, `payload`,
            `recurrence`, `recurrence.<field>`).
        now: the time a new start time is checked against; the current time if None.

    Returns:
        The `UpdateMicrogridDispatch` call; its mask names exactly the given fields.

    Raises:
        ValueError: an id is out of range, or a key or value of `new_fields` is not allowed.
    """
    check_uint64(microgrid_id, "microgrid_id")
    check_uint64(dispatch_id, "dispatch_id")
    changes, mask = build_update(
        new_fields, now=now or dt.datetime.now(dt.UTC), allowance=START_TIME_GRACE
    )
    request = UpdateMicrogridDispatchRequest(
        microgrid_id=microgrid_id, dispatch_id=dispatch_id, update_mask=mask, update=changes
    )
    return Call(_SERVICE + "UpdateMicrogridDispatch", request, UpdateMicrogridDispatchResponse)


def list_page(
    microgrid_id: int,
    *,
    target_components: Iterable[TargetLike] = (),
    start_from: dt.datetime | None = None,
    start_to: dt.datetime | None = None,
    end_from: dt.datetime | None = None,
    end_to: dt.datetime | None = None,
    update_from: dt.datetime | None = None,
    update_to: dt.datetime | None = None,
    active: bool | None = None,
    dry_run: bool | None = None,
    recurring: bool | None = None,
    dispatch_ids: Iterable[int] = (),
    filter_queries: Iterable[str] = (),
    sort: SortSpec | None = None,
    page_size: int | None = None,
) -> Call[ListMicrogridDispatchesRequest, ListMicrogridDispatchesResponse]:
    """Build the request for the first page of `Client.list` (see there for the filters).

    Args:
        microgrid_id: the microgrid, an int in 0..2**64-1.
        target_components: targets to match (each anything `to_target` takes).
        start_from: aware datetime; start times from it (inclusive).
        start_to: aware datetime; start times before it (exclusive).
        end_from: aware datetime; end times from it (inclusive).
        end_to: aware datetime; end times before it (exclusive).
        update_from: aware datetime; update times from it (inclusive).
        update_to: aware datetime; update times before it (exclusive).
        active: only active (True) or inactive (False) dispatches; None for both.
        dry_run: only dry runs (True) or real ones (False); None for both.
        recurring: only recurring (True) or single (False) ones; None for both.
        dispatch_ids: ids to match, each an int in 0..2**64-1.
        filter_queries: texts OR-ed together (a str counts as one).
        sort: a `SortSpec`, or None for the server's order.
        page_size: dispatches per page (an int >= 1), or None for the server's default.

    Returns:
        The `ListMicrogridDispatches` call for the first page.

    Raises:
        ValueError: a filter is of the wrong type or out of range, a filter list
            holds more than `validation.MAX_FILTER_ITEMS` (1000) items, or a target
            or the sort holds an enum value the schema does not define.
    """
    request = ListMicrogridDispatchesRequest(
        microgrid_id=check_uint64(microgrid_id, "microgrid_id"),
        filter=_filter(
            target_components=target_components,
            start=(start_from, start_to),
            end=(end_from, end_to),
            updated=(update_from, update_to),
            flags={"active": active, "dry_run": dry_run, "recurring": recurring},
            dispatch_ids=dispatch_ids,
            filter_queries=filter_queries,
        ),
        sort_options=_sort_options(sort),
    )
    if page_size is not None:
        check_positive_int(page_size, "page_size")
        if page_size > _MAX_UINT32:
            raise ValueError(f"page_size must be at most {_MAX_UINT32}, got {page_size}")
        request.pagination_params = PaginationParams(page_size=page_size)
    assert request.filter is not None
    check_dispatch_filter(request.filter, "filter")
    if request.sort_options is not None:
        check_sort_options(request.sort_options, "sort")
    return Call(_SERVICE + "ListMicrogridDispatches", request, ListMicrogridDispatchesResponse)


def list_all(
    microgrid_id: int,
) -> Call[ListMicrogridDispatchesRequest, ListMicrogridDispatchesResponse]:
    """Build the first page of every dispatch of a microgrid: `list_page(microgrid_id)`'s call.

    The same request (and bytes) as `list_page` with no filters, without
    building and checking filters the caller cannot pass: a shared stream lists
    its microgrid this way at least twice per open (the baseline, the
    catch-up), a thousand times over for a fleet opening at once.

    Args:
        microgrid_id: the microgrid, an int in 0..2**64-1.

    Returns:
        The `ListMicrogridDispatches` call for the first page.

    Raises:
        ValueError: the id is not an int in range.
    """
    request = ListMicrogridDispatchesRequest(
        microgrid_id=check_uint64(microgrid_id, "microgrid_id"), filter=DispatchFilter()
    )
    return Call(_SERVICE + "ListMicrogridDispatches", request, ListMicrogridDispatchesResponse)


def next_page(
    call: Call[ListMicrogridDispatchesRequest, ListMicrogridDispatchesResponse], token: str
) -> Call[ListMicrogridDispatchesRequest, ListMicrogridDispatchesResponse]:
    """Build the request for the page after `call`'s.

    Args:
        call: the call of the previous page.
        token: the server's `next_page_token` from the previous page.

    Returns:
        The same filter and sort with the page token; page size and page
        token are a oneof on the wire, so later pages carry only the token.
    """
    previous = call.request
    request = ListMicrogridDispatchesRequest(
        microgrid_id=previous.microgrid_id,
        filter=previous.filter,
        sort_options=previous.sort_options,
        pagination_params=PaginationParams(page_token=token),
    )
    return Call(call.path, request, call.response_type)


def stream(
    microgrid_id: int,
) -> Call[StreamMicrogridDispatchesRequest, StreamMicrogridDispatchesResponse]:
    """Build the request of one `StreamMicrogridDispatches` call (a server stream).

    Args:
        microgrid_id: the microgrid, an int in 0..2**64-1.

    Returns:
        The `StreamMicrogridDispatches` call.

    Raises:
        ValueError: the id is not an int in range.
    """
    request = StreamMicrogridDispatchesRequest(
        microgrid_id=check_uint64(microgrid_id, "microgrid_id")
    )
    return Call(_SERVICE + "StreamMicrogridDispatches", request, StreamMicrogridDispatchesResponse)


def _items(values: object, name: str) -> builtins.list[Any]:
    """The items of a filter list, at most `MAX_FILTER_ITEMS` + 1 of them read.

    Reading stops past the limit, so an endless iterator is refused too.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list, got {type(values).__name__}")
    items = builtins.list(itertools.islice(values, MAX_FILTER_ITEMS + 1))
    if len(items) > MAX_FILTER_ITEMS:
        raise ValueError(
            f"{name} has more than {MAX_FILTER_ITEMS} items (allowed: at most {MAX_FILTER_ITEMS})"
        )
    return items


def _sort_options(sort: SortSpec | None) -> SortOptions | None:
    if sort is None or isinstance(sort, SortOptions):
        return sort
    if isinstance(sort, SortField):
        return SortOptions(sort_field=sort, sort_order=SortOrder.ASCENDING)
    if isinstance(sort, tuple) and len(sort) == 2:
        field, order = sort
        if isinstance(field, SortField) and isinstance(order, SortOrder):
            return SortOptions(sort_field=field, sort_order=order)
    raise ValueError(
        f"sort must be a SortField, (SortField, SortOrder) or SortOptions, got {shown(sort)}"
    )


def _interval(start: dt.datetime | None, end: dt.datetime | None, name: str) -> Interval | None:
    if start is None and end is None:
        return None
    return Interval(
        start_time=None if start is None else check_aware(start, f"{name}_from"),
        end_time=None if end is None else check_aware(end, f"{name}_to"),
    )


def _filter(
    *,
    target_components: Iterable[TargetLike],
    start: tuple[dt.datetime | None, dt.datetime | None],
    end: tuple[dt.datetime | None, dt.datetime | None],
    updated: tuple[dt.datetime | None, dt.datetime | None],
    flags: dict[str, bool | None],
    dispatch_ids: Iterable[int],
    filter_queries: Iterable[str],
) -> DispatchFilter:
    for name, flag in flags.items():
        # None means "either"; an int would be a guess at what was meant.
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool or None, got {shown(flag)}")
    if isinstance(filter_queries, str):
        filter_queries = [filter_queries]
    queries = _items(filter_queries, "filter_queries")
    for query in queries:
        if not isinstance(query, str):
            raise ValueError(f"filter_queries must be strings, got {shown(query)}")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate, e.g. "\ud800"
            raise ValueError(
                f"filter_queries item {shown(query)} is not valid Unicode text: {error.reason}"
            ) from None
    targets = _items(target_components, "target_components")
    ids = _items(dispatch_ids, "dispatch_ids")
    return DispatchFilter(
        targets=[to_target(t, f"target_components[{i}]") for i, t in enumerate(targets)],
        is_active=flags["active"],
        is_dry_run=flags["dry_run"],
        is_recurring=flags["recurring"],
        start_time_interval=_interval(*start, "start"),
        end_time_interval=_interval(*end, "end"),
        update_time_interval=_interval(*updated, "update"),
        dispatch_ids=[check_uint64(i, "dispatch_ids item") for i in ids],
        queries=queries,
    )
