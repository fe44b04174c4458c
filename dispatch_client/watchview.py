"""The reconciliation behind `watch()`, without I/O: snapshots and events in, events to emit out.

`WatchView` holds what a watcher has been told: one `Dispatch` per id. Two
things change it:

- `apply(event)`: a live event. One equal to, or older (by `update_time`) than,
  what the view holds is dropped, so changes a snapshot already showed are not
  repeated, and the kind follows the view (CREATED only for unknown ids,
  UPDATED and DELETED only for known ones), so the view converges whatever the
  stream replays.
- `reconcile(snapshot, buffered)`: a list of the server's dispatches and the
  events received since the stream that precedes it counted as open. The list
  reflects every change before it, the buffered events every change after the
  stream opened, so "the list, each dispatch overridden by its last buffered
  event unless the list holds a newer version" is the server's state. The view
  becomes that state, and the events that say how it changed come out.

The async shell that lists, buffers and waits is `dispatch_client.streaming`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._proto.frequenz.api.common.v1alpha8.streaming import Event
from ._proto.frequenz.api.dispatch.v1 import Dispatch
from .validation import dispatch_id_of

__all__ = ["DispatchEvent", "WatchView", "is_older"]


@dataclass(frozen=True, slots=True)
class DispatchEvent:
    """One change of a dispatch: what happened and the dispatch after it (before, if deleted)."""

    event: Event
    dispatch: Dispatch


def is_older(candidate: Dispatch, known: Dispatch) -> bool:
    """Tell whether `candidate` is a strictly older version of `known`, by `update_time`.

    Args:
        candidate: the version just received.
        known: the version held so far.

    Returns:
        True only if both carry an update time and the candidate's is earlier.
    """
    new = candidate.metadata.update_time if candidate.metadata is not None else None
    old = known.metadata.update_time if known.metadata is not None else None
    return new is not None and old is not None and new < old


class WatchView:
    """What a watcher has been told, and the events that keep it equal to the server's state.

    Synchronous and without I/O; see the module docstring for the rules.
    """

    def __init__(self) -> None:
        """Start with an empty view (a first `reconcile` reports everything as CREATED)."""
        self._view: dict[int, Dispatch] = {}

    def __repr__(self) -> str:
        return f"WatchView({len(self._view)} dispatches)"

    @property
    def dispatches(self) -> Mapping[int, Dispatch]:
        """The dispatches the watcher knows, by dispatch id (a live read-only view)."""
        return MappingProxyType(self._view)

    def apply(self, event: DispatchEvent) -> DispatchEvent | None:
        """Apply a live event.

        Args:
            event: as received from the stream.

        Returns:
            The event to emit, its kind following the view, or None if it tells
            the watcher nothing new (a duplicate, an older version, or a
            deletion of a dispatch it does not know).
        """
        dispatch_id = dispatch_id_of(event.dispatch)
        known = self._view.get(dispatch_id)
        if event.event == Event.DELETED:
            if known is None:
                return None
            del self._view[dispatch_id]
            return DispatchEvent(Event.DELETED, event.dispatch)
        if known is None:
            self._view[dispatch_id] = event.dispatch
            return DispatchEvent(Event.CREATED, event.dispatch)
        if known == event.dispatch or is_older(event.dispatch, known):
            return None
        self._view[dispatch_id] = event.dispatch
        return DispatchEvent(Event.UPDATED, event.dispatch)

    def reconcile(
        self, snapshot: Iterable[Dispatch], buffered: Iterable[DispatchEvent] = ()
    ) -> list[DispatchEvent]:
        """Become the server's state given a list and the events buffered since the stream opened.

        Args:
            snapshot: every dispatch of the microgrid, as listed after the stream
                counted as open.
            buffered: the events received since the stream counted as open, in
                order (those during and after the list included).

        Returns:
            The events that turn the old view into the new one: CREATED and
            UPDATED in the snapshot's order, then DELETED (with the last version
            seen, from a buffered deletion if there was one).
        """
        latest: dict[int, DispatchEvent] = {}
        for event in buffered:
            dispatch_id = dispatch_id_of(event.dispatch)
            # Re-inserted so the order is that of each dispatch's last event.
            latest.pop(dispatch_id, None)
            latest[dispatch_id] = event
        target = {dispatch_id_of(d): d for d in snapshot}
        deleted: dict[int, Dispatch] = {}
        for dispatch_id, event in latest.items():
            if event.event == Event.DELETED:
                target.pop(dispatch_id, None)
                deleted[dispatch_id] = event.dispatch
            elif (listed := target.get(dispatch_id)) is None or not is_older(
                event.dispatch, listed
            ):
                target[dispatch_id] = event.dispatch
        return self._become(target, deleted)

    def _become(
        self, target: dict[int, Dispatch], deleted: Mapping[int, Dispatch]
    ) -> list[DispatchEvent]:
        events: list[DispatchEvent] = []
        for dispatch_id, dispatch in target.items():
            known = self._view.get(dispatch_id)
            if known is None:
                events.append(DispatchEvent(Event.CREATED, dispatch))
            elif known != dispatch:
                events.append(DispatchEvent(Event.UPDATED, dispatch))
        for dispatch_id, known in self._view.items():
            if dispatch_id not in target:
                events.append(DispatchEvent(Event.DELETED, deleted.get(dispatch_id, known)))
        self._view = target
        return events
