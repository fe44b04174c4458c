"""The server sends lists encoded from the stored bytes: exactly what encoding the messages gives."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import json_values

from dispatch_client import (
    BatteryType,
    Client,
    DispatchData,
    ElectricalComponentCategory,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    SortField,
    SortOptions,
    SortOrder,
    target_from_categories,
    target_from_ids,
    target_from_types,
)
from dispatch_client._proto.google.protobuf import Struct
from dispatch_client.server.service import DispatchService
from dispatch_client.testing import running_server
from dispatch_client.validation import payload_to_struct
from dispatch_client.wire import (
    DispatchFilter,
    ListMicrogridDispatchesRequest,
    PaginationParams,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MG = 2**64 - 1


def data(i: int) -> DispatchData:
    targets = [
        target_from_ids(i, 2**64 - 1),
        target_from_categories(ElectricalComponentCategory.BATTERY),
        target_from_types(BatteryType.LI_ION),
        None,
    ]
    payloads = [
        None,
        {},
        {"power": -1.5, "": None, "nested": {"l": [True, "ü", [], {}]}},
    ]
    return DispatchData(
        type=f"TYPE_{i % 3}_✓",
        start_time=NOW + dt.timedelta(minutes=i),
        duration=None if i % 4 == 0 else i * 60,
        target=targets[i % len(targets)],
        is_active=i % 2 == 0,
        is_dry_run=i % 5 == 0,
        payload=payload_to_struct(payloads[i % len(payloads)]),
        recurrence=None
        if i % 3
        else RecurrenceRule(
            freq=RecurrenceRuleFrequency.DAILY,
            end_criteria=RecurrenceRuleEndCriteria(count=i + 1),
            bymonthdays=[-1, 1],
        ),
    )


async def stored(count: int) -> DispatchService:
    service = DispatchService()
    await service.open()
    for i in range(count):
        end = None if i % 2 else NOW + dt.timedelta(days=i)
        await service.store.insert(MG, data(i), now=NOW + dt.timedelta(seconds=i), end_time=end)
    return service


REQUESTS = {
    "defaults": ListMicrogridDispatchesRequest(microgrid_id=MG),
    "one per page": ListMicrogridDispatchesRequest(
        microgrid_id=MG, pagination_params=PaginationParams(page_size=1)
    ),
    "all": ListMicrogridDispatchesRequest(
        microgrid_id=MG, pagination_params=PaginationParams(page_size=1000)
    ),
    "by start, ascending": ListMicrogridDispatchesRequest(
        microgrid_id=MG,
        sort_options=SortOptions(sort_field=SortField.START_TIME, sort_order=SortOrder.ASCENDING),
        pagination_params=PaginationParams(page_size=5),
    ),
    "filtered": ListMicrogridDispatchesRequest(
        microgrid_id=MG, filter=DispatchFilter(is_active=True, queries=["TYPE_1", "#3"])
    ),
    "no match": ListMicrogridDispatchesRequest(
        microgrid_id=MG, filter=DispatchFilter(queries=["nothing"])
    ),
    "empty microgrid": ListMicrogridDispatchesRequest(microgrid_id=1),
}


@pytest.mark.anyio
@pytest.mark.parametrize("request_", REQUESTS.values(), ids=REQUESTS.keys())
async def test_encoded_list_is_the_encoded_response(
    request_: ListMicrogridDispatchesRequest,
) -> None:
    service = await stored(24)
    try:
        while True:
            response = await service.list_microgrid_dispatches(request_)
            assert await service.encoded_list(request_) == bytes(response)
            token = response.pagination_info and response.pagination_info.next_page_token
            if not token:
                break
            request_.pagination_params = PaginationParams(page_token=token)
    finally:
        await service.close()


JSON_VALUES = json_values(max_leaves=6, integers=False)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.builds(
            DispatchData,
            type=st.text(min_size=1),
            start_time=st.datetimes(
                min_value=dt.datetime(1, 1, 2),
                max_value=dt.datetime(9999, 12, 30),
                timezones=st.just(dt.UTC),
            ),
            duration=st.none() | st.integers(0, 2**32 - 1),
            target=st.none()
            | st.lists(st.integers(0, 2**64 - 1), min_size=1).map(lambda i: target_from_ids(*i)),
            is_active=st.booleans(),
            is_dry_run=st.booleans(),
            payload=st.none()
            | st.dictionaries(st.text(), JSON_VALUES, max_size=4).map(Struct.from_dict),
        ),
        max_size=6,
    )
)
def test_any_stored_data_is_sent_as_encoding_it_gives(datas: list[DispatchData]) -> None:
    async def check() -> None:
        async with DispatchService() as service:
            for item in datas:
                await service.store.insert(7, item, now=NOW, end_time=None)
            request = ListMicrogridDispatchesRequest(microgrid_id=7)
            response = await service.list_microgrid_dispatches(request)
            assert await service.encoded_list(request) == bytes(response)

    asyncio.run(check())


@pytest.mark.anyio
async def test_clients_list_what_the_service_lists() -> None:
    async with running_server() as server:
        for i in range(30):
            await server.service.store.insert(MG, data(i), now=NOW, end_time=None)
        async with Client(server.url) as client:
            listed = [d async for d in client.dispatches(MG, page_size=7)]
        request = ListMicrogridDispatchesRequest(
            microgrid_id=MG, pagination_params=PaginationParams(page_size=1000)
        )
        expected = (await server.service.list_microgrid_dispatches(request)).dispatches
    assert listed == expected
    assert repr(listed) == repr(expected)
