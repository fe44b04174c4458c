"""What a consumer of dispatch events has been told, kept in step without I/O.

`WatchView` holds one `Dispatch` per id: what a consumer knows. Events and
lists go in; the events that tell the consumer what changed come out. Three
ways in:

- `apply(event)`: a live event. One equal to, or older (by `update_time`) than,
  what the view holds is dropped, so a change already told is not repeated and
  a dispatch never goes back in time; the kind follows the view (CREATED only
  for unknown ids, UPDATED and DELETED only for known ones).
- `catch_up(snapshot, buffered)`: after a gap. `snapshot` is a list taken once
  a new stream was open, `buffered` the events that stream delivered before the
  list came back, in order. Each buffered event is newer than anything before
  the stream opened, so a dispatch that has buffered events is brought up to
  date by them; every other dispatch is brought to its listed version (the
  difference is what happened during the gap). The listed differences come
  first, in the order they were made (`update_time`; they happened before the
  stream opened), then the buffered events in the server's order; a listed
  change made after the first buffered event (its event was still on its way
  when the list was served) is told among the buffered events by
  `update_time`. So within a catch-up, changes of different dispatches keep
  the order they were made in; an event still on its way when the catch-up is
  told comes after it, once.
- `reset(dispatches)`: become exactly `dispatches` (a watcher's snapshot, or
  its re-sync after it fell behind); returns CREATED/UPDATED/DELETED for the
  difference.

An event of a kind this client does not know (a newer server's) passes through
unchanged and changes nothing: what it means for the view is not known.

A dispatch is known by its id and its `create_time`. An id may come back
naming another dispatch (a server restarted on another database counts its
ids from 1 again), whose versions may well be older than the one held: that
is a replacement, told as DELETED (the old one) then CREATED (the new one),
never dropped as "older" and never told as an UPDATED.

The async shells that list, buffer and fan out are `dispatch_client._shared_stream`
and `dispatch_client.streaming`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._proto.frequenz.api.common.v1alpha8.streaming import Event
from ._proto.frequenz.api.dispatch.v1 import Dispatch
from .validation import dispatch_id_of

__all__ = ["DispatchEvent", "WatchView", "is_older", "is_same_dispatch"]

_KNOWN = frozenset({Event.CREATED, Event.UPDATED, Event.DELETED})


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


def is_same_dispatch(candidate: Dispatch, known: Dispatch) -> bool:
    """Tell whether two dispatches with the same id are versions of one dispatch, by `create_time`.

    Args:
        candidate: the version just received.
        known: the version held so far.

    Returns:
        False only if both carry a creation time and they differ (the id was
        reused, e.g. by a server restarted on another database).
    """
    new = candidate.metadata.create_time if candidate.metadata is not None else None
    old = known.metadata.create_time if known.metadata is not None else None
    return new is None or old is None or new == old


class WatchView:
    """What a consumer has been told, and the events that keep it in step with the server.

    Synchronous and without I/O; see the module docstring for the rules.
    """

    def __init__(self, dispatches: Iterable[Dispatch] = ()) -> None:
        """Start knowing `dispatches` (by default nothing).

        Args:
            dispatches: what the consumer is taken to know already.
        """
        self._view: dict[int, Dispatch] = {dispatch_id_of(d): d for d in dispatches}

    def __repr__(self) -> str:
        return f"WatchView({len(self._view)} dispatches)"

    def __len__(self) -> int:
        return len(self._view)

    @property
    def dispatches(self) -> Mapping[int, Dispatch]:
        """What the consumer knows, by dispatch id (a live read-only view)."""
        return MappingProxyType(self._view)

    def copy(self) -> dict[int, Dispatch]:
        """Return what the consumer knows right now, by dispatch id (a copy)."""
        return dict(self._view)

    def apply(self, event: DispatchEvent) -> list[DispatchEvent]:
        """Apply a live event.

        Args:
            event: as received from the stream.

        Returns:
            The events to emit, their kinds following the view: none if it
            tells the consumer nothing new (a duplicate, an older version, or
            a deletion of a dispatch it does not know), DELETED then CREATED
            if its id now names another dispatch, else one. An event of an
            unknown kind is returned as it is.
        """
        if event.event not in _KNOWN:
            return [event]
        dispatch = event.dispatch
        dispatch_id = dispatch_id_of(dispatch)
        known = self._view.get(dispatch_id)
        if event.event == Event.DELETED:
            if known is None:
                return []
            del self._view[dispatch_id]
            # The version the consumer knows if the id now names another dispatch.
            gone = dispatch if is_same_dispatch(dispatch, known) else known
            return [DispatchEvent(Event.DELETED, gone)]
        return self._advance(dispatch_id, known, dispatch)

    def _advance(
        self, dispatch_id: int, known: Dispatch | None, dispatch: Dispatch
    ) -> list[DispatchEvent]:
        """Hold `dispatch` unless it is an older version of `known`; return what that tells."""
        if known is not None and is_same_dispatch(dispatch, known) and is_older(dispatch, known):
            return []  # never back in time
        change = _change(known, dispatch)
        if change:
            self._view[dispatch_id] = dispatch
        return change

    def catch_up(
        self, snapshot: Iterable[Dispatch], buffered: Iterable[DispatchEvent] = ()
    ) -> list[DispatchEvent]:
        """Bring the view up to date after a gap.

        Args:
            snapshot: every dispatch of the microgrid, listed after the new
                stream counted as open.
            buffered: the events that stream delivered before the list came
                back, in the order received.

        Returns:
            The events to emit: first the changes the list shows for dispatches
            without buffered events (CREATED and UPDATED in `update_time`
            order, DELETED then CREATED where an id names another dispatch
            now, then DELETED), then the buffered events as `apply` returns
            them. A listed change made after the first buffered event, whose
            own event had not arrived when the list came back, goes among the
            buffered events by `update_time` instead of before them. No
            version older than the view's is ever emitted.
        """
        buffered = list(buffered)
        moving = {dispatch_id_of(e.dispatch) for e in buffered if e.event in _KNOWN}
        listed = {dispatch_id_of(d): d for d in snapshot}
        changes: list[tuple[dt.datetime | None, list[DispatchEvent]]] = []
        for dispatch_id, dispatch in listed.items():
            if dispatch_id in moving:
                continue
            change = self._advance(dispatch_id, self._view.get(dispatch_id), dispatch)
            if change:
                changes.append((_update_time(dispatch), change))
        # In the order they were made (the list's own order is not that).
        changes.sort(key=lambda entry: (entry[0] is not None, entry[0] or _NO_TIME))
        first = _update_time(buffered[0].dispatch) if buffered else None
        events: list[DispatchEvent] = []
        told = 0
        while told < len(changes) and not _later(changes[told][0], first):
            events += changes[told][1]
            told += 1
        gone = [i for i in self._view if i not in listed and i not in moving]
        for dispatch_id in gone:
            events.append(DispatchEvent(Event.DELETED, self._view.pop(dispatch_id)))
        for event in buffered:
            # A listed change made after a buffered event, whose own event
            # was still on its way when the list was served, goes in its place.
            made = _update_time(event.dispatch)
            while told < len(changes) and not _later(changes[told][0], made):
                events += changes[told][1]
                told += 1
            events += self.apply(event)
        for _, change in changes[told:]:
            events += change
        return events

    def reset(self, dispatches: Mapping[int, Dispatch]) -> list[DispatchEvent]:
        """Become exactly `dispatches`.

        Args:
            dispatches: the state to take on, by dispatch id.

        Returns:
            CREATED and UPDATED (DELETED then CREATED where an id names
            another dispatch now) in the order of `dispatches`, then DELETED
            (with the last version the view held).
        """
        events: list[DispatchEvent] = []
        for dispatch_id, dispatch in dispatches.items():
            events += _change(self._view.get(dispatch_id), dispatch)
        for dispatch_id, known in self._view.items():
            if dispatch_id not in dispatches:
                events.append(DispatchEvent(Event.DELETED, known))
        self._view = dict(dispatches)
        return events


_NO_TIME = dt.datetime.min.replace(tzinfo=dt.UTC)


def _update_time(dispatch: Dispatch) -> dt.datetime | None:
    return dispatch.metadata.update_time if dispatch.metadata is not None else None


def _later(made: dt.datetime | None, than: dt.datetime | None) -> bool:
    """Whether a change made at `made` is known to come after one made at `than`."""
    return made is not None and than is not None and made > than


def _change(known: Dispatch | None, dispatch: Dispatch) -> list[DispatchEvent]:
    """The events that turn a view holding `known` (or nothing) into one holding `dispatch`.

    A different dispatch under the same id (another `create_time`) is DELETED then CREATED.
    """
    if known is None:
        return [DispatchEvent(Event.CREATED, dispatch)]
    if not is_same_dispatch(dispatch, known):
        return [DispatchEvent(Event.DELETED, known), DispatchEvent(Event.CREATED, dispatch)]
    if known != dispatch:
        return [DispatchEvent(Event.UPDATED, dispatch)]
    return []
