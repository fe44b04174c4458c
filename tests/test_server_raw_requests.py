"""Requests a grpclib client never sends, straight over a socket: a clear answer, the connection kept.

A hostile or broken client can frame a call's message badly (a length prefix
announcing more than the call carries, or gigabytes) or send header bytes
that are not ASCII. Each must end that call with a clear gRPC status
(INVALID_ARGUMENT, RESOURCE_EXHAUSTED) or an HTTP/2 stream error, never
grpclib's UNKNOWN "Internal Server Error" or a dropped connection, and the
other calls on the same connection go on. The frames are written by hand and
the answers read with hyperframe and hpack, not through grpclib's client.
"""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import hpack
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dispatch_client.server._handlers import MAX_REQUEST_BYTES
from dispatch_client.testing import running_server

pytestmark = pytest.mark.anyio

SERVICE = "/frequenz.api.dispatch.v1.MicrogridDispatchService/"
RPCS = [
    "GetMicrogridDispatch",
    "DeleteMicrogridDispatch",
    "ListMicrogridDispatches",
    "CreateMicrogridDispatch",
    "UpdateMicrogridDispatch",
    "StreamMicrogridDispatches",
]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS = 0x0, 0x1, 0x3, 0x4
END_STREAM, END_HEADERS = 0x1, 0x4
GET = b"\x08\x01\x10\x01"  # microgrid 1, dispatch 1
CLEAR = {"0", "3", "5", "8", "16"}  # OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAUTH.


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    size = len(payload)
    return struct.pack(">BHBBL", size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


def message(data: bytes, length: int | None = None) -> bytes:
    """A gRPC message: flag, 4-byte length (`length` may lie about `data`), bytes."""
    return b"\0" + struct.pack(">L", len(data) if length is None else length) + data


def request_headers(rpc: str, extra: list[tuple[bytes, bytes]] = ()) -> list[Any]:  # type: ignore[assignment]
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", (SERVICE + rpc).encode()),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]


class RawConnection:
    """An HTTP/2 connection written frame by frame; answers collected per stream."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.headers: dict[int, list[dict[str, str]]] = {}
        self.data: dict[int, bytes] = {}
        self.resets: dict[int, int] = {}
        self.goaway: int | None = None
        self.closed = False

    def block(self, headers: list[Any]) -> bytes:
        return bytes(self.encoder.encode(headers))

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def call(self, stream_id: int, rpc: str, body: bytes, **kwargs: Any) -> None:
        """Open `stream_id` for `rpc` and send `body` as its DATA, ending the stream."""
        await self.send(
            frame(HEADERS, END_HEADERS, stream_id, self.block(request_headers(rpc, **kwargs)))
            + frame(DATA, END_STREAM, stream_id, body)
        )

    async def read_until(self, done: Any, seconds: float = 5.0) -> None:
        """Read frames until `done()` holds, the connection closes or `seconds` pass."""
        with anyio.move_on_after(seconds):
            while not done() and not self.closed:
                try:
                    chunk = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    self.closed = True
                    break
                self.buffer += chunk
                self._parse()

    def _parse(self) -> None:
        while len(self.buffer) >= 9:
            size = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + size:
                return
            parsed, _ = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            parsed.parse_body(memoryview(self.buffer[9 : 9 + size]))
            self.buffer = self.buffer[9 + size :]
            if isinstance(parsed, HeadersFrame):
                assert "END_HEADERS" in parsed.flags  # the server's blocks fit one frame here
                decoded = self.decoder.decode(bytes(parsed.data))
                self.headers.setdefault(parsed.stream_id, []).append(dict(decoded))
            elif isinstance(parsed, DataFrame):
                self.data[parsed.stream_id] = self.data.get(parsed.stream_id, b"") + bytes(
                    parsed.data
                )
            elif isinstance(parsed, RstStreamFrame):
                self.resets[parsed.stream_id] = parsed.error_code
            elif isinstance(parsed, GoAwayFrame):
                self.goaway = parsed.error_code

    def status(self, stream_id: int) -> str | None:
        """The grpc-status the server ended `stream_id` with, if it did."""
        for block in self.headers.get(stream_id, []):
            if "grpc-status" in block:
                return block["grpc-status"]
        return None

    def message(self, stream_id: int) -> str:
        for block in self.headers.get(stream_id, []):
            if "grpc-message" in block:
                return block["grpc-message"]
        return ""

    def answered(self, *stream_ids: int) -> bool:
        return all(self.status(s) is not None or s in self.resets for s in stream_ids)


@asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[RawConnection]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        connection = RawConnection(stream)
        await connection.send(PREFACE + frame(SETTINGS, 0, 0, b""))
        yield connection


async def test_a_message_cut_short_is_invalid_argument() -> None:
    async with running_server() as server, raw_connection(server.port) as raw:
        # A stream stays open on the same connection through all of it.
        await raw.send(
            frame(HEADERS, END_HEADERS, 1, raw.block(request_headers(RPCS[-1])))
            + frame(DATA, 0, 1, message(b"\x08\x07"))
        )
        await raw.call(3, "GetMicrogridDispatch", message(GET, length=len(GET) + 1))
        await raw.call(5, "GetMicrogridDispatch", message(GET)[:3])  # inside the 5-byte prefix
        await raw.call(7, "GetMicrogridDispatch", message(GET))
        await raw.read_until(lambda: raw.answered(3, 5, 7))
        assert (raw.status(3), raw.status(5)) == ("3", "3"), raw.headers
        assert "ends" in raw.message(3), raw.message(3)
        assert "ends" in raw.message(5), raw.message(5)
        assert raw.status(7) == "5"  # NOT_FOUND: the connection still serves
        assert raw.status(1) is None and 1 not in raw.resets and not raw.closed


async def test_a_message_over_the_limit_is_resource_exhausted_before_it_arrives() -> None:
    async with running_server() as server, raw_connection(server.port) as raw:
        # The stream stays open: the server must not wait for (and buffer) 4 GiB.
        await raw.send(
            frame(HEADERS, END_HEADERS, 1, raw.block(request_headers("CreateMicrogridDispatch")))
            + frame(DATA, 0, 1, message(b"\x08\x01", length=2**32 - 1))
        )
        await raw.call(3, "GetMicrogridDispatch", message(GET))
        await raw.read_until(lambda: raw.answered(1, 3))
        assert raw.status(1) == "8", raw.headers
        assert str(MAX_REQUEST_BYTES) in raw.message(1)
        assert raw.status(3) == "5" and not raw.closed


async def test_header_bytes_that_are_not_ascii_end_that_call_only() -> None:
    async with running_server() as server, raw_connection(server.port) as raw:
        await raw.send(
            frame(HEADERS, END_HEADERS, 1, raw.block(request_headers(RPCS[-1])))
            + frame(DATA, 0, 1, message(b"\x08\x07"))
        )
        await raw.call(3, "GetMicrogridDispatch", message(GET), extra=[(b"x-name", "é".encode())])
        await raw.call(5, "GetMicrogridDispatch", message(GET), extra=[("é".encode(), b"v")])
        await raw.call(7, "GetMicrogridDispatch", message(GET))
        await raw.read_until(lambda: raw.answered(3, 5, 7))
        assert not raw.closed and raw.goaway is None
        assert raw.answered(3, 5) and raw.status(3) != "2" and raw.status(5) != "2"
        assert raw.status(7) == "5"
        assert raw.status(1) is None and 1 not in raw.resets


# Each case: (name, the DATA a call sends, whether it ends the stream).
_NAMED_FRAMINGS = [
    ("cut inside the message", message(GET, length=5), True),
    ("cut inside the prefix", b"\0\0\0", True),
    ("prefix alone", b"\0\0\0\0\x09", True),
    ("a length of 2**32-1", message(b"", length=2**32 - 1), False),
    ("just over the limit", message(b"", length=MAX_REQUEST_BYTES + 1), False),
    ("two messages", message(GET) + message(GET), True),
    ("nothing", b"", True),
]


async def test_any_framing_of_a_request_gets_a_clear_answer() -> None:
    """Named framings, then seeded random ones, on every RPC: a clear status, never UNKNOWN."""
    rng = random.Random(5)
    cases: list[tuple[str, bytes, bool]] = list(_NAMED_FRAMINGS)
    for index in range(60):
        body = message(bytes(rng.randrange(256) for _ in range(rng.randrange(12))))
        cut = rng.randrange(len(body) + 1)
        length = rng.choice([None, rng.randrange(2**32), rng.randrange(40)])
        if length is not None:
            body = body[:1] + struct.pack(">L", length) + body[5:]
        cases.append((f"random {index}", body[:cut] if rng.random() < 0.5 else body, True))
    async with running_server() as server, raw_connection(server.port) as raw:
        expected: dict[int, str] = {}
        stream_id = 1
        for name, body, end in cases:
            for rpc in RPCS:
                await raw.send(
                    frame(HEADERS, END_HEADERS, stream_id, raw.block(request_headers(rpc)))
                    + frame(DATA, END_STREAM if end else 0, stream_id, body)
                )
                expected[stream_id] = f"{name} to {rpc}"
                stream_id += 2
        # A stream RPC given a good request stays open: every other call must be answered.
        unary = [
            s for s, what in expected.items() if not what.endswith("StreamMicrogridDispatches")
        ]
        await raw.read_until(lambda: all(raw.status(s) is not None for s in unary), 15.0)
        await raw.read_until(lambda: False, 0.5)  # the stream RPCs' answers
        assert not raw.closed
        for sid, what in expected.items():
            status = raw.status(sid)
            if status is None:
                assert what.endswith("StreamMicrogridDispatches"), what
                assert raw.headers[sid] == [
                    {":status": "200", "content-type": "application/grpc+proto"}
                ]
                continue
            assert status in CLEAR, (what, status, raw.message(sid))


# --- the class: any header bytes, on either of the server's paths through h2 ---------------


def _server_connection(short_paths: bool) -> Any:
    from h2.config import H2Configuration

    from dispatch_client._hpack_cache import CachingDecoder, CachingEncoder
    from dispatch_client.server._h2_frames import ServerH2Connection

    h2 = ServerH2Connection(
        H2Configuration(  # grpclib's server settings
            client_side=False,
            header_encoding="ascii",
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_inbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    h2.encoder = CachingEncoder()
    h2.decoder = CachingDecoder(h2.decoder)
    h2.enable_answer_frames()
    h2.request_frames = short_paths and h2.request_frames
    h2.initiate_connection()
    h2.receive_data(PREFACE + frame(SETTINGS, 0, 0, b"") + frame(SETTINGS, 0x1, 0, b""))
    h2.data_to_send()
    return h2


def _described(events: list[Any]) -> list[Any]:
    return [(type(e).__name__, e.stream_id, getattr(e, "headers", None)) for e in events]


_header_bytes = st.binary(min_size=1, max_size=6) | st.sampled_from(
    [b"\xc3\xa9", b"x-\xff", b"\x80", b"caf\xc3\xa9", b"key"]
)


@settings(max_examples=150, deadline=None)
@given(
    name=_header_bytes,
    value=st.binary(max_size=6) | st.just("é".encode()),
    where=st.sampled_from(["new stream", "in CONTINUATION", "trailers"]),
)
@example(name=b"x-name", value="é".encode(), where="new stream")  # the socket test's cases
@example(name="é".encode(), value=b"v", where="new stream")
@example(name=b"x-name", value="é".encode(), where="trailers")
def test_any_header_bytes_end_at_most_their_stream(name: bytes, value: bytes, where: str) -> None:
    """Any name and value bytes: the short path and h2's agree, and only that stream ends."""
    outcomes = []
    for short_paths in (True, False):
        h2 = _server_connection(short_paths)
        client = hpack.Encoder()
        extra = [(name.lower(), value)]
        if where == "trailers":
            wire = frame(HEADERS, END_HEADERS, 1, client.encode(request_headers(RPCS[0])))
            wire += frame(HEADERS, END_HEADERS | END_STREAM, 1, client.encode(extra))
        else:
            block = client.encode(request_headers(RPCS[0], extra=extra))
            if where == "new stream":
                wire = frame(HEADERS, END_HEADERS | END_STREAM, 1, block)
            else:
                wire = frame(HEADERS, END_STREAM, 1, block[:4])
                wire += frame(0x9, END_HEADERS, 1, block[4:])
        wire += frame(HEADERS, END_HEADERS | END_STREAM, 3, client.encode(request_headers(RPCS[0])))
        events = h2.receive_data(wire)  # never raises
        outcomes.append((_described(events), h2.data_to_send(), h2.streams[1].state_machine.state))
        text = all(byte < 0x80 for byte in name.lower() + value)
        kinds = [(type(e).__name__, e.stream_id) for e in events]
        assert ("RequestReceived", 3) in kinds  # the next call goes on
        if where == "trailers":
            ended = ("TrailersReceived", 1) if text else ("StreamReset", 1)
            assert ended in kinds
        else:
            assert (("RequestReceived", 1) in kinds) == text
        if not text:
            assert frame(RST_STREAM, 0, 1, struct.pack(">L", 1)) in outcomes[-1][1]
    assert outcomes[0] == outcomes[1]


# --- grpc-timeout: unreadable or already spent ---------------------------------------------

_NAMED_TIMEOUTS = {
    "xyz": "3",  # not a timeout: INVALID_ARGUMENT (was UNKNOWN)
    "-1S": "3",
    "1": "3",
    "9" * 400 + "S": "3",  # too large for a float (was UNKNOWN "Internal Server Error")
    "0n": "4",  # spent: DEADLINE_EXCEEDED (was UNKNOWN "Internal Server Error")
    "1n": "4",
    "99999999H": "5",  # served: NOT_FOUND
    "30S": "5",
}


async def test_a_bad_or_spent_timeout_is_invalid_argument_or_deadline_exceeded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(7)
    alphabet = "0123456789HMSmun -+.x\u00e9\u0661"  # and two not ASCII
    values: dict[str, str | None] = dict(_NAMED_TIMEOUTS)
    for _ in range(60):
        values.setdefault("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 6))), None)
    async with running_server() as server, raw_connection(server.port) as raw:
        streams: dict[int, str] = {}
        for number, value in enumerate(values):
            stream_id = 2 * number + 1
            extra = [(b"grpc-timeout", value.encode())]
            await raw.call(stream_id, "GetMicrogridDispatch", message(GET), extra=extra)
            streams[stream_id] = value
        await raw.read_until(lambda: raw.answered(*streams))
        for stream_id, value in streams.items():
            if not value.isascii():
                assert stream_id in raw.resets  # not ASCII: that stream's error
                continue
            status = raw.status(stream_id)
            assert status in {"3", "4", "5"}, (value, status, raw.message(stream_id))
            if values[value] is not None:
                assert status == values[value], (value, status, raw.message(stream_id))
            if status == "3":
                assert "grpc-timeout" in raw.message(stream_id)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- a request without the pseudo-headers grpclib reads --------------------------------------


async def test_a_request_without_method_or_path_is_reset_not_left_hanging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Malformed (RFC 9113, 8.3.1): RST_STREAM(PROTOCOL_ERROR); was no answer and an ERROR log."""
    dropped = [(b":method",), (b":path",), (b":method", b":path"), ()]
    async with running_server() as server, raw_connection(server.port) as raw:
        for number, names in enumerate(dropped):
            headers = [h for h in request_headers("GetMicrogridDispatch") if h[0] not in names]
            await raw.send(
                frame(HEADERS, END_HEADERS, 2 * number + 1, raw.block(headers))
                + frame(DATA, END_STREAM, 2 * number + 1, message(GET))
            )
        await raw.read_until(lambda: raw.answered(1, 3, 5, 7))
        assert {1, 3, 5} <= set(raw.resets), (raw.resets, raw.headers)
        assert 7 not in raw.resets and raw.status(7) == "5" and not raw.closed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


_HEADER_POOL: dict[bytes, list[bytes]] = {
    b":method": [b"POST", b"GET", b""],
    b":path": [(SERVICE + rpc).encode() for rpc in RPCS] + [b"/x", b"", SERVICE.encode()],
    b"content-type": [b"application/grpc", b"application/grpc+proto", b"text/plain", b""],
    b"te": [b"trailers", b"gzip"],
    b"grpc-timeout": [b"10S", b"0n", b"x", b"1M", b"9" * 30 + b"H"],
    b"key": [b"k", b""],
    b"grpc-encoding": [b"identity", b"gzip"],
}


async def test_any_request_headers_get_an_answer_never_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seeded random header lists (any header left out, repeated, odd values), each call answered.

    Every call gets a gRPC status, or an HTTP refusal (:status not 200, grpclib's
    answer to a request that is not gRPC), or RST_STREAM; a gRPC answer is never
    UNKNOWN/INTERNAL, and nothing is logged as an ERROR.
    """
    rng = random.Random(11)
    cases: list[list[tuple[bytes, bytes]]] = []
    for _ in range(120):
        headers = [
            (name, rng.choice(values))
            for name, values in _HEADER_POOL.items()
            if (name in (b":method", b":path") and rng.random() < 0.9) or rng.random() < 0.6
        ]
        if rng.random() < 0.2 and headers:
            headers.append(rng.choice(headers))  # a header twice
        rng.shuffle(headers)
        cases.append([(b":scheme", b"http"), (b":authority", b"h"), *headers])
    async with running_server() as server, raw_connection(server.port) as raw:
        for number, headers in enumerate(cases):
            body = message(
                GET if b"Stream" not in dict(headers).get(b":path", b"") else b"\x08\x01"
            )
            await raw.send(
                frame(HEADERS, END_HEADERS, 2 * number + 1, raw.block(headers))
                + frame(DATA, END_STREAM, 2 * number + 1, body)
            )
        ids = [2 * number + 1 for number in range(len(cases))]

        def settled(stream_id: int) -> bool:
            # An HTTP refusal may carry no grpc-status; a stream RPC that opened
            # answers its headers and stays open.
            blocks = raw.headers.get(stream_id, [])
            return (
                raw.answered(stream_id)
                or (bool(blocks) and blocks[0].get(":status") != "200")
                or (b"Stream" in dict(cases[stream_id // 2]).get(b":path", b"") and bool(blocks))
            )

        await raw.read_until(lambda: all(settled(s) for s in ids), 10.0)
        assert not raw.closed
        for stream_id in ids:
            what = cases[stream_id // 2]
            assert settled(stream_id), (what, raw.headers.get(stream_id), raw.resets.get(stream_id))
            first = raw.headers.get(stream_id, [{}])[0]
            if first.get(":status", "200") == "200" and raw.status(stream_id) is not None:
                assert raw.status(stream_id) not in ("2", "13"), (what, raw.headers[stream_id])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
