"""Reference server: every list filter, sort order and pagination case."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
from test_server_support import (
    Status,
    connect,
    create,
    expect_error,
    future,
    ids,
)

from dispatch_client import (
    BatteryType,
    Client,
    ElectricalComponentCategory,
    InverterType,
    RecurrenceRule,
    RecurrenceRuleFrequency,
    SortField,
    SortOptions,
    SortOrder,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)
from dispatch_client._proto.google.protobuf import FieldMask
from dispatch_client.testing import RunningServer, running_server
from dispatch_client.wire import (
    DeleteMicrogridDispatchRequest,
    DispatchFilter,
    DispatchFilterRecurrenceFilter,
    Interval,
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    MicrogridDispatchServiceStub,
    PaginationParams,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

BASE = future(7200).replace(microsecond=0)
MINUTE = dt.timedelta(minutes=1)


def by_ids(*numbers: int) -> TargetComponents:
    return TargetComponents(component_ids=TargetComponentsIdSet(ids=list(numbers)))


def by_categories(*categories: ElectricalComponentCategory) -> TargetComponents:
    return TargetComponents(
        component_categories=TargetComponentsCategorySet(categories=list(categories))
    )


def by_types(*items: TargetComponentsCategoryAndType) -> TargetComponents:
    return TargetComponents(
        component_categories_types=TargetComponentsCategoryTypeSet(categories=list(items))
    )


LI_ION = TargetComponentsCategoryAndType(
    category=ElectricalComponentCategory.BATTERY, battery=BatteryType.LI_ION
)
PV = TargetComponentsCategoryAndType(
    category=ElectricalComponentCategory.INVERTER, inverter=InverterType.PV
)


@dataclass
class Fixture:
    stub: MicrogridDispatchServiceStub
    server: RunningServer
    d: dict[str, int]  # name -> dispatch id

    async def list(self, microgrid_id: int = 1, **request: Any) -> ListMicrogridDispatchesResponse:
        return await self.stub.list_microgrid_dispatches(
            ListMicrogridDispatchesRequest(microgrid_id=microgrid_id, **request)
        )

    async def ids(self, **filter_fields: Any) -> set[int]:
        response = await self.list(filter=DispatchFilter(**filter_fields))
        return set(ids(list(response.dispatches)))

    def named(self, *names: str) -> set[int]:
        return {self.d[name] for name in names}


@pytest.fixture
async def world(store_server: RunningServer) -> Any:
    """Six dispatches on microgrid 1 (created in this order) and one on microgrid 2."""
    async with connect(store_server) as stub:
        specs: dict[str, dict[str, Any]] = {
            # start BASE+0, ends +10 min, ids target
            "a": {
                "type": "BATTERY_CHARGE",
                "start_time": BASE,
                "duration": 600,
                "target": by_ids(1, 2),
            },
            # start BASE+1min, inactive, dry run, no duration (never ends)
            "b": {
                "type": "BATTERY_DISCHARGE",
                "start_time": BASE + MINUTE,
                "duration": None,
                "is_active": False,
                "is_dry_run": True,
                "target": by_ids(2, 1, 1),
            },
            # start BASE+2min, recurring daily forever
            "c": {
                "type": "PV_CURTAIL",
                "start_time": BASE + 2 * MINUTE,
                "duration": 60,
                "recurrence": RecurrenceRule(freq=RecurrenceRuleFrequency.DAILY),
                "target": by_categories(ElectricalComponentCategory.INVERTER),
            },
            # start BASE+2min (same start as c), ends +2min+30s
            "d": {
                "type": "EV_CHARGE",
                "start_time": BASE + 2 * MINUTE,
                "duration": 30,
                "target": by_types(PV, LI_ION),
            },
            # start BASE+3min, dry run
            "e": {
                "type": "charge_lowercase",
                "start_time": BASE + 3 * MINUTE,
                "duration": 60,
                "is_dry_run": True,
                "target": by_types(LI_ION),
            },
            # recurrence with UNSPECIFIED freq does not count as recurring
            "f": {
                "type": "#42",
                "start_time": BASE + 4 * MINUTE,
                "duration": 60,
                "recurrence": RecurrenceRule(),
                "target": None,
            },
        }
        d: dict[str, int] = {}
        for name, spec in specs.items():
            made = await create(stub, 1, **spec)
            assert made.metadata is not None
            d[name] = made.metadata.dispatch_id
        other = await create(stub, 2, type="BATTERY_CHARGE", start_time=BASE)
        assert other.metadata is not None
        d["other"] = other.metadata.dispatch_id
        yield Fixture(stub, store_server, d)


# Sorting --------------------------------------------------------------------------


async def test_default_order_is_newest_created_first(world: Fixture) -> None:
    response = await world.list()
    assert ids(list(response.dispatches)) == [world.d[n] for n in "fedcba"]
    assert response.pagination_info is not None
    assert response.pagination_info.total_items == 6
    assert response.pagination_info.next_page_token is None


@pytest.mark.parametrize(
    ("field", "order", "expected"),
    [
        (SortField.CREATE_TIME, SortOrder.ASCENDING, "abcdef"),
        (SortField.CREATE_TIME, SortOrder.DESCENDING, "fedcba"),
        (SortField.CREATE_TIME, SortOrder.UNSPECIFIED, "fedcba"),
        (SortField.UNSPECIFIED, SortOrder.ASCENDING, "abcdef"),
        # c and d start together: ties are broken by id in the same direction.
        (SortField.START_TIME, SortOrder.ASCENDING, "abcdef"),
        (SortField.START_TIME, SortOrder.DESCENDING, "fedcba"),
    ],
)
async def test_sort_options(
    world: Fixture, field: SortField, order: SortOrder, expected: str
) -> None:
    response = await world.list(sort_options=SortOptions(sort_field=field, sort_order=order))
    assert ids(list(response.dispatches)) == [world.d[n] for n in expected]


async def test_sort_by_last_update_time(world: Fixture) -> None:
    await world.stub.update_microgrid_dispatch(
        UpdateMicrogridDispatchRequest(
            microgrid_id=1,
            dispatch_id=world.d["b"],
            update_mask=FieldMask(paths=["is_active"]),
            update=UpdateMicrogridDispatchRequestDispatchUpdate(is_active=True),
        )
    )
    response = await world.list(
        sort_options=SortOptions(
            sort_field=SortField.LAST_UPDATE_TIME, sort_order=SortOrder.DESCENDING
        )
    )
    assert ids(list(response.dispatches)) == [world.d[n] for n in "bfedca"]


async def test_unknown_sort_field_is_rejected(world: Fixture) -> None:
    with expect_error(Status.INVALID_ARGUMENT, "sort_options.sort_field"):
        await world.list(sort_options=SortOptions(sort_field=99))  # type: ignore[arg-type]


# Filters --------------------------------------------------------------------------


async def test_microgrids_are_separate(world: Fixture) -> None:
    response = await world.list(2)
    assert ids(list(response.dispatches)) == [world.d["other"]]
    assert (await world.list(3)).dispatches == []


@pytest.mark.parametrize(
    ("filter_fields", "expected"),
    [
        ({}, "abcdef"),
        ({"is_active": True}, "acdef"),
        ({"is_active": False}, "b"),
        ({"is_dry_run": True}, "be"),
        ({"is_dry_run": False}, "acdf"),
        ({"is_recurring": True}, "c"),
        ({"is_recurring": False}, "abdef"),
        ({"filter": DispatchFilterRecurrenceFilter()}, "abcdef"),
        ({"is_active": True, "is_dry_run": True}, "e"),
        ({"dispatch_ids": []}, "abcdef"),
    ],
)
async def test_flag_filters(world: Fixture, filter_fields: dict[str, Any], expected: str) -> None:
    assert await world.ids(**filter_fields) == world.named(*expected)


async def test_dispatch_ids_filter(world: Fixture) -> None:
    wanted = [world.d["a"], world.d["e"], world.d["other"], 9999, 2**64 - 1]
    assert await world.ids(dispatch_ids=wanted) == world.named("a", "e")
    assert await world.ids(dispatch_ids=[2**64 - 1]) == set()


@pytest.mark.parametrize(
    ("queries", "expected"),
    [
        (["BATTERY"], "ab"),
        (["CHARGE"], "abd"),  # substring anywhere, case-sensitive
        (["charge"], "e"),
        (["PV", "EV_"], "cd"),  # OR-ed
        (["nothing"], ""),
        (["#42"], ""),  # '#<n>' is an id, not text: f's type "#42" does not match it
        (["#4x2"], ""),  # '#' not followed only by digits is text
        (["#"], "f"),
    ],
)
async def test_text_queries(world: Fixture, queries: list[str], expected: str) -> None:
    assert await world.ids(queries=queries) == world.named(*expected)


async def test_id_queries_or_with_text_and_and_with_other_filters(world: Fixture) -> None:
    assert await world.ids(queries=[f"#{world.d['c']}"]) == world.named("c")
    assert await world.ids(queries=[f"#{world.d['c']}", "EV_"]) == world.named("c", "d")
    assert await world.ids(queries=[f"#{world.d['other']}"]) == set()
    assert await world.ids(queries=[f"#{2**64 - 1}", "EV_"]) == world.named("d")
    assert await world.ids(queries=[f"#{world.d['c']}", "EV_"], is_recurring=False) == world.named(
        "d"
    )


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ([by_ids(1, 2)], "ab"),  # same set, order and duplicates ignored
        ([by_ids(1)], ""),  # a subset is not equal
        ([by_ids(1, 2, 3)], ""),
        ([by_categories(ElectricalComponentCategory.INVERTER)], "c"),
        ([by_types(LI_ION, PV)], "d"),
        ([by_types(LI_ION)], "e"),
        ([by_types(LI_ION), by_categories(ElectricalComponentCategory.INVERTER)], "ce"),
        ([TargetComponents()], "f"),  # the empty target matches dispatches without one
    ],
)
async def test_targets_filter_matches_equal_targets(
    world: Fixture, targets: list[TargetComponents], expected: str
) -> None:
    assert await world.ids(targets=targets) == world.named(*expected)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (BASE, None, "abcdef"),
        (BASE + MINUTE, None, "bcdef"),  # from is inclusive
        (None, BASE + 2 * MINUTE, "ab"),  # to is exclusive
        (BASE + 2 * MINUTE, BASE + 3 * MINUTE, "cd"),
        (BASE + 10 * MINUTE, None, ""),
    ],
)
async def test_start_time_interval(
    world: Fixture, start: dt.datetime | None, end: dt.datetime | None, expected: str
) -> None:
    interval = Interval(start_time=start, end_time=end)
    assert await world.ids(start_time_interval=interval) == world.named(*expected)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # ends: a +10min, b never, c never (infinite recurrence), d +2m30s, e +4min, f +5min
        (BASE + 10 * MINUTE, None, "abc"),  # inclusive; never-ending ones end after any bound
        (None, BASE + 4 * MINUTE, "d"),  # exclusive: e ends exactly at +4min
        (None, BASE + 5 * MINUTE + dt.timedelta(seconds=1), "def"),
        (BASE + 3 * MINUTE, BASE + 6 * MINUTE, "ef"),
    ],
)
async def test_end_time_interval(
    world: Fixture, start: dt.datetime | None, end: dt.datetime | None, expected: str
) -> None:
    interval = Interval(start_time=start, end_time=end)
    assert await world.ids(end_time_interval=interval) == world.named(*expected)


async def test_update_time_interval(world: Fixture) -> None:
    middle = dt.datetime.now(dt.UTC)
    await world.stub.update_microgrid_dispatch(
        UpdateMicrogridDispatchRequest(
            microgrid_id=1,
            dispatch_id=world.d["a"],
            update_mask=FieldMask(paths=["duration"]),
            update=UpdateMicrogridDispatchRequestDispatchUpdate(duration=5),
        )
    )
    after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert await world.ids(update_time_interval=Interval(start_time=middle)) == world.named("a")
    assert await world.ids(update_time_interval=Interval(end_time=middle)) == world.named(*"bcdef")
    assert await world.ids(update_time_interval=Interval(start_time=after)) == set()


async def test_total_items_counts_all_matches(world: Fixture) -> None:
    response = await world.list(
        filter=DispatchFilter(is_active=True), pagination_params=PaginationParams(page_size=2)
    )
    assert len(response.dispatches) == 2
    assert response.pagination_info is not None and response.pagination_info.total_items == 5


# Pagination -----------------------------------------------------------------------


async def _all_pages(
    world: Fixture, page_size: int, **request: Any
) -> tuple[list[list[int]], list[int]]:
    pages: list[list[int]] = []
    totals: list[int] = []
    params = PaginationParams(page_size=page_size)
    while True:
        response = await world.list(pagination_params=params, **request)
        pages.append(ids(list(response.dispatches)))
        assert response.pagination_info is not None
        totals.append(response.pagination_info.total_items)
        token = response.pagination_info.next_page_token
        if token is None:
            return pages, totals
        params = PaginationParams(page_token=token)


@pytest.mark.parametrize(
    "sort",
    [
        None,
        SortOptions(sort_field=SortField.START_TIME, sort_order=SortOrder.ASCENDING),
        SortOptions(sort_field=SortField.START_TIME, sort_order=SortOrder.DESCENDING),
        SortOptions(sort_field=SortField.CREATE_TIME, sort_order=SortOrder.ASCENDING),
    ],
)
async def test_pages_cover_everything_once(world: Fixture, sort: SortOptions | None) -> None:
    everything = ids(list((await world.list(sort_options=sort)).dispatches))
    pages, totals = await _all_pages(world, 4, sort_options=sort)
    assert [len(p) for p in pages] == [4, 2]
    assert [i for page in pages for i in page] == everything
    assert totals == [6, 6]
    pages, _ = await _all_pages(world, 1, sort_options=sort)
    assert [i for page in pages for i in page] == everything


async def test_exact_multiple_of_page_size_has_no_empty_last_page(world: Fixture) -> None:
    pages, _ = await _all_pages(world, 3)
    assert [len(p) for p in pages] == [3, 3]


async def test_token_stays_valid_while_rows_come_and_go(world: Fixture) -> None:
    first = await world.list(pagination_params=PaginationParams(page_size=2))
    assert ids(list(first.dispatches)) == [world.d["f"], world.d["e"]]
    assert first.pagination_info is not None and first.pagination_info.next_page_token
    # A newer row lands before the cursor, the row right after it disappears.
    newest = await create(world.stub, 1, type="NEW")
    await world.stub.delete_microgrid_dispatch(
        DeleteMicrogridDispatchRequest(microgrid_id=1, dispatch_id=world.d["d"])
    )
    # ...and the last row of the page the token points past is deleted too.
    await world.stub.delete_microgrid_dispatch(
        DeleteMicrogridDispatchRequest(microgrid_id=1, dispatch_id=world.d["e"])
    )
    rest = await world.list(
        pagination_params=PaginationParams(page_token=first.pagination_info.next_page_token)
    )
    assert ids(list(rest.dispatches)) == [world.d["c"], world.d["b"]]
    assert rest.pagination_info is not None
    assert rest.pagination_info.total_items == 5  # a, b, c, f + the new one
    assert newest.metadata is not None


async def test_page_size_zero_means_default_and_large_is_clamped(world: Fixture) -> None:
    world.server.service.default_page_size = 4
    world.server.service.max_page_size = 5
    assert len((await world.list(pagination_params=PaginationParams(page_size=0))).dispatches) == 4
    assert len((await world.list()).dispatches) == 4
    big = await world.list(pagination_params=PaginationParams(page_size=1_000_000))
    assert len(big.dispatches) == 5
    assert big.pagination_info is not None and big.pagination_info.next_page_token


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "eyJ4IjogMX0",
        "",
        "e30",
        "eyJzIjogInR5cGUiLCAiZCI6IHRydWUsICJrIjogMSwgImkiOiAxLCAibiI6IDJ9",
    ],
)
async def test_bad_page_token_is_rejected(world: Fixture, token: str) -> None:
    if token == "":
        # An empty token is "no token": first page.
        response = await world.list(pagination_params=PaginationParams(page_token=token))
        assert len(response.dispatches) == 6
        return
    with expect_error(Status.INVALID_ARGUMENT, "page_token"):
        await world.list(pagination_params=PaginationParams(page_token=token))


async def test_token_is_tied_to_its_sort_options(world: Fixture) -> None:
    first = await world.list(pagination_params=PaginationParams(page_size=2))
    assert first.pagination_info is not None and first.pagination_info.next_page_token
    with expect_error(Status.INVALID_ARGUMENT, "page_token", "sort_options"):
        await world.list(
            sort_options=SortOptions(sort_field=SortField.START_TIME),
            pagination_params=PaginationParams(page_token=first.pagination_info.next_page_token),
        )


@pytest.mark.anyio
@pytest.mark.parametrize("query", ["#\u0661", "#\u06f1", "#\uff11"])
async def test_an_id_query_takes_ascii_digits_only(query: str) -> None:
    # re's \d took other scripts' digits and int() read them: "#" + ARABIC-INDIC
    # DIGIT ONE found dispatch 1.
    async with running_server() as server, Client(server.url) as client:
        await client.create(1, "T", "NOW", None, [1])
        assert [d async for d in client.dispatches(1, filter_queries=[query])] == []
        assert len([d async for d in client.dispatches(1, filter_queries=["#1"])]) == 1
