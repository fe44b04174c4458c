"""`WatchView`, the I/O-free core of stream catch-up and watch(): rules by example, then by property.

The property tests play a server's history of creates, updates and deletes
against a consumer whose stream breaks at random points: events are lost
during each gap, the new stream's list is taken at a random later moment, and
a random number of events arrive before the list does (the rest, including
"late" ones the list already reflects, arrive afterwards). Whatever the
timing, the consumer must end with the server's state, every event must
change what it knows (no duplicates), and no dispatch may go back in time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from consumer_rules import apply_checked
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_client import Dispatch, DispatchData, DispatchMetadata, Event
from dispatch_client.watchview import DispatchEvent, WatchView

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def dispatch(
    dispatch_id: int, version: int = 0, kind: str = "X", born: dt.datetime = T0
) -> Dispatch:
    return Dispatch(
        metadata=DispatchMetadata(
            dispatch_id=dispatch_id,
            create_time=born,
            update_time=born + dt.timedelta(seconds=version),
        ),
        data=DispatchData(type=f"{kind}{version}"),
    )


def created(*dispatches: Dispatch) -> list[DispatchEvent]:
    return [DispatchEvent(Event.CREATED, d) for d in dispatches]


def updated(*dispatches: Dispatch) -> list[DispatchEvent]:
    return [DispatchEvent(Event.UPDATED, d) for d in dispatches]


def deleted(*dispatches: Dispatch) -> list[DispatchEvent]:
    return [DispatchEvent(Event.DELETED, d) for d in dispatches]


class TestApply:
    def test_kinds_follow_the_view(self) -> None:
        view = WatchView()
        # An UPDATED for an unknown dispatch heals the view as a CREATED.
        assert view.apply(updated(dispatch(1))[0]) == created(dispatch(1))
        # A CREATED for a known dispatch with newer content is an UPDATED to the consumer.
        assert view.apply(created(dispatch(1, 1))[0]) == updated(dispatch(1, 1))
        assert view.apply(deleted(dispatch(1, 1))[0]) == deleted(dispatch(1, 1))
        assert dict(view.dispatches) == {}

    def test_stale_and_duplicate_events_are_dropped(self) -> None:
        view = WatchView([dispatch(1, version=5)])
        assert view.apply(updated(dispatch(1, version=5))[0]) == []
        assert view.apply(updated(dispatch(1, version=4))[0]) == []
        assert view.apply(created(dispatch(1, version=0))[0]) == []
        assert view.apply(deleted(dispatch(9))[0]) == []
        assert dict(view.dispatches) == {1: dispatch(1, version=5)}

    def test_same_update_time_with_new_content_is_applied(self) -> None:
        view = WatchView([dispatch(1, version=5)])
        same_time = dispatch(1, version=5, kind="Y")
        assert view.apply(updated(same_time)[0]) == updated(same_time)


class TestCatchUp:
    def test_into_an_empty_view_everything_listed_is_created_in_list_order(self) -> None:
        view = WatchView()
        assert view.catch_up([dispatch(3), dispatch(1)]) == created(dispatch(3), dispatch(1))
        assert dict(view.dispatches) == {3: dispatch(3), 1: dispatch(1)}

    def test_the_gap_s_changes_then_the_held_events_in_order(self) -> None:
        view = WatchView([dispatch(1), dispatch(2), dispatch(3), dispatch(5)])
        events = view.catch_up(
            # Listed after the new stream opened: 2 changed and 4 appeared during
            # the gap, 3 was deleted, 5 changed twice since the stream opened.
            [dispatch(1), dispatch(2, 1), dispatch(4, 2), dispatch(5, 9)],
            [updated(dispatch(5, 8))[0], updated(dispatch(5, 9))[0], created(dispatch(6, 9))[0]],
        )
        assert events == [
            *updated(dispatch(2, 1)),
            *created(dispatch(4, 2)),
            *deleted(dispatch(3)),
            *updated(dispatch(5, 8), dispatch(5, 9)),
            *created(dispatch(6, 9)),
        ]
        assert set(view.dispatches) == {1, 2, 4, 5, 6}

    def test_a_listed_version_older_than_the_view_s_is_not_taken(self) -> None:
        view = WatchView([dispatch(1, version=4)])
        assert view.catch_up([dispatch(1, version=3)]) == []
        assert view.dispatches[1] == dispatch(1, version=4)

    def test_a_held_deletion_of_a_dispatch_the_list_no_longer_shows(self) -> None:
        view = WatchView([dispatch(1)])
        events = view.catch_up([], [updated(dispatch(1, 1))[0], deleted(dispatch(1, 1))[0]])
        assert events == [*updated(dispatch(1, 1)), *deleted(dispatch(1, 1))]
        assert dict(view.dispatches) == {}

    def test_held_events_a_baseline_served_after_them_shows_are_dropped(self) -> None:
        # The baseline list (the view) was served after the stream was registered:
        # it shows 1's update and 2's creation, whose events were held meanwhile.
        view = WatchView([dispatch(1, 4), dispatch(2, 5)])
        held = [
            *updated(dispatch(1, 3), dispatch(1, 4)),
            *created(dispatch(2, 5)),
            *updated(dispatch(1, 6)),
            *created(dispatch(3, 7)),
            *deleted(dispatch(2, 8)),
        ]
        events = view.catch_up([dispatch(1, 6), dispatch(3, 7)], held)
        assert events == [
            *updated(dispatch(1, 6)),
            *created(dispatch(3, 7)),
            *deleted(dispatch(2, 8)),
        ]
        assert dict(view.dispatches) == {1: dispatch(1, 6), 3: dispatch(3, 7)}

    def test_a_listed_change_whose_event_is_on_its_way_keeps_its_place(self) -> None:
        # The first open: 1 was created, then 2, both after the stream was
        # registered; the list came back showing both while 2's event was
        # still on its way. 1 is told before 2, as they were made.
        view = WatchView()
        events = view.catch_up([dispatch(2, 2), dispatch(1, 1)], created(dispatch(1, 1)))
        assert events == [*created(dispatch(1, 1)), *created(dispatch(2, 2))]
        assert view.apply(created(dispatch(2, 2))[0]) == []  # its event, late: told already

    def test_late_events_the_list_showed_are_dropped_afterwards(self) -> None:
        view = WatchView([dispatch(1)])
        assert view.catch_up([dispatch(1, 2), dispatch(2, 3)]) == [
            *updated(dispatch(1, 2)),
            *created(dispatch(2, 3)),
        ]
        # The stream delivers them after the list: nothing new.
        for late in [*updated(dispatch(1, 1), dispatch(1, 2)), *created(dispatch(2, 3))]:
            assert view.apply(late) == []


class TestAnIdThatNamesAnotherDispatch:
    """A server restarted on another database counts its ids from 1 again, with older times."""

    OLD = T0 + dt.timedelta(days=1)

    def test_catch_up_tells_deleted_then_created_not_nothing(self) -> None:
        # break14: the consumer knew dispatches 1..3 of database A; the server came
        # back on database B, whose 1..2 were made earlier: they were kept as "older".
        view = WatchView([dispatch(k, born=self.OLD) for k in (1, 2, 3)])
        events = view.catch_up([dispatch(1), dispatch(2, 1)])
        assert events == [
            *deleted(dispatch(1, born=self.OLD)),
            *created(dispatch(1)),
            *deleted(dispatch(2, born=self.OLD)),
            *created(dispatch(2, 1)),
            *deleted(dispatch(3, born=self.OLD)),
        ]
        assert dict(view.dispatches) == {1: dispatch(1), 2: dispatch(2, 1)}

    def test_a_live_or_held_event_of_the_other_dispatch_replaces_the_known_one(self) -> None:
        view = WatchView([dispatch(1, 5, born=self.OLD)])
        assert view.apply(updated(dispatch(1, 2))[0]) == [
            *deleted(dispatch(1, 5, born=self.OLD)),
            *created(dispatch(1, 2)),
        ]
        assert view.apply(updated(dispatch(1, 1))[0]) == []
        view = WatchView([dispatch(1, 5, born=self.OLD)])
        assert view.apply(deleted(dispatch(1))[0]) == deleted(dispatch(1, 5, born=self.OLD))
        view = WatchView([dispatch(1, 5, born=self.OLD)])
        assert view.catch_up([dispatch(1, 3)], updated(dispatch(1, 3))) == [
            *deleted(dispatch(1, 5, born=self.OLD)),
            *created(dispatch(1, 3)),
        ]

    def test_reset_tells_deleted_then_created(self) -> None:
        view = WatchView([dispatch(1, born=self.OLD)])
        assert view.reset({1: dispatch(1)}) == [
            *deleted(dispatch(1, born=self.OLD)),
            *created(dispatch(1)),
        ]


class TestReset:
    def test_becomes_exactly_the_snapshot(self) -> None:
        view = WatchView([dispatch(1), dispatch(2), dispatch(3)])
        events = view.reset({1: dispatch(1), 2: dispatch(2, 1), 4: dispatch(4)})
        assert events == [*updated(dispatch(2, 1)), *created(dispatch(4)), *deleted(dispatch(3))]
        assert dict(view.dispatches) == {1: dispatch(1), 2: dispatch(2, 1), 4: dispatch(4)}


# -- properties ------------------------------------------------------------------


@dataclass
class History:
    """A server's events and its state after each of them (`states[k]`: after k events)."""

    events: list[DispatchEvent]
    states: list[dict[int, Dispatch]]


@st.composite
def histories(
    draw: st.DrawFn, born: dt.datetime = T0, changes: tuple[str, ...] = ("update", "delete")
) -> History:
    existing = draw(st.integers(0, 4))
    server = {key: dispatch(key, born=born) for key in range(1, existing + 1)}
    events: list[DispatchEvent] = []
    states = [dict(server)]
    next_id = existing + 1
    for step in range(1, draw(st.integers(0, 40)) + 1):
        action = draw(st.sampled_from(["create", *changes]) if server else st.just("create"))
        if action == "create":
            server[next_id] = dispatch(next_id, step, born=born)
            events += created(server[next_id])
            next_id += 1
        else:
            key = draw(st.sampled_from(sorted(server)))
            if action == "update":
                server[key] = dispatch(key, step, born=born)
                events += updated(server[key])
            else:
                events += deleted(server.pop(key))
        states.append(dict(server))
    return History(events, states)


class Consumer:
    """Applies what a view emits to a dict, checking each event against it."""

    def __init__(self, known: dict[int, Dispatch]) -> None:
        self.known = dict(known)

    def take(self, events: list[DispatchEvent]) -> None:
        for event in events:
            apply_checked(self.known, event)


@settings(max_examples=300, deadline=None)
@given(history=histories(), data=st.data(), starts_knowing=st.booleans())
def test_any_gaps_at_any_moments_end_in_the_server_s_state(
    history: History, data: st.DataObject, starts_knowing: bool
) -> None:
    n = len(history.events)
    events = history.events
    if starts_knowing:
        # stream(): the list before the first stream, which opens right after it.
        view = WatchView(history.states[0].values())
        delivered = 0
    else:
        # watch(): nothing known; the first open is caught up like any gap.
        view = WatchView()
        delivered = -1
    consumer = Consumer(dict(view.dispatches))
    for _ in range(data.draw(st.integers(0, 4), label="gaps")):
        if delivered >= 0:
            broke = data.draw(st.integers(delivered, n), label="stream breaks after")
            consumer.take([c for e in events[delivered:broke] for c in view.apply(e)])
            delivered = broke
        opened = data.draw(st.integers(max(delivered, 0), n), label="new stream registered at")
        listed = data.draw(st.integers(opened, n), label="list served at")
        arrived = data.draw(st.integers(opened, n), label="events received before the list")
        consumer.take(list(view.catch_up(history.states[listed].values(), events[opened:arrived])))
        delivered = arrived
    if delivered < 0:
        consumer.take(list(view.catch_up(history.states[0].values())))
        delivered = 0
    consumer.take([c for e in events[delivered:] for c in view.apply(e)])
    assert dict(view.dispatches) == history.states[n]
    assert consumer.known == history.states[n]


@settings(max_examples=200, deadline=None)
@given(
    old=histories(born=T0 + dt.timedelta(days=1)),
    history=histories(),
    data=st.data(),
    watcher=st.booleans(),
)
def test_a_gap_in_which_the_server_moved_to_another_database_ends_in_its_state(
    old: History, history: History, data: st.DataObject, watcher: bool
) -> None:
    """break14: every id the old database had may name another, older dispatch now."""
    n = len(history.events)
    known = old.states[data.draw(st.integers(0, len(old.events)), label="old state known")]
    view = WatchView(known.values())
    consumer = Consumer(dict(view.dispatches))
    opened = data.draw(st.integers(0, n), label="new stream registered at")
    listed = data.draw(st.integers(opened, n), label="list served at")
    arrived = data.draw(st.integers(opened, n), label="events received before the list")
    if watcher:
        consumer.take(view.reset(history.states[listed]))
        arrived = listed
    else:
        consumer.take(
            view.catch_up(history.states[listed].values(), history.events[opened:arrived])
        )
    consumer.take([c for e in history.events[arrived:] for c in view.apply(e)])
    assert consumer.known == history.states[n] == dict(view.dispatches)


@settings(max_examples=200, deadline=None)
@given(history=histories(), data=st.data())
def test_a_reset_to_any_snapshot_then_the_later_events_ends_in_the_server_s_state(
    history: History, data: st.DataObject
) -> None:
    n = len(history.events)
    seen = data.draw(st.integers(0, n), label="events seen before falling behind")
    view = WatchView()
    consumer = Consumer({})
    consumer.take([c for e in history.events[:seen] for c in view.apply(e)])
    at = data.draw(st.integers(seen, n), label="snapshot taken at")
    consumer.take(list(view.reset(history.states[at])))
    consumer.take([c for e in history.events[at:] for c in view.apply(e)])
    assert consumer.known == history.states[n] == dict(view.dispatches)


def test_an_event_of_an_unknown_kind_passes_through_and_changes_nothing() -> None:
    newer = DispatchEvent(Event(9), dispatch(1, 3))
    view = WatchView([dispatch(1)])
    assert view.apply(newer) == [newer]
    assert dict(view.dispatches) == {1: dispatch(1)}
    # Nor does it hide the listed change of its dispatch in a catch-up.
    assert view.catch_up([dispatch(1, 2)], [newer]) == [*updated(dispatch(1, 2)), newer]


@settings(max_examples=300, deadline=None)
@given(history=histories(changes=("update",)), data=st.data())
def test_changes_made_while_a_stream_opens_are_told_in_the_order_they_were_made(
    history: History, data: st.DataObject
) -> None:
    """Creates and updates only: whatever arrived before the list, a catch-up tells in the server's order.

    (An event still on its way when the catch-up is told can come after a
    newer listed change of another dispatch; it is told then, once.)
    """
    n = len(history.events)
    events = history.events
    baseline = data.draw(st.integers(0, n), label="baseline served after")
    view = WatchView(history.states[baseline].values())
    opened = data.draw(st.integers(baseline, n), label="stream registered after")
    listed = data.draw(st.integers(opened, n), label="list served after")
    arrived = data.draw(st.integers(opened, listed), label="events received before the list")
    told = list(view.catch_up(history.states[listed].values(), events[opened:arrived]))
    times = [e.dispatch.metadata.update_time for e in told if e.dispatch.metadata]
    assert times == sorted(times)
    consumer = Consumer(history.states[baseline])
    consumer.take(told)
    consumer.take([c for e in events[arrived:] for c in view.apply(e)])
    assert dict(view.dispatches) == consumer.known == history.states[n]
