"""Health checking and server reflection, for load balancers and grpcurl-style tools.

Both are grpclib's own services, registered next to the dispatch service:

- `grpc.health.v1.Health` (`grpclib.health`): SERVING while the store is
  reachable and the server is not shutting down; NOT_SERVING while the store
  is unreachable (PostgreSQL lost) and from the start of a shutdown, before
  open streams are ended, so a load balancer stops routing to the replica
  first. Asked for service "" (the whole server) or
  "frequenz.api.dispatch.v1.MicrogridDispatchService".
- Server reflection, v1 and v1alpha (`grpclib.reflection`): lists the services
  and serves their file descriptors. Ours come from `_proto/descriptors.binpb`
  (written by `make protos` from `protos/`, imports included), loaded into a
  private descriptor pool together with grpclib's health and reflection
  descriptors, so `grpcurl -plaintext HOST:PORT list` / `describe` / calls work
  without .proto files.

Both need the protobuf runtime (grpclib's health and reflection messages are
protobuf's): it comes with the `server` (and `fast`) extra. Without it the
server runs without them and says so once in the log.

Neither is behind the API key or request signatures: a load balancer probes
health without credentials, and reflection tells only what the public .proto
files say.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

from .service import DispatchService

__all__ = ["OPEN_SERVICES", "Operability", "available", "descriptor_pool"]

_log = logging.getLogger(__name__)

OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)
"""Services callable without API key or signature."""


@functools.cache
def available() -> bool:
    """Whether the protobuf runtime that grpclib's health and reflection need is installed."""
    try:
        found = importlib.util.find_spec("google.protobuf") is not None
    except ImportError:
        found = False
    if not found:
        _log.warning(
            "health checking and server reflection are off: they need protobuf"
            " (pip install 'dispatch-client[server]')"
        )
    return found


@functools.cache
def descriptor_pool() -> Any:
    """Our services' descriptors (and health's, reflection's) in a private protobuf pool.

    Returns:
        A `google.protobuf.descriptor_pool.DescriptorPool`.
    """
    from google.protobuf import descriptor_pb2
    from google.protobuf import descriptor_pool as pools
    from grpclib.health.v1 import health_pb2
    from grpclib.reflection.v1 import reflection_pb2
    from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

    pool = pools.DescriptorPool()
    data = resources.files("dispatch_client._proto").joinpath("descriptors.binpb").read_bytes()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    for module in (health_pb2, reflection_pb2, reflection_v1alpha_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    return pool


class Operability:
    """The health status of one `DispatchService`, and the handlers serving it and reflection.

    Args:
        service: the dispatch service; its store's health feeds the status.
    """

    def __init__(self, service: DispatchService) -> None:
        from grpclib.health.check import ServiceStatus

        self._service = service
        self._store = ServiceStatus()
        self._accepting = ServiceStatus()
        service.store_events.watch_health(self._store.set)

    def handlers(self) -> Sequence[Any]:
        """Return the health service and the reflection services, for a grpclib `Server`.

        Returns:
            grpclib servicers (new ones on every call, sharing this status).
        """
        from grpclib.health.service import Health
        from grpclib.reflection.service import ServerReflection

        health = Health({self._service: [self._store, self._accepting]})
        services = ServerReflection.extend([self._service, health], pool=descriptor_pool())
        return services[1:]

    def serving(self) -> None:
        """The server accepts calls: SERVING once the store is healthy too."""
        self._accepting.set(True)

    def shutting_down(self) -> None:
        """The server is stopping: NOT_SERVING from now on."""
        self._accepting.set(False)

    @property
    def status(self) -> bool | None:
        """True for SERVING, False for NOT_SERVING, None before the server started."""
        values = {self._store.__status__(), self._accepting.__status__()}
        if values == {True}:
            return True
        return None if values == {None} else False
