"""The server's short paths through h2: the same bytes, events, state and errors as h2's.

`ServerH2Connection.send_headers` and `send_data` write an answer's headers,
message and trailers themselves on a stream the client half closed, and its
`receive_data` reads the HEADERS opening a call's stream and the DATA of its
request. These property
tests run two server connections side by side on generated requests from a
client, any frames at all (on new, open, closed, even and too low streams,
padded, with priority, in CONTINUATION frames, over the windows and the
stream limit, cut at random points) and generated header blocks to send back
(grpclib's usual ones, long ones spread over CONTINUATION frames,
informational ones, bytes, hpack's tuple classes, on open, closed and unknown
streams, with priority data, out of order): one with the short paths, one
h2's own (with plain hpack). Both must write the same bytes, give the same
events, raise the same errors and end in the same state (streams, their state
machines and windows, header tables, what is left in the buffer).
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import fields, is_dataclass
from functools import partial
from typing import Any

import hpack
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dispatch_client._h2_protocol import _H2Connection, _quiet_received_frames
from dispatch_client._hpack_cache import CachingDecoder, CachingEncoder
from dispatch_client.server import _h2_frames
from dispatch_client.server._h2_frames import ServerH2Connection


def _config() -> H2Configuration:
    # grpclib's server settings.
    return H2Configuration(
        client_side=False,
        header_encoding="ascii",
        validate_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_inbound_headers=False,
        normalize_outbound_headers=False,
    )


def _servers(
    client_settings: dict[int, int], server_settings: dict[int, int] | None = None
) -> tuple[Any, Any, H2Connection]:
    """(fast, reference, client): the same server connection with the short paths and without."""
    fast = ServerH2Connection(_config())
    fast.encoder = CachingEncoder()
    fast.decoder = CachingDecoder(fast.decoder)
    _quiet_received_frames(fast)
    fast.enable_answer_frames()
    assert fast.answer_frames
    assert fast.request_frames
    # The stream counting of `_H2Connection` both share (it forgets closed streams
    # at other times than h2); only the short paths differ.
    reference = _H2Connection(_config())
    # A client that sends whatever headers it is given (content lengths, a :status).
    client = H2Connection(
        H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    client.initiate_connection()
    client.update_settings(client_settings)
    greeting = client.data_to_send()
    settings_ack = b"\0\0\0\x04\x01\0\0\0\0"
    for server in (fast, reference):
        server.initiate_connection()
        if server_settings:
            server.update_settings(server_settings)
        # The preface cut in two: h2's buffer takes it apart.
        server.receive_data(greeting[:10])
        server.receive_data(greeting[10:] + settings_ack + settings_ack)
        server.data_to_send()
    return fast, reference, client


def _norm(value: Any) -> Any:
    """An event (or what it holds) as comparable data, header tuple classes included."""
    if isinstance(value, int | str | bytes | memoryview | enum.Enum) or value is None:
        return bytes(value) if isinstance(value, memoryview) else value
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
    if hasattr(value, "__dict__"):
        return (type(value).__name__, _norm(sorted(vars(value).items())))
    return value


def _state(h2: Any) -> Any:
    streams = {}
    for stream_id, stream in h2.streams.items():
        held = {k: v for k, v in vars(stream).items() if k not in ("config", "state_machine")}
        held["_inbound_window_manager"] = vars(stream._inbound_window_manager)
        streams[stream_id] = (vars(stream.state_machine), held)
    return (
        h2.state_machine.state,
        streams,
        h2.highest_inbound_stream_id,
        vars(h2._inbound_flow_control_window_manager),
        dict(h2._closed_streams),
        list(h2.encoder.header_table.dynamic_entries),
        h2.encoder.header_table.maxsize,
        list(h2.decoder.header_table.dynamic_entries),
        bytes(h2.incoming_buffer._data),
        [(type(f).__name__, f.stream_id) for f in h2.incoming_buffer._headers_buffer],
    )


def _same(fast: Any, reference: Any, action: str, *args: Any, **kwargs: Any) -> None:
    outcomes = []
    for h2 in (fast, reference):
        try:
            result = getattr(h2, action)(*args, **kwargs)
        except Exception as error:
            # hpack names the memory it read from: not part of the outcome.
            message = re.sub(r"<memory at 0x[0-9a-f]+>", "<memory>", str(error))
            outcomes.append(("raised", type(error).__name__, message))
        else:
            outcomes.append(("ok", _norm(result)))
    assert outcomes[0] == outcomes[1]
    assert fast.data_to_send() == reference.data_to_send()
    assert _state(fast) == _state(reference)


_REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/p.S/M"), (":authority", "h")]
_GRPCLIB_BLOCKS: list[list[Any]] = [
    [(":status", "200"), ("content-type", "application/grpc+proto")],
    [("grpc-status", "0")],
    [(":status", "200"), ("content-type", "application/grpc+proto"), ("grpc-status", "0")],
    [("grpc-status", "3"), ("grpc-message", "microgrid_id: bad%20value")],
    [("grpc-status", "3"), ("grpc-message", "m" * 40_000)],  # CONTINUATION frames
    [(":status", "200"), (":method", "GET")],  # h2 keeps a :method it sends
    [(":status", "100")],  # informational: h2's way
    [(":status", "200"), ("x-bin", "ü")],  # not ASCII: utf-8, as h2 encodes it
    [(b":status", b"200"), (b"content-type", b"application/grpc")],
    [hpack.NeverIndexedHeaderTuple("grpc-status", "0")],
    [hpack.HeaderTuple(":status", "200")],
    [(":status", 200)],  # not text: h2's error
    [],
]

# (END_STREAM, data frames before it, cut points in what the client sent)
_request = st.tuples(
    st.booleans(),
    st.integers(0, 2),
    st.lists(st.integers(0, 120), max_size=2),
    st.sampled_from([0] * 8 + [1, 2]),  # which of `_REQUEST_BLOCKS`
)
_answer = st.tuples(
    st.just(0) | st.integers(0, 5),  # which stream: a recent one, or one never opened
    st.integers(0, len(_GRPCLIB_BLOCKS) - 1),
    st.booleans(),  # end_stream
    st.sampled_from([None, None, None, 16]),  # priority_weight
    st.booleans(),  # the headers as a tuple, not a list
)
_usual_step = st.one_of(
    st.tuples(st.just("request"), _request),
    st.tuples(st.just("request"), _request),
    st.tuples(st.just("answer"), _answer),
    st.tuples(
        st.just("data"),
        st.just(0) | st.integers(0, 5),  # which stream
        st.booleans(),  # end_stream
        st.sampled_from([6, 6, 0, 25, 100, 17_000]),  # size: over a small window, the frame size
        st.sampled_from(["bytes", "bytes", "memoryview", "padded"]),
    ),
    st.tuples(st.just("reset"), st.integers(0, 5)),
)
_any_step = st.one_of(
    _usual_step,
    st.tuples(
        st.just("frames"),
        st.lists(
            st.tuples(
                st.sampled_from([0x1, 0x1, 0x0, 0x0, 0x9, 0x3, 0x8]),  # kind
                st.sampled_from([0x4, 0x5, 0x0, 0x1, 0x24, 0x25, 0x8, 0xC, 0xD]),  # flags
                st.integers(0, 7),  # stream choice
                st.integers(0, 9),  # payload choice
            ),
            min_size=1,
            max_size=4,
        ),
        st.lists(st.integers(0, 200), max_size=3),
    ),
)
_client_settings = st.fixed_dictionaries(
    {
        SettingCodes.MAX_FRAME_SIZE: st.sampled_from([16_384, 20_000]),
        SettingCodes.HEADER_TABLE_SIZE: st.sampled_from([4_096, 0, 100]),
        SettingCodes.INITIAL_WINDOW_SIZE: st.sampled_from([65_535, 65_535, 30]),
    }
)
_server_settings = st.fixed_dictionaries(
    {
        SettingCodes.MAX_CONCURRENT_STREAMS: st.sampled_from([100_000, 100_000, 3, 1]),
        SettingCodes.INITIAL_WINDOW_SIZE: st.sampled_from([65_535, 65_535, 20]),
        SettingCodes.MAX_HEADER_LIST_SIZE: st.sampled_from([65_536, 65_536, 65_536, 60]),
    }
)
# Limits that leave the usual requests room (the window still small at times).
_roomy_server_settings = st.fixed_dictionaries(
    {SettingCodes.INITIAL_WINDOW_SIZE: st.sampled_from([65_535, 65_535, 20])}
)
# Request header blocks for raw frames: grpclib's, with a content length (valid or
# not), one that reads as an informational answer, and a long one.
_REQUEST_BLOCKS: list[list[Any]] = [
    [(":method", "POST"), (":scheme", "http"), (":path", "/p.S/M"), (":authority", "h")],
    [(":method", "POST"), (":path", "/p.S/M"), ("content-length", "6")],
    [(":method", "POST"), (":path", "/p.S/M"), ("content-length", "x")],
    [(":status", "100")],
    [(":method", "POST"), ("x-long", "l" * 30_000)],
]


def _raw_frame(client: H2Connection, opened: list[int], frame: Any) -> bytes:
    """One frame from generated parts; header blocks through the client's own encoder."""
    kind, flags, choice, payload_choice = frame
    newest = max(opened, default=-1)
    stream_id = [
        newest + 2,
        newest + 4,
        opened[-1] if opened else 1,
        opened[0] if opened else 3,
        newest + 1,  # even
        1,
        0,
        (newest + 2) | 1 << 31,  # the reserved bit set
    ][choice]
    if kind in (0x1, 0x9):
        payload = client.encoder.encode(_REQUEST_BLOCKS[payload_choice % len(_REQUEST_BLOCKS)])
        if kind == 0x1 and flags & 0x20:
            payload = b"\0\0\0\0\x10" + payload
        if kind == 0x1 and flags & 0x8:
            payload = b"\x02" + payload + b"\0\0"
        if payload_choice >= 8:
            payload = b"\xff\xff\xff"  # not a header block
    elif kind == 0x0:
        payload = b"\0\0\0\0\x01x" * payload_choice
        if flags & 0x8:
            payload = b"\x01" + payload + b"\0"
        if payload_choice == 9:
            payload = b"\0" * 17_000  # over the largest frame size
    elif kind == 0x3:
        payload = b"\0\0\0\x08"
    else:
        payload = struct.pack(">L", payload_choice * 1000)
    return (
        struct.pack(">HBBBL", len(payload) >> 8, len(payload) & 0xFF, kind, flags, stream_id)
        + payload
    )


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    client_settings=_client_settings,
    server_settings=_server_settings,
    steps=st.lists(_any_step, min_size=1, max_size=16),
)
@example(  # a request whose stream id is below one already opened
    client_settings={},
    server_settings={},
    steps=[("frames", [(0x1, 0x5, 1, 0)], []), ("frames", [(0x1, 0x5, 5, 0)], [])],
)
@example(  # a request that reads as an informational answer
    client_settings={},
    server_settings={},
    steps=[("frames", [(0x1, 0x5, 0, 0)], []), ("frames", [(0x1, 0x5, 0, 3)], [])],
)
@example(  # content lengths, kept and checked against the DATA
    client_settings={},
    server_settings={},
    steps=[
        ("frames", [(0x1, 0x5, 0, 0)], []),
        ("frames", [(0x1, 0x4, 0, 1), (0x0, 0x0, 2, 1)], []),
        ("frames", [(0x0, 0x1, 2, 1)], []),
    ],
)
def test_any_frames_go_as_through_h2(
    client_settings: dict[int, int], server_settings: dict[int, int], steps: list[Any]
) -> None:
    """Any frame on any stream, malformed ones too, among requests and answers: as through h2."""
    _run(client_settings, server_settings, steps)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    client_settings=_client_settings,
    server_settings=_roomy_server_settings,
    steps=st.lists(_usual_step, min_size=4, max_size=20),
)
@example(  # headers, then a second block not ending the stream: h2 refuses it
    client_settings={},
    server_settings={},
    steps=[("request", (True, 0, [], 0)), *[("answer", (0, 0, False, None, False))] * 2],
)
@example(
    client_settings={},
    server_settings={},
    steps=[("request", (True, 1, [], 0)), ("answer", (0, 4, True, None, False))],
)
@example(
    client_settings={},
    server_settings={},
    steps=[("request", (True, 0, [], 0)), ("answer", (0, 5, False, None, False))],
)
def test_requests_and_answers_go_as_through_h2(
    client_settings: dict[int, int], server_settings: dict[int, int], steps: list[Any]
) -> None:
    """Requests, cut anywhere, and any header blocks sent back, in any order: as through h2."""
    _run(client_settings, server_settings, steps)


def _run(
    client_settings: dict[int, int], server_settings: dict[int, int], steps: list[Any]
) -> None:
    fast, reference, client = _servers(client_settings, server_settings)
    opened: list[int] = []

    def target(choice: int) -> int:
        return opened[-1 - choice] if choice < len(opened) else 2 * choice + 101

    for step in steps:
        if step[0] == "request":
            end, data_frames, cuts, block = step[1]
            stream_id = client.get_next_available_stream_id()
            client.send_headers(
                stream_id, _REQUEST_BLOCKS[block], end_stream=end and not data_frames
            )
            for n in range(data_frames):
                client.send_data(
                    stream_id, b"\0\0\0\0\x01x", end_stream=end and n == data_frames - 1
                )
            for chunk in _cut(client.data_to_send(), cuts):
                _same(fast, reference, "receive_data", chunk)
            opened.append(stream_id)
        elif step[0] == "frames":
            data = b"".join(_raw_frame(client, opened, frame) for frame in step[1])
            for chunk in _cut(data, step[2]):
                _same(fast, reference, "receive_data", chunk)
            opened.extend(i for i in fast.streams if i & 1 and i not in opened)
            opened.sort()
        elif step[0] == "answer":
            choice, block, end, weight, as_tuple = step[1]
            headers: Any = _GRPCLIB_BLOCKS[block]
            headers = tuple(headers) if as_tuple else list(headers)
            _same(
                fast,
                reference,
                "send_headers",
                target(choice),
                headers,
                end_stream=end,
                priority_weight=weight,
            )
        elif step[0] == "data":
            _, choice, end, size, form = step
            payload: Any = b"\5" * size
            if form == "memoryview":
                payload = memoryview(payload)
            pad = 3 if form == "padded" else None
            _same(fast, reference, "send_data", target(choice), payload, end, pad_length=pad)
        else:
            _same(fast, reference, "reset_stream", target(step[1]))


def test_a_plain_answer_takes_the_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """grpclib's headers, message and trailers for a unary call never reach h2's own paths."""
    fast, reference, client = _servers({})
    client.send_headers(1, _REQUEST, True)
    request = client.data_to_send()
    fast.receive_data(request)
    reference.receive_data(request)
    called: list[Any] = []
    monkeypatch.setattr(H2Connection, "send_headers", lambda *a, **k: called.append(a))
    monkeypatch.setattr(H2Connection, "send_data", lambda *a, **k: called.append(a))
    for h2 in (fast,):
        h2.send_headers(1, list(_GRPCLIB_BLOCKS[0]))
        h2.send_data(1, b"\0\0\0\0\x01x")
        h2.send_headers(1, list(_GRPCLIB_BLOCKS[1]), end_stream=True)
    assert called == []
    assert fast.streams[1].closed
    monkeypatch.undo()
    reference.send_headers(1, list(_GRPCLIB_BLOCKS[0]))
    reference.send_data(1, b"\0\0\0\0\x01x")
    reference.send_headers(1, list(_GRPCLIB_BLOCKS[1]), end_stream=True)
    assert fast.data_to_send() == reference.data_to_send()
    assert _state(fast) == _state(reference)


@pytest.mark.parametrize(
    ("version", "client_side", "tested"),
    [
        ("4.4.1", False, True),
        ("4.5.0", False, False),
        ("5.0.0", False, False),
        ("4.4.1", True, False),
    ],
)
def test_only_servers_on_the_proven_h2_release_get_the_short_path(
    monkeypatch: pytest.MonkeyPatch, version: str, client_side: bool, tested: bool
) -> None:
    monkeypatch.setattr(_h2_frames, "_H2_VERSION", version)
    config = _config()
    config.client_side = client_side
    connection = ServerH2Connection(config)
    connection.enable_answer_frames()
    assert connection.answer_frames is tested


def test_reused_header_lists_send_the_same_blocks() -> None:
    """A header list kept prepared still encodes through the current table (a resize between)."""
    fast, reference, client = _servers({})
    for stream_id in (1, 3):
        client.send_headers(stream_id, _REQUEST, True)
    request = client.data_to_send()
    for h2 in (fast, reference):
        h2.receive_data(request)
    send = partial(_same, fast, reference, "send_headers")
    send(1, list(_GRPCLIB_BLOCKS[3]), end_stream=True)
    client.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
    _same(fast, reference, "receive_data", client.data_to_send())
    send(3, list(_GRPCLIB_BLOCKS[3]), end_stream=True)


_reply = st.tuples(
    st.sampled_from([6, 6, 0, 25, 100, 17_000]),  # message size: over a small window, a frame
    st.sampled_from(["bytes", "bytes", "memoryview", "padded"]),
    st.booleans(),  # the message ends the stream (no trailers)
    st.integers(0, 3),  # answer this call, or an earlier one
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    client_settings=_client_settings,
    replies=st.lists(_reply, min_size=1, max_size=12),
)
@example(  # messages past the connection's window (the client acknowledges none)
    client_settings={SettingCodes.MAX_FRAME_SIZE: 20_000},
    replies=[(17_000, "bytes", False, 0)] * 5,
)
def test_calls_answered_go_as_through_h2(
    client_settings: dict[int, int], replies: list[Any]
) -> None:
    """Unary calls answered with headers, a message of any size and trailers: as through h2."""
    fast, reference, client = _servers(client_settings)
    opened: list[int] = []
    for size, form, ends, back in replies:
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, _REQUEST, end_stream=True)
        _same(fast, reference, "receive_data", client.data_to_send())
        opened.append(stream_id)
        target = opened[-1 - back] if back < len(opened) else opened[0]
        payload: Any = b"\5" * size
        if form == "memoryview":
            payload = memoryview(payload)
        pad = 3 if form == "padded" else None
        _same(fast, reference, "send_headers", target, list(_GRPCLIB_BLOCKS[0]))
        _same(fast, reference, "send_data", target, payload, ends, pad_length=pad)
        _same(fast, reference, "send_headers", target, list(_GRPCLIB_BLOCKS[1]), end_stream=True)
