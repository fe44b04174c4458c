"""Client against the reference server over a real loopback channel."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from grpclib.events import SendRequest, listen

from dispatch_client import (
    BatteryType,
    Client,
    ClientNotConnected,
    DeadlineExceeded,
    Dispatch,
    ElectricalComponentCategory,
    EndCriteria,
    Frequency,
    InvalidArgument,
    NotFound,
    RecurrenceRule,
    SortField,
    SortOrder,
    Unavailable,
    Weekday,
    target_from_categories,
    target_from_ids,
    target_from_types,
)
from dispatch_client.testing import RunningServer, running_server

pytestmark = pytest.mark.anyio

MG = 1


def soon(**delta: float) -> dt.datetime:
    """A whole-second time in the future (the service stores whole seconds)."""
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    return base + dt.timedelta(**delta)


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server() as srv:
        yield srv


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[Client]:
    async with Client(server.url) as client:
        yield client


def count_requests(client: Client) -> list[str]:
    """Record the method of every request the client puts on the wire."""
    sent: list[str] = []

    async def record(event: SendRequest) -> None:
        sent.append(event.method_name.rsplit("/", 1)[-1])

    listen(client.channel, SendRequest, record)
    return sent


def ids(dispatches: list[Dispatch]) -> list[int]:
    return [d.metadata.dispatch_id for d in dispatches if d.metadata is not None]


async def make(client: Client, kind: str = "CHARGE", **kwargs: Any) -> Dispatch:
    fields: dict[str, Any] = {
        "start_time": soon(),
        "duration": dt.timedelta(minutes=10),
        "target": [1],
    }
    fields.update(kwargs)
    return await client.create(MG, kind, **fields)


# -- create ------------------------------------------------------------------


async def test_create_returns_the_stored_dispatch(client: Client) -> None:
    start = soon()
    rule = RecurrenceRule(
        freq=Frequency.WEEKLY,
        interval=2,
        end_criteria=EndCriteria(count=5),
        byweekdays=[Weekday.MONDAY, Weekday.FRIDAY],
        byhours=[9],
    )
    created = await client.create(
        MG,
        "CHARGE",
        start,
        dt.timedelta(hours=2),
        target_from_types(BatteryType.LI_ION),
        active=False,
        dry_run=True,
        payload={"power": 5.5, "nested": {"list": [1, "two", None, True]}},
        recurrence=rule,
    )
    assert created.metadata is not None and created.metadata.dispatch_id > 0
    assert created.metadata.create_time is not None
    data = created.data
    assert data is not None
    assert (data.type, data.start_time, data.duration) == ("CHARGE", start, 7200)
    assert data.target == target_from_types(BatteryType.LI_ION)
    assert (data.is_active, data.is_dry_run) == (False, True)
    assert data.payload is not None
    assert data.payload.to_dict() == {"power": 5.5, "nested": {"list": [1, "two", None, True]}}
    assert data.recurrence == rule
    assert await client.get(MG, created.metadata.dispatch_id) == created


async def test_create_now_starts_immediately(client: Client) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    created = await client.create(
        MG, "CURTAIL", "NOW", None, [ElectricalComponentCategory.INVERTER]
    )
    assert created.data is not None and created.data.start_time is not None
    assert before <= created.data.start_time <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert created.data.duration is None
    assert created.data.target == target_from_categories(ElectricalComponentCategory.INVERTER)


async def test_create_accepts_a_start_just_computed(client: Client) -> None:
    created = await client.create(MG, "X", dt.datetime.now(dt.UTC), dt.timedelta(seconds=5), [1])
    assert created.data is not None


DEEP = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_time": dt.datetime(2099, 1, 1)}, "timezone-aware"),
        ({"start_time": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}, "in the past"),
        ({"start_time": "LATER"}, '"NOW"'),
        ({"start_time": 12345}, "datetime"),
        ({"duration": dt.timedelta(seconds=-1)}, "negative"),
        ({"duration": "1h"}, "duration"),
        ({"payload": {"when": dt.datetime(2020, 1, 1)}}, "payload"),
        ({"payload": {1: "x"}}, "keys must be str"),
        ({"payload": ["not", "a", "dict"]}, "payload must be a dict"),
        ({"payload": {"f": float("nan")}}, "finite"),
        ({"payload": DEEP}, "nested 6 levels"),
        ({"payload": {"big": "x" * 60_000}}, "bytes encoded"),
        (
            {"recurrence": RecurrenceRule(freq=Frequency.DAILY, end_criteria=EndCriteria(count=0))},
            "count 0",
        ),
        (
            {
                "recurrence": RecurrenceRule(
                    freq=Frequency.DAILY, end_criteria=EndCriteria(count=4097)
                )
            },
            "count 4097",
        ),
        ({"recurrence": RecurrenceRule(freq=Frequency.DAILY, interval=10_001)}, "interval"),
        ({"recurrence": RecurrenceRule(freq=Frequency.WEEKLY, bymonthdays=[1])}, "WEEKLY"),
        ({"recurrence": RecurrenceRule(freq=Frequency.DAILY, byhours=[24])}, "byhours"),
        ({"recurrence": RecurrenceRule(freq=Frequency.DAILY, byminutes=[60])}, "byminutes"),
        ({"recurrence": RecurrenceRule(freq=Frequency.MONTHLY, bymonthdays=[32])}, "bymonthdays"),
        ({"recurrence": RecurrenceRule(freq=Frequency.YEARLY, bymonths=[0])}, "bymonths"),
        ({"recurrence": {"freq": "DAILY"}}, "RecurrenceRule"),
        ({"target": []}, "at least one"),
        ({"target": [1, ElectricalComponentCategory.BATTERY]}, "mixes"),
        ({"active": "yes"}, "active must be True or False"),
    ],
)
async def test_create_validation_fails_before_sending(
    client: Client, kwargs: dict[str, Any], message: str
) -> None:
    sent = count_requests(client)
    with pytest.raises(ValueError, match=message):
        await make(client, **kwargs)
    assert sent == []
    assert [d async for d in client.dispatches(MG)] == []


async def test_create_rejects_bad_ids_and_types_before_sending(client: Client) -> None:
    sent = count_requests(client)
    with pytest.raises(ValueError, match="microgrid_id"):
        await client.create(-1, "X", "NOW", None, [1])
    with pytest.raises(ValueError, match="type must be a non-empty str"):
        await client.create(MG, "", "NOW", None, [1])
    assert sent == []


# -- get / delete --------------------------------------------------------------


async def test_get_and_delete(client: Client, server: RunningServer) -> None:
    created = await make(client)
    assert created.metadata is not None
    dispatch_id = created.metadata.dispatch_id
    assert await client.get(MG, dispatch_id) == created
    assert await client.delete(MG, dispatch_id) is None
    with pytest.raises(NotFound) as info:
        await client.get(MG, dispatch_id)
    assert info.value.server_url == server.url
    assert server.url in str(info.value)
    with pytest.raises(NotFound):
        await client.delete(MG, dispatch_id)


async def test_dispatches_are_per_microgrid(client: Client) -> None:
    created = await make(client)
    assert created.metadata is not None
    with pytest.raises(NotFound):
        await client.get(MG + 1, created.metadata.dispatch_id)


async def test_get_rejects_bad_ids_before_sending(client: Client) -> None:
    sent = count_requests(client)
    for bad in (-1, 2**64, "1", True):
        with pytest.raises(ValueError, match="dispatch_id"):
            await client.get(MG, bad)  # type: ignore[arg-type]
    assert sent == []


# -- update --------------------------------------------------------------------


async def test_update_changes_only_the_named_fields(client: Client) -> None:
    created = await make(client, payload={"keep": 1})
    assert created.metadata is not None and created.data is not None
    new_start = soon(hours=5)
    updated = await client.update(
        MG,
        created.metadata.dispatch_id,
        {
            "start_time": new_start,
            "duration": dt.timedelta(minutes=1),
            "target": [9, 10],
            "active": False,
        },
    )
    assert updated.data is not None
    assert updated.data.start_time == new_start
    assert updated.data.duration == 60
    assert updated.data.target == target_from_ids(9, 10)
    assert updated.data.is_active is False
    assert updated.data.type == created.data.type
    assert updated.data.payload == created.data.payload
    assert await client.get(MG, created.metadata.dispatch_id) == updated


async def test_update_clears_duration_and_payload(client: Client) -> None:
    created = await make(client, payload={"a": 1})
    assert created.metadata is not None
    updated = await client.update(
        MG, created.metadata.dispatch_id, {"duration": None, "payload": None, "is_active": True}
    )
    assert updated.data is not None
    assert updated.data.duration is None
    assert not updated.data.payload or not updated.data.payload.fields


async def test_update_recurrence_fields(client: Client) -> None:
    created = await make(client)
    assert created.metadata is not None
    updated = await client.update(
        MG,
        created.metadata.dispatch_id,
        {
            "recurrence.frequency": Frequency.DAILY,
            "recurrence.interval": 3,
            "recurrence.end_criteria": 7,
            "recurrence.byhours": [8, 20],
        },
    )
    assert updated.data is not None
    assert updated.data.recurrence == RecurrenceRule(
        freq=Frequency.DAILY, interval=3, end_criteria=EndCriteria(count=7), byhours=[8, 20]
    )
    replaced = await client.update(
        MG,
        created.metadata.dispatch_id,
        {"recurrence": RecurrenceRule(freq=Frequency.MONTHLY, bymonthdays=[-1])},
    )
    assert replaced.data is not None
    assert replaced.data.recurrence == RecurrenceRule(freq=Frequency.MONTHLY, bymonthdays=[-1])


async def test_update_invalid_combination_is_rejected_by_the_server(client: Client) -> None:
    created = await make(client, recurrence=RecurrenceRule(freq=Frequency.WEEKLY))
    assert created.metadata is not None
    # The client cannot know the stored frequency; the server checks the merged rule.
    with pytest.raises(InvalidArgument) as info:
        await client.update(MG, created.metadata.dispatch_id, {"recurrence.bymonthdays": [1]})
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "OTHER"}, "type is fixed"),
        ({"dry_run": True}, "dry_run is fixed"),
        ({"colour": 1}, "unknown key 'colour'"),
        ({}, "empty"),
        ({"start_time": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}, "in the past"),
        ({"recurrence.interval": 0x10000}, "interval"),
    ],
)
async def test_update_validation_fails_before_sending(
    client: Client, fields: dict[str, Any], message: str
) -> None:
    created = await make(client)
    assert created.metadata is not None
    sent = count_requests(client)
    with pytest.raises(ValueError, match=message):
        await client.update(MG, created.metadata.dispatch_id, fields)
    assert sent == []
    assert await client.get(MG, created.metadata.dispatch_id) == created


async def test_update_missing_dispatch(client: Client) -> None:
    with pytest.raises(NotFound):
        await client.update(MG, 424242, {"active": False})


# -- list ------------------------------------------------------------------------


async def test_list_follows_page_tokens(client: Client) -> None:
    made = [await make(client, f"T{i}") for i in range(7)]
    pages = [page async for page in client.list(MG, page_size=3)]
    assert [len(page) for page in pages] == [3, 3, 1]
    # Newest created first without sort options.
    assert [d for page in pages for d in page] == made[::-1]
    assert [d async for d in client.dispatches(MG, page_size=2)] == made[::-1]


async def test_list_of_an_empty_microgrid_yields_nothing(client: Client) -> None:
    assert [page async for page in client.list(MG)] == []


async def test_list_filters(client: Client) -> None:
    t0 = soon()
    a = await make(client, "CHARGE_BATTERY", start_time=t0, duration=dt.timedelta(minutes=10))
    b = await make(
        client,
        "DISCHARGE",
        start_time=t0 + dt.timedelta(hours=1),
        duration=dt.timedelta(minutes=30),
        active=False,
        target=[2, 3],
    )
    c = await make(
        client,
        "CHARGE_EV",
        start_time=t0 + dt.timedelta(hours=2),
        dry_run=True,
        recurrence=RecurrenceRule(freq=Frequency.DAILY),
        target=target_from_categories(ElectricalComponentCategory.EV_CHARGER),
    )
    all_ids = ids([a, b, c])

    async def found(**filters: Any) -> set[int]:
        return set(ids([d async for d in client.dispatches(MG, **filters)]))

    assert await found() == set(all_ids)
    assert await found(active=True) == {all_ids[0], all_ids[2]}
    assert await found(active=False) == {all_ids[1]}
    assert await found(dry_run=True) == {all_ids[2]}
    assert await found(dry_run=False) == {all_ids[0], all_ids[1]}
    assert await found(recurring=True) == {all_ids[2]}
    assert await found(recurring=False) == {all_ids[0], all_ids[1]}
    assert await found(dispatch_ids=[all_ids[1], 999]) == {all_ids[1]}
    assert await found(filter_queries=["CHARGE"]) == {all_ids[0], all_ids[1], all_ids[2]}
    assert await found(filter_queries=["CHARGE_"]) == {all_ids[0], all_ids[2]}
    assert await found(filter_queries=[f"#{all_ids[1]}", "EV"]) == {all_ids[1], all_ids[2]}
    # *_from is inclusive, *_to exclusive.
    assert await found(start_from=t0 + dt.timedelta(hours=1)) == {all_ids[1], all_ids[2]}
    assert await found(start_to=t0 + dt.timedelta(hours=1)) == {all_ids[0]}
    assert await found(start_from=t0, start_to=t0 + dt.timedelta(hours=2)) == {
        all_ids[0],
        all_ids[1],
    }
    assert await found(end_from=t0 + dt.timedelta(minutes=10)) >= {all_ids[0], all_ids[1]}
    assert all_ids[0] not in await found(end_from=t0 + dt.timedelta(minutes=11))
    assert await found(end_to=t0 + dt.timedelta(minutes=10)) == set()
    assert await found(end_to=t0 + dt.timedelta(minutes=11)) == {all_ids[0]}
    assert await found(target_components=[[2, 3]]) == {all_ids[1]}
    assert await found(
        target_components=[target_from_categories(ElectricalComponentCategory.EV_CHARGER)]
    ) == {all_ids[2]}
    assert await found(active=True, dry_run=False, filter_queries=["CHARGE"]) == {all_ids[0]}


async def test_list_sorting(client: Client) -> None:
    t0 = soon()
    late = await make(client, "A", start_time=t0 + dt.timedelta(hours=3))
    early = await make(client, "B", start_time=t0)
    middle = await make(client, "C", start_time=t0 + dt.timedelta(hours=1))

    async def order(sort: Any) -> list[int]:
        return ids([d async for d in client.dispatches(MG, sort=sort)])

    by_start = ids([early, middle, late])
    assert await order(SortField.START_TIME) == by_start
    assert await order((SortField.START_TIME, SortOrder.DESCENDING)) == by_start[::-1]
    created_order = ids([late, early, middle])
    assert await order((SortField.CREATE_TIME, SortOrder.ASCENDING)) == created_order


async def test_list_validation_fails_before_sending(client: Client) -> None:
    sent = count_requests(client)
    bad: list[dict[str, Any]] = [
        {"start_from": dt.datetime(2030, 1, 1)},
        {"end_to": "tomorrow"},
        {"page_size": 0},
        {"active": "yes"},
        {"sort": "START_TIME"},
        {"dispatch_ids": [-4]},
        {"filter_queries": [5]},
        {"target_components": [[]]},
    ]
    for filters in bad:
        with pytest.raises(ValueError):
            async for _ in client.list(MG, **filters):
                pass
    assert sent == []


# -- lifecycle -------------------------------------------------------------------


async def test_lifecycle(server: RunningServer) -> None:
    client = Client(server.url, connect=False)
    with pytest.raises(ClientNotConnected):
        await client.get(MG, 1)
    client.connect()
    channel = client.channel
    client.connect(server.url)  # same URL: keeps the channel
    assert client.channel is channel
    assert [d async for d in client.dispatches(MG)] == []
    await client.disconnect()
    await client.disconnect()  # idempotent
    with pytest.raises(ClientNotConnected):
        _ = client.channel
    with pytest.raises(ClientNotConnected):
        await client.create(MG, "X", "NOW", None, [1])
    async with client:
        assert client.is_connected
        await make(client)
    assert not client.is_connected


async def test_connect_switches_servers(server: RunningServer) -> None:
    async with running_server() as other, Client(server.url) as client:
        await make(client, "ON_FIRST")
        client.connect(other.url)
        assert client.server_url == other.url
        assert [d async for d in client.dispatches(MG)] == []
        client.connect(server.url)
        assert len([d async for d in client.dispatches(MG)]) == 1


# -- transport errors ------------------------------------------------------------


async def test_refused_connection_is_unavailable_naming_the_url() -> None:
    async with running_server() as srv:
        url = srv.url
    # The server is gone, so nothing listens on its port any more.
    async with Client(url) as client:
        with pytest.raises(Unavailable) as info:
            await client.get(MG, 1)
    assert info.value.server_url == url
    assert url in str(info.value)


async def test_unknown_host_is_unavailable() -> None:
    async with Client("grpc://no-such-host.invalid:50051?ssl=false") as client:
        with pytest.raises(Unavailable, match=r"no-such-host\.invalid"):
            await client.get(MG, 1)


async def test_call_timeout_is_deadline_exceeded() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accept the connection, never answer

    tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        async with Client(
            f"grpc://127.0.0.1:{port}?ssl=false", call_timeout=dt.timedelta(milliseconds=200)
        ) as client:
            with anyio.fail_after(5), pytest.raises(DeadlineExceeded):
                await client.get(MG, 1)
    finally:
        tcp.close()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        await tcp.wait_closed()


# -- load ------------------------------------------------------------------------


async def test_500_concurrent_calls_over_one_client(client: Client) -> None:
    created: dict[int, Dispatch] = {}

    async def create(i: int) -> None:
        created[i] = await client.create(MG, f"LOAD_{i}", "NOW", dt.timedelta(seconds=i), [i])

    async with anyio.create_task_group() as tg:
        for i in range(250):
            tg.start_soon(create, i)
    assert len(set(ids(list(created.values())))) == 250
    for i, dispatch in created.items():
        assert dispatch.data is not None
        assert (dispatch.data.type, dispatch.data.duration) == (f"LOAD_{i}", i)

    fetched: dict[int, Dispatch] = {}

    async def get(i: int) -> None:
        dispatch = created[i]
        assert dispatch.metadata is not None
        fetched[i] = await client.get(MG, dispatch.metadata.dispatch_id)

    async with anyio.create_task_group() as tg:
        for i in range(250):
            tg.start_soon(get, i)
    assert fetched == created


# -- keep-alive ------------------------------------------------------------------


async def test_keep_alive_pings_while_a_stream_is_open(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="grpclib.protocol")
    url = f"{server.url}&keep_alive_interval_s=0.05&keep_alive_timeout_s=1"
    async with Client(url) as client:
        events = client.stream(MG)
        with anyio.fail_after(5):
            # Reading the first event keeps the stream open while it is quiet.
            async with anyio.create_task_group() as tg:

                async def create_later() -> None:
                    await anyio.sleep(0.4)
                    await make(client)

                tg.start_soon(create_later)
                first = await anext(events)
        await events.aclose()
    assert first.dispatch.data is not None
    assert sum("send ping" in r.getMessage() for r in caplog.records) >= 3
