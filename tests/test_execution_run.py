"""`Run`, the handler's view of a run, fed `RunTransition`s by hand (no server, no clock).

A property: whatever members join, change and leave, `Run.members` is the
transition's and `Run.dispatch` the member that joined or changed last (members
it never heard of count as least recent), checked against a plain model. Then
the cost of a big merged run: members joining at one instant once cost
O(members) each, O(members²) Python steps in all (seconds for a thousand).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_client import Dispatch, DispatchData, DispatchMetadata
from dispatch_client.execution import Run
from dispatch_client.schedule import RunTransition, Transition

T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)


def version(dispatch_id: int, revision: int) -> Dispatch:
    return Dispatch(
        metadata=DispatchMetadata(dispatch_id=dispatch_id),
        data=DispatchData(type="CHARGE", duration=revision),
    )


def ident(dispatch: Dispatch) -> int:
    assert dispatch.metadata is not None
    return dispatch.metadata.dispatch_id


@dataclass
class Model:
    """What a run looks like: members in joining order, and who joined or changed last."""

    members: dict[int, Dispatch]
    recency: list[int]

    def apply(self, transition: RunTransition) -> None:
        cause = ident(transition.dispatch)
        self.members = {ident(m): m for m in transition.members}
        self.recency = [i for i in self.recency if i in self.members and i != cause]
        self.recency[:0] = [i for i in self.members if i not in self.recency and i != cause]
        if cause in self.members:
            self.recency.append(cause)


# One step: ("join"|"change"|"leave"|"flash", a dispatch id).
steps = st.lists(
    st.tuples(st.sampled_from(["join", "change", "leave", "flash"]), st.integers(1, 6)),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(first=st.integers(1, 6), steps=steps)
def test_run_follows_members_joining_changing_and_leaving(
    first: int, steps: list[tuple[str, int]]
) -> None:
    members = {first: version(first, 0)}
    started = RunTransition(members[first], Transition.STARTED, T0, "k", (members[first],))
    run, model = Run(started), Model({}, [])
    model.apply(started)
    for revision, (step, dispatch_id) in enumerate(steps, start=1):
        new = version(dispatch_id, revision)
        transitions: list[tuple[Dispatch, tuple[Dispatch, ...]]] = []
        if step in ("join", "change") and (step == "join") != (dispatch_id in members):
            members[dispatch_id] = new
            transitions.append((new, tuple(members.values())))
        elif step == "leave" and dispatch_id in members and len(members) > 1:
            gone = members.pop(dispatch_id)
            transitions.append((gone, tuple(members.values())))
        elif step == "flash" and dispatch_id not in members:
            transitions.append((new, (*members.values(), new)))
            transitions.append((new, tuple(members.values())))
        for cause, running in transitions:
            transition = RunTransition(cause, Transition.UPDATED, T0, "k", running)
            run._update(transition)
            model.apply(transition)
            assert run.members == tuple(model.members.values())
            assert run.dispatch == model.members[model.recency[-1]]


def test_run_accepts_a_transition_that_is_not_one_change() -> None:
    a, b, c = version(1, 0), version(2, 0), version(3, 0)
    run = Run(RunTransition(a, Transition.STARTED, T0, "k", (a, b)))
    assert run.dispatch == a and run.members == (a, b)
    run._update(RunTransition(c, Transition.UPDATED, T0, "k", (a, b, c, version(4, 0))))
    assert run.dispatch == c


def test_a_thousand_members_joining_at_one_instant_cost_little() -> None:
    size = 3000
    dispatches = [version(i, 0) for i in range(1, size + 1)]
    transitions = [
        RunTransition(d, Transition.UPDATED, T0, "k", tuple(dispatches[: n + 1]))
        for n, d in enumerate(dispatches)
    ]
    leaving = [
        RunTransition(d, Transition.UPDATED, T0, "k", tuple(dispatches[n + 1 :]))
        for n, d in enumerate(dispatches[:-1])
    ]
    begun = time.perf_counter()
    run = Run(RunTransition(dispatches[0], Transition.STARTED, T0, "k", (dispatches[0],)))
    for transition in transitions[1:] + leaving:
        run._update(transition)
    # Measured: ~0.1 s; rebuilding per transition took ~5 s, the first version minutes.
    assert time.perf_counter() - begun < 1.5
    assert run.members == (dispatches[-1],) and run.dispatch == dispatches[-1]
