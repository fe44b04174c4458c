"""grpclib's channel and HTTP/2 protocol as the client uses them: less work per call.

What each piece changes and why is in its docstring: writes joined per loop
turn (`_CoalescedWrites`), no walk over every stream for each new one
(`_H2Connection`), received frames whose `repr` costs nothing
(`_QuietFrameBuffer`), reads into one buffer and the unary fast path's header
caches (`_Protocol`), and the channel using them, connecting once for all its
waiting calls (`_Channel`, `connect_shared`). The bytes on the wire are the
same as grpclib's.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from grpclib.client import Channel, Handler
from grpclib.protocol import H2Protocol
from h2.config import DummyLogger
from h2.connection import H2Connection
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import FRAMES, ExtensionFrame, Frame

from ._hpack_cache import CachingDecoder, CachingEncoder
from ._unary import FastPath

# Big enough that the writes of a turn of ordinary calls (64 concurrent gets:
# ~6 KB) stay one send; small enough that a fleet's requests start reaching the
# server after a tenth of them were made.
FLUSH_BYTES = 16_384


class _CoalescedWrites:
    """A transport that sends everything written during one event-loop turn at once.

    grpclib writes each HTTP/2 frame batch as soon as it is made: a unary call
    writes its headers and then its data, and every response read writes a
    flow-control update, each a `send()` system call. On loopback a send also
    runs the receiving end of TCP, so the calls cost more than the framing.
    Joined per loop turn (and across concurrent calls), the bytes and their
    order are the same, in fewer, larger sends. The delay is one loop turn.

    A turn that writes a lot (a fleet of streams opening at once: 1,000
    stream and list requests took the client half a second of one turn) sends
    each `FLUSH_BYTES` as they are reached instead of all at the turn's end, so
    the peer works on the first requests while the rest are being made (the
    server registered 1,000 streams 0.76 s -> 0.54 s after the first).
    """

    __slots__ = ("_loop", "_pending", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            # The turn's scheduled flush then finds nothing left, or what came after.
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._size = 0
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _H2Connection(H2Connection):
    """h2's connection, without a walk over every stream for each new one.

    Before opening a stream, h2 counts the open ones against the peer's
    `MAX_CONCURRENT_STREAMS` (ours for streams the peer opens) by walking all
    streams it holds (and forgets the closed ones as it goes): opening n
    streams costs O(n²), seconds for a client following a thousand
    microgrids, on either end. The number of streams held is an upper bound
    of the open ones, so the walk is only needed near the limit; it also runs
    whenever the streams held have doubled since the last one, so closed
    streams are still forgotten, in amortized O(1). Used by the client's
    channel and by the reference server's connections.
    """

    _held_after_walk = 0

    def _held_or_walk(self, limit: int, walk: Any) -> int:
        held = len(self.streams)
        if held < limit and held < 2 * self._held_after_walk + 32:
            return held  # h2 only compares it with the limit: this bound answers the same
        count: int = walk.__get__(self)
        self._held_after_walk = len(self.streams)
        return count

    @property
    def open_outbound_streams(self) -> int:
        return self._held_or_walk(
            self.remote_settings.max_concurrent_streams, H2Connection.open_outbound_streams
        )

    @property
    def open_inbound_streams(self) -> int:
        return self._held_or_walk(
            self.local_settings.max_concurrent_streams, H2Connection.open_inbound_streams
        )


def _quiet_class(cls: type[Frame]) -> type[Frame]:
    text = f"<{cls.__name__}: repr skipped, h2's trace log is off>"

    def __repr__(self: Frame) -> str:
        return text

    return type(cls.__name__, (cls,), {"__slots__": (), "__repr__": __repr__})


# Every frame class hyperframe parses into (ExtensionFrame: a type it does not know).
_QUIET_FRAMES: dict[type[Frame], type[Frame]] = {
    cls: _quiet_class(cls) for cls in (*FRAMES.values(), ExtensionFrame)
}


class _QuietFrameBuffer(FrameBuffer):
    """h2's buffer of received frames, handing out frames whose `repr` costs nothing.

    h2 writes every received frame to its trace log as `repr(frame)`, computed
    before the call even when the log is off (a hex dump of the payload and
    the flags, about 2 µs per frame: three frames per unary call). The frames
    come out as subclasses of their own class, with the same data, that h2
    dispatches to the same handlers; only their `repr` is a constant.
    """

    quiet: dict[type[Frame], type[Frame]]

    def __next__(self) -> Frame:
        frame = super().__next__()
        quiet = self.quiet.get(frame.__class__)
        if quiet is not None:
            frame.__class__ = quiet
        return frame


def _quiet_received_frames(h2: H2Connection) -> None:
    """Make the frames `h2` receives cheap to `repr`, if its log is off (see `_QuietFrameBuffer`)."""
    table: dict[type[Frame], Any] | None = getattr(h2, "_frame_dispatch_table", None)
    if table is None or not isinstance(h2.config.logger, DummyLogger):
        return  # a real trace log shows each frame: leave them as they are
    buffer = h2.incoming_buffer
    if type(buffer) is not FrameBuffer:
        return
    quiet = {cls: sub for cls, sub in _QUIET_FRAMES.items() if cls in table}
    for cls, sub in quiet.items():
        table[sub] = table[cls]
    buffer.__class__ = _QuietFrameBuffer
    cast(_QuietFrameBuffer, buffer).quiet = quiet


class _Protocol(H2Protocol, asyncio.BufferedProtocol):
    """grpclib's protocol, with coalesced writes, the header caches and reads into one buffer.

    A plain `asyncio.Protocol` gets each read as a new `bytes` of asyncio's
    256 KiB read size, shrunk to what arrived: for that size the allocator maps
    fresh memory and unmaps it again, three system calls and a page fault per
    read. As a `BufferedProtocol` it is handed reads made into one buffer kept
    for the connection, and passes grpclib the same bytes.
    """

    _READ_SIZE = 256 * 1024  # asyncio's own read size: a read takes as much as before

    _read_view: memoryview

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_view[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._read_view = memoryview(bytearray(self._READ_SIZE))
        super().connection_made(_CoalescedWrites(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
        h2 = self.connection._connection
        h2.__class__ = _H2Connection
        # Nothing is encoded before the first request: the table starts empty either way.
        h2.encoder = CachingEncoder()
        h2.decoder = CachingDecoder(h2.decoder)
        _quiet_received_frames(h2)


class _Channel(Channel):
    """grpclib's channel, writing through `_CoalescedWrites`, with the unary fast path's settings."""

    fast_path: FastPath | None = None
    _connecting: asyncio.Event | None = None
    """Set when the connection attempt under way ends; None when none is."""

    def _protocol_factory(self) -> H2Protocol:
        return _Protocol(Handler(), self._config, self._h2_config)

    async def connect_shared(self) -> None:
        """Connect if not connected; calls made meanwhile wait for the same attempt.

        grpclib's `__connect__` holds a lock while connecting, and a lock wakes
        its waiters one per loop turn: a thousand streams opened at once would
        then send their requests one loop turn (and one write) each. Here they
        all wake together once connected.

        Raises:
            OSError: the connection could not be made (grpclib's errors).
        """
        if self._connected:
            return
        attempt = self._connecting
        if attempt is not None:
            await attempt.wait()
            if self._connected:
                return
            # That attempt failed: try again, as grpclib's own callers would.
        self._connecting = attempt = asyncio.Event()
        try:
            await self.__connect__()
        finally:
            if self._connecting is attempt:
                self._connecting = None
            attempt.set()


async def connect_shared(channel: Channel) -> None:
    """Connect `channel` if it is not (see `_Channel.connect_shared`).

    Raises:
        OSError: the connection could not be made.
    """
    if isinstance(channel, _Channel):
        await channel.connect_shared()
    else:
        await channel.__connect__()
