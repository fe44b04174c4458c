"""Pure parts of streaming: backoff, the watch view's reconcile and live-event rules, argument checks."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispatch_client import (
    Dispatch,
    DispatchData,
    DispatchMetadata,
    Event,
)
from dispatch_client.streaming import Backoff, StreamHub
from dispatch_client.watchview import DispatchEvent, WatchView
from dispatch_client.wire import StreamMicrogridDispatchesResponse

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def dispatch(dispatch_id: int, version: int = 0, kind: str = "X") -> Dispatch:
    return Dispatch(
        metadata=DispatchMetadata(
            dispatch_id=dispatch_id,
            create_time=T0,
            update_time=T0 + dt.timedelta(seconds=version),
        ),
        data=DispatchData(type=f"{kind}{version}"),
    )


async def _no_stream(_: int) -> AsyncIterator[StreamMicrogridDispatchesResponse]:
    raise AssertionError("not opened in these tests")
    yield  # pragma: no cover


async def _no_list(_: int) -> AsyncIterator[Dispatch]:
    raise AssertionError("not listed in these tests")
    yield  # pragma: no cover


def hub(**kwargs: Any) -> StreamHub:
    return StreamHub(
        open_stream=_no_stream, list_dispatches=_no_list, server_url="grpc://x", **kwargs
    )


class TestBackoff:
    def test_delays_stay_within_the_growing_bound(self) -> None:
        backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0)
        random.seed(5)
        for failures, bound in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (50, 1.0)]:
            delays = [backoff.delay(failures) for _ in range(200)]
            assert all(0.0 <= d <= bound for d in delays)
            # Full jitter: the draws spread over the whole range, not just near the bound.
            assert min(delays) < bound * 0.2 < bound * 0.8 < max(delays)

    def test_without_jitter_the_bound_is_the_delay(self) -> None:
        backoff = Backoff(initial=0.5, maximum=3.0, multiplier=3.0, jitter=False)
        assert [backoff.delay(n) for n in range(4)] == [0.5, 1.5, 3.0, 3.0]

    def test_huge_failure_counts_do_not_overflow(self) -> None:
        assert Backoff(jitter=False).delay(10**6) == Backoff().maximum

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"initial": 0},
            {"initial": -1},
            {"initial": 2, "maximum": 1},
            {"maximum": float("inf")},
            {"multiplier": 0.5},
        ],
    )
    def test_rejects_settings_that_spin_or_never_retry(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            Backoff(**kwargs)  # type: ignore[arg-type]


def view_of(*dispatches: Dispatch) -> WatchView:
    view = WatchView()
    view.reconcile(dispatches)
    return view


def created(*dispatches: Dispatch) -> list[DispatchEvent]:
    return [DispatchEvent(Event.CREATED, d) for d in dispatches]


class TestReconcile:
    def test_snapshot_into_empty_view_is_all_created_in_list_order(self) -> None:
        view = WatchView()
        assert view.reconcile([dispatch(3), dispatch(1)]) == created(dispatch(3), dispatch(1))
        assert dict(view.dispatches) == {3: dispatch(3), 1: dispatch(1)}

    def test_changes_updates_and_deletions(self) -> None:
        view = view_of(dispatch(1), dispatch(2), dispatch(3))
        last_seen = dispatch(3, version=7)
        events = view.reconcile(
            [dispatch(1), dispatch(2, version=1), dispatch(4)],
            [DispatchEvent(Event.DELETED, last_seen)],
        )
        assert [(e.event, e.dispatch) for e in events] == [
            (Event.UPDATED, dispatch(2, version=1)),
            (Event.CREATED, dispatch(4)),
            (Event.DELETED, last_seen),
        ]
        assert dict(view.dispatches) == {
            1: dispatch(1),
            2: dispatch(2, version=1),
            4: dispatch(4),
        }

    def test_deleted_without_a_known_last_state_reports_the_view_s(self) -> None:
        view = view_of(dispatch(5, version=2))
        assert view.reconcile([]) == [DispatchEvent(Event.DELETED, dispatch(5, version=2))]

    def test_buffered_events_override_the_list_unless_it_is_newer(self) -> None:
        view = WatchView()
        events = view.reconcile(
            [dispatch(1, version=3), dispatch(2, version=1), dispatch(3)],
            [
                # Older than the list: the list already shows a later change.
                DispatchEvent(Event.UPDATED, dispatch(1, version=2)),
                # Newer than the list: made after the list was served.
                DispatchEvent(Event.UPDATED, dispatch(2, version=4)),
                DispatchEvent(Event.DELETED, dispatch(3, version=1)),
                DispatchEvent(Event.CREATED, dispatch(9)),
            ],
        )
        assert events == created(dispatch(1, version=3), dispatch(2, version=4), dispatch(9))
        assert set(view.dispatches) == {1, 2, 9}

    def test_the_last_buffered_event_of_a_dispatch_wins(self) -> None:
        view = view_of(dispatch(1))
        events = view.reconcile(
            [dispatch(1)],
            [
                DispatchEvent(Event.UPDATED, dispatch(1, version=1)),
                DispatchEvent(Event.DELETED, dispatch(1, version=1)),
            ],
        )
        assert events == [DispatchEvent(Event.DELETED, dispatch(1, version=1))]
        assert dict(view.dispatches) == {}


class TestApplyLive:
    def test_kinds_follow_the_view(self) -> None:
        view = WatchView()
        # An UPDATED for an unknown dispatch heals the view as a CREATED.
        assert view.apply(DispatchEvent(Event.UPDATED, dispatch(1))) == DispatchEvent(
            Event.CREATED, dispatch(1)
        )
        # A CREATED for a known dispatch with newer content is an UPDATED to the watcher.
        assert view.apply(DispatchEvent(Event.CREATED, dispatch(1, 1))) == DispatchEvent(
            Event.UPDATED, dispatch(1, 1)
        )
        assert view.apply(DispatchEvent(Event.DELETED, dispatch(1, 1))) == DispatchEvent(
            Event.DELETED, dispatch(1, 1)
        )
        assert dict(view.dispatches) == {}

    def test_stale_and_duplicate_events_are_dropped(self) -> None:
        view = view_of(dispatch(1, version=5))
        assert view.apply(DispatchEvent(Event.UPDATED, dispatch(1, version=5))) is None
        assert view.apply(DispatchEvent(Event.UPDATED, dispatch(1, version=4))) is None
        assert view.apply(DispatchEvent(Event.CREATED, dispatch(1, version=0))) is None
        assert view.apply(DispatchEvent(Event.DELETED, dispatch(9))) is None
        assert dict(view.dispatches) == {1: dispatch(1, version=5)}

    def test_same_update_time_with_new_content_is_applied(self) -> None:
        view = view_of(dispatch(1, version=5))
        same_time = dispatch(1, version=5, kind="Y")
        assert view.apply(DispatchEvent(Event.UPDATED, same_time)) == DispatchEvent(
            Event.UPDATED, same_time
        )


class TestArguments:
    @pytest.mark.parametrize("buffer_size", [0, -1, True, 1.5])
    def test_bad_buffer_sizes(self, buffer_size: object) -> None:
        with pytest.raises(ValueError, match="buffer_size"):
            hub().subscribe(1, buffer_size=buffer_size)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="buffer_size"):
            hub(buffer_size=buffer_size)

    @pytest.mark.parametrize("microgrid_id", [-1, True, "1", None])
    def test_bad_microgrid_ids(self, microgrid_id: object) -> None:
        with pytest.raises(ValueError, match="microgrid_id"):
            hub().subscribe(microgrid_id)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="microgrid_id"):
            hub().watch(microgrid_id)  # type: ignore[arg-type]

    def test_policies_per_kind_of_consumer(self) -> None:
        with pytest.raises(ValueError, match="overflow"):
            hub().subscribe(1, overflow="resync")
        with pytest.raises(ValueError, match="overflow"):
            hub().watch(1, overflow="drop_oldest")
        with pytest.raises(ValueError, match="overflow"):
            hub().subscribe(1, overflow="block")  # type: ignore[arg-type]

    def test_bad_open_grace(self) -> None:
        with pytest.raises(ValueError, match="open_grace"):
            hub(open_grace=-1)

    def test_arguments_are_checked_before_iteration(self) -> None:
        # Nothing runs (and no event loop is needed) until the generator is iterated.
        streams = hub()
        streams.subscribe(1, buffer_size=4, overflow="drop_oldest")
        streams.watch(1, buffer_size=4, overflow="resync")
        assert streams.streams == {}
