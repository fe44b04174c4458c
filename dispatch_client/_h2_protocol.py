"""grpclib's channel and HTTP/2 protocol as the client uses them: less work per call.

What each piece changes and why is in its docstring: writes joined per loop
turn (`_CoalescedWrites`), no walk over every stream for each new one and
short paths for the unary calls' frames, written and read straight as bytes
(`_H2Connection`), received frames whose `repr` costs nothing
(`_QuietFrameBuffer`), reads into one buffer and the unary fast path's header
caches (`_Protocol`), and the channel using them, connecting once for all its
waiting calls (`_Channel`, `connect_shared`). The bytes on the wire are the
same as grpclib's.
"""

from __future__ import annotations

import asyncio
import copy
import struct
from typing import Any, Final, cast

from grpclib.client import Channel, Handler
from grpclib.protocol import H2Protocol
from h2 import __version__ as _H2_VERSION
from h2.config import DummyLogger
from h2.connection import AllowedStreamIDs, ConnectionState, H2Connection
from h2.events import DataReceived, Event, ResponseReceived, StreamEnded, TrailersReceived
from h2.exceptions import ProtocolError, TooManyStreamsError
from h2.frame_buffer import FrameBuffer
from h2.stream import H2Stream, StreamClosedBy, StreamState
from h2.utilities import authority_from_headers, extract_method_header, is_informational_response
from hyperframe.frame import FRAMES, ExtensionFrame, Frame

from ._hpack_cache import CachingDecoder, CachingEncoder, decoded_block, header_text
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


def _short_paths_tested(version: str) -> bool:
    """Whether `_H2Connection`'s short paths were proven equal to this h2 version's own.

    They keep h2's private stream and window state as h2's handlers do, so
    another h2 release (which may keep it differently) gets h2's own paths.
    """
    return version.split(".")[:2] == ["4", "4"]


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

    On the client's connection (`enable_fast_frames`), a unary call's request
    is written (`send_request`), its answer's HEADERS and DATA read
    (`receive_data`) and its window updates written (`acknowledge_received_data`)
    without h2's frame objects and per-header work: about half of a call's
    instructions went there. The bytes, state changes, events and errors are
    h2's own (tests/test_h2_fast_frames.py runs both side by side).
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

    fast_frames = False
    """Whether `send_request` and `receive_data` take their short paths (`enable_fast_frames`)."""

    def enable_fast_frames(self) -> None:
        """Let the unary calls' frames take the short paths, where they apply to this connection.

        They apply to a client's connection that neither logs frames nor
        normalizes or validates headers (grpclib's settings): h2 does nothing
        else with these frames than the short paths do.
        """
        config = self.config
        self._texts: dict[bytes, tuple[Any, list[Any], list[Any]]] = {}
        self.fast_frames = bool(
            _short_paths_tested(_H2_VERSION)
            and config.client_side
            and isinstance(config.logger, DummyLogger)
            and not config.normalize_outbound_headers
            and not config.validate_outbound_headers
            and not config.normalize_inbound_headers
            and not config.validate_inbound_headers
            and isinstance(self.incoming_buffer, FrameBuffer)
        )

    def send_request(self, stream_id: int, headers: list[Any], body: bytes) -> None:
        """Open `stream_id` with `headers` and send `body` on it, in frames of the largest size, ending the stream.

        The bytes and the state are those of h2's `send_headers` and then
        `send_data` per frame, END_STREAM on the last. For the unary calls'
        requests (a new stream on an open connection, headers as bytes,
        a body within the windows) it skips what h2 does per header and per
        frame for nothing here: re-encoding bytes as bytes, validation flags
        for the validation that is off, a frame object per frame, and the
        stream's state machine stepped through OPEN to HALF_CLOSED_LOCAL.

        Args:
            stream_id: the next stream id (`get_next_available_stream_id`).
            headers: the request headers, names and values as bytes (hpack's
                `NeverIndexedHeaderTuple`s for the never-indexed ones).
            body: the whole request body; not empty.

        Raises:
            TooManyStreamsError: the server's limit of concurrent streams is
                reached; nothing was changed or sent.
        """
        size = len(body)
        window = self.remote_settings.initial_window_size  # the new stream's send window
        if (
            not self.fast_frames
            or not size
            or self.state_machine.state is not ConnectionState.CLIENT_OPEN
            or stream_id in self.streams
            or size > self.outbound_flow_control_window
            or size > window
        ):
            self._send_request_as_h2(stream_id, headers, body)
            return
        limit = self.remote_settings.max_concurrent_streams
        held = len(self.streams)
        if held + 1 >= limit or held >= 2 * self._held_after_walk + 32:
            # Near the limit, or time to forget closed streams: `open_outbound_streams`.
            count = self.open_outbound_streams
            if count + 1 > limit:
                raise TooManyStreamsError(f"Max outbound streams is {limit}, {count} open")
        if stream_id <= self.highest_outbound_stream_id or not stream_id & 1:
            self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)  # raises h2's error for the id
        # h2's stream, as `_begin_new_stream` makes it; the connection's state
        # machine stays CLIENT_OPEN for headers and data.
        frame_size = self.max_outbound_frame_size
        stream = H2Stream(
            stream_id,
            config=self.config,
            inbound_window_size=self.local_settings.initial_window_size,
            outbound_window_size=window,
        )
        stream.max_outbound_frame_size = frame_size
        self.streams[stream_id] = stream
        self.highest_outbound_stream_id = stream_id
        block = self.encoder.encode(headers)
        out = self._data_to_send
        if len(block) <= frame_size:
            out += _frame(_HEADERS, _END_HEADERS, stream_id, block)
        else:
            last = (len(block) - 1) // frame_size * frame_size
            out += _frame(_HEADERS, 0, stream_id, block[:frame_size])
            for start in range(frame_size, last, frame_size):
                out += _frame(_CONTINUATION, 0, stream_id, block[start : start + frame_size])
            out += _frame(_CONTINUATION, _END_HEADERS, stream_id, block[last:])
        for start in range(0, size, frame_size):
            end = start + frame_size
            flags = _END_STREAM if end >= size else 0
            out += _frame(_DATA, flags, stream_id, body[start:end])
        # What h2's transitions IDLE -> OPEN (request sent) -> HALF_CLOSED_LOCAL
        # (END_STREAM sent) and its send paths record.
        machine = stream.state_machine
        machine.client = True
        machine.headers_sent = True
        machine.state = StreamState.HALF_CLOSED_LOCAL
        stream._authority = authority_from_headers(headers)
        stream.request_method = extract_method_header(headers)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """h2's `acknowledge_received_data`: the same window updates, written without frame objects."""
        stream = self.streams.get(stream_id)
        if not self.fast_frames or stream is None or acknowledged_size < 0:
            super().acknowledge_received_data(acknowledged_size, stream_id)
            return
        out = self._data_to_send
        increment = self._inbound_flow_control_window_manager.process_bytes(acknowledged_size)
        if increment:
            out += _frame(_WINDOW_UPDATE, 0, 0, _INCREMENT.pack(increment & 0x7FFFFFFF))
        if stream.open:  # h2 does not open the windows of closed streams
            increment = stream._inbound_window_manager.process_bytes(acknowledged_size)
            if increment:
                out += _frame(_WINDOW_UPDATE, 0, stream_id, _INCREMENT.pack(increment & 0x7FFFFFFF))

    def _send_request_as_h2(self, stream_id: int, headers: list[Any], body: bytes) -> None:
        self.send_headers(stream_id, headers)
        frame_size = self.max_outbound_frame_size
        size = len(body)
        for start in range(0, size, frame_size):
            end = start + frame_size
            self.send_data(stream_id, body[start:end], end_stream=end >= size)

    def receive_data(self, data: Any) -> list[Event]:
        """h2's `receive_data`, with short paths for the answers on the unary calls' streams.

        A response's HEADERS (END_HEADERS, no padding or priority) and
        unpadded DATA on a stream h2 holds half closed by us are handled here,
        with the same checks, state changes and events as h2's handlers, read
        straight from the bytes: no frame object, flags set and dispatch per
        frame. Every other frame, and any frame on another stream or in
        another state, goes to h2 as it is, in order; so does everything after
        a header block that continues in CONTINUATION frames.
        """
        buffer = self.incoming_buffer
        if not self.fast_frames or buffer._headers_buffer:
            return super().receive_data(data)
        if buffer._data:  # the rest of a frame that began in an earlier read
            data = bytes(buffer._data) + data
            del buffer._data[:]
        elif type(data) is not bytes:
            data = bytes(data)
        max_size = self.max_inbound_frame_size
        buffer.max_frame_size = max_size
        streams = self.streams
        unpack = _FRAME_HEADER.unpack_from
        events: list[Event] = []
        pos, end = 0, len(data)
        while end - pos >= 9:
            high, low, kind, flags, stream_id = unpack(data, pos)
            stop = pos + 9 + (high << 8 | low)
            if stop > end:
                break
            stream = streams.get(stream_id & 0x7FFFFFFF) if stop - pos - 9 <= max_size else None
            short = (
                stream is not None
                and stream.state_machine.state is StreamState.HALF_CLOSED_LOCAL
                and self.state_machine.state is ConnectionState.CLIENT_OPEN
                and (
                    (kind == _HEADERS and flags & _HEADERS_FLAGS == _END_HEADERS)
                    or (
                        kind == _DATA
                        and not flags & _PADDED
                        and stream.state_machine.headers_received
                        and stream._expected_content_length is None
                    )
                )
            )
            try:
                if stream is None or not short:
                    events += H2Connection.receive_data(self, data[pos:stop])
                elif kind == _DATA:
                    _receive_response_data(self, stream, data[pos + 9 : stop], flags, events)
                else:
                    _receive_response_headers(self, stream, data[pos + 9 : stop], flags, events)
            except BaseException as error:
                # h2 leaves the frames after the failing one in its buffer.
                buffer._data += data[stop:]
                if short and isinstance(error, ProtocolError):
                    self._terminate_connection(error.error_code)  # as h2's receive_data does
                raise
            pos = stop
            if buffer._headers_buffer:  # CONTINUATION frames follow: h2's buffer joins them
                break
        if pos < end:
            events += H2Connection.receive_data(self, data[pos:])
        return events


# hyperframe's frame header: 24-bit length (as 16 + 8 bits), type, flags, stream id.
_FRAME_HEADER: Final = struct.Struct(">HBBBL")
_DATA, _HEADERS, _WINDOW_UPDATE, _CONTINUATION = 0x0, 0x1, 0x8, 0x9
_INCREMENT: Final = struct.Struct(">L")
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
_HEADERS_FLAGS: Final = _END_HEADERS | _PADDED | _PRIORITY


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame as hyperframe serializes it (no padding, no priority)."""
    size = len(payload)
    return _FRAME_HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def _stream_ended(stream: H2Stream) -> StreamEnded:
    """h2's END_STREAM received on a stream half closed by us: closed, by the peer's end."""
    machine = stream.state_machine
    machine.state = StreamState.CLOSED
    machine.stream_closed_by = StreamClosedBy.RECV_END_STREAM
    return StreamEnded(stream_id=stream.stream_id)


def _receive_response_data(
    h2: _H2Connection, stream: H2Stream, data: bytes, flags: int, events: list[Event]
) -> None:
    """h2's `_receive_data_frame` and `H2Stream.receive_data` for an unpadded frame, no content length."""
    size = len(data)
    h2._inbound_flow_control_window_manager.window_consumed(size)
    stream._inbound_window_manager.window_consumed(size)
    stream._actual_content_length += size
    event = DataReceived(stream_id=stream.stream_id, data=data, flow_controlled_length=size)
    events.append(event)
    if flags & _END_STREAM:
        event.stream_ended = ended = _stream_ended(stream)
        events.append(ended)


def _receive_response_headers(
    h2: _H2Connection, stream: H2Stream, block: bytes, flags: int, events: list[Event]
) -> None:
    """h2's `_receive_headers_frame` for a stream half closed by us: a response's headers or trailers."""
    state, headers, text = decoded_block(h2, block)
    machine = stream.state_machine
    end_stream = bool(flags & _END_STREAM)
    if (
        machine.trailers_received
        or (machine.headers_received and not end_stream)
        or is_informational_response(headers)
    ):
        # Informational answers and broken ones: h2's own stream code, raising what it raises.
        events += stream.receive_headers(list(headers), end_stream, h2.config.header_encoding)[1]
        return
    event: ResponseReceived | TrailersReceived
    if machine.headers_received:
        machine.trailers_received = True
        event = TrailersReceived(stream_id=stream.stream_id)
    else:
        machine.headers_received = True
        event = ResponseReceived(stream_id=stream.stream_id)
    ended = _stream_ended(stream) if end_stream else None
    event.stream_ended = ended
    stream._initialize_content_length(headers)
    event.headers = header_text(h2, block, state, headers, text)
    events.append(event)
    if ended is not None:
        events.append(ended)


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
        cast(_H2Connection, h2).enable_fast_frames()


class _Channel(Channel):
    """grpclib's channel, writing through `_CoalescedWrites`, with the unary fast path's settings."""

    fast_path: FastPath | None = None
    _connecting: asyncio.Event | None = None
    """Set when the connection attempt under way ends; None when none is."""
    _failed: tuple[float, OSError] | None = None
    """The last attempt's error, and the loop time until which calls get it again untried."""

    def _protocol_factory(self) -> H2Protocol:
        return _Protocol(Handler(), self._config, self._h2_config)

    async def connect_shared(self) -> None:
        """Connect if not connected; calls made meanwhile wait for the same attempt.

        grpclib's `__connect__` holds a lock while connecting, and a lock wakes
        its waiters one per loop turn: a thousand streams opened at once would
        then send their requests one loop turn (and one write) each. Here they
        all wake together once connected. A failed attempt is shared too: its
        waiters, and calls for `RETRY_AFTER` seconds after it, get its error
        without trying again. Each stream of a fleet checks whether a server
        that is down is back (`Backoff.probe`); each trying to connect on its
        own, 1,000 streams made over 2,000 connection attempts a second, half
        a core of CPU, for as long as the server was down.

        Raises:
            OSError: the connection could not be made (grpclib's errors), now
                or less than `RETRY_AFTER` seconds ago.
        """
        loop = asyncio.get_running_loop()
        # Bounded: each turn returns, raises, or waits for an attempt that ends.
        while not self._connected:
            failed = self._failed
            if failed is not None and loop.time() < failed[0]:
                raise _again(failed[1])
            attempt = self._connecting
            if attempt is not None:
                await attempt.wait()
                continue
            self._connecting = attempt = asyncio.Event()
            try:
                await self.__connect__()
            except OSError as exc:
                self._failed = (loop.time() + RETRY_AFTER, exc)
                raise
            finally:
                if self._connecting is attempt:
                    self._connecting = None
                attempt.set()
            self._failed = None


RETRY_AFTER = 0.1
"""Seconds during which calls get a failed connection attempt's error instead of trying again."""


def _again(error: OSError) -> OSError:
    """A copy of `error` to raise once more (the original's traceback and chain stay its own)."""
    again = copy.copy(error)
    again.__traceback__ = None
    again.__cause__ = again.__context__ = None
    return again


async def connect_shared(channel: Channel) -> None:
    """Connect `channel` if it is not (see `_Channel.connect_shared`).

    Raises:
        OSError: the connection could not be made.
    """
    if isinstance(channel, _Channel):
        await channel.connect_shared()
    else:
        await channel.__connect__()
