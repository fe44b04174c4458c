"""The reference server's HTTP/2 connection: answers' header blocks written without h2's frame objects.

Every call the server answers sends one or two header blocks on the stream the
client opened: the response headers (`:status`, `content-type`) and the
trailers (`grpc-status`, ending the stream), or trailers alone. grpclib hands
the same few lists of `str` pairs to h2's `send_headers` each time, which
re-encodes them to bytes, steps the stream's state machine, builds validation
flags for the validation grpclib turns off, and serializes frame objects:
about a sixth of the server's time opening a fleet of streams. Here those
blocks go out through a short path with the same bytes and the same state
changes; anything else (another h2 release, a trace log, informational
answers, a stream in another state, priority data) goes to h2 as before.
tests/test_h2_server_frames.py runs both side by side.
"""

from __future__ import annotations

from typing import Any

from h2 import __version__ as _H2_VERSION
from h2.config import DummyLogger
from h2.connection import ConnectionState
from h2.stream import StreamClosedBy, StreamState
from h2.utilities import extract_method_header, is_informational_response, utf8_encode_headers

from .._h2_protocol import (
    _CONTINUATION,
    _END_HEADERS,
    _END_STREAM,
    _HEADERS,
    _frame,
    _H2Connection,
    _short_paths_tested,
)

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
        """Let answers' header blocks take the short path, if it applies to this connection."""
        config = self.config
        self._prepared: dict[tuple[Any, ...], _Prepared] = {}
        self.answer_frames = bool(
            _short_paths_tested(_H2_VERSION)
            and not config.client_side
            and isinstance(config.logger, DummyLogger)
            and not config.normalize_outbound_headers
            and not config.validate_outbound_headers
        )

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
