"""The unary calls' short paths through h2: the same bytes, state and events as h2's own.

`_H2Connection.send_request` writes a request's frames itself, and its
`receive_data` handles a response's HEADERS and DATA frames on the calls'
streams without h2's frame objects. These property tests run two client
connections side by side on generated requests and generated (often broken)
frame sequences from the server, cut at random points: one with the short
paths, one taking h2's own (plain hpack, too). Both must write the same bytes,
raise the same errors, give the same events and end in the same state
(streams, flow-control windows, header tables, what is left in the buffer).
"""

from __future__ import annotations

import struct
from dataclasses import fields, is_dataclass
from functools import partial
from typing import Any

import hpack
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, TrailersReceived
from h2.settings import SettingCodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_client import _h2_protocol
from dispatch_client._h2_protocol import _H2Connection, _quiet_received_frames
from dispatch_client._hpack_cache import CachingDecoder, CachingEncoder


def _config(encoding: str | None) -> H2Configuration:
    # grpclib's client settings (header_encoding "ascii"), and other encodings.
    return H2Configuration(
        client_side=True,
        header_encoding=encoding,
        validate_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_inbound_headers=False,
        normalize_outbound_headers=False,
    )


def _clients(
    encoding: str | None, server_settings: dict[int, int], window: int = 65_535
) -> tuple[Any, Any]:
    """(fast, reference): the same connection with the short paths and without them.

    `window` is the clients' receive window per stream: a small one has them
    send window updates after a few answers.
    """
    fast = _H2Connection(_config(encoding))
    fast.encoder = CachingEncoder()
    fast.decoder = CachingDecoder(fast.decoder)
    _quiet_received_frames(fast)
    fast.enable_fast_frames()
    assert fast.fast_frames
    reference = _H2Connection(_config(encoding))
    server = H2Connection(H2Configuration(client_side=False))
    server.initiate_connection()
    server.update_settings(server_settings)
    greeting = server.data_to_send()
    settings_ack = b"\0\0\0\x04\x01\0\0\0\0"
    for client in (fast, reference):
        client.initiate_connection()
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        client.receive_data(greeting + settings_ack + settings_ack)
        client.data_to_send()
    return fast, reference


def _norm(value: Any) -> Any:
    """An event (or what it holds) as comparable data, header tuple classes included."""
    if is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            [(f.name, _norm(getattr(value, f.name))) for f in fields(value)],
        )
    if isinstance(value, list):
        return [_norm(item) for item in value]
    if isinstance(value, tuple):
        return (type(value).__name__, *[_norm(item) for item in value])
    if isinstance(value, dict):
        return sorted((repr(key), _norm(item)) for key, item in value.items())
    if hasattr(value, "__dict__"):  # h2's events that are not dataclasses
        return (type(value).__name__, _norm(vars(value)))
    return value


def _state(h2: Any) -> Any:
    streams = {}
    for stream_id, stream in h2.streams.items():
        held = {k: v for k, v in vars(stream).items() if k not in ("config", "state_machine")}
        held["_inbound_window_manager"] = vars(stream._inbound_window_manager)
        streams[stream_id] = (vars(stream.state_machine), _norm(held))
    return (
        h2.state_machine.state,
        streams,
        h2.highest_outbound_stream_id,
        h2.outbound_flow_control_window,
        vars(h2._inbound_flow_control_window_manager),
        dict(h2._closed_streams),
        list(h2.decoder.header_table.dynamic_entries),
        list(h2.encoder.header_table.dynamic_entries),
        bytes(h2.incoming_buffer._data),
        [(type(f).__name__, f.stream_id) for f in h2.incoming_buffer._headers_buffer],
    )


def _outcome(action: Any, result: list[Any]) -> Any:
    try:
        value = action()
    except Exception as error:
        return ("raised", type(error).__name__, str(error))
    result.append(value)
    return ("ok", _norm(value))


def _same(fast: Any, reference: Any, do_fast: Any, do_reference: Any) -> Any:
    """Run both; the same outcome, bytes to send and state. Returns the fast one's result."""
    result: list[Any] = []
    assert _outcome(do_fast, result) == _outcome(do_reference, [])
    assert fast.data_to_send() == reference.data_to_send()
    assert _state(fast) == _state(reference)
    return result[0] if result else None


# Requests: bytes headers as the fast path sends them, a never-indexed tail sometimes,
# some values long enough for CONTINUATION frames; bodies across several DATA frames.
_name = st.text("abcdefgh-", min_size=1, max_size=8).map(str.encode)
_value = st.one_of(st.binary(max_size=20), st.binary(max_size=20), st.just(b"v" * 16_500))
_request = st.tuples(
    st.lists(st.tuples(_name, _value), max_size=4),
    st.lists(st.tuples(_name, st.binary(max_size=30)), max_size=2),
    st.one_of(st.integers(1, 100), st.integers(1, 70_000)),
)


def _request_headers(
    extra: list[tuple[bytes, bytes]], never: list[tuple[bytes, bytes]]
) -> list[Any]:
    pseudo = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p.S/M")]
    pseudo.append((b":authority", b"127.0.0.1:1"))
    return pseudo + extra + [hpack.NeverIndexedHeaderTuple(n, v) for n, v in never]


# Server frames: (kind, flags, target stream choice, payload choice).
_BLOCKS = [
    [(b":status", b"200"), (b"content-type", b"application/grpc")],
    [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"content-length", b"5")],
    [(b":status", b"200"), (b"content-length", b"x")],
    [(b":status", b"100")],
    [(b":status", b"503")],
    [(b"grpc-status", b"0")],
    [(b"grpc-status", b"2"), (b"grpc-message", b"\xff")],
]
# Answers on the calls' streams: headers, DATA and trailers, in the usual order or
# not, with or without END_STREAM (kind, flags, stream choice, block choice, data).
_part = st.one_of(
    st.tuples(st.just(0x1), st.sampled_from([0x4, 0x5]), st.integers(0, 2 * len(_BLOCKS) - 1)),
    st.tuples(st.just(0x0), st.sampled_from([0x0, 0x1]), st.integers(0, 60)),
)
_whole = st.builds(
    lambda start, data, end: [(0x1, 0x4, start), *[(0x0, 0x0, n) for n in data], (0x1, 0x5, end)],
    st.sampled_from([0, 1, 2, 3]),
    st.lists(st.integers(0, 60), max_size=3),
    st.sampled_from([10, 11]),
)
_answer = st.tuples(
    st.integers(0, 3), st.one_of(*[_whole] * 4, st.lists(_part, min_size=1, max_size=4))
)
# Now and then any frame at all, on any stream, malformed too.
_any_frame = st.tuples(
    st.sampled_from([0x0, 0x1, 0x9, 0x8, 0x3, 0x6, 0x4, 0x20]),
    st.sampled_from([0x0, 0x1, 0x4, 0x5, 0x8, 0x9, 0x24, 0x25, 0xFF]),
    st.integers(0, 12),
    st.integers(0, 2 * len(_BLOCKS) + 2),
    st.binary(max_size=40),
)
_cuts = st.lists(st.integers(0, 400), max_size=3)
_usual_step = st.one_of(
    st.tuples(st.just("request"), _request),
    st.tuples(st.just("answers"), st.lists(_answer, min_size=1, max_size=4), _cuts),
)
_any_step = st.one_of(
    _usual_step, st.tuples(st.just("frames"), st.lists(_any_frame, min_size=1, max_size=3), _cuts)
)


def _answer_frames(
    encoder: hpack.Encoder, sent: list[int], answer: Any, pending: list[int]
) -> bytes:
    """An answer's frames: on the oldest unanswered stream mostly, else on the latest one."""
    target, parts = answer
    if not sent:
        return b""
    stream_id = pending.pop(0) if target < 3 and pending else sent[-1]
    frames = []
    for kind, flags, choice in parts:
        if kind == 0x0:
            size, payload = choice, b"\5" * choice
        else:
            payload = encoder.encode(_BLOCKS[choice // 2] if choice % 2 == 0 else _literals(choice))
            size = len(payload)
        head = struct.pack(">HBBBL", size >> 8, size & 0xFF, kind, flags, stream_id)
        frames.append(head + payload)
    return b"".join(frames)


def _literals(choice: int) -> list[Any]:
    # Literals: the server's table stays as the client's, whatever the client drops.
    return [hpack.NeverIndexedHeaderTuple(n, v) for n, v in _BLOCKS[choice // 2]]


def _server_frame(encoder: hpack.Encoder, sent: list[int], frame: Any) -> bytes:
    kind, flags, target, choice, payload = frame
    stream_id = sent[-1 - target] if target < len(sent) else (0, 2, 999, 1 << 31 | 1)[target % 4]
    if kind == 0x1 and choice < 2 * len(_BLOCKS):
        payload = encoder.encode(_BLOCKS[choice // 2] if choice % 2 == 0 else _literals(choice))
        if flags & 0x20:
            payload = b"\0\0\0\0\x10" + payload  # priority fields
        if flags & 0x8:
            payload = b"\x02" + payload + b"\0\0"  # padding
    elif kind == 0x0 and flags & 0x8:
        payload = bytes([len(payload) // 2]) + payload
    elif kind == 0x0 and choice == 2 * len(_BLOCKS) + 2:
        payload = b"\0" * 20_000  # over the largest frame size
    elif kind in (0x8, 0x3):
        payload = payload[:4].rjust(4, b"\0")
    elif kind == 0x6:
        payload = payload[:8].rjust(8, b"\0")
    elif kind == 0x4:
        payload, stream_id = b"", 0
    size = len(payload)
    head: bytes = struct.pack(">HBBBL", size >> 8, size & 0xFF, kind, flags, stream_id)
    return head + bytes(payload)


_settings = st.fixed_dictionaries(
    {
        SettingCodes.MAX_FRAME_SIZE: st.sampled_from([16_384, 20_000, 65_536]),
        SettingCodes.INITIAL_WINDOW_SIZE: st.sampled_from([1_000_000, 65_535, 30_000]),
        SettingCodes.MAX_CONCURRENT_STREAMS: st.sampled_from([100, 3, 1]),
    }
)
_encoding = st.sampled_from(["ascii", None, "utf-8"])
_window = st.sampled_from([65_535, 100])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    encoding=_encoding,
    server=_settings,
    window=_window,
    steps=st.lists(_usual_step, min_size=6, max_size=16),
)
def test_requests_and_answers_go_as_through_h2(
    encoding: str | None, server: dict[int, int], window: int, steps: list[Any]
) -> None:
    """Requests, and answers in the usual order or not, cut anywhere: as through h2."""
    _run(encoding, server, window, steps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    encoding=_encoding,
    server=_settings,
    window=_window,
    steps=st.lists(_any_step, min_size=1, max_size=12),
)
def test_any_frames_from_the_server_go_as_through_h2(
    encoding: str | None, server: dict[int, int], window: int, steps: list[Any]
) -> None:
    """Any frame on any stream, malformed ones too, among the answers: as through h2."""
    _run(encoding, server, window, steps)


def _run(encoding: str | None, server: dict[int, int], window: int, steps: list[Any]) -> None:
    fast, reference = _clients(encoding, server, window)
    encoder = hpack.Encoder()
    sent: list[int] = []
    pending: list[int] = []  # sent, not answered yet
    for step in steps:
        if step[0] == "request":
            extra, never, size = step[1]
            headers = _request_headers(extra, never)
            body = bytes(range(256)) * (size // 256) + b"\1" * (size % 256)
            stream_id = fast.get_next_available_stream_id()
            assert stream_id == reference.get_next_available_stream_id()
            _same(
                fast,
                reference,
                partial(fast.send_request, stream_id, headers, body),
                partial(reference._send_request_as_h2, stream_id, headers, body),
            )
            if stream_id in fast.streams:
                sent.append(stream_id)
                pending.append(stream_id)
        else:
            make = (
                partial(_answer_frames, pending=pending) if step[0] == "answers" else _server_frame
            )
            data = b"".join(make(encoder, sent, item) for item in step[1])
            cuts = sorted({min(cut, len(data)) for cut in step[2]})
            for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                chunk = data[start:end]
                events = _same(
                    fast,
                    reference,
                    partial(fast.receive_data, chunk),
                    partial(reference.receive_data, chunk),
                )
                for event in events or ():  # acknowledged as the calls do, in window updates
                    if isinstance(event, DataReceived):
                        size, stream_id = event.flow_controlled_length, event.stream_id
                        _same(
                            fast,
                            reference,
                            partial(fast.acknowledge_received_data, size, stream_id),
                            partial(
                                H2Connection.acknowledge_received_data, reference, size, stream_id
                            ),
                        )


def _response(stream_id: int, encoder: hpack.Encoder) -> bytes:
    frames = [
        (0x1, 0x4, encoder.encode(_BLOCKS[0])),
        (0x0, 0x0, b"\0\0\0\0\x03abc"),
        (0x1, 0x5, encoder.encode(_BLOCKS[5])),
    ]
    return b"".join(
        struct.pack(">HBBBL", len(p) >> 8, len(p) & 0xFF, k, f, stream_id) + p for k, f, p in frames
    )


def _counted(handler: Any, name: str, handled: list[str]) -> Any:
    def counting(frame: Any) -> Any:
        handled.append(name)
        return handler(frame)

    return counting


def test_a_plain_answer_takes_the_short_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual request and answer never reach h2's frame handlers, yet give h2's events."""
    fast, reference = _clients("ascii", {})
    headers = _request_headers([(b"te", b"trailers")], [])
    for h2 in (fast, reference):  # the first request opens the connection: h2's path
        h2.send_headers(1, headers)
    handled: list[str] = []
    for h2 in (fast, reference):
        table = h2._frame_dispatch_table
        for cls, handler in list(table.items()):
            table[cls] = _counted(handler, cls.__name__, handled)
    monkeypatch.setattr(
        H2Connection, "send_headers", lambda *a, **k: handled.append("send_headers")
    )
    stream_id = fast.get_next_available_stream_id()
    fast.send_request(stream_id, headers, b"\0\0\0\0\x01x")
    encoder = hpack.Encoder()
    events = fast.receive_data(_response(stream_id, encoder))
    assert handled == []
    assert [type(e) for e in events] == [
        ResponseReceived,
        DataReceived,
        TrailersReceived,
        StreamEnded,
    ]
    assert events[0].headers == [(":status", "200"), ("content-type", "application/grpc")]
    assert events[1].data == b"\0\0\0\0\x03abc"
    assert fast.streams[stream_id].closed
    monkeypatch.undo()
    # h2's own path for the same bytes: the same events.
    reference.send_headers(stream_id, headers)
    reference.send_data(stream_id, b"\0\0\0\0\x01x", end_stream=True)
    assert fast.data_to_send() == reference.data_to_send()
    assert _norm(reference.receive_data(_response(stream_id, hpack.Encoder()))) == _norm(events)
    assert handled  # the reference did go through h2's handlers


@pytest.mark.parametrize(
    ("version", "tested"),
    [("4.4.1", True), ("4.4.0", True), ("4.5.0", False), ("4.1.0", False), ("5.0.0", False)],
)
def test_only_the_h2_release_the_short_paths_were_proven_on_gets_them(
    monkeypatch: pytest.MonkeyPatch, version: str, tested: bool
) -> None:
    """Another h2 may keep its private state differently: it gets h2's own paths."""
    monkeypatch.setattr(_h2_protocol, "_H2_VERSION", version)
    connection = _H2Connection(_config("ascii"))
    _quiet_received_frames(connection)
    connection.enable_fast_frames()
    assert connection.fast_frames is tested
