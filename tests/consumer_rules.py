"""What every consumer of `stream()`/`watch()` events may rely on, checked event by event."""

from __future__ import annotations

from dispatch_client import Dispatch, Event
from dispatch_client.streaming import DispatchEvent
from dispatch_client.watchview import is_older, is_same_dispatch


def apply_checked(known: dict[int, Dispatch], event: DispatchEvent, who: str = "") -> int:
    """Apply `event` to `known` (dispatches by id), asserting it follows from what was known.

    CREATED only for an unknown id; UPDATED only for a known dispatch, never a
    duplicate, never back in time, never by another dispatch under the same id
    (that is DELETED then CREATED); DELETED only for a known id.

    Args:
        known: the consumer's dispatches by id, changed in place.
        event: the event received.
        who: a name put before the assertion messages.

    Returns:
        The event's dispatch id.
    """
    assert event.dispatch.metadata is not None
    key = event.dispatch.metadata.dispatch_id
    before = known.get(key)
    if event.event == Event.CREATED:
        assert before is None, f"{who}CREATED for known dispatch {key}"
    elif event.event == Event.UPDATED:
        assert before is not None, f"{who}UPDATED for unknown dispatch {key}"
        assert before != event.dispatch, f"{who}duplicate UPDATED of {key}"
        assert not is_older(event.dispatch, before), f"{who}{key} went back in time"
        assert is_same_dispatch(event.dispatch, before), f"{who}UPDATED of {key} by another one"
    else:
        assert before is not None, f"{who}DELETED for unknown dispatch {key}"
    if event.event == Event.DELETED:
        del known[key]
    else:
        known[key] = event.dispatch
    return key
