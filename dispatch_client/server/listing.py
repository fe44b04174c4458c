"""Turning a list request into a store query, and pages into tokens (no I/O).

Every check raises `ValueError` naming the request field; the service answers
it with INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import betterproto2

from .._proto.frequenz.api.common.v1alpha8.pagination import PaginationInfo
from .._proto.frequenz.api.common.v1alpha8.types import Interval
from .._proto.frequenz.api.dispatch.v1 import (
    DispatchFilter,
    ListMicrogridDispatchesRequest,
    SortField,
    SortOrder,
)
from ..validation import check_bool, check_dispatch_filter
from .records import ListQuery, ListResult, target_key, to_micros

__all__ = ["list_query", "pagination_info"]

_SORT_COLUMNS = {
    SortField.UNSPECIFIED: "create_time",
    SortField.CREATE_TIME: "create_time",
    SortField.START_TIME: "start_time",
    SortField.LAST_UPDATE_TIME: "update_time",
}
# ASCII digits only: re's \d also takes other scripts' digits, and int() reads them.
_ID_QUERY = re.compile(r"#([0-9]+)")
_UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1


def list_query(
    message: ListMicrogridDispatchesRequest, *, default_page_size: int, max_page_size: int
) -> ListQuery:
    """Build the store query for one page of a list request.

    Args:
        message: the request as received.
        default_page_size: rows per page when the request gives no page size.
        max_page_size: the most rows per page; larger sizes are clamped to it.

    Returns:
        The query: filter criteria, sort column and direction, position after
        the previous page (from the token) and the page size.

    Raises:
        ValueError: an unknown sort field or order, a page token this server
            did not issue, or one issued for other sort options, a filter list
            longer than `validation.MAX_FILTER_ITEMS`.
    """
    sort_column, descending = _sort(message)
    after: tuple[int, int] | None = None
    limit = default_page_size
    params = message.pagination_params
    if params is not None and params.page_token:
        token_column, token_descending, after, limit = _decode_token(params.page_token)
        if (token_column, token_descending) != (sort_column, descending):
            raise ValueError(
                "pagination_params.page_token was issued for other sort_options;"
                " send the same sort_options with every page"
            )
    elif params is not None and params.page_size:
        limit = params.page_size
    limit = max(1, min(limit, max_page_size))
    return ListQuery(
        microgrid_id=message.microgrid_id,
        sort_column=sort_column,
        descending=descending,
        after=after,
        limit=limit,
        **_filter_criteria(message.filter),
    )


def pagination_info(query: ListQuery, result: ListResult[Any]) -> PaginationInfo:
    """Return the pagination info of a page: total count and the next page's token.

    Args:
        query: the query the page was read with.
        result: the page read.

    Returns:
        `total_items` (clamped to 2**32-1) and `next_page_token`, unset on the last page.
    """
    token = None
    if result.last_key is not None:
        token = _encode_token(query.sort_column, query.descending, result.last_key, query.limit)
    return PaginationInfo(total_items=min(result.total_items, _UINT32_MAX), next_page_token=token)


def _sort(message: ListMicrogridDispatchesRequest) -> tuple[str, bool]:
    options = message.sort_options
    if options is None:
        return "create_time", True
    column = _SORT_COLUMNS.get(options.sort_field)
    if column is None:
        raise ValueError(
            f"sort_options.sort_field {options.sort_field!r} is not a known sort field"
        )
    if options.sort_order not in (SortOrder.UNSPECIFIED, SortOrder.ASCENDING, SortOrder.DESCENDING):
        raise ValueError(
            f"sort_options.sort_order {options.sort_order!r} is not a known sort order"
        )
    return column, options.sort_order != SortOrder.ASCENDING


def _interval(interval: Interval | None) -> tuple[int | None, int | None]:
    if interval is None:
        return None, None
    low = None if interval.start_time is None else to_micros(interval.start_time)
    high = None if interval.end_time is None else to_micros(interval.end_time)
    return low, high


_NO_FILTER = DispatchFilter()


def _filter_criteria(filter_: DispatchFilter | None) -> dict[str, Any]:
    if filter_ is None:
        return {}
    if filter_ != _NO_FILTER:  # an empty filter is valid: no walk over it per list
        check_dispatch_filter(filter_)
    criteria: dict[str, Any] = {
        "is_active": filter_.is_active,
        "is_dry_run": filter_.is_dry_run,
    }
    if filter_.targets:
        criteria["target_keys"] = sorted({target_key(t) for t in filter_.targets})
    which, value = betterproto2.which_one_of(filter_, "recurrence")
    if which == "is_recurring":
        criteria["is_recurring"] = bool(value)
    for prefix in ("start", "end", "update"):
        interval = getattr(filter_, f"{prefix}_time_interval")
        criteria[f"{prefix}_from"], criteria[f"{prefix}_to"] = _interval(interval)
    if filter_.dispatch_ids:
        criteria["dispatch_ids"] = list(filter_.dispatch_ids)
    id_queries: list[int] = []
    type_queries: list[str] = []
    for query in filter_.queries:
        match = _ID_QUERY.fullmatch(query.strip())
        if match:
            number = int(match.group(1))
            # An id that cannot exist matches nothing; keep the OR-group non-empty.
            id_queries.append(number if number <= _INT64_MAX else 0)
        else:
            type_queries.append(query)
    criteria["id_queries"] = id_queries
    criteria["type_queries"] = type_queries
    return criteria


def _encode_token(column: str, descending: bool, last: tuple[int, int], size: int) -> str:
    body = json.dumps({"s": column, "d": descending, "k": last[0], "i": last[1], "n": size})
    return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def _decode_token(token: str) -> tuple[str, bool, tuple[int, int], int]:
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        column, key, last_id, size = body["s"], body["k"], body["i"], body["n"]
        descending = check_bool(body["d"], "page_token.d")
        if (
            column not in _SORT_COLUMNS.values()
            or not all(type(v) is int for v in (key, last_id, size))
            or not (-(2**63) <= key <= _INT64_MAX and 0 <= last_id <= _INT64_MAX)
        ):
            raise ValueError("bad token fields")
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError(
            "pagination_params.page_token is not a token issued by this server"
        ) from None
    return column, descending, (key, last_id), size
