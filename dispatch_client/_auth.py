"""The request-signing scheme, shared by the client (signs) and the server (verifies).

Metadata on every call: `key`; with a sign secret also `ts` (unix seconds),
`nonce` (urlsafe base64 of 16 random bytes) and `sig`, the urlsafe base64
(no `=` padding) of HMAC-SHA256(secret, key ‖ ts ‖ nonce ‖ method), where
`method` is the last segment of the RPC path, e.g. `GetMicrogridDispatch`.
"""

from __future__ import annotations

import re
import time

KEY_HEADER = "key"
TS_HEADER = "ts"
NONCE_HEADER = "nonce"
SIG_HEADER = "sig"


_HEADER_VALUE = re.compile(r"[ -~]+")


def is_header_safe(value: str) -> bool:
    """Return whether `value` can travel as a gRPC metadata value (printable ASCII, space).

    An API key is sent as one; grpclib refuses anything else at the call,
    with the value in its message.
    """
    return _HEADER_VALUE.fullmatch(value) is not None


def method_name(path: str) -> str:
    """Return the last segment of a gRPC method path."""
    return path.rsplit("/", 1)[-1]


def signature(secret: str, key: str, ts: str, nonce: str, method: str) -> str:
    """Compute the `sig` value for one call."""
    # Imported here: only a client or server with a sign secret needs them, and
    # hashlib loads OpenSSL's digests (milliseconds of every cold import otherwise).
    import base64
    import hashlib
    import hmac

    message = b"".join(part.encode() for part in (key, ts, nonce, method))
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def auth_metadata(key: str, secret: str | None, path: str) -> list[tuple[str, str]]:
    """Build the authentication metadata for a call to `path`."""
    metadata = [(KEY_HEADER, key)]
    if secret:
        import base64
        import secrets

        ts = str(int(time.time()))
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()
        sig = signature(secret, key, ts, nonce, method_name(path))
        metadata += [(TS_HEADER, ts), (NONCE_HEADER, nonce), (SIG_HEADER, sig)]
    return metadata


def signatures_match(expected: str, given: str) -> bool:
    """Compare two signatures in constant time."""
    import hmac

    return hmac.compare_digest(expected.encode(), given.encode())
