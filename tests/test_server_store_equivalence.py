"""The SQLite and the PostgreSQL store give the same answers: a property test.

For random dispatches (several microgrids, one above 2**63, types with NUL and
non-ASCII, ties of create time, recurring series, targets in any order, some
updated later) stored in both stores, every random list request -- every
filter, sort field and order, page size, then each following page by its
token -- gets byte-identical responses from a service on either store: the
same dispatches in the same order, the same total, the same page tokens.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import require_postgresql_driver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_client import (
    Dispatch,
    DispatchData,
    RecurrenceRule,
    TargetComponents,
    TargetComponentsIdSet,
)
from dispatch_client._proto.frequenz.api.common.v1alpha8.types import Interval
from dispatch_client._proto.frequenz.api.dispatch.v1 import (
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    SortField,
    SortOptions,
    SortOrder,
    TargetComponentsCategorySet,
)
from dispatch_client.recurrence import series_end
from dispatch_client.server import DispatchService
from dispatch_client.server.store import DispatchStore
from dispatch_client.server.stores import Replacement
from dispatch_client.wire import (
    DispatchFilter,
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    PaginationParams,
)

pytestmark = pytest.mark.anyio

require_postgresql_driver()

import psycopg  # noqa: E402

from dispatch_client.server import pg_store  # noqa: E402

BASE = dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)
MICROGRIDS = [1, 7, 2**64 - 1]
EMPTY = (
    "DELETE FROM dispatches; DELETE FROM dispatch_events; DELETE FROM used_nonces;"
    " ALTER TABLE dispatches ALTER COLUMN id RESTART"
)


def _at(seconds: int) -> dt.datetime:
    return BASE + dt.timedelta(seconds=seconds)


_times = st.integers(-3 * 86400, 3 * 86400).map(lambda s: s - s % 60)
_ids = st.lists(st.integers(1, 4), min_size=1, max_size=3)
_targets = st.one_of(
    _ids.map(lambda ids: TargetComponents(component_ids=TargetComponentsIdSet(ids=ids))),
    st.lists(st.integers(1, 3), min_size=1, max_size=2).map(
        lambda cats: TargetComponents(
            component_categories=TargetComponentsCategorySet(categories=cats)  # type: ignore[arg-type]
        )
    ),
)
_types = st.text(alphabet="ABa\x00é", min_size=1, max_size=3)


@st.composite
def _dispatch(draw: st.DrawFn) -> dict[str, Any]:
    recurrence = None
    if draw(st.booleans()):
        recurrence = RecurrenceRule(
            freq=RecurrenceRuleFrequency.HOURLY,
            interval=draw(st.integers(1, 3)),
            end_criteria=draw(
                st.sampled_from(
                    [None, RecurrenceRuleEndCriteria(count=3), RecurrenceRuleEndCriteria(count=1)]
                )
            ),
        )
    data = DispatchData(
        type=draw(_types),
        start_time=_at(draw(_times)),
        duration=draw(st.sampled_from([None, 0, 600, 7200])),
        target=draw(_targets),
        is_active=draw(st.booleans()),
        is_dry_run=draw(st.booleans()),
        recurrence=recurrence,
    )
    return {
        "microgrid": draw(st.sampled_from(MICROGRIDS)),
        "data": data,
        # Few distinct create times: ties are broken by id.
        "created": draw(st.integers(0, 4)),
        "updated": draw(st.one_of(st.none(), st.integers(5, 9))),
    }


def _interval() -> st.SearchStrategy[Interval | None]:
    bound = st.one_of(st.none(), _times.map(_at))
    return st.one_of(
        st.none(),
        st.builds(lambda a, b: Interval(start_time=a, end_time=b), bound, bound),
    )


@st.composite
def _request(draw: st.DrawFn, known_ids: int) -> ListMicrogridDispatchesRequest:
    filter_ = DispatchFilter(
        targets=draw(st.lists(_targets, max_size=2)),
        is_active=draw(st.one_of(st.none(), st.booleans())),
        is_dry_run=draw(st.one_of(st.none(), st.booleans())),
        start_time_interval=draw(_interval()),
        end_time_interval=draw(_interval()),
        update_time_interval=draw(_interval()),
        dispatch_ids=draw(st.lists(st.integers(1, known_ids + 1), max_size=3)),
        queries=draw(
            st.lists(
                st.one_of(_types, st.integers(0, known_ids + 1).map(lambda i: f"#{i}")),
                max_size=2,
            )
        ),
    )
    if draw(st.booleans()):
        filter_.is_recurring = draw(st.booleans())
    sort = draw(
        st.one_of(
            st.none(),
            st.builds(
                SortOptions,
                sort_field=st.sampled_from(list(SortField)),
                sort_order=st.sampled_from(list(SortOrder)),
            ),
        )
    )
    return ListMicrogridDispatchesRequest(
        microgrid_id=draw(st.sampled_from(MICROGRIDS)),
        filter=draw(st.sampled_from([None, filter_, filter_])),
        sort_options=sort,
        pagination_params=PaginationParams(page_size=draw(st.integers(0, 4))),
    )


@pytest.fixture
async def pg_service(migrated_postgres: str) -> AsyncIterator[DispatchService]:
    async with DispatchService(store=pg_store.PgDispatchStore(migrated_postgres)) as service:
        yield service


async def _fill(store: Any, dispatches: list[dict[str, Any]]) -> None:
    for spec in dispatches:
        data = DispatchData.parse(bytes(spec["data"]))
        stored: Dispatch = await store.insert(
            spec["microgrid"], data, now=_at(spec["created"]), end_time=series_end(data)
        )
        if spec["updated"] is not None and stored.metadata is not None:

            async def change(current: Dispatch, when: int = spec["updated"]) -> Replacement:
                assert current.data is not None
                current.data.is_active = not current.data.is_active
                return Replacement(current.data, _at(when), series_end(current.data))

            await store.update(spec["microgrid"], stored.metadata.dispatch_id, change)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), dispatches=st.lists(_dispatch(), min_size=1, max_size=12))
async def test_both_stores_answer_every_list_request_alike(
    pg_service: DispatchService, migrated_postgres: str, data: Any, dispatches: Any
) -> None:
    with psycopg.connect(migrated_postgres, autocommit=True) as conn:
        conn.execute(EMPTY)
    async with DispatchService(store=DispatchStore(":memory:")) as sqlite_service:
        await _fill(sqlite_service.store, dispatches)
        await _fill(pg_service.store, dispatches)
        for _ in range(6):
            request = data.draw(_request(len(dispatches)))
            for page in range(20):
                answers = [
                    await service.encoded_list(request) for service in (sqlite_service, pg_service)
                ]
                assert answers[0] == answers[1], (request, page)
                info = ListMicrogridDispatchesResponse.parse(answers[1]).pagination_info
                if info is None or not info.next_page_token:
                    break
                request = ListMicrogridDispatchesRequest(
                    microgrid_id=request.microgrid_id,
                    filter=request.filter,
                    sort_options=request.sort_options,
                    pagination_params=PaginationParams(page_token=info.next_page_token),
                )
