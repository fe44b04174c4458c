"""The one check each public `Client` method makes: is it called inside trio.

grpclib runs only on asyncio. Under trio, a method decorated here is handed to
the bridge in `dispatch_client._trio`, which runs it on the client's own asyncio
loop; everywhere else it is called as it is. The bridge module (and trio with
it) is imported only the first time that happens, so asyncio programs never
import it. Their cost is one `sys.modules` lookup per call while trio was never
imported, and a `sniffio` call when it was (trio brings sniffio along).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import ParamSpec, TypeVar

__all__ = ["in_trio", "trio_aware", "trio_aware_disconnect"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

INSTALL_HINT = "pip install 'dispatch_client[trio]'"


def in_trio() -> bool:
    """Tell whether the calling code runs in trio.

    Returns:
        True inside trio (directly or as anyio's backend); False in asyncio,
        in trio-asyncio's asyncio mode and outside any event loop.
    """
    if "trio" not in sys.modules:
        return False
    sniffio = sys.modules.get("sniffio")
    if sniffio is None:
        return False
    try:
        library: str = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return library == "trio"


def _bridge() -> ModuleType:
    # The bridge's own ImportError (trio missing or too old) says what is
    # wrong; the install hint is added here, once.
    try:
        from . import _trio
    except ImportError as exc:
        raise ImportError(
            f"using dispatch_client inside trio needs its trio extra: {INSTALL_HINT} ({exc})"
        ) from exc
    return _trio


def _decorate(method: Callable[_P, _R], kind: str) -> Callable[_P, _R]:
    modules = sys.modules  # a closure cell: the cheapest lookup on the asyncio path

    @functools.wraps(method)
    def dispatch(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if "trio" in modules and in_trio():
            result: _R = _bridge().bridged(kind, method, args, kwargs)
            return result
        return method(*args, **kwargs)

    return dispatch


def trio_aware(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make a `Client` coroutine method, or one returning an async generator, work inside trio.

    The method must take the client as its first argument and must not call
    another decorated method (call the undecorated internal instead).

    Args:
        method: the method to wrap.

    Returns:
        The method, handed to `dispatch_client._trio` when called inside trio.

    Raises:
        ImportError: (from the returned method) called inside trio without
            the `trio` extra installed; the message says what to install.
    """
    return _decorate(method, "call" if inspect.iscoroutinefunction(method) else "iterate")


def trio_aware_disconnect(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Like `trio_aware`, for `Client.disconnect`: afterwards the client's loop thread stops.

    Args:
        method: `Client.disconnect`.

    Returns:
        The wrapped method.
    """
    return _decorate(method, "disconnect")
