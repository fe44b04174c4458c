"""`RunTracker` with UPDATED transitions and merged runs, with hand-fed times.

Named cases for each merge strategy (overlaps, hand-over at a shared boundary,
members joining, leaving and changing, a key that changes), then a property
test: random schedules, updates, deletes and clock steps, checked against a
model that asks `recurrence.is_running` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_client import (
    Dispatch,
    DispatchData,
    DispatchMetadata,
    Event,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    TargetComponents,
    TargetComponentsIdSet,
)
from dispatch_client.recurrence import is_running
from dispatch_client.schedule import (
    Merge,
    RunTracker,
    RunTransition,
    Transition,
    merge_key,
    target_key,
)
from dispatch_client.streaming import DispatchEvent
from dispatch_client.targets import to_target

STARTED, UPDATED, STOPPED = Transition.STARTED, Transition.UPDATED, Transition.STOPPED
CREATED, CHANGED, DELETED = Event.CREATED, Event.UPDATED, Event.DELETED
T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
SECOND, MINUTE, HOUR = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)


def make(
    dispatch_id: int,
    start: datetime,
    duration: timedelta | None,
    *,
    kind: str = "CHARGE",
    dry_run: bool = False,
    target: list[int] | None = None,
    active: bool = True,
    recurrence: RecurrenceRule | None = None,
    revision: int = 0,
) -> Dispatch:
    return Dispatch(
        metadata=DispatchMetadata(
            dispatch_id=dispatch_id, update_time=T0 - HOUR + revision * SECOND
        ),
        data=DispatchData(
            type=kind,
            start_time=start,
            duration=None if duration is None else round(duration.total_seconds()),
            target=TargetComponents(component_ids=TargetComponentsIdSet(ids=target or [1])),
            is_active=active,
            is_dry_run=dry_run,
            recurrence=recurrence,
        ),
    )


def ident(dispatch: Dispatch) -> int:
    assert dispatch.metadata is not None
    return dispatch.metadata.dispatch_id


def brief(transitions: list[RunTransition]) -> list[tuple[Transition, int, datetime, list[int]]]:
    """(kind, causing dispatch, at, running members) per transition."""
    return [(t.kind, ident(t.dispatch), t.at, [ident(m) for m in t.members]) for t in transitions]


# -- merge keys -------------------------------------------------------------------------


def test_merge_keys() -> None:
    a = make(1, T0, HOUR, target=[2, 1])
    b = make(2, T0, HOUR, target=[1, 2, 2])
    c = make(3, T0, HOUR, target=[3])
    d = make(4, T0, HOUR, target=[1, 2], dry_run=True)
    by_id, by_type, by_target = merge_key(None), merge_key("type"), merge_key("type+target")
    assert [by_id(x) for x in (a, b)] == [1, 2]
    assert by_type(a) == by_type(b) == by_type(c) == ("CHARGE", False) != by_type(d)
    # The same components in another order or repeated are the same target.
    assert by_target(a) == by_target(b) != by_target(c)
    assert by_target(a) != by_target(d)
    assert target_key(None) == ("none", frozenset())
    assert target_key(to_target(["BATTERY"]))[0] == "categories"


@pytest.mark.parametrize("merge", ["Type", "target", 5, b"type", ("type",)])
def test_bad_merge_is_rejected_naming_it(merge: Any) -> None:
    with pytest.raises(ValueError, match=r"merge must be None, 'type' or 'type\+target'"):
        RunTracker(merge=merge)


def test_an_unhashable_key_fails_and_changes_nothing() -> None:
    tracker = RunTracker(merge=lambda d: [ident(d)])
    with pytest.raises(TypeError, match="merge returned \\[1\\] for dispatch 1"):
        tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0)
    assert tracker.runs == {} and tracker.next_change is None


@pytest.mark.parametrize(
    "merge",
    [
        pytest.param(lambda d: {1: "only one"}[ident(d)], id="raises-for-one-dispatch"),
        pytest.param(lambda d: (ident(d), [ident(d)]) if ident(d) == 2 else 1, id="unhashable"),
    ],
)
def test_a_merge_callable_failing_for_one_dispatch_names_it_and_changes_nothing(
    merge: Callable[[Dispatch], Hashable],
) -> None:
    tracker = RunTracker(merge=lambda d: 1 if ident(d) == 1 else merge(d))
    assert brief(tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0)) == [
        (STARTED, 1, T0, [1])
    ]
    with pytest.raises((KeyError, TypeError)) as caught:
        tracker.observe(DispatchEvent(CREATED, make(2, T0, HOUR)), T0 + SECOND)
    # Which dispatch: in the message (unhashable) or a note (the callable's own error).
    assert "dispatch 2" in str(caught.value) + "".join(getattr(caught.value, "__notes__", []))
    assert list(tracker.runs) == [1]
    assert brief(tracker.advance(T0 + HOUR)) == [(STOPPED, 1, T0 + HOUR, [])]


# -- per dispatch: UPDATED ----------------------------------------------------------------


def test_a_running_dispatch_that_changes_is_updated() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0 - MINUTE)
    assert brief(tracker.advance(T0)) == [(STARTED, 1, T0, [1])]
    seen = T0 + MINUTE
    changed = make(1, T0, HOUR, target=[7], revision=1)
    assert brief(tracker.observe(DispatchEvent(CHANGED, changed), seen)) == [
        (UPDATED, 1, seen, [1])
    ]
    # Only the metadata changed: nothing runs differently.
    touched = make(1, T0, HOUR, target=[7], revision=2)
    assert tracker.observe(DispatchEvent(CHANGED, touched), seen + SECOND) == []
    assert tracker.runs == {1: (touched,)}
    stopped = tracker.advance(T0 + 2 * HOUR)
    assert brief(stopped) == [(STOPPED, 1, T0 + HOUR, [])]
    assert stopped[0].dispatch == touched


def test_a_dispatch_not_running_that_changes_is_not_reported() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0 + HOUR, HOUR)), T0)
    assert tracker.observe(DispatchEvent(CHANGED, make(1, T0 + HOUR, HOUR, target=[2])), T0) == []


def test_infinite_duration_updated_to_finite() -> None:
    tracker = RunTracker()
    tracker.observe(DispatchEvent(CREATED, make(1, T0, None)), T0)
    # Long enough to go on: UPDATED; then it stops on the new schedule.
    longer = tracker.observe(DispatchEvent(CHANGED, make(1, T0, 100 * SECOND)), T0 + 5 * SECOND)
    assert brief(longer) == [(UPDATED, 1, T0 + 5 * SECOND, [1])]
    assert brief(tracker.advance(T0 + HOUR)) == [(STOPPED, 1, T0 + 100 * SECOND, [])]
    # Already over: STOPPED at once.
    tracker.observe(DispatchEvent(CREATED, make(2, T0, None)), T0 + HOUR)
    shorter = tracker.observe(DispatchEvent(CHANGED, make(2, T0, 5 * SECOND)), T0 + HOUR)
    assert brief(shorter) == [(STOPPED, 2, T0 + HOUR, [])]


# -- merged runs -----------------------------------------------------------------------------


def overlapping(tracker: RunTracker, **second: Any) -> list[RunTransition]:
    """A runs [T0, T0+30m), B [T0+10m, T0+20m); everything up to T0+1h."""
    got = tracker.observe(DispatchEvent(CREATED, make(1, T0, 30 * MINUTE, target=[1])), T0 - HOUR)
    got += tracker.observe(
        DispatchEvent(CREATED, make(2, T0 + 10 * MINUTE, 10 * MINUTE, **second)), T0 - HOUR
    )
    return got + tracker.advance(T0 + HOUR)


@pytest.mark.parametrize("merge", ["type", "type+target", lambda d: d.data.type])
def test_overlapping_members_make_one_run(merge: Merge) -> None:
    got = overlapping(RunTracker(merge=merge), target=[1])
    assert brief(got) == [
        (STARTED, 1, T0, [1]),
        (UPDATED, 2, T0 + 10 * MINUTE, [1, 2]),
        (UPDATED, 2, T0 + 20 * MINUTE, [1]),
        (STOPPED, 1, T0 + 30 * MINUTE, []),
    ]
    assert len({t.key for t in got}) == 1


def test_without_merging_overlaps_are_two_runs() -> None:
    got = overlapping(RunTracker(), target=[1])
    assert [(kind, key) for kind, key, _, _ in brief(got)] == [
        (STARTED, 1),
        (STARTED, 2),
        (STOPPED, 2),
        (STOPPED, 1),
    ]
    assert [t.key for t in got] == [1, 2, 2, 1]


def test_type_target_keeps_other_targets_apart_and_type_does_not() -> None:
    assert [t.kind for t in overlapping(RunTracker(merge="type"), target=[5])] == [
        STARTED,
        UPDATED,
        UPDATED,
        STOPPED,
    ]
    apart = overlapping(RunTracker(merge="type+target"), target=[5])
    assert [(t.kind, ident(t.dispatch)) for t in apart] == [
        (STARTED, 1),
        (STARTED, 2),
        (STOPPED, 2),
        (STOPPED, 1),
    ]


@pytest.mark.parametrize("merge", ["type", "type+target"])
def test_dry_run_and_real_runs_are_apart(merge: Merge) -> None:
    got = overlapping(RunTracker(merge=merge), target=[1], dry_run=True)
    assert [t.kind for t in got] == [STARTED, STARTED, STOPPED, STOPPED]
    assert got[0].key != got[1].key


@pytest.mark.parametrize("merge", [None, "type", "type+target"])
def test_hand_over_at_a_shared_boundary(merge: Merge) -> None:
    tracker = RunTracker(merge=merge)
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0 - HOUR)
    tracker.observe(DispatchEvent(CREATED, make(2, T0 + HOUR, HOUR)), T0 - HOUR)
    got = brief(tracker.advance(T0 + 3 * HOUR))
    if merge is None:
        # Separate runs: the one ending frees things before the next starts.
        assert got == [
            (STARTED, 1, T0, [1]),
            (STOPPED, 1, T0 + HOUR, []),
            (STARTED, 2, T0 + HOUR, [2]),
            (STOPPED, 2, T0 + 2 * HOUR, []),
        ]
    else:
        # One run that never stops at the boundary.
        assert got == [
            (STARTED, 1, T0, [1]),
            (UPDATED, 2, T0 + HOUR, [1, 2]),
            (UPDATED, 1, T0 + HOUR, [2]),
            (STOPPED, 2, T0 + 2 * HOUR, []),
        ]


def test_other_runs_stop_before_runs_start_at_one_instant() -> None:
    tracker = RunTracker(merge="type+target")
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR, target=[1])), T0 - HOUR)
    tracker.observe(DispatchEvent(CREATED, make(2, T0 + HOUR, HOUR, target=[2])), T0 - HOUR)
    tracker.observe(DispatchEvent(CREATED, make(3, T0, HOUR, target=[3])), T0 - HOUR)
    tracker.observe(DispatchEvent(CREATED, make(4, T0 + HOUR, HOUR, target=[3])), T0 - HOUR)
    tracker.advance(T0)
    assert [(kind, key) for kind, key, _, _ in brief(tracker.advance(T0 + HOUR))] == [
        (STOPPED, 1),
        (UPDATED, 4),
        (UPDATED, 3),
        (STARTED, 2),
    ]


def test_members_change_join_and_leave_while_the_run_goes_on() -> None:
    tracker = RunTracker(merge="type")
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0)
    tracker.observe(DispatchEvent(CREATED, make(2, T0, HOUR, target=[2])), T0)
    step = T0 + MINUTE
    changed = tracker.observe(DispatchEvent(CHANGED, make(2, T0, HOUR, target=[3])), step)
    assert brief(changed) == [(UPDATED, 2, step, [1, 2])]
    assert changed[0].members[1].data.target == to_target([3])  # type: ignore[union-attr]
    # Deleting a member: the run goes on without it, with the deleted version as the cause.
    assert brief(tracker.observe(DispatchEvent(DELETED, make(1, T0, HOUR)), step)) == [
        (UPDATED, 1, step, [2])
    ]
    # Deactivating the last member stops the run.
    off = make(2, T0, HOUR, target=[3], active=False)
    assert brief(tracker.observe(DispatchEvent(CHANGED, off), step)) == [(STOPPED, 2, step, [])]
    assert tracker.runs == {}


def test_a_member_whose_key_changes_moves_to_another_run() -> None:
    tracker = RunTracker(merge="type+target")
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR, target=[1])), T0)
    tracker.observe(DispatchEvent(CREATED, make(2, T0, HOUR, target=[1])), T0)
    moved = tracker.observe(DispatchEvent(CHANGED, make(2, T0, HOUR, target=[9])), T0 + SECOND)
    assert [(t.kind, ident(t.dispatch), t.key) for t in moved] == [
        (UPDATED, 2, ("CHARGE", False, ("ids", frozenset({1})))),
        (STARTED, 2, ("CHARGE", False, ("ids", frozenset({9})))),
    ]
    assert brief(moved)[0][3] == [1]


def test_an_instantaneous_member_joins_and_leaves_at_once() -> None:
    tracker = RunTracker(merge="type")
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0 - MINUTE)
    tracker.observe(DispatchEvent(CREATED, make(2, T0 + MINUTE, timedelta(0))), T0 - MINUTE)
    tracker.observe(DispatchEvent(CREATED, make(3, T0 + 2 * HOUR, timedelta(0))), T0 - MINUTE)
    assert brief(tracker.advance(T0 + 3 * HOUR)) == [
        (STARTED, 1, T0, [1]),
        (UPDATED, 2, T0 + MINUTE, [1, 2]),
        (UPDATED, 2, T0 + MINUTE, [1]),
        (STOPPED, 1, T0 + HOUR, []),
        (STARTED, 3, T0 + 2 * HOUR, [3]),
        (STOPPED, 3, T0 + 2 * HOUR, []),
    ]


def test_none_is_a_group_key_like_any_other() -> None:
    tracker = RunTracker(merge=lambda d: None)
    got = overlapping(tracker, target=[8])
    assert [t.kind for t in got] == [STARTED, UPDATED, UPDATED, STOPPED]
    assert {t.key for t in got} == {None}


def test_start_and_delete_at_one_instant_is_reported_as_a_blip() -> None:
    tracker = RunTracker(merge="type")
    tracker.observe(DispatchEvent(CREATED, make(1, T0, HOUR)), T0 - MINUTE)
    assert brief(tracker.observe(DispatchEvent(DELETED, make(1, T0, HOUR)), T0)) == [
        (STARTED, 1, T0, [1]),
        (STOPPED, 1, T0, []),
    ]


# -- the property test ------------------------------------------------------------------------


KINDS = ("A", "B")
TARGETS = ([1], [2], [2, 1])


@st.composite
def versions(draw: st.DrawFn, dispatch_id: int, revision: int) -> Dispatch:
    recurrence = None
    if draw(st.booleans()):
        recurrence = RecurrenceRule(
            freq=RecurrenceRuleFrequency.MINUTELY,
            interval=draw(st.integers(1, 3)),
            end_criteria=RecurrenceRuleEndCriteria(count=draw(st.integers(1, 3))),
        )
    duration = draw(st.sampled_from([None, 0, 30, 60, 90, 300]))
    return make(
        dispatch_id,
        T0 + draw(st.integers(0, 600)) * SECOND,
        None if duration is None else duration * SECOND,
        kind=draw(st.sampled_from(KINDS)),
        dry_run=draw(st.booleans()),
        target=draw(st.sampled_from(TARGETS)),
        active=draw(st.integers(0, 4)) > 0,
        recurrence=recurrence,
        revision=revision,
    )


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, int, Dispatch | None]]:
    """Steps: ("put", id, version), ("delete", id, None), ("wait", seconds, None)."""
    steps: list[tuple[str, int, Dispatch | None]] = []
    for revision in range(draw(st.integers(1, 25))):
        action = draw(st.sampled_from(["put", "put", "delete", "wait", "wait"]))
        if action == "wait":
            steps.append(("wait", draw(st.integers(0, 240)), None))
        else:
            dispatch_id = draw(st.integers(1, 4))
            version = draw(versions(dispatch_id, revision)) if action == "put" else None
            steps.append((action, dispatch_id, version))
    return steps


MERGES: dict[str, Merge] = {
    "none": None,
    "type": "type",
    "type+target": "type+target",
    "by-target-only": lambda d: target_key(d.data.target if d.data else None),
    "a-is-none": lambda d: None if d.data is not None and d.data.type == "A" else "other",
}


@settings(max_examples=300, deadline=None)
@given(
    merge_name=st.sampled_from(sorted(MERGES)),
    only=st.sampled_from([None, "A"]),
    script=scripts(),
)
def test_runs_follow_the_schedules_whatever_happens(
    merge_name: str, only: str | None, script: list[tuple[str, int, Dispatch | None]]
) -> None:
    merge = MERGES[merge_name]
    key: Callable[[Dispatch], Hashable] = merge_key(merge)
    tracker = RunTracker(type=only, merge=merge)
    alive: dict[int, Dispatch] = {}
    reported: dict[Hashable, tuple[Dispatch, ...]] = {}  # the runs the transitions describe
    active_keys: set[Hashable] = set()  # keys of every active version seen
    last_at = T0 - HOUR
    now = T0 - MINUTE

    def wanted(dispatch: Dispatch) -> bool:
        return only is None or (dispatch.data is not None and dispatch.data.type == only)

    def running_now() -> dict[Hashable, set[int]]:
        expected: dict[Hashable, set[int]] = {}
        for dispatch_id, dispatch in alive.items():
            if wanted(dispatch) and is_running(dispatch, now):
                expected.setdefault(key(dispatch), set()).add(dispatch_id)
        return expected

    for action, number, version in script:
        before = {k: {ident(m): m for m in members} for k, members in tracker.runs.items()}
        if action == "wait":
            now += number * SECOND
            got = tracker.advance(now)
        elif action == "put":
            assert version is not None
            if wanted(version) and version.data is not None and version.data.is_active:
                active_keys.add(key(version))
            event = DispatchEvent(CHANGED if number in alive else CREATED, version)
            alive[number] = version
            got = tracker.observe(event, now)
        else:
            if number not in alive:
                continue
            got = tracker.observe(DispatchEvent(DELETED, alive.pop(number)), now)

        for transition in got:
            # Time only moves forward and never past the present.
            assert last_at <= transition.at <= now
            last_at = transition.at
            # Per run: STARTED, then UPDATEDs, then STOPPED, again and again.
            was_running = transition.key in reported
            assert was_running == (transition.kind is not STARTED), transition
            members = transition.members
            assert bool(members) == (transition.kind is not STOPPED)
            assert all(key(m) == transition.key for m in members)
            assert len({ident(m) for m in members}) == len(members)
            if transition.kind is STARTED:
                assert transition.dispatch in members
            if members:
                reported[transition.key] = members
            else:
                del reported[transition.key]
            # No run for a group that never had an active member.
            assert transition.key in active_keys

        # The transitions describe the tracker's state, and that is the schedules' state now
        # (a new version that changes only metadata is taken in silently).
        assert data_of(reported) == data_of(tracker.runs)
        assert {k: {ident(m) for m in ms} for k, ms in reported.items()} == running_now()
        for members in tracker.runs.values():
            assert all(alive[ident(m)] == m for m in members)

        if action == "put" and version is not None:
            # A member that keeps running in its run with new data is reported as UPDATED.
            old = before.get(key(version), {}).get(number)
            still = any(number == ident(m) for m in tracker.runs.get(key(version), ()))
            if old is not None and still and old.data != version.data:
                assert any(t.kind is UPDATED and t.dispatch == version for t in got)


def data_of(runs: dict[Hashable, tuple[Dispatch, ...]]) -> dict[Hashable, list[tuple[int, Any]]]:
    return {key: [(ident(m), m.data) for m in members] for key, members in runs.items()}
