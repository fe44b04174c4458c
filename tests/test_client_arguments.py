"""Every argument of `create`, `update` and `list`, tried with arbitrary values.

The contract: a call either works or raises `ValueError`/`TypeError` naming
the argument, raised before anything is sent (never RecursionError,
OverflowError, KeyError, UnicodeEncodeError, ...), and what the client sends
the server accepts (it never answers INVALID_ARGUMENT to a create or list the
client let through).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib.events import SendRequest, listen
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dispatch_client import (
    BatteryType,
    Client,
    DispatchApiError,
    ElectricalComponentCategory,
    EvChargerType,
    InvalidArgument,
    InverterType,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    SortField,
    SortOptions,
    SortOrder,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)
from dispatch_client._proto.google.protobuf import ListValue, Struct, Value
from dispatch_client.testing import RunningServer, running_server
from dispatch_client.update import ALLOWED_KEYS
from dispatch_client.validation import MAX_FILTER_ITEMS

pytestmark = pytest.mark.anyio

ENUMS: list[type[enum.IntEnum]] = [
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    ElectricalComponentCategory,
    BatteryType,
    InverterType,
    EvChargerType,
    SortField,
    SortOrder,
]

# -- arbitrary values --------------------------------------------------------------------

offsets = st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59)
)
datetimes = st.one_of(
    st.datetimes(timezones=st.none() | st.just(dt.UTC) | offsets.map(dt.timezone)),
    st.sampled_from(
        [
            dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=5))),  # before year 1 UTC
            dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=5))),  # after 9999 UTC
            dt.datetime.max.replace(tzinfo=dt.UTC),
        ]
    ),
    # Soon: the values a working call needs.
    st.integers(5, 10**6).map(lambda s: dt.datetime.now(dt.UTC) + dt.timedelta(seconds=s)),
)
enum_values = st.sampled_from(ENUMS).flatmap(
    lambda cls: st.integers(-3, 30).map(cls) | st.sampled_from(list(cls))
)
huge = st.sampled_from([2**31, 2**32, 2**63, 2**64, 2**64 + 1, 10**30, -(2**63) - 1, 10**400])
numbers = st.integers() | huge | st.floats() | st.decimals(allow_nan=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=20),
    st.sampled_from(["\ud800", "NOW", "now", "", "#1", "DAILY", "BATTERY"]),
    st.binary(max_size=8),
    datetimes,
    st.timedeltas(),
    st.sampled_from([dt.timedelta.max, dt.timedelta.min, dt.timedelta(0)]),
    enum_values,
    st.just(object()),
    st.builds(lambda: Made("unprintable", lambda: UNPRINTABLE)),
)


class Unprintable:
    """A value whose repr raises: an error message must not call it."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


UNPRINTABLE = Unprintable()


def nested(depth: int) -> dict[str, Any]:
    payload: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        payload = {"k": payload}
    return payload


def deep_struct(depth: int) -> Struct:
    struct = Struct(fields={"leaf": Value(number_value=1)})
    for _ in range(depth - 1):
        struct = Struct(fields={"k": Value(struct_value=struct)})
    return struct


def self_containing() -> dict[str, Any]:
    payload: dict[str, Any] = {}
    payload["me"] = payload
    return payload


class Made:
    """A value built inside the test: hypothesis cannot print a payload 3000 levels deep."""

    def __init__(self, name: str, build: Any, *args: Any) -> None:
        self.name, self.build, self.args = name, build, args

    def __repr__(self) -> str:
        return f"{self.name}{self.args}"


def made(value: Any) -> Any:
    return value.build(*value.args) if isinstance(value, Made) else value


ints_and_junk = st.integers() | huge | scalars
messages = st.one_of(
    st.builds(
        RecurrenceRule,
        freq=st.integers(-2, 9).map(RecurrenceRuleFrequency),
        interval=st.integers(-2, 20_000) | huge,
        end_criteria=st.none()
        | st.builds(RecurrenceRuleEndCriteria, count=st.integers(-2, 5000) | huge)
        | st.builds(RecurrenceRuleEndCriteria, until_time=datetimes),
        byminutes=st.lists(st.integers(-2, 70) | huge, max_size=3),
        byhours=st.lists(st.integers(-2, 30), max_size=3),
        byweekdays=st.lists(st.integers(-1, 9).map(RecurrenceRuleWeekday), max_size=3),
        bymonthdays=st.lists(st.integers(-40, 40), max_size=3),
        bymonths=st.lists(st.integers(-1, 14), max_size=3),
    ),
    st.builds(lambda v: RecurrenceRule(freq=RecurrenceRuleFrequency.DAILY, byhours=v), scalars),
    st.builds(
        lambda v: RecurrenceRule(freq=RecurrenceRuleFrequency.DAILY, end_criteria=v), scalars
    ),
    st.builds(
        lambda ids: TargetComponents(component_ids=TargetComponentsIdSet(ids=ids)),
        st.lists(ints_and_junk, max_size=3),
    ),
    st.builds(
        lambda cats: TargetComponents(
            component_categories=TargetComponentsCategorySet(categories=cats)
        ),
        st.lists(st.integers(-2, 30).map(ElectricalComponentCategory) | scalars, max_size=3),
    ),
    st.builds(
        lambda cat, battery: TargetComponents(
            component_categories_types=TargetComponentsCategoryTypeSet(
                categories=[TargetComponentsCategoryAndType(category=cat, battery=battery)]
            )
        ),
        st.integers(-2, 30).map(ElectricalComponentCategory),
        st.integers(-2, 5).map(BatteryType),
    ),
    st.builds(
        SortOptions,
        sort_field=st.integers(-2, 6).map(SortField),
        sort_order=st.integers(-2, 4).map(SortOrder),
    ),
    st.integers(0, 600).map(lambda n: Made("nested", nested, n)),
    st.integers(0, 600).map(lambda n: Made("deep_struct", deep_struct, n)),
    st.just(Made("self_containing", self_containing)),
    # Two members of one oneof (betterproto2 builds them; which_one_of then raises).
    st.builds(RecurrenceRuleEndCriteria, count=st.integers(1, 5), until_time=datetimes),
    st.builds(
        lambda v: RecurrenceRule(freq=RecurrenceRuleFrequency.DAILY, end_criteria=v),
        st.builds(RecurrenceRuleEndCriteria, count=st.integers(1, 5), until_time=datetimes),
    ),
    st.builds(
        lambda ids, cats: TargetComponents(
            component_ids=TargetComponentsIdSet(ids=ids),
            component_categories=TargetComponentsCategorySet(categories=cats),
        ),
        st.lists(st.integers(0, 5), max_size=2),
        st.lists(st.sampled_from(list(ElectricalComponentCategory)), max_size=2),
    ),
    # Values JSON has no form for: no kind, two kinds, NaN and infinities.
    st.builds(
        lambda v: Struct(fields={"x": v}),
        st.sampled_from([Value(), Value(number_value=1, string_value="a")])
        | st.floats().map(lambda f: Value(number_value=f)),
    ),
    st.builds(lambda v: Struct(fields={"x": v}), scalars),
    st.builds(lambda v: Struct(fields={"x": Value(list_value=ListValue(values=[v]))}), scalars),
)
anything = st.recursive(
    scalars | messages,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=3),
        st.frozensets(st.integers(0, 10), max_size=3),
    ),
    max_leaves=8,
)
long_lists = st.sampled_from([MAX_FILTER_ITEMS, MAX_FILTER_ITEMS + 1, 5000]).map(
    lambda n: [str(i) for i in range(n)]
) | st.sampled_from([MAX_FILTER_ITEMS + 1, 5000]).map(lambda n: list(range(n)))

# -- the server and a client counting what it sends ------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: one server and client for the whole module


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[RunningServer]:
    async with running_server() as srv:
        yield srv


@pytest.fixture(scope="module")
async def client(server: RunningServer) -> AsyncIterator[Client]:
    async with Client(server.url) as client:
        yield client


class Sent:
    def __init__(self, client: Client) -> None:
        self.count = 0

        async def record(_event: SendRequest) -> None:
            self.count += 1

        listen(client.channel, SendRequest, record)


SLOW_OK = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CREATE_DEFAULTS: dict[str, Any] = {
    "microgrid_id": 1,
    "type": "T",
    "start_time": "NOW",
    "duration": dt.timedelta(minutes=5),
    "target": [1],
}
CREATE_ARGUMENTS = [
    *CREATE_DEFAULTS,
    "active",
    "dry_run",
    "payload",
    "recurrence",
]
LIST_ARGUMENTS = [
    "microgrid_id",
    "target_components",
    "start_from",
    "start_to",
    "end_from",
    "end_to",
    "update_from",
    "update_to",
    "active",
    "dry_run",
    "recurring",
    "dispatch_ids",
    "filter_queries",
    "sort",
    "page_size",
]


async def expect_contract(sent: Sent, argument: str, coroutine: Any) -> None:
    """The call works, or raises ValueError/TypeError naming `argument`, before sending."""
    before = sent.count
    try:
        await coroutine
    except InvalidArgument as error:
        # The server refused what the client let through: the two disagree.
        pytest.fail(f"{argument}: the server refused what the client sent: {error}")
    except DispatchApiError:
        raise
    except (ValueError, TypeError) as error:
        assert sent.count == before, f"{argument}: refused only after sending"
        assert argument.split(".")[0] in str(error), f"{argument} not named in: {error}"


@pytest.mark.parametrize("argument", CREATE_ARGUMENTS)
@SLOW_OK
@given(value=anything)
@example(value=Made("nested", nested, 500))
@example(value=Made("deep_struct", deep_struct, 3000))
@example(value=float("inf"))
@example(value=dt.timedelta.max)
async def test_create_arguments(client: Client, argument: str, value: Any) -> None:
    kwargs = {**CREATE_DEFAULTS, argument: made(value)}
    await expect_contract(Sent(client), argument, client.create(**kwargs))


@pytest.mark.parametrize("argument", LIST_ARGUMENTS)
@SLOW_OK
@given(value=anything | long_lists)
@example(value="\ud800")  # named by the filter's field path, not the argument, before
@example(value=["ok", "\udfff"])
async def test_list_arguments(client: Client, argument: str, value: Any) -> None:
    value = made(value)

    async def first_page() -> None:
        kwargs = {argument: value} if argument != "microgrid_id" else {}
        microgrid = value if argument == "microgrid_id" else 1
        async for _ in client.list(microgrid, **kwargs):
            break

    await expect_contract(Sent(client), argument, first_page())


@pytest.mark.parametrize("key", [*ALLOWED_KEYS, "type", "junk"])
@SLOW_OK
@given(value=anything)
@example(value=Made("nested", nested, 500))
async def test_update_arguments(client: Client, key: str, value: Any) -> None:
    created = await client.create(1, "T", "NOW", dt.timedelta(minutes=5), [1])
    assert created.metadata is not None
    sent = Sent(client)
    before = sent.count
    try:
        await client.update(1, created.metadata.dispatch_id, {key: made(value)})
    except InvalidArgument:
        pass  # rules spanning stored fields (e.g. until before the stored start) are the server's
    except DispatchApiError:
        raise
    except (ValueError, TypeError) as error:
        assert sent.count == before
        names = {key.split(".")[-1], "new_fields", {"frequency": "freq"}.get(key[11:], key)}
        assert any(name in str(error) for name in names), error


@SLOW_OK
@given(microgrid=ints_and_junk, dispatch=ints_and_junk, new_fields=anything)
async def test_get_delete_update_ids(
    client: Client, microgrid: Any, dispatch: Any, new_fields: Any
) -> None:
    sent = Sent(client)
    for call in (
        client.get(microgrid, dispatch),
        client.delete(microgrid, dispatch),
        client.update(microgrid, dispatch, made(new_fields)),
    ):
        before = sent.count
        try:
            await call
        except DispatchApiError:
            pass  # NotFound for ids that fit
        except (ValueError, TypeError) as error:
            assert sent.count == before
            assert any(name in str(error) for name in ("microgrid_id", "dispatch_id", "new_fields"))


# -- a recurrence that can never run ---------------------------------------------------------


async def test_until_before_the_start_is_refused_by_client_and_server(
    client: Client, server: RunningServer
) -> None:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    never = RecurrenceRule(
        freq=RecurrenceRuleFrequency.DAILY,
        end_criteria=RecurrenceRuleEndCriteria(until_time=start - dt.timedelta(days=1)),
    )
    sent = Sent(client)
    with pytest.raises(ValueError, match=r"until_time .* is before start_time") as error:
        await client.create(1, "T", start, dt.timedelta(hours=1), [1], recurrence=never)
    assert not isinstance(error.value, DispatchApiError) and sent.count == 0
    until_an_hour_ago = RecurrenceRule(
        freq=RecurrenceRuleFrequency.DAILY,
        end_criteria=RecurrenceRuleEndCriteria(
            until_time=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        ),
    )
    with pytest.raises(ValueError, match="could never run"):
        await client.create(1, "T", "NOW", None, [1], recurrence=until_an_hour_ago)
    # An update moving the start past the until: the client sees both, refuses.
    with pytest.raises(ValueError, match="could never run"):
        await client.update(
            1, 1, {"start_time": start, "recurrence.end_criteria": start - dt.timedelta(days=1)}
        )
    # The server checks the whole stored dispatch: here the client cannot know.
    created = await client.create(
        1,
        "T",
        start,
        dt.timedelta(hours=1),
        [1],
        recurrence=RecurrenceRule(freq=RecurrenceRuleFrequency.DAILY),
    )
    assert created.metadata is not None
    with pytest.raises(InvalidArgument, match="could never run"):
        await client.update(
            1,
            created.metadata.dispatch_id,
            {"recurrence.end_criteria": start - dt.timedelta(days=1)},
        )


# -- stream(), watch(), running() ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "argument"),
    [
        ("stream", "microgrid_id"),
        ("stream", "buffer_size"),
        ("stream", "overflow"),
        ("stream", "on_gap"),
        ("watch", "microgrid_id"),
        ("watch", "buffer_size"),
        ("watch", "overflow"),
        ("running", "microgrid_id"),
        ("running", "type"),
    ],
)
@SLOW_OK
@given(value=anything)
@example(value=Made("unprintable", lambda: UNPRINTABLE))
async def test_stream_watch_running_arguments(
    client: Client, method: str, argument: str, value: Any
) -> None:
    value = made(value)
    kwargs = {} if argument == "microgrid_id" else {argument: value}
    microgrid = value if argument == "microgrid_id" else 1
    try:
        generator = getattr(client, method)(microgrid, **kwargs)
    except (ValueError, TypeError) as error:
        assert argument in str(error) or argument == "microgrid_id", error
        return
    await generator.aclose()  # accepted: nothing to read, just leave


@pytest.mark.parametrize(
    "argument", ["call_timeout", "stream_timeout", "stream_buffer_size", "server_url"]
)
@pytest.mark.parametrize(
    "value", [UNPRINTABLE, -1, dt.timedelta(seconds=-1), 2**64, float("nan"), "1", None]
)
def test_client_options_refused_by_name(argument: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"server_url": "grpc://127.0.0.1:1?ssl=false", "connect": False}
    kwargs[argument] = value
    try:
        Client(**kwargs)
    except (ValueError, TypeError) as error:
        assert argument.split("_")[-1] in str(error) or "URL" in str(error), error


async def test_an_unprintable_key_or_type_is_named_not_repr_d(client: Client) -> None:
    with pytest.raises(ValueError, match="new_fields key <Unprintable instance"):
        await client.update(1, 1, {UNPRINTABLE: 1})
    with pytest.raises(ValueError, match="type must be"):
        client.running(1, UNPRINTABLE)  # type: ignore[arg-type]
