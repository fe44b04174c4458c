"""Server URL → grpclib `Channel`: TLS, keep-alive, auth metadata.

A server URL looks like
`grpc://host[:port][?ssl=…&ssl_root_certificates_path=…&ssl_private_key_path=…`
`&ssl_certificate_chain_path=…&keep_alive=…&keep_alive_interval_s=…&keep_alive_timeout_s=…]`.
TLS is on and the port is 443 unless the URL says otherwise, because a real
Dispatch service is remote. Everything is checked when the URL is parsed, so a
typo fails at `Client(...)`, not at the first call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib.util
import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from grpclib.client import Channel, Handler
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.encoding.base import StatusDetailsCodecBase
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.events import SendRequest, listen
from grpclib.protocol import H2Protocol
from h2.connection import H2Connection

from . import _defaults
from ._auth import auth_metadata, is_header_safe
from ._fastdecode import ResponseCodec
from ._logsafe import protect_logs
from .errors import CallRecord, DispatchApiError, UnknownError, map_errors
from .errors import _typed as typed_error
from .validation import shown

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Coroutine

    from .requests import Call

__all__ = [
    "ChannelOptions",
    "Credentials",
    "LoopChannel",
    "ServerTarget",
    "absorb_leaked_cancel",
    "bound_keep_alive",
    "grpclib_config",
    "open_channel",
    "parse_server_url",
    "seconds_or_none",
    "server_stream",
    "unary",
]

_Resp = TypeVar("_Resp")
_log = logging.getLogger(__name__)

DEFAULT_PORT = _defaults.PORT

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_SSL_FILE_PARAMS = (
    "ssl_root_certificates_path",
    "ssl_private_key_path",
    "ssl_certificate_chain_path",
)
_PARAMS = ("ssl", *_SSL_FILE_PARAMS, "keep_alive", "keep_alive_interval_s", "keep_alive_timeout_s")


@dataclasses.dataclass(frozen=True)
class ChannelOptions:
    """How to open a channel; URL query parameters override these defaults.

    Attributes:
        port: the port when the URL names none.
        ssl: whether to use TLS.
        ssl_root_certificates_path: PEM file of the CAs to trust (None: the system's).
        ssl_private_key_path: PEM file of the client key for mutual TLS.
        ssl_certificate_chain_path: PEM file of the client certificate chain for mutual TLS.
        keep_alive: whether to ping the server while a call is open.
        keep_alive_interval: time between pings.
        keep_alive_timeout: how long to wait for a ping's answer before the
            connection counts as dead.
    """

    port: int = DEFAULT_PORT
    ssl: bool = True
    ssl_root_certificates_path: Path | None = None
    ssl_private_key_path: Path | None = None
    ssl_certificate_chain_path: Path | None = None
    keep_alive: bool = True
    keep_alive_interval: dt.timedelta = _defaults.KEEP_ALIVE_INTERVAL
    keep_alive_timeout: dt.timedelta = _defaults.KEEP_ALIVE_TIMEOUT


@dataclasses.dataclass(frozen=True)
class ServerTarget:
    """A parsed server URL: where to connect and with which options.

    Attributes:
        url: the URL as given.
        host: the host name or address.
        port: the port (the URL's, else the default's).
        options: the effective channel options.
        ssl_context: the TLS context, or None without TLS.
    """

    url: str
    """The URL as given; it never holds credentials (those are rejected)."""
    host: str
    port: int
    options: ChannelOptions
    ssl_context: ssl.SSLContext | None = dataclasses.field(default=None, compare=False)


class Credentials:
    """The API key and sign secret, kept out of every repr.

    Attributes:
        key: the API key, or None for servers that check no keys.
        sign_secret: the request-signing secret, or None to send unsigned calls.
    """

    __slots__ = ("key", "sign_secret")

    def __init__(self, key: str | None, sign_secret: str | None) -> None:
        """Check and keep the two secrets.

        Args:
            key: the API key (`auth_key`), a non-empty str or None.
            sign_secret: the request-signing secret, a non-empty str or None.

        Raises:
            ValueError: a secret is empty or not a str, the key has a character
                other than printable ASCII (it travels as a header), or
                `sign_secret` has no key. The message never shows either value.
        """
        for name, value in (("auth_key", key), ("sign_secret", sign_secret)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty str")
        if key is not None and not is_header_safe(key):
            # grpclib would refuse it at the first call, with the key in its message.
            raise ValueError(
                "auth_key has a character a gRPC header cannot carry (allowed: printable"
                " ASCII, space to '~'); the key is not shown"
            )
        if sign_secret is not None and key is None:
            raise ValueError("sign_secret needs an auth_key to sign")
        self.key = key
        self.sign_secret = sign_secret

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"


def seconds_or_none(value: dt.timedelta | None, name: str) -> float | None:
    """Return a timeout in seconds, as grpclib takes it.

    Args:
        value: a positive timedelta, or None for no timeout.
        name: the argument's name, used in the error message.

    Returns:
        The seconds, or None.

    Raises:
        ValueError: `value` is not a positive timedelta or None.
    """
    if value is None:
        return None
    if not isinstance(value, dt.timedelta) or value <= dt.timedelta(0):
        raise ValueError(f"{name} must be a positive timedelta or None, got {shown(value)}")
    return value.total_seconds()


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"server URL parameter {name}={raw!r} is not a boolean (use true or false)")


def _parse_seconds(name: str, raw: str) -> dt.timedelta:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(
            f"server URL parameter {name}={raw!r} must be a positive number of seconds"
        )
    return dt.timedelta(seconds=seconds)


def _parse_file(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not raw or not path.is_file():
        raise ValueError(f"server URL parameter {name}: file {raw!r} does not exist")
    return path


def parse_server_url(url: str, defaults: ChannelOptions | None = None) -> ServerTarget:
    """Parse and check a `grpc://` server URL.

    Args:
        url: `grpc://host[:port][?param=value&...]` with the parameters listed
            in the module docstring; no credentials, path or fragment.
        defaults: options the URL's parameters override.

    Returns:
        The target, with its TLS context built (certificate files loaded).

    Raises:
        ValueError: the URL is malformed, has an unknown or repeated parameter,
            a bad value, or a certificate file that cannot be loaded; the
            message names the part (and never echoes credentials).
    """
    defaults = defaults or ChannelOptions()
    if not isinstance(url, str):
        raise ValueError(f"server URL must be a str, got {type(url).__name__}")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() != "grpc":
        raise ValueError(f"server URL {url!r} must start with grpc:// (scheme {parts.scheme!r})")
    if "@" in parts.netloc:
        # Never echo the URL here: the part before "@" may be a secret.
        raise ValueError(
            "server URL must not contain credentials (user:password@); pass auth_key= instead"
        )
    if not parts.hostname:
        raise ValueError(f"server URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"server URL {url!r} has an invalid port") from None
    if port == 0:
        raise ValueError(f"server URL {url!r} has an invalid port 0")
    if parts.path not in ("", "/"):
        raise ValueError(f"server URL {url!r} must not have a path ({parts.path!r})")
    if parts.fragment:
        raise ValueError(f"server URL {url!r} must not have a fragment")

    values: dict[str, object] = {}
    seen: set[str] = set()
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"server URL {url!r} has a malformed query string") from None
    for name, raw in query:
        if name not in _PARAMS:
            raise ValueError(
                f"server URL has an unknown parameter {name!r} (known: {', '.join(_PARAMS)})"
            )
        if name in seen:
            raise ValueError(f"server URL parameter {name} is given more than once")
        seen.add(name)
        if name in ("ssl", "keep_alive"):
            values[name] = _parse_bool(name, raw)
        elif name.endswith("_s"):
            values[name.removesuffix("_s")] = _parse_seconds(name, raw)
        else:
            values[name] = _parse_file(name, raw)
    options = dataclasses.replace(defaults, **values)  # type: ignore[arg-type]
    options = dataclasses.replace(options, port=port or defaults.port)
    return ServerTarget(
        url=url,
        host=parts.hostname,
        port=options.port,
        options=options,
        ssl_context=_ssl_context(options, explicit=seen),
    )


def _ssl_context(options: ChannelOptions, explicit: set[str]) -> ssl.SSLContext | None:
    files = {name: getattr(options, name) for name in _SSL_FILE_PARAMS}
    if not options.ssl:
        given = sorted(name for name in _SSL_FILE_PARAMS if name in explicit)
        if given:
            raise ValueError(f"server URL parameter {given[0]} needs TLS, but ssl=false")
        return None
    key, chain = files["ssl_private_key_path"], files["ssl_certificate_chain_path"]
    if (key is None) != (chain is None):
        missing = "ssl_certificate_chain_path" if chain is None else "ssl_private_key_path"
        raise ValueError(f"server URL parameter {missing} is needed for a client certificate")
    root = files["ssl_root_certificates_path"]
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=root)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"server URL parameter ssl_root_certificates_path: cannot load {root}: {exc}"
        ) from None
    if root is None:
        _add_certifi(context)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if chain is not None:
        try:
            context.load_cert_chain(chain, key)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                "server URL parameters ssl_certificate_chain_path/ssl_private_key_path: "
                f"cannot load the client certificate: {exc}"
            ) from None
    return context


def _add_certifi(context: ssl.SSLContext) -> None:
    # Some Pythons (e.g. python.org macOS builds) ship without system roots;
    # use certifi's bundle as well when it happens to be installed.
    try:
        import certifi  # type: ignore[import-not-found, unused-ignore]  # typed when installed
    except ImportError:
        return
    context.load_verify_locations(certifi.where())


def bound_keep_alive(options: ChannelOptions, idle_limit: float | None) -> ChannelOptions:
    """Cap the keep-alive interval and timeout at half of `idle_limit` each.

    A dead connection is then dropped (an open stream re-opened) within `idle_limit`.

    Args:
        options: the channel options.
        idle_limit: seconds; None leaves `options` as they are.

    Returns:
        The capped options.

    Raises:
        ValueError: `idle_limit` is given but keep-alive is off.
    """
    if idle_limit is None:
        return options
    if not options.keep_alive:
        raise ValueError("stream_timeout needs keep-alive pings, but keep_alive=false")
    half = dt.timedelta(seconds=idle_limit / 2)
    return dataclasses.replace(
        options,
        keep_alive_interval=min(options.keep_alive_interval, half),
        keep_alive_timeout=min(options.keep_alive_timeout, half),
    )


def grpclib_config(options: ChannelOptions) -> Configuration:
    """Map the keep-alive options onto grpclib's HTTP/2 ping settings.

    Args:
        options: the channel options.

    Returns:
        grpclib's channel configuration (its defaults when keep-alive is off).
    """
    if not options.keep_alive:
        return Configuration()
    interval = options.keep_alive_interval.total_seconds()
    return Configuration(
        _keepalive_time=interval,
        _keepalive_timeout=options.keep_alive_timeout.total_seconds(),
        # Pings only while a call or stream is open: idle connections need no
        # liveness check, and servers penalise pings on idle connections.
        _keepalive_permit_without_calls=False,
        # A dispatch stream may be silent for hours; keep probing it at the
        # configured interval instead of grpclib's defaults (2 pings, then
        # no more than one per 5 minutes).
        _http2_max_pings_without_data=0,
        _http2_min_sent_ping_interval_without_data=interval,
    )


def open_channel(
    target: ServerTarget, *, key: str | None, sign_secret: str | None
) -> tuple[Channel, asyncio.AbstractEventLoop]:
    """Open a channel bound to the running loop, adding auth metadata to every call.

    grpclib binds a channel to the event loop it is created in, so this must
    run inside that loop; the loop is returned so callers can notice a change.
    Responses are decoded through upb when the `fast` extra is installed
    (see `dispatch_client._fastdecode`).

    Args:
        target: the parsed server URL.
        key: the API key to send as `key` metadata, or None.
        sign_secret: the secret to sign each request with, or None.

    Returns:
        The channel and the running loop.

    Raises:
        RuntimeError: no event loop is running.
    """
    loop = asyncio.get_running_loop()
    channel = _Channel(
        target.host,
        target.port,
        ssl=target.ssl_context,
        config=grpclib_config(target.options),
        codec=ResponseCodec(),
        status_details_codec=_status_details_codec(),
    )
    protect_logs((key, sign_secret))
    if key is not None:
        listen(channel, SendRequest, _auth_hook(key, sign_secret))
    return channel, loop


class _CoalescedWrites:
    """A transport that sends everything written during one event-loop turn at once.

    grpclib writes each HTTP/2 frame batch as soon as it is made: a unary call
    writes its headers and then its data, and every response read writes a
    flow-control update, each a `send()` system call. On loopback a send also
    runs the receiving end of TCP, so the calls cost more than the framing.
    Joined per loop turn (and across concurrent calls), the bytes and their
    order are the same, in fewer, larger sends. The delay is one loop turn.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
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

    Before opening a stream, h2 counts the open ones against the server's
    `MAX_CONCURRENT_STREAMS` by walking all streams it holds (and forgets the
    closed ones as it goes): opening n streams costs O(n²), seconds for a
    client following a thousand microgrids. The number of streams held is an
    upper bound of the open ones, so the walk is only needed near the limit;
    it also runs whenever the streams held have doubled since the last one,
    so closed streams are still forgotten, in amortized O(1).
    """

    _held_after_walk = 0

    @property
    def open_outbound_streams(self) -> int:
        held = len(self.streams)
        if (
            held < self.remote_settings.max_concurrent_streams
            and held < 2 * self._held_after_walk + 32
        ):
            return held  # h2 only compares it with the limit: this bound answers the same
        count: int = super().open_outbound_streams
        self._held_after_walk = len(self.streams)
        return count


class _Protocol(H2Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(_CoalescedWrites(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
        self.connection._connection.__class__ = _H2Connection


class _Channel(Channel):
    """grpclib's channel, writing through `_CoalescedWrites`."""

    def _protocol_factory(self) -> H2Protocol:
        return _Protocol(Handler(), self._config, self._h2_config)


class LoopChannel:
    """The channel to one server, opened lazily in whichever event loop uses it.

    grpclib binds a channel to the event loop it is created in: a client built
    outside any loop, or reused by a later `asyncio.run`, gets a channel of the
    loop it runs in, and the channel of the old loop is closed.
    """

    def __init__(self, target: ServerTarget, credentials: Credentials) -> None:
        """Remember where to connect; nothing opens yet.

        Args:
            target: the parsed server URL.
            credentials: the API key and sign secret sent with every call.
        """
        self.target = target
        self._credentials = credentials
        self._channel: Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> Channel:
        """Return the channel of the running loop, opening it on first use there.

        Returns:
            An open grpclib channel.

        Raises:
            RuntimeError: no event loop is running.
        """
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            self.close()
            _log.debug("opening channel to %s", self.target.url)
            self._channel, self._loop = open_channel(
                self.target,
                key=self._credentials.key,
                sign_secret=self._credentials.sign_secret,
            )
        return self._channel

    def close(self) -> None:
        """Close the channel, from whichever thread calls; a later `get()` opens a new one."""
        channel, loop = self._channel, self._loop
        self._channel = self._loop = None
        # A channel whose loop has closed can no longer be closed from here; its
        # socket goes with garbage collection (disconnect before the loop ends).
        if channel is None or loop is None or loop.is_closed():
            return
        if loop.is_running() and loop is not asyncio._get_running_loop():
            # The loop runs in another thread (the trio bridge's): close it there.
            loop.call_soon_threadsafe(channel.close)
        else:
            channel.close()


async def unary(
    channel: Channel, call: Call[Any, _Resp], *, time_limit: float | None, server_url: str
) -> _Resp:
    """Send one unary call and return its response.

    Args:
        channel: the channel to send on.
        call: the RPC path, request and response type.
        time_limit: the deadline in seconds, or None for none.
        server_url: the server URL, put on errors.

    Returns:
        The response message.

    Raises:
        DispatchApiError: the typed error of a failed call (see `errors.map_errors`);
            `UnknownError` if the server answered without a message.
    """
    # What `map_errors` and `absorb_leaked_cancel` do, written out: two
    # generator-based context managers per call cost more than the success
    # path needs (nothing is set up but a count).
    task = asyncio.current_task()
    baseline = task.cancelling() if task is not None else 0
    stream = None
    try:
        async with channel.request(
            call.path,
            Cardinality.UNARY_UNARY,
            type(call.request),
            call.response_type,
            timeout=time_limit,
        ) as stream:
            await stream.send_message(call.request, end=True)
            response = await stream.recv_message()
    except Exception as exc:
        while task is not None and task.cancelling() > baseline:
            task.uncancel()
        if isinstance(exc, DispatchApiError):
            raise
        record = CallRecord()
        record.stream = stream
        typed = typed_error(exc, server_url, record)
        if typed is None:
            raise
        raise typed from exc
    if response is None:
        raise UnknownError("the server answered without a message", server_url=server_url)
    return response


async def server_stream(
    channel: Channel, call: Call[Any, _Resp], *, open_limit: float | None, server_url: str
) -> AsyncGenerator[_Resp | None, None]:
    """Open one server-streaming call and yield what it sends, with no deadline on the call.

    Args:
        channel: the channel to send on.
        call: the RPC path, request and response type.
        open_limit: seconds that connecting and sending the request may take, or None.
        server_url: the server URL, put on errors.

    Yields:
        None once the server's initial metadata has arrived (the server has
        accepted the call), then each response message.

    Raises:
        DispatchApiError: the typed error of a failed call (see `errors.map_errors`).
    """
    with map_errors(server_url) as record:
        kind = (Cardinality.UNARY_STREAM, type(call.request), call.response_type)
        async with channel.request(call.path, *kind) as stream:
            record.stream = stream
            # Not the initial metadata: a server may hold it back until its first message.
            async with asyncio.timeout(open_limit):
                await stream.send_message(call.request, end=True)
            await stream.recv_initial_metadata()
            yield None
            async for response in stream:
                yield response


def _status_details_codec() -> StatusDetailsCodecBase | None:
    # grpclib picks this codec itself only when given no codec: keep its choice
    # (it needs googleapis-common-protos, which imports only when used).
    try:
        found = importlib.util.find_spec("google.rpc.status_pb2") is not None
    except ImportError:
        found = False
    return ProtoStatusDetailsCodec() if found else None


def _auth_hook(
    key: str, sign_secret: str | None
) -> Callable[[SendRequest], Coroutine[Any, Any, None]]:
    async def add_auth_metadata(event: SendRequest) -> None:
        for name, value in auth_metadata(key, sign_secret, event.method_name):
            event.metadata[name] = value

    return add_auth_metadata


@contextmanager
def absorb_leaked_cancel() -> Iterator[None]:
    """Withdraw the cancel requests grpclib leaves behind when a connection dies.

    grpclib wakes a task blocked on a dead connection with `task.cancel()` and
    raises its own error instead of `CancelledError`, so the request stays
    counted in `task.cancelling()`. Left there, the next cancel scope or
    timeout the task exits believes an outer cancellation is pending and turns
    into a silent `CancelledError`. A failure that is not `CancelledError`
    means every request made meanwhile was consumed; a real cancellation of an
    anyio scope is re-delivered by anyio anyway.

    Yields:
        Nothing; wrap the grpclib call in the block.
    """
    task = asyncio.current_task()
    baseline = task.cancelling() if task is not None else 0
    try:
        yield
    except Exception:
        while task is not None and task.cancelling() > baseline:
            task.uncancel()
        raise
