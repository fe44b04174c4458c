"""The reference Dispatch API server: grpclib on SQLite, or on PostgreSQL for replicas.

Run it with `python -m dispatch_client.server` (see `--help`), in-process with
`dispatch_client.testing.running_server()`, or assemble the parts:

    async with DispatchService(db="dispatches.db") as service:
        async with DispatchServer(service, port=50051) as server:
            print(server.url)
            ...
"""

from .app import DispatchServer, serve, server_ssl_context
from .auth import RequestAuthenticator
from .service import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_STREAM_BUFFER_SIZE,
    MAX_PAGE_SIZE,
    START_TIME_ALLOWANCE,
    DispatchService,
)
from .store import DispatchStore
from .store_api import Store
from .stores import store_for

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_STREAM_BUFFER_SIZE",
    "MAX_PAGE_SIZE",
    "START_TIME_ALLOWANCE",
    "DispatchServer",
    "DispatchService",
    "DispatchStore",
    "RequestAuthenticator",
    "Store",
    "serve",
    "server_ssl_context",
    "store_for",
]
