"""Checking the `key` and request signature metadata of incoming calls.

Runs as a grpclib `RecvRequest` listener, before any handler sees the call,
so every RPC (streams included) is covered. Failures answer UNAUTHENTICATED
with a message that says what was wrong, never what the key or secret is.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import grpclib.events
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .._auth import (
    KEY_HEADER,
    NONCE_HEADER,
    SIG_HEADER,
    TS_HEADER,
    is_header_safe,
    method_name,
    signature,
    signatures_match,
)

__all__ = ["DEFAULT_CLOCK_WINDOW_S", "DEFAULT_MAX_NONCES", "RequestAuthenticator"]

_log = logging.getLogger(__name__)

DEFAULT_CLOCK_WINDOW_S = 300
"""How far (either way) a request's `ts` may be from the server's clock."""
DEFAULT_MAX_NONCES = 100_000
"""Upper bound on remembered nonces; past it, signed calls are refused for a while."""


class NonceStore(Protocol):
    """Remembers used nonces where every server replica sees them (the dispatch store)."""

    @property
    def nonces_known_since(self) -> float | None:
        """Unix time since which used nonces are recorded; None when they outlive restarts."""

    async def use_nonce(self, nonce: str, expires_at: int, *, now: int) -> bool:
        """Record `nonce` until `expires_at` (unix s); False when it is recorded and live."""


class RequestAuthenticator:
    """Accepts or rejects calls by their authentication metadata.

    A nonce only has to be remembered until its `ts` leaves the window (a
    replay after that fails the clock check), which bounds memory together
    with `max_nonces`. With `nonces` (the dispatch store), used nonces are
    kept there instead, so that replicas sharing the store refuse each
    other's replays, also after a restart when the store is a file or
    PostgreSQL; `max_nonces` then does not apply (the store forgets expired
    nonces). Where used nonces do not outlive the process (this object's
    memory, or an in-memory store), a request signed before they started
    being recorded (its `ts` earlier than the second they started) is refused:
    it may have been used before a restart.

    Args:
        keys: the accepted API keys, or None to accept any (and no) key.
        sign_secret: when set, every call must carry `ts`, `nonce` and a valid
            `sig`; `ts` must be within `clock_window_s` of the server's clock
            and a nonce is accepted once.
        clock_window_s: how far, in seconds either way, `ts` may be from the clock.
        max_nonces: the most nonces remembered; past it, signed calls get
            RESOURCE_EXHAUSTED until old ones expire.
        clock: the server's clock, in Unix seconds.
        nonces: where used nonces are kept; None keeps them in this object's memory.
        open_services: full names of services whose calls are not checked
            (e.g. "grpc.health.v1.Health", which load balancers probe without credentials).

    Raises:
        TypeError: `keys` is one str rather than a collection of them.
        ValueError: a key is empty or not printable ASCII (no client could
            send it), or `sign_secret` is empty; the value is never shown.
    """

    def __init__(
        self,
        keys: Iterable[str] | None = None,
        sign_secret: str | None = None,
        *,
        clock_window_s: int = DEFAULT_CLOCK_WINDOW_S,
        max_nonces: int = DEFAULT_MAX_NONCES,
        clock: Callable[[], float] = time.time,
        nonces: NonceStore | None = None,
        open_services: Iterable[str] = (),
    ) -> None:
        if isinstance(keys, str | bytes):
            # frozenset("secret") would accept each of its characters as a key.
            raise TypeError("keys must be a collection of API keys, not one str")
        self._keys = None if keys is None else frozenset(keys)
        for key in self._keys or ():
            if not isinstance(key, str) or not key or not is_header_safe(key):
                raise ValueError(
                    "keys: every API key must be a non-empty str of printable ASCII"
                    " (it travels as a gRPC header); the value is not shown"
                )
        if sign_secret is not None and (not isinstance(sign_secret, str) or not sign_secret):
            raise ValueError("sign_secret must be a non-empty str, or None for unsigned calls")
        self._secret = sign_secret
        self._window = clock_window_s
        self._max_nonces = max_nonces
        self._clock = clock
        self._nonce_expiry: list[tuple[int, str]] = []
        self._nonces: set[str] = set()
        self._nonce_store = nonces
        self._started = clock()
        self._open_prefixes = tuple(f"/{name}/" for name in open_services)

    def __repr__(self) -> str:
        return f"RequestAuthenticator({self.describe()})"

    def describe(self) -> str:
        """Say what is checked, never with which values.

        Returns:
            e.g. "2 API keys, signed requests", or "no authentication".
        """
        parts = []
        if self._keys is not None:
            parts.append(f"{len(self._keys)} API key" + ("" if len(self._keys) == 1 else "s"))
        if self._secret is not None:
            parts.append("signed requests")
        return ", ".join(parts) or "no authentication"

    @property
    def enabled(self) -> bool:
        """Whether any check is configured."""
        return self._keys is not None or self._secret is not None

    def install(self, server: grpclib.server.Server) -> None:
        """Check every call `server` receives; no-op when nothing is configured.

        Args:
            server: the grpclib server, before it starts; a rejected call ends with
                UNAUTHENTICATED (or RESOURCE_EXHAUSTED when nonce memory is full).
        """
        if self.enabled:
            grpclib.events.listen(server, grpclib.events.RecvRequest, self._on_request)

    async def _on_request(self, event: grpclib.events.RecvRequest) -> None:
        if event.method_name.startswith(self._open_prefixes):
            return
        method = method_name(event.method_name)
        try:
            await self.authenticate(event.metadata, method)
        except GRPCError as error:
            _log.info("rejected %s from %s: %s", method, event.peer.addr(), error.message)
            raise

    async def authenticate(self, metadata: Any, method: str) -> None:
        """Check that `metadata` authenticates a call to `method`, nonce store included.

        Args:
            metadata: the call's metadata mapping (grpclib's MultiDict).
            method: the RPC's short name, e.g. "ListMicrogridDispatches" (it is signed).

        Raises:
            GRPCError: as `check`; UNAVAILABLE when the nonce store cannot be reached.
        """
        pending = self._verify(metadata, method)
        if pending is None:
            return
        nonce, expires_at, now = pending
        if self._nonce_store is None:
            self._remember(nonce, expires_at, now)
        elif not await self._nonce_store.use_nonce(nonce, expires_at, now=int(now)):
            raise _replay()

    def check(self, metadata: Any, method: str) -> None:
        """Check that `metadata` authenticates a call to `method`.

        With a nonce store, replays are checked by `authenticate` only.

        Args:
            metadata: the call's metadata mapping (grpclib's MultiDict).
            method: the RPC's short name, e.g. "ListMicrogridDispatches" (it is signed).

        Raises:
            GRPCError: UNAUTHENTICATED for a missing or unknown key, or a missing,
                stale (outside the clock window), wrong or replayed signature, or
                one made before used nonces were recorded (see the class);
                RESOURCE_EXHAUSTED when too many signed calls arrive within the
                clock window. Messages never hold a key, secret or signature.
        """
        pending = self._verify(metadata, method)
        if pending is not None and self._nonce_store is None:
            self._remember(*pending)

    def _verify(self, metadata: Any, method: str) -> tuple[str, int, float] | None:
        """Check all but replay; return (nonce, expiry, now) of a signed call to remember."""
        key = _single(metadata, KEY_HEADER)
        if self._keys is not None:
            if key is None:
                raise _unauthenticated(f"missing API key: send it as metadata '{KEY_HEADER}'")
            if key not in self._keys:
                raise _unauthenticated("API key not accepted")
        if self._secret is not None:
            return self._check_signature(metadata, key or "", method)
        return None

    def _check_signature(self, metadata: Any, key: str, method: str) -> tuple[str, int, float]:
        assert self._secret is not None
        values = {name: _single(metadata, name) for name in (TS_HEADER, NONCE_HEADER, SIG_HEADER)}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise _unauthenticated(
                "request is not signed: missing metadata " + ", ".join(f"'{m}'" for m in missing)
            )
        ts, nonce, sig = values[TS_HEADER], values[NONCE_HEADER], values[SIG_HEADER]
        assert ts is not None and nonce is not None and sig is not None
        try:
            ts_value = int(ts)
        except ValueError:
            raise _unauthenticated(
                f"metadata '{TS_HEADER}' must be unix seconds, got {ts[:32]!r}"
            ) from None
        now = self._clock()
        if abs(now - ts_value) > self._window:
            raise _unauthenticated(
                f"metadata '{TS_HEADER}' is {int(now - ts_value)} s away from the server's clock"
                f" (allowed: ±{self._window} s)"
            )
        if not signatures_match(signature(self._secret, key, ts, nonce, method), sig):
            raise _unauthenticated("request signature does not match")
        since = self._started if self._nonce_store is None else self._nonce_store.nonces_known_since
        if since is not None and ts_value < int(since):
            raise _unauthenticated(
                f"metadata '{TS_HEADER}' is from before this server started keeping used nonces"
                " (in memory), so a replay cannot be told apart: sign the request again"
            )
        # Only a correctly signed call may take up nonce memory.
        return nonce, ts_value + self._window, now

    def _remember(self, nonce: str, expires_at: int, now: float) -> None:
        self._forget_expired_nonces(now)
        if nonce in self._nonces:
            raise _replay()
        if len(self._nonces) >= self._max_nonces:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, "too many signed calls in the clock window; retry later"
            )
        self._nonces.add(nonce)
        heapq.heappush(self._nonce_expiry, (expires_at, nonce))

    def _forget_expired_nonces(self, now: float) -> None:
        while self._nonce_expiry and self._nonce_expiry[0][0] < now:
            _, nonce = heapq.heappop(self._nonce_expiry)
            self._nonces.discard(nonce)


def _single(metadata: Any, name: str) -> str | None:
    value = metadata.get(name)
    if value is None or isinstance(value, str):
        return value
    # Binary metadata never carries these values; treat it as absent.
    return None


def _replay() -> GRPCError:
    return _unauthenticated(f"metadata '{NONCE_HEADER}' was already used (replay)")


def _unauthenticated(message: str) -> GRPCError:
    return GRPCError(Status.UNAUTHENTICATED, message)
