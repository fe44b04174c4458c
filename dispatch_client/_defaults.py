"""The client's defaults, in one place.

Kept free of imports beyond the standard library so that any module, however
early it loads, can use them. The reference server's own defaults (page sizes,
its buffers) are in `dispatch_client.server.service`.
"""

from __future__ import annotations

import datetime as dt

PORT = 443
"""Port of a `grpc://` URL without one: a real service is remote and behind TLS."""

CALL_TIMEOUT = dt.timedelta(seconds=60)
"""Deadline of each unary call."""

STREAM_TIMEOUT: dt.timedelta | None = None
"""The longest a stream's dead connection may go unnoticed; None: keep-alive settings decide."""

KEEP_ALIVE_INTERVAL = dt.timedelta(seconds=60)
"""Time between HTTP/2 pings on an idle connection."""

KEEP_ALIVE_TIMEOUT = dt.timedelta(seconds=20)
"""How long to wait for a ping's answer before the connection counts as dead."""

STREAM_BUFFER_SIZE = 1024
"""Events a stream consumer may fall behind by before its overflow policy applies."""

STREAM_OPEN_GRACE = 0.25
"""Seconds an unacknowledged, quiet gRPC stream must stay up before it counts as open."""

RETRY_INTERVAL = dt.timedelta(seconds=60)
"""How long `Client.manage()` waits before calling a handler that raised again."""
