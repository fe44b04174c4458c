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
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.encoding.base import StatusDetailsCodecBase
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.events import SendRequest, listen
from grpclib.exceptions import StreamTerminatedError

from ._auth import auth_metadata, is_header_safe
from ._h2_protocol import _Channel
from ._h2_protocol import _CoalescedWrites as _CoalescedWrites  # re-exported (server, tests)
from ._h2_protocol import _H2Connection as _H2Connection  # re-exported (server, tests)
from ._h2_protocol import connect_shared as connect_shared  # re-exported (streams)
from ._server_url import ChannelOptions, ServerTarget, parse_server_url
from ._unary import (
    FastPath,
    answer,
    raise_for_what_arrived,
    start_call,
)
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
    "withdraw_leaked_cancels",
]

_Resp = TypeVar("_Resp")
_log = logging.getLogger(__name__)


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
    # Once per channel: left out of `import dispatch_client`, which they would
    # make a few milliseconds slower (bench: cold import).
    from ._fastdecode import ResponseCodec
    from ._logsafe import protect_logs

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
    hook = None
    if key is not None:
        hook = _auth_hook(key, sign_secret)
        listen(channel, SendRequest, hook)
    channel.fast_path = FastPath(channel, key, sign_secret, hook)
    return channel, loop


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

    def get(self, loop: asyncio.AbstractEventLoop | None = None) -> Channel:
        """Return the channel of the running loop, opening it on first use there.

        Args:
            loop: the running loop, if the caller has it already; None to look it up.

        Returns:
            An open grpclib channel.

        Raises:
            RuntimeError: no event loop is running.
        """
        if loop is None:
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
    channel: Channel,
    call: Call[Any, _Resp],
    *,
    time_limit: float | None,
    server_url: str,
    loop: asyncio.AbstractEventLoop | None = None,
) -> _Resp:
    """Send one unary call and return its response.

    Args:
        channel: the channel to send on.
        call: the RPC path, request and response type.
        time_limit: the deadline in seconds, or None for none.
        server_url: the server URL, put on errors.
        loop: the running loop, if the caller has it already; None to look it up.

    Returns:
        The response message.

    Raises:
        DispatchApiError: the typed error of a failed call (see `errors.map_errors`);
            `UnknownError` if the server answered without a message.
    """
    # What `map_errors` and `absorb_leaked_cancel` do, written out: two
    # generator-based context managers per call cost more than the success
    # path needs (nothing is set up but a count).
    if loop is None:
        loop = asyncio.get_running_loop()
    task = asyncio.current_task(loop)
    baseline = task.cancelling() if task is not None else 0
    record = CallRecord()
    fast = getattr(channel, "fast_path", None)
    try:
        if fast is not None:
            # Inline rather than a coroutine of its own: one frame less per call.
            pending = start_call(channel, fast, call.path, call.request, time_limit, loop)
            if pending is not None:
                record.stream = pending
                try:
                    await pending.done
                except StreamTerminatedError:
                    raise_for_what_arrived(pending, channel)  # as grpclib does for a broken stream
                    raise
                finally:
                    pending.close()
                response = answer(pending, channel, call.response_type)
                if response is None:
                    raise UnknownError(
                        "the server answered without a message", server_url=server_url
                    )
                return cast(_Resp, response)
        async with channel.request(
            call.path,
            Cardinality.UNARY_UNARY,
            type(call.request),
            call.response_type,
            timeout=time_limit,
        ) as stream:
            record.stream = stream
            await stream.send_message(call.request, end=True)
            response = await stream.recv_message()
    except Exception as exc:
        withdraw_leaked_cancels(task, baseline)
        if isinstance(exc, DispatchApiError):
            raise
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
        opened_by = None if open_limit is None else asyncio.get_running_loop().time() + open_limit
        if not channel._connected:
            async with asyncio.timeout_at(opened_by):
                await connect_shared(channel)
        fast = getattr(channel, "fast_path", None)
        if fast is not None:
            from ._fast_stream import start_stream  # streams only: not at `import dispatch_client`

            pending = start_stream(
                channel, fast, call.path, call.request, asyncio.get_running_loop()
            )
            if pending is not None:
                record.stream = pending
                async with aclosing(pending.responses(channel, call.response_type)) as responses:
                    async for response in responses:
                        yield response
                return
        async with channel.request(call.path, *kind) as stream:
            record.stream = stream
            # Not the initial metadata: a server may hold it back until its first message.
            async with asyncio.timeout_at(opened_by):
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
    anyio scope, or of a stream reader by its owner (`_tasks.OwnedTask`), is
    delivered again at the next await anyway.

    Yields:
        Nothing; wrap the grpclib call in the block.
    """
    task = asyncio.current_task()
    baseline = task.cancelling() if task is not None else 0
    try:
        yield
    except Exception:
        withdraw_leaked_cancels(task, baseline)
        raise


def withdraw_leaked_cancels(task: asyncio.Task[Any] | None, baseline: int) -> None:
    """Withdraw `task`'s cancel requests above `baseline` (see `absorb_leaked_cancel`).

    For the hot paths that write `absorb_leaked_cancel` out instead of
    entering a generator-based context manager per call: they take the
    baseline before the grpclib call and call this when it fails.

    Args:
        task: the task making the call, or None outside a task.
        baseline: `task.cancelling()` before the call.
    """
    while task is not None and task.cancelling() > baseline:
        task.uncancel()
