"""How grpclib reaches `DispatchService`: a handler per RPC, sending wire bytes.

`WireHandlers` is a base of `DispatchService` (it holds the grpclib side of
its methods): every handler decodes its request itself (`_handlers`), and
every reply goes out as wire bytes built from stored bytes or encoded once
(`replies`), never encoded again by grpclib's codec through betterproto2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .._proto.frequenz.api.dispatch.v1 import (
    CreateMicrogridDispatchRequest,
    DeleteMicrogridDispatchRequest,
    Dispatch,
    GetMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    MicrogridDispatchServiceBase,
    StreamMicrogridDispatchesRequest,
    UpdateMicrogridDispatchRequest,
)
from ._handlers import _decoding, _Encoded, _RawRequest, _unary
from .fanout import Fanout, StreamEvent, Subscription
from .replies import delete_reply, dispatch_reply, encode, encode_dispatch

if TYPE_CHECKING:
    from .stores import Store

__all__ = ["WireHandlers"]


def _encoding(method: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[_Encoded]]:
    async def serve(request: Any) -> _Encoded:
        return _Encoded(encode(await method(request)))

    return serve


_PUBLIC_UNARY = {
    "CreateMicrogridDispatch": ("create_microgrid_dispatch", "_create"),
    "GetMicrogridDispatch": ("get_microgrid_dispatch", "encoded_get"),
    "DeleteMicrogridDispatch": ("delete_microgrid_dispatch", "_delete"),
    "UpdateMicrogridDispatch": ("update_microgrid_dispatch", "_update"),
}
"""The unary RPCs by name: the public method answering each, and what the wire path calls."""


def _overrides(cls: type[Any], method: str, instead_of: str) -> bool:
    """Whether `cls` got `method` from a subclass of where it got `instead_of` from."""
    mro = cls.__mro__
    where = next(i for i, klass in enumerate(mro) if method in vars(klass))
    return where < next(i for i, klass in enumerate(mro) if instead_of in vars(klass))


class WireHandlers(MicrogridDispatchServiceBase):
    """The grpclib handlers of `DispatchService` (`__mapping__`) and what they call."""

    store: Store
    _fanout: Fanout

    if TYPE_CHECKING:

        async def _create(self, message: CreateMicrogridDispatchRequest) -> Dispatch: ...

        async def _update(self, message: UpdateMicrogridDispatchRequest) -> Dispatch: ...

        async def _delete(self, message: DeleteMicrogridDispatchRequest) -> None: ...

        async def encoded_get(self, message: GetMicrogridDispatchRequest) -> bytes: ...

        async def encoded_list(self, message: ListMicrogridDispatchesRequest) -> bytes: ...

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """Route every RPC through a handler that decodes the request itself.

        grpclib would decode a request before the handler runs, where a
        failure can only become UNKNOWN; here the raw bytes are decoded by
        `decode_request` inside the handler, so they get INVALID_ARGUMENT.
        The stream's handler sends initial metadata only once the
        subscription is registered, so a client that has received it knows
        every later change reaches it. Every reply goes out as wire bytes
        built from stored bytes or encoded once (`replies`): the list's from
        `encoded_list()`, the get's from `encoded_get()`, a stream event's
        once for all its subscribers (`StreamEvent`). A subclass overriding
        a unary RPC's method is served by it, its reply encoded once.
        """
        unary: dict[str, Callable[[Any], Awaitable[_Encoded]]] = {
            "CreateMicrogridDispatch": self._encoded_create,
            "GetMicrogridDispatch": self._encoded_get,
            "DeleteMicrogridDispatch": self._encoded_delete,
            "UpdateMicrogridDispatch": self._encoded_update,
        }
        for name, (method, wire_path) in _PUBLIC_UNARY.items():
            if _overrides(type(self), method, wire_path):
                unary[name] = _encoding(getattr(self, method))
        mapping: dict[str, grpclib.const.Handler] = super().__mapping__()
        for path, handler in mapping.items():
            name = path.rsplit("/", 1)[-1]
            reply_type = handler.reply_type
            serve: Callable[[grpclib.server.Stream[Any, Any], Any], Awaitable[None]]
            if name == "StreamMicrogridDispatches":
                serve, reply_type = self._serve_stream, StreamEvent
            elif name == "ListMicrogridDispatches":
                serve, reply_type = self._serve_list, _Encoded
            else:
                serve, reply_type = _unary(unary[name]), _Encoded
            mapping[path] = grpclib.const.Handler(
                _decoding(serve, handler.request_type),
                handler.cardinality,
                _RawRequest,
                reply_type,
            )
        return mapping

    async def _encoded_create(self, request: CreateMicrogridDispatchRequest) -> _Encoded:
        return _Encoded(dispatch_reply(encode_dispatch(await self._create(request))))

    async def _encoded_get(self, request: GetMicrogridDispatchRequest) -> _Encoded:
        return _Encoded(await self.encoded_get(request))

    async def _encoded_delete(self, request: DeleteMicrogridDispatchRequest) -> _Encoded:
        await self._delete(request)
        return _Encoded(delete_reply(request.microgrid_id, request.dispatch_id))

    async def _encoded_update(self, request: UpdateMicrogridDispatchRequest) -> _Encoded:
        return _Encoded(dispatch_reply(encode_dispatch(await self._update(request))))

    async def _serve_list(
        self, stream: grpclib.server.Stream[Any, Any], request: ListMicrogridDispatchesRequest
    ) -> None:
        await stream.send_message(_Encoded(await self.encoded_list(request)))

    async def _serve_stream(
        self, stream: grpclib.server.Stream[Any, Any], request: StreamMicrogridDispatchesRequest
    ) -> None:
        if not self.store.healthy:
            # Its change feed is down: this stream would miss events unnoticed.
            raise GRPCError(
                Status.UNAVAILABLE, "the server's database is unreachable; retry shortly"
            )
        subscription = self._fanout.subscribe(request.microgrid_id)
        try:
            await stream.send_initial_metadata()
            async for event in self._events(subscription):
                await stream.send_message(event)
        finally:
            self._fanout.unsubscribe(subscription)

    async def _events(self, subscription: Subscription) -> AsyncIterator[StreamEvent]:
        async for event in subscription.events:
            yield event
        if subscription.overflowed:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"stream of microgrid {subscription.microgrid_id} fell more than"
                f" {self._fanout.buffer_size} events behind and was closed;"
                " re-open it and re-list to catch up",
            )
        if subscription.shut_down:
            raise GRPCError(Status.UNAVAILABLE, subscription.shut_down_reason)
