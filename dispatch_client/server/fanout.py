"""Per-microgrid fan-out of dispatch events to stream subscribers.

`publish` never waits: each subscriber has a bounded buffer, and one that is
full is cut off (its stream then ends with RESOURCE_EXHAUSTED) instead of
slowing down the writer or the other subscribers.

Each event goes out as a `StreamEvent`, shared by all subscribers: its wire
bytes are made once, by the first stream that sends it, not once per
subscriber (and a store that has them already, PostgreSQL's change feed,
hands them in as they are).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._proto.frequenz.api.dispatch.v1 import StreamMicrogridDispatchesResponse
from .replies import encode_event

__all__ = ["Fanout", "StreamEvent", "Subscription"]


class StreamEvent:
    """One published event: its `message` and its wire bytes, each made at most once.

    Made from either; the other is derived when first asked for. grpclib
    sends it as it sends a protobuf message (`SerializeToString`).

    Args:
        message: the event.
        data: the event's wire bytes (`bytes(message)`), e.g. as a store keeps them.

    Raises:
        TypeError: neither or both given.
    """

    __slots__ = ("_data", "_message")

    def __init__(
        self,
        message: StreamMicrogridDispatchesResponse | None = None,
        *,
        data: bytes | None = None,
    ) -> None:
        if (message is None) == (data is None):
            raise TypeError("StreamEvent takes either a message or its data")
        self._message = message
        self._data = data

    def __repr__(self) -> str:
        return f"StreamEvent({self.message!r})"

    @property
    def message(self) -> StreamMicrogridDispatchesResponse:
        """The event as a message (parsed from the data on first use; shared, do not modify)."""
        if self._message is None:
            assert self._data is not None
            self._message = StreamMicrogridDispatchesResponse.parse(self._data)
        return self._message

    def SerializeToString(self) -> bytes:
        """Return the event's wire bytes (encoded on first use); the method grpclib calls."""
        if self._data is None:
            assert self._message is not None
            self._data = encode_event(self._message)
        return self._data


@dataclass(eq=False)
class Subscription:
    """One subscriber's view of a microgrid's events."""

    microgrid_id: int
    events: MemoryObjectReceiveStream[StreamEvent]
    _sender: MemoryObjectSendStream[StreamEvent] = field(repr=False)
    overflowed: bool = False
    """Set when the buffer filled up and the subscriber was cut off."""
    shut_down: bool = False
    """Set when the fan-out was closed (server stopping, or the store's change feed lost)."""
    shut_down_reason: str = "server is shutting down"


class Fanout:
    """Subscribers by microgrid, each with a buffer of `buffer_size` events.

    Args:
        buffer_size: events buffered per subscriber before it is cut off (>= 1).

    Raises:
        ValueError: `buffer_size` is below 1.
    """

    def __init__(self, buffer_size: int) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        self.buffer_size = buffer_size
        self._subscribers: dict[int, set[Subscription]] = {}
        self._opened: Counter[int] = Counter()
        self._changed: anyio.Event | None = None

    def subscribe(self, microgrid_id: int) -> Subscription:
        """Register a subscriber; call `unsubscribe` when it goes away.

        Args:
            microgrid_id: the microgrid whose events it receives.

        Returns:
            The subscription; its `events` stream ends when it is cut off
            (`overflowed`), the fan-out closes (`shut_down`) or it is unsubscribed.
        """
        sender, receiver = anyio.create_memory_object_stream[StreamEvent](self.buffer_size)
        subscription = Subscription(microgrid_id, receiver, sender)
        self._subscribers.setdefault(microgrid_id, set()).add(subscription)
        self._opened[microgrid_id] += 1
        self._notify()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscriber and release its buffer; idempotent.

        Args:
            subscription: one returned by `subscribe`.
        """
        subscription.events.close()
        self._drop(subscription)

    def publish(
        self, microgrid_id: int, event: StreamMicrogridDispatchesResponse | StreamEvent
    ) -> None:
        """Hand `event` to every subscriber of the microgrid, without waiting.

        A subscriber whose buffer is full is cut off (`overflowed` set); it still
        receives the events buffered before.

        Args:
            microgrid_id: the microgrid the event belongs to.
            event: the event to send; a message is wrapped in one `StreamEvent`
                for all subscribers.
        """
        if not isinstance(event, StreamEvent):
            event = StreamEvent(event)
        for subscription in list(self._subscribers.get(microgrid_id, ())):
            try:
                subscription._sender.send_nowait(event)
            except anyio.WouldBlock:
                # Closing only the send side lets the subscriber drain what is
                # buffered, then see the end and report the overflow.
                subscription.overflowed = True
                self._drop(subscription)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop(subscription)

    def close(self, reason: str = "server is shutting down") -> None:
        """End every subscription (the server is going away, or events were lost): UNAVAILABLE."""
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                subscription.shut_down = True
                subscription.shut_down_reason = reason
                self._drop(subscription)

    def _drop(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.microgrid_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.microgrid_id]
        subscription._sender.close()
        self._notify()

    async def wait_changed(self) -> None:
        """Wait until a subscription is opened or ends."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def open_count(self, microgrid_id: int | None = None) -> int:
        """Return how many subscribers still receive events.

        Args:
            microgrid_id: count only this microgrid's; None counts all.

        Returns:
            The number of subscriptions neither cut off nor unsubscribed.
        """
        if microgrid_id is None:
            return sum(len(s) for s in self._subscribers.values())
        return len(self._subscribers.get(microgrid_id, ()))

    def opened_count(self, microgrid_id: int | None = None) -> int:
        """Return how many subscriptions were ever opened.

        Args:
            microgrid_id: count only this microgrid's; None counts all.

        Returns:
            The number of `subscribe` calls so far.
        """
        if microgrid_id is None:
            return sum(self._opened.values())
        return self._opened[microgrid_id]
