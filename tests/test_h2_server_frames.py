"""The server's short path for answers' header blocks: the same bytes, state and errors as h2's.

`ServerH2Connection.send_headers` writes an answer's headers or trailers
itself on a stream the client half closed. These property tests run two server
connections side by side on generated requests from a client and generated
header blocks to send back (grpclib's usual ones, long ones spread over
CONTINUATION frames, informational ones, bytes, hpack's tuple classes, on open,
closed and unknown streams, with priority data, out of order): one with the
short path, one h2's own (with plain hpack). Both must write the same bytes,
raise the same errors and end in the same state (streams, their state
machines, header tables).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import hpack
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dispatch_client._h2_protocol import _H2Connection
from dispatch_client._hpack_cache import CachingEncoder
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


def _servers(client_settings: dict[int, int]) -> tuple[Any, Any, H2Connection]:
    """(fast, reference, client): the same server connection with the short path and without."""
    fast = ServerH2Connection(_config())
    fast.encoder = CachingEncoder()
    fast.enable_answer_frames()
    assert fast.answer_frames
    # The stream counting of `_H2Connection` both share (it forgets closed streams
    # at other times than h2); only `send_headers` differs.
    reference = _H2Connection(_config())
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings(client_settings)
    greeting = client.data_to_send()
    for server in (fast, reference):
        server.initiate_connection()
        server.receive_data(greeting)
        server.data_to_send()
    return fast, reference, client


def _state(h2: Any) -> Any:
    streams = {}
    for stream_id, stream in h2.streams.items():
        held = {
            k: v
            for k, v in vars(stream).items()
            if k not in ("config", "state_machine", "_inbound_window_manager")
        }
        streams[stream_id] = (vars(stream.state_machine), held)
    return (
        h2.state_machine.state,
        streams,
        dict(h2._closed_streams),
        list(h2.encoder.header_table.dynamic_entries),
        h2.encoder.header_table.maxsize,
    )


def _same(fast: Any, reference: Any, action: str, *args: Any, **kwargs: Any) -> None:
    outcomes = []
    for h2 in (fast, reference):
        try:
            getattr(h2, action)(*args, **kwargs)
        except Exception as error:
            outcomes.append(("raised", type(error).__name__, str(error)))
        else:
            outcomes.append(("ok",))
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

_request = st.tuples(st.booleans(), st.integers(0, 2))  # (END_STREAM, data frames before it)
_answer = st.tuples(
    st.just(0) | st.integers(0, 5),  # which stream: a recent one, or one never opened
    st.integers(0, len(_GRPCLIB_BLOCKS) - 1),
    st.booleans(),  # end_stream
    st.sampled_from([None, None, None, 16]),  # priority_weight
    st.booleans(),  # the headers as a tuple, not a list
)
_step = st.one_of(
    st.tuples(st.just("request"), _request),
    st.tuples(st.just("answer"), _answer),
    st.tuples(st.just("data"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("reset"), st.integers(0, 5)),
)
_client_settings = st.fixed_dictionaries(
    {
        SettingCodes.MAX_FRAME_SIZE: st.sampled_from([16_384, 20_000]),
        SettingCodes.HEADER_TABLE_SIZE: st.sampled_from([4_096, 0, 100]),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_settings=_client_settings, steps=st.lists(_step, min_size=1, max_size=20))
@example(  # headers, then a second block not ending the stream: h2 refuses it
    client_settings={},
    steps=[("request", (True, 0)), *[("answer", (0, 0, False, None, False))] * 2],
)
@example(client_settings={}, steps=[("request", (True, 1)), ("answer", (0, 4, True, None, False))])
@example(client_settings={}, steps=[("request", (True, 0)), ("answer", (0, 5, False, None, False))])
def test_answers_go_as_through_h2(client_settings: dict[int, int], steps: list[Any]) -> None:
    """Requests and any header blocks sent back, on any stream, in any order: as through h2."""
    fast, reference, client = _servers(client_settings)
    opened: list[int] = []

    def target(choice: int) -> int:
        return opened[-1 - choice] if choice < len(opened) else 2 * choice + 101

    for step in steps:
        if step[0] == "request":
            end, data_frames = step[1]
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, _REQUEST, end_stream=end and not data_frames)
            for n in range(data_frames):
                client.send_data(
                    stream_id, b"\0\0\0\0\x01x", end_stream=end and n == data_frames - 1
                )
            _same(fast, reference, "receive_data", client.data_to_send())
            opened.append(stream_id)
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
            _same(fast, reference, "send_data", target(step[1]), b"\0\0\0\0\x01y", step[2])
        else:
            _same(fast, reference, "reset_stream", target(step[1]))


def test_a_plain_answer_takes_the_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """grpclib's headers and trailers for a unary call never reach h2's `send_headers`."""
    fast, reference, client = _servers({})
    client.send_headers(1, _REQUEST, True)
    request = client.data_to_send()
    fast.receive_data(request)
    reference.receive_data(request)
    called: list[Any] = []
    monkeypatch.setattr(H2Connection, "send_headers", lambda *a, **k: called.append(a))
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
