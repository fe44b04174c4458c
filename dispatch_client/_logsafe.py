"""Keeping API keys and sign secrets out of log records, third-party loggers included.

hpack (HTTP/2 header compression, used by h2 and so by grpclib) logs every
header it encodes or decodes at DEBUG level, metadata values included, and
dumps whole header blocks (whose Huffman coding is no secret either). An app
or a server that turns on DEBUG logging must not write its key that way.

`protect_logs(*secrets)` installs one filter on the hpack loggers (once per
process) that, in each record it lets through:

- blanks the value of the authentication headers (`key`, `sig`,
  `authorization`) wherever a header appears, whatever the value is, so keys
  the process does not know (a client's wrong key, seen by a server) are
  hidden too;
- shows header-block dumps as their length only;
- replaces any secret registered with `protect_logs` (keys, sign secrets) in
  the final message.

Filters run only for records that are emitted, so this costs nothing while
DEBUG is off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

__all__ = ["SENSITIVE_HEADERS", "protect_logs"]

SENSITIVE_HEADERS = frozenset({"key", "sig", "authorization"})
"""Metadata names whose values never appear in a log record."""

_LOGGERS = ("hpack.hpack", "hpack.table")
_REDACTED = "<redacted>"
# hpack's own format strings whose only argument is a raw header block.
_BLOCK_DUMPS = frozenset({"Encoded header block to %s", "Decoding %s"})


def _name(value: object) -> str | None:
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("ascii").lower()
        except UnicodeDecodeError:
            return None
    return value.lower() if isinstance(value, str) else None


class _Redactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            for secret in secrets:
                if secret:
                    # hpack logs bytes, whose repr escapes non-ASCII characters.
                    self._secrets |= {secret, repr(secret.encode())[2:-1]}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            if record.msg in _BLOCK_DUMPS:
                record.args = tuple(_size(arg) for arg in args)
            else:
                record.args = _hide_header_values(args)
        secrets = self._secrets
        if secrets:
            message = record.getMessage()
            redacted = message
            for secret in secrets:
                redacted = redacted.replace(secret, _REDACTED)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def _size(arg: object) -> object:
    if isinstance(arg, bytes | bytearray | memoryview):
        return f"<{len(arg)} bytes>"
    return arg


def _hide_header_values(args: tuple[object, ...]) -> tuple[object, ...]:
    result: list[object] = []
    hide_next = False
    for arg in args:
        if hide_next:
            result.append(_REDACTED)
            hide_next = False
            continue
        # A header tuple, e.g. "Decoded (b'key', b'...')".
        if isinstance(arg, tuple) and len(arg) == 2 and _name(arg[0]) in SENSITIVE_HEADERS:
            result.append((arg[0], _REDACTED))
            continue
        # A name followed by its value, e.g. "Adding %s=%s", "Evicting %s: %s".
        hide_next = _name(arg) in SENSITIVE_HEADERS
        result.append(arg)
    return tuple(result)


_REDACTOR = _Redactor()
_installed = False
_install_lock = threading.Lock()


def protect_logs(secrets: Iterable[str | None] = ()) -> None:
    """Keep authentication headers and these secrets out of third-party debug logs.

    Idempotent; secrets accumulate for the life of the process.

    Args:
        secrets: API keys and sign secrets this process uses (None ignored).
    """
    global _installed
    _REDACTOR.add(s for s in secrets if s)
    with _install_lock:
        if not _installed:
            for name in _LOGGERS:
                logging.getLogger(name).addFilter(_REDACTOR)
            _installed = True
