"""The SQL both dispatch stores share: row layout, list statements, parameter styles.

The SQLite store (`store.py`) and the PostgreSQL store (`pg_store.py`) keep the
same columns and build their list queries with the same code, in their own
`SqlDialect`, so both filter, sort and page alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .._proto.frequenz.api.dispatch.v1 import Dispatch, DispatchData, DispatchMetadata
from .records import (
    SORT_COLUMNS,
    ListQuery,
    ListResult,
    from_micros,
    is_recurring,
    target_key,
    to_micros,
)
from .replies import encode, message_field, metadata

__all__ = [
    "FIELDS",
    "SQLITE",
    "Columns",
    "ListStatements",
    "SqlDialect",
    "columns",
    "dispatch_of",
    "encoded_row",
    "from_row",
    "list_statements",
    "page_result",
    "signed",
]

_D = TypeVar("_D")
_INT64_MAX = 2**63 - 1


def signed(value: int) -> int:
    """Map a uint64 id to the signed 64-bit integer the databases store (two's complement)."""
    # SQLite integers are signed 64-bit; uint64 microgrid ids above 2**63-1
    # are stored as their two's complement so that equality still works.
    return value - 2**64 if value > _INT64_MAX else value


FIELDS = "id, create_time, update_time, end_time, data"


@dataclass(frozen=True)
class Columns:
    """The columns stored next to the protobuf bytes of a dispatch."""

    type: str
    start: int
    end: int | None
    active: int
    dry_run: int
    recurring: int
    target: str
    blob: bytes


def columns(data: DispatchData, end_time: dt.datetime | None) -> Columns:
    """Compute the stored columns of `data`, whose series ends at `end_time`."""
    assert data.start_time is not None, "start_time is checked before storing"
    return Columns(
        type=data.type,
        start=to_micros(data.start_time),
        end=None if end_time is None else to_micros(end_time),
        active=int(data.is_active),
        dry_run=int(data.is_dry_run),
        recurring=int(is_recurring(data)),
        target=target_key(data.target),
        blob=encode(data),
    )


def dispatch_of(
    dispatch_id: int, data: DispatchData, create_us: int, update_us: int, end_us: int | None
) -> Dispatch:
    """Assemble a `Dispatch` from its data and stored metadata values."""
    return Dispatch(metadata=metadata_of(dispatch_id, create_us, update_us, end_us), data=data)


def metadata_of(
    dispatch_id: int, create_us: int, update_us: int, end_us: int | None
) -> DispatchMetadata:
    return DispatchMetadata(
        dispatch_id=dispatch_id,
        create_time=from_micros(create_us),
        update_time=from_micros(update_us),
        end_time=None if end_us is None else from_micros(end_us),
    )


def from_row(row: Sequence[object]) -> Dispatch:
    """Build the `Dispatch` of a row selected as `FIELDS`."""
    dispatch_id, create_us, update_us, end_us, blob = row
    assert isinstance(blob, bytes)
    return dispatch_of(
        int(dispatch_id),  # type: ignore[call-overload]
        DispatchData.parse(blob),
        int(create_us),  # type: ignore[call-overload]
        int(update_us),  # type: ignore[call-overload]
        None if end_us is None else int(end_us),  # type: ignore[call-overload]
    )


def encoded_row(row: Sequence[object]) -> bytes:
    """`bytes(from_row(row))`, with the stored `DispatchData` bytes spliced in unparsed."""
    dispatch_id, create_us, update_us, end_us, blob = row
    assert isinstance(blob, bytes)
    encoded_metadata = metadata(
        int(dispatch_id),  # type: ignore[call-overload]
        int(create_us),  # type: ignore[call-overload]
        int(update_us),  # type: ignore[call-overload]
        None if end_us is None else int(end_us),  # type: ignore[call-overload]
    )
    # Dispatch: metadata = 1, data = 2; both set, so both written, as betterproto2 does.
    return message_field(1, encoded_metadata) + message_field(2, blob)


@dataclass(frozen=True)
class SqlDialect:
    """How one database spells the few things the list query needs."""

    mark: str
    """Parameter placeholder."""
    in_list: Callable[[str, Sequence[object]], tuple[str, list[object]]]
    """(column, values) -> clause matching rows whose column is one of values, its params."""
    contains_any: Callable[[Sequence[str]], tuple[str, list[object]]]
    """texts -> clause matching rows whose `type` contains one of the texts, its params."""


def _sqlite_in(column: str, values: Sequence[object]) -> tuple[str, list[object]]:
    # "IN ()" is valid SQLite and matches nothing, which is what an empty set means.
    return f"{column} IN ({', '.join('?' * len(values))})", list(values)


def _sqlite_contains_any(texts: Sequence[str]) -> tuple[str, list[object]]:
    # One flat EXISTS rather than one OR per text: SQLite refuses expressions
    # nested 1000 deep, which a long OR chain is.
    rows = ", ".join(["(?)"] * len(texts))
    return (
        f"EXISTS (SELECT 1 FROM (VALUES {rows}) WHERE instr(type, column1) > 0)",
        list(texts),
    )


SQLITE = SqlDialect(mark="?", in_list=_sqlite_in, contains_any=_sqlite_contains_any)


@dataclass(frozen=True)
class ListStatements:
    """The two statements of one list page: the total count and the page (limit + 1 rows)."""

    count_sql: str
    count_params: list[object]
    page_sql: str
    page_params: list[object]
    """Page rows are `FIELDS` then the sort key."""


def list_statements(query: ListQuery, dialect: SqlDialect) -> ListStatements:
    """Build the SQL of one list page in `dialect` (shared by the SQLite and PostgreSQL stores)."""
    if query.sort_column not in SORT_COLUMNS:
        raise ValueError(f"cannot sort by {query.sort_column!r}")
    mark = dialect.mark
    where, params = _where(query, dialect)
    column = query.sort_column
    direction = "DESC" if query.descending else "ASC"
    page_where, page_params = where, list(params)
    if query.after is not None:
        op = "<" if query.descending else ">"
        page_where += f" AND ({column} {op} {mark} OR ({column} = {mark} AND id {op} {mark}))"
        key, last_id = query.after
        page_params += [key, key, last_id]
    return ListStatements(
        count_sql=f"SELECT COUNT(*) FROM dispatches WHERE {where}",
        count_params=params,
        page_sql=f"SELECT {FIELDS}, {column} FROM dispatches WHERE {page_where}"
        f" ORDER BY {column} {direction}, id {direction} LIMIT {mark}",
        page_params=[*page_params, query.limit + 1],
    )


def page_result(
    query: ListQuery,
    total_items: int,
    rows: Sequence[Sequence[object]],
    convert: Callable[[Sequence[object]], _D],
) -> ListResult[_D]:
    """Turn the rows of `ListStatements.page_sql` into a page."""
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    keys = [(int(row[-1]), int(row[0])) for row in rows]  # type: ignore[call-overload]
    return ListResult(
        dispatches=[convert(row[:-1]) for row in rows],
        total_items=total_items,
        last_key=keys[-1] if more and keys else None,
    )


def _where(query: ListQuery, dialect: SqlDialect) -> tuple[str, list[object]]:
    mark = dialect.mark
    clauses = [f"microgrid_id = {mark}"]
    params: list[object] = [signed(query.microgrid_id)]

    def add(clause: str, *values: object) -> None:
        clauses.append(clause)
        params.extend(values)

    def add_in(column: str, values: Sequence[object]) -> None:
        clause, values_params = dialect.in_list(column, values)
        add(clause, *values_params)

    if query.target_keys is not None:
        add_in("target_key", query.target_keys)
    for column, value in (
        ("is_active", query.is_active),
        ("is_dry_run", query.is_dry_run),
        ("is_recurring", query.is_recurring),
    ):
        if value is not None:
            add(f"{column} = {mark}", bool(value))
    if query.start_from is not None:
        add(f"start_time >= {mark}", query.start_from)
    if query.start_to is not None:
        add(f"start_time < {mark}", query.start_to)
    # A NULL end_time means the series never ends: later than any bound.
    if query.end_from is not None:
        add(f"(end_time IS NULL OR end_time >= {mark})", query.end_from)
    if query.end_to is not None:
        add(f"(end_time IS NOT NULL AND end_time < {mark})", query.end_to)
    if query.update_from is not None:
        add(f"update_time >= {mark}", query.update_from)
    if query.update_to is not None:
        add(f"update_time < {mark}", query.update_to)
    if query.dispatch_ids is not None:
        ids = [i for i in query.dispatch_ids if i <= _INT64_MAX]
        add_in("id", ids)
    if query.id_queries or query.type_queries:
        parts: list[tuple[str, list[object]]] = []
        if query.id_queries:
            parts.append(dialect.in_list("id", query.id_queries))
        if query.type_queries:
            parts.append(dialect.contains_any(query.type_queries))
        add(
            "(" + " OR ".join(clause for clause, _ in parts) + ")",
            *(value for _, values in parts for value in values),
        )
    return " AND ".join(clauses), params
