"""The reference server's HTTP/2 connection: requests read and answers written without h2's frame objects.

Every call the server answers sends one or two header blocks on the stream the
client opened: the response headers (`:status`, `content-type`) and the
trailers (`grpc-status`, ending the stream), or trailers alone. grpclib hands
the same few lists of `str` pairs to h2's `send_headers` each time, which
re-encodes them to bytes, steps the stream's state machine, builds validation
flags for the validation grpclib turns off, and serializes frame objects:
about a sixth of the server's time opening a fleet of streams. Here those
blocks, and the DATA frame of a reply's message, go out through short paths
with the same bytes and the same state changes; anything else (another h2
release, a trace log, informational answers, a stream in another state,
priority data, padding) goes to h2 as before.

The same holds for what a call's request brings in: a HEADERS frame opening
a stream and the DATA frames of its message are read straight from the bytes
(`receive_data`), with h2's checks, state changes and events; the headers'
text is kept per header block, as on the client (see
`dispatch_client._h2_protocol`). tests/test_h2_server_frames.py runs both
side by side.
"""

from __future__ import annotations

from typing import Any

from h2 import __version__ as _H2_VERSION
from h2.config import DummyLogger
from h2.connection import AllowedStreamIDs, ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, Event, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError, TooManyStreamsError
from h2.frame_buffer import FrameBuffer
from h2.stream import H2Stream, StreamClosedBy, StreamState
from h2.utilities import extract_method_header, is_informational_response, utf8_encode_headers
from hyperframe.frame import HeadersFrame

from .._h2_protocol import (
    _CONTINUATION,
    _DATA,
    _END_HEADERS,
    _END_STREAM,
    _FRAME_HEADER,
    _HEADERS,
    _HEADERS_FLAGS,
    _PADDED,
    _frame,
    _H2Connection,
    _short_paths_tested,
)
from .._hpack_cache import decoded_block, header_text

__all__ = ["ServerH2Connection"]

# A header list as grpclib gives it (a tuple of its pairs) -> the pairs as bytes
# (what h2 encodes), and the request method h2 reads from them (None: an answer).
_Prepared = tuple[list[Any], bytes | None]


class ServerH2Connection(_H2Connection):
    """`_H2Connection` for the server's side, with a short path for answers' header blocks.

    `enable_answer_frames` turns it on for a connection configured as
    grpclib's server configures it (no trace log, no header normalization or
    validation, h2 4.4.x); until then, and for every header block the short
    path does not cover, `send_headers` is h2's.
    """

    answer_frames = False
    """Whether `send_headers` takes its short path (see `enable_answer_frames`)."""

    def enable_answer_frames(self) -> None:
        """Let answers' header blocks take the short path, if it applies to this connection.

        Whatever the h2 release, a header block whose bytes are not text in
        the configured encoding (grpclib's: ASCII) from then on ends its stream
        only (`_refuse_undecodable`), not the whole connection.
        """
        config = self.config
        # h2 binds its frame handlers as it starts, before this class was given.
        self._frame_dispatch_table[HeadersFrame] = self._receive_headers_frame
        self._prepared: dict[tuple[Any, ...], _Prepared] = {}
        self._texts: dict[bytes, tuple[Any, list[Any], list[Any]]] = {}
        self.answer_frames = bool(
            _short_paths_tested(_H2_VERSION)
            and not config.client_side
            and isinstance(config.logger, DummyLogger)
            and not config.normalize_outbound_headers
            and not config.validate_outbound_headers
        )
        self.request_frames = bool(
            self.answer_frames
            and not config.normalize_inbound_headers
            and not config.validate_inbound_headers
            and isinstance(self.incoming_buffer, FrameBuffer)
        )

    request_frames = False
    """Whether `receive_data` takes its short paths (see `enable_answer_frames`)."""

    def _receive_headers_frame(self, frame: Any) -> Any:
        """h2's handler of a received HEADERS frame (or a block joined from CONTINUATION frames).

        h2 turns the headers into text after the stream has taken them in, and
        a byte the encoding lacks (a UTF-8 `é` in a header's name or value)
        raised `UnicodeDecodeError` out of `receive_data`: grpclib let it end
        the connection with every call on it, without a GOAWAY.
        """
        known = frame.stream_id in self.streams
        try:
            return H2Connection._receive_headers_frame(self, frame)
        except UnicodeDecodeError:
            return [], self._refuse_undecodable(frame.stream_id, known)

    def _refuse_undecodable(self, stream_id: int, known: bool) -> list[Event]:
        """End the stream whose header block is not text: RST_STREAM(PROTOCOL_ERROR).

        The stream has taken the block in (h2's state changes are done), so it
        is reset as a malformed request is (RFC 9113, 8.1.1). A stream grpclib
        already serves (`known`: these were trailers) learns it from a
        `StreamReset` event, as for any stream h2 resets itself.
        """
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.closed:
            self.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
        if not known:
            return []
        return [
            StreamReset(
                stream_id=stream_id, error_code=ErrorCodes.PROTOCOL_ERROR, remote_reset=False
            )
        ]

    def receive_data(self, data: Any) -> list[Event]:
        """h2's `receive_data`, with short paths for the frames of the calls' requests.

        A HEADERS frame (END_HEADERS, no padding or priority) opening a new
        stream, and unpadded DATA on a stream the client keeps open, are
        handled here with the same checks, state changes and events as h2's
        handlers, read straight from the bytes. Every other frame goes to h2
        as it is, in order; so does everything after a header block that
        continues in CONTINUATION frames, and everything before the client's
        preface is through.
        """
        buffer = self.incoming_buffer
        if not self.request_frames or buffer._headers_buffer or buffer._preamble_len:
            return H2Connection.receive_data(self, data)
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
            stream_id &= 0x7FFFFFFF
            short = False
            stream = None
            if (
                stop - pos - 9 <= max_size
                and self.state_machine.state is ConnectionState.SERVER_OPEN
            ):
                if kind == _HEADERS:
                    short = (
                        flags & _HEADERS_FLAGS == _END_HEADERS
                        and stream_id & 1 == 1
                        and stream_id > self.highest_inbound_stream_id
                        and stream_id not in streams
                    )
                elif kind == _DATA and not flags & _PADDED:
                    stream = streams.get(stream_id)
                    short = bool(
                        stream is not None
                        and stream.state_machine.state is StreamState.OPEN
                        and stream.state_machine.headers_received
                        and stream._expected_content_length is None
                    )
            try:
                if not short:
                    events += H2Connection.receive_data(self, data[pos:stop])
                elif stream is not None:
                    _receive_request_data(self, stream, data[pos + 9 : stop], flags, events)
                else:
                    try:
                        _receive_request_headers(
                            self, stream_id, data[pos + 9 : stop], flags, events
                        )
                    except UnicodeDecodeError:  # as h2's path (`_receive_headers_frame`)
                        events += self._refuse_undecodable(stream_id, False)
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

    def send_data(
        self,
        stream_id: int,
        data: Any,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        """h2's `send_data`; a reply's message on a stream the client half closed goes the short way.

        One unpadded DATA frame within the windows and the largest frame size,
        written as hyperframe would, with h2's window and state changes.

        Args:
            stream_id: the stream to send on.
            data: the frame's payload.
            end_stream: whether the frame ends the stream.
            pad_length: h2's; only None takes the short path.
        """
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            not self.answer_frames
            or stream is None
            or pad_length is not None
            or type(data) is not bytes
            or not 0 < size <= self.max_outbound_frame_size
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
            or self.state_machine.state is not ConnectionState.SERVER_OPEN
            or stream.state_machine.state is not StreamState.HALF_CLOSED_REMOTE
        ):
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        self._data_to_send += _frame(_DATA, _END_STREAM if end_stream else 0, stream_id, data)
        if end_stream:  # h2's HALF_CLOSED_REMOTE -> CLOSED, by our END_STREAM
            machine = stream.state_machine
            machine.state = StreamState.CLOSED
            machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """h2's `send_headers`; an answer's headers or trailers on a stream the client half closed go the short way.

        That is the case of every unary-request call: the client's request
        ended its side of the stream. The block goes out with the same bytes,
        and the stream's state machine ends where h2's would (headers or
        trailers sent, closed by our END_STREAM when `end_stream`).

        Args:
            stream_id: the stream to answer on.
            headers: the header pairs, names and values as `str` or bytes.
            end_stream: whether the block ends the stream (trailers).
            priority_weight: h2's; only None takes the short path.
            priority_depends_on: h2's; only None takes the short path.
            priority_exclusive: h2's; only None takes the short path.
        """
        stream = self.streams.get(stream_id)
        prepared = None
        if (
            self.answer_frames
            and stream is not None
            and priority_weight is None
            and priority_depends_on is None
            and priority_exclusive is None
            and type(headers) is list
            and headers
            and self.state_machine.state is ConnectionState.SERVER_OPEN
        ):
            machine = stream.state_machine
            if (
                stream.max_outbound_frame_size
                and stream.max_outbound_frame_size == self.max_outbound_frame_size
                and machine.state is StreamState.HALF_CLOSED_REMOTE
                and machine.client is False
                and not machine.trailers_sent
                and (end_stream or not machine.headers_sent)
            ):
                prepared = self._prepare(headers)
        if prepared is None or stream is None:
            super().send_headers(
                stream_id,
                headers,
                end_stream,
                priority_weight,
                priority_depends_on,
                priority_exclusive,
            )
            return
        encoded, method = prepared
        # h2's order: the state machine first (encoding changes the
        # compression context for good), then the block, then END_STREAM.
        if machine.headers_sent:
            machine.trailers_sent = True
        else:
            machine.headers_sent = True
        block = self.encoder.encode(encoded)
        frame_size = self.max_outbound_frame_size
        first_flags = _END_STREAM if end_stream else 0
        out = self._data_to_send
        if len(block) <= frame_size:
            out += _frame(_HEADERS, first_flags | _END_HEADERS, stream_id, block)
        else:
            last = (len(block) - 1) // frame_size * frame_size
            out += _frame(_HEADERS, first_flags, stream_id, block[:frame_size])
            for start in range(frame_size, last, frame_size):
                out += _frame(_CONTINUATION, 0, stream_id, block[start : start + frame_size])
            out += _frame(_CONTINUATION, _END_HEADERS, stream_id, block[last:])
        if end_stream:
            machine.state = StreamState.CLOSED
            machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM
        stream.request_method = method

    def _prepare(self, headers: list[Any]) -> _Prepared | None:
        """The pairs as h2 encodes them, kept per header list; None for what h2 must handle."""
        if not all(type(header) is tuple and len(header) == 2 for header in headers):
            return None  # hpack's HeaderTuple classes and the like: h2's way
        try:
            key = tuple(headers)
            prepared = self._prepared.get(key)
            if prepared is not None:
                return prepared
            encoded = utf8_encode_headers(headers)
            if is_informational_response(encoded):
                return None
            prepared = (encoded, extract_method_header(encoded))
        except Exception:  # not text or bytes: h2 raises its own error, as before
            return None
        if all(type(part) in (str, bytes) for pair in key for part in pair):
            if len(self._prepared) >= 256:
                self._prepared.clear()
            self._prepared[key] = prepared
        return prepared


def _receive_request_headers(
    h2: ServerH2Connection, stream_id: int, block: bytes, flags: int, events: list[Event]
) -> None:
    """h2's `_receive_headers_frame` for a HEADERS frame opening stream `stream_id` (new, odd, higher)."""
    limit = h2.local_settings.max_concurrent_streams
    count = h2.open_inbound_streams  # once, as h2 reads it: the property may walk the streams
    if count + 1 > limit:
        raise TooManyStreamsError(f"Max inbound streams is {limit}, {count} open")
    state, headers, text = decoded_block(h2, block)
    stream = h2._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
    end_stream = bool(flags & _END_STREAM)
    if is_informational_response(headers):
        # A request that looks like an informational answer: h2's own stream code.
        events += stream.receive_headers(list(headers), end_stream, h2.config.header_encoding)[1]
        return
    # h2's transitions IDLE -> OPEN (request received) and, with END_STREAM, -> HALF_CLOSED_REMOTE.
    machine = stream.state_machine
    machine.client = False
    machine.headers_received = True
    machine.state = StreamState.OPEN
    event = RequestReceived(stream_id=stream_id)
    ended = None
    if end_stream:
        machine.state = StreamState.HALF_CLOSED_REMOTE
        event.stream_ended = ended = StreamEnded(stream_id=stream_id)
    stream._initialize_content_length(headers)
    event.headers = header_text(h2, block, state, headers, text)
    events.append(event)
    if ended is not None:
        events.append(ended)


def _receive_request_data(
    h2: ServerH2Connection, stream: H2Stream, data: bytes, flags: int, events: list[Event]
) -> None:
    """h2's `_receive_data_frame` for an unpadded frame on a stream the client keeps open, no content length."""
    size = len(data)
    h2._inbound_flow_control_window_manager.window_consumed(size)
    stream._inbound_window_manager.window_consumed(size)
    stream._actual_content_length += size
    event = DataReceived(stream_id=stream.stream_id, data=data, flow_controlled_length=size)
    events.append(event)
    if flags & _END_STREAM:
        stream.state_machine.state = StreamState.HALF_CLOSED_REMOTE
        event.stream_ended = ended = StreamEnded(stream_id=stream.stream_id)
        events.append(ended)
