"""Enum fields hold only the members the schema defines; unknown received values never crash.

betterproto2 turns any integer into a placeholder member (`Frequency(9)` is
`~UNKNOWN`), so nothing fails by itself. Every enum field reachable from the
request messages is found by walking the generated classes (a field added to
the schema is covered without touching this file) and tried with arbitrary
integers.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import betterproto2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_client import (
    Client,
    Dispatch,
    DispatchData,
    DispatchMetadata,
    Event,
    RecurrenceRule,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
)
from dispatch_client.recurrence import is_running, next_run, runs, series_end, until
from dispatch_client.schedule import RunTracker, Transition
from dispatch_client.streaming import DispatchEvent
from dispatch_client.testing import running_server
from dispatch_client.validation import check_enum, check_message, enum_label, known_member
from dispatch_client.wire import (
    CreateMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
)

REQUESTS = (
    CreateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
)


@dataclass(frozen=True)
class EnumField:
    """Where an enum field sits: the chain of (message class, field name) from a root."""

    root: type[betterproto2.Message]
    steps: tuple[tuple[type[betterproto2.Message], str], ...]
    enum_type: type[enum.IntEnum]

    @property
    def path(self) -> str:
        return ".".join(name for _, name in self.steps)

    def build(self, value: object) -> betterproto2.Message:
        """A root message with just this field set to `value` (lists hold one item)."""
        root = self.root()
        parent: Any = root
        for index, (cls, name) in enumerate(self.steps):
            meta = cls._betterproto.meta_by_field_name[name]
            last = index == len(self.steps) - 1
            child: Any = value if last else self.steps[index + 1][0]()
            if meta.proto_type == "map":
                setattr(parent, name, {"k": child})
            elif meta.repeated:
                setattr(parent, name, [child])
            else:
                setattr(parent, name, child)
            parent = child
        return root

    def shown_path(self) -> str:
        """The path as `check_message` names it (list items get an index, map keys a key)."""
        parts = []
        for cls, name in self.steps:
            meta = cls._betterproto.meta_by_field_name[name]
            suffix = "['k']" if meta.proto_type == "map" else "[0]" if meta.repeated else ""
            parts.append(name + suffix)
        return ".".join(parts)


def enum_fields(root: type[betterproto2.Message]) -> Iterator[EnumField]:
    def walk(
        cls: type[betterproto2.Message],
        steps: tuple[tuple[type[betterproto2.Message], str], ...],
        seen: frozenset[type],
    ) -> Iterator[EnumField]:
        meta: Any = cls._betterproto
        for name, fmeta in meta.meta_by_field_name.items():
            field_cls: Any = meta.cls_by_field[name]
            here = (*steps, (cls, name))
            if fmeta.proto_type == "enum":
                yield EnumField(root, here, field_cls)
            elif fmeta.proto_type == "map":
                value_cls = field_cls._betterproto.cls_by_field["value"]
                if value_cls not in seen:
                    yield from walk(value_cls, here, seen | {value_cls})
            elif fmeta.proto_type == "message" and fmeta.unwrap is None and field_cls not in seen:
                yield from walk(field_cls, here, seen | {field_cls})

    yield from walk(root, (), frozenset({root}))


ALL_FIELDS = [field for root in REQUESTS for field in enum_fields(root)]


def test_the_walk_finds_every_enum_field_of_the_schema() -> None:
    paths = {f"{f.root.__name__}.{f.path}" for f in ALL_FIELDS}
    # The ones the issue names, as a floor: a broken walk cannot pass silently.
    for expected in (
        "CreateMicrogridDispatchRequest.dispatch_data.recurrence.freq",
        "CreateMicrogridDispatchRequest.dispatch_data.recurrence.byweekdays",
        "CreateMicrogridDispatchRequest.dispatch_data.target.component_categories.categories",
        "CreateMicrogridDispatchRequest.dispatch_data.target.component_categories_types"
        ".categories.category",
        "CreateMicrogridDispatchRequest.dispatch_data.target.component_categories_types"
        ".categories.battery",
        "CreateMicrogridDispatchRequest.dispatch_data.target.component_categories_types"
        ".categories.inverter",
        "CreateMicrogridDispatchRequest.dispatch_data.target.component_categories_types"
        ".categories.ev_charger",
        "CreateMicrogridDispatchRequest.dispatch_data.payload.fields.null_value",
        "UpdateMicrogridDispatchRequest.update.recurrence.freq",
        "UpdateMicrogridDispatchRequest.update.recurrence.byweekdays",
        "UpdateMicrogridDispatchRequest.update.target.component_categories.categories",
        "ListMicrogridDispatchesRequest.sort_options.sort_field",
        "ListMicrogridDispatchesRequest.sort_options.sort_order",
        "ListMicrogridDispatchesRequest.filter.targets.component_categories.categories",
        "StreamMicrogridDispatchesResponse.event",
    ):
        assert expected in paths
    assert len(ALL_FIELDS) >= 25


def check_field(field: EnumField, value: int) -> None:
    member = field.enum_type._value2member_map_.get(value)
    # The placeholder betterproto2 builds, exactly what a decoded message holds.
    raw = field.enum_type(value) if -(2**63) <= value < 2**64 else value
    message = field.build(raw)
    if member is not None:
        check_message(message, "")
    else:
        with pytest.raises(ValueError) as error:
            check_message(message, "")
        assert f"{field.shown_path()} {value} is not a known {field.enum_type.__name__}" in str(
            error.value
        )


EDGES = [-(2**63), -(2**31) - 1, -(2**31), -1, 2**31 - 1, 2**31, 2**32, 2**63, 2**64 - 1, 2**80]


@pytest.mark.parametrize("field", ALL_FIELDS, ids=lambda f: f"{f.root.__name__}.{f.path}")
def test_every_enum_field_around_its_members(field: EnumField) -> None:
    values = [m.value for m in field.enum_type]
    for value in [*range(min(values) - 3, max(values) + 4), *EDGES]:
        check_field(field, value)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ALL_FIELDS), st.integers())
def test_every_enum_field_over_all_integers(field: EnumField, value: int) -> None:
    check_field(field, value)


@settings(deadline=None)
@given(st.integers())
def test_check_enum_and_its_labels(value: int) -> None:
    member = RecurrenceRuleFrequency._value2member_map_.get(value)
    assert known_member(RecurrenceRuleFrequency, value) is member
    if member is None:
        with pytest.raises(ValueError, match=rf"^freq {value} is not a known"):
            check_enum(RecurrenceRuleFrequency, value, "freq")
        assert enum_label(RecurrenceRuleFrequency, value) == f"{value} (unknown)"
    else:
        assert check_enum(RecurrenceRuleFrequency, value, "freq") is member
        assert enum_label(RecurrenceRuleFrequency, value) == member.name


def test_members_of_another_enum_and_non_integers_are_refused() -> None:
    # WEEKDAY_MONDAY is 1 like FREQUENCY_MINUTELY: same integer, wrong field.
    for value in (RecurrenceRuleWeekday.MONDAY, True, "DAILY", 1.0, None):
        with pytest.raises(ValueError, match="freq"):
            check_enum(RecurrenceRuleFrequency, value, "freq")
    with pytest.raises(ValueError, match="byweekdays 0"):
        check_enum(RecurrenceRuleWeekday, 0, "byweekdays", allow_unspecified=False)


# -- values received from a newer server --------------------------------------

T0 = datetime(2030, 1, 7, 12, tzinfo=UTC)


def received(dispatch_id: int, **rule: Any) -> Dispatch:
    """A dispatch as a newer server might send it: running since T0, for a day, hourly."""
    recurrence = RecurrenceRule(**{"freq": RecurrenceRuleFrequency.HOURLY, **rule})
    data = DispatchData(
        type="T",
        start_time=T0,
        duration=3600,
        is_active=True,
        recurrence=recurrence,
    )
    return Dispatch.parse(bytes(Dispatch(DispatchMetadata(dispatch_id=dispatch_id), data)))


UNKNOWN_RULES = st.one_of(
    st.integers(7, 2**31 - 1).map(lambda v: {"freq": RecurrenceRuleFrequency(v)}),
    st.integers(-(2**31), -1).map(lambda v: {"freq": RecurrenceRuleFrequency(v)}),
    st.integers(8, 2**31 - 1).map(lambda v: {"byweekdays": [RecurrenceRuleWeekday(v)]}),
    st.just({"byweekdays": [RecurrenceRuleWeekday(0)]}),
)


@settings(max_examples=50, deadline=None)
@given(UNKNOWN_RULES)
def test_recurrence_helpers_name_unknown_values(rule: dict[str, Any]) -> None:
    dispatch = received(1, **rule)
    [(name, values)] = rule.items()
    raw = int(values[0] if isinstance(values, list) else values)
    calls = (
        lambda: next_run(dispatch, T0),
        lambda: list(runs(dispatch, T0, T0 + timedelta(days=1))),
        lambda: is_running(dispatch, T0),
        lambda: until(dispatch, T0),
        lambda: series_end(dispatch),
    )
    for call in calls:
        with pytest.raises(ValueError, match=rf"recurrence\.{name}.* {raw} "):
            call()


@settings(max_examples=50, deadline=None)
@given(UNKNOWN_RULES)
def test_run_tracker_skips_only_the_dispatch_it_cannot_evaluate(rule: dict[str, Any]) -> None:
    tracker = RunTracker()
    good, bad = received(1), received(2, **rule)
    transitions = tracker.observe(DispatchEvent(Event.CREATED, bad), T0)
    transitions += tracker.observe(DispatchEvent(Event.CREATED, good), T0)
    assert [(t.dispatch, t.kind) for t in transitions] == [(good, Transition.STARTED)]
    later = tracker.advance(T0 + timedelta(hours=1, minutes=30))
    # The good one goes on following its hourly schedule.
    assert all(t.dispatch == good for t in later)
    assert tracker.next_change is not None


def test_run_tracker_logs_the_dispatch_it_skips(caplog: pytest.LogCaptureFixture) -> None:
    tracker = RunTracker()
    with caplog.at_level(logging.WARNING, logger="dispatch_client.schedule"):
        tracker.observe(DispatchEvent(Event.CREATED, received(7, freq=9)), T0)
    assert "dispatch 7" in caplog.text
    assert "9 is not a known RecurrenceRuleFrequency" in caplog.text


@pytest.mark.anyio
async def test_running_over_a_real_watch_skips_only_the_unknown_dispatch() -> None:
    async with running_server() as server, Client(server.url) as client:
        now = datetime.now(UTC)
        # What a newer server could hold: stored as is, past the checks.
        odd = received(1, freq=9).data
        assert odd is not None
        odd.start_time = now - timedelta(minutes=5)
        await server.service.store.insert(5, odd, now=now, end_time=None)
        good = await client.create(5, "GOOD", "NOW", timedelta(hours=1), [1])
        with anyio.fail_after(10):
            async with aclosing(client.running(5)) as transitions:
                first = await anext(transitions)
                # The unknown one was skipped; the good one is reported and the
                # generator keeps serving: a later change still arrives.
                assert (first.dispatch.metadata, first.kind) == (good.metadata, Transition.STARTED)
                assert good.metadata is not None
                await client.update(5, good.metadata.dispatch_id, {"active": False})
                second = await anext(transitions)
                assert second.kind == Transition.STOPPED
