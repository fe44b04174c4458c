"""Health checking and server reflection, through grpclib's own clients.

The health client is grpclib's `grpc.health.v1` stub; the reflection client
is grpclib's `grpc.reflection.v1` stub, used the way grpcurl uses it: list
the services, fetch the descriptors of one, build its messages from them and
call it, without our generated code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from conftest import _unavailable
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest
from test_server_stream import subscribed
from test_server_support import connect, create, get

from dispatch_client.server import DispatchServer, DispatchService
from dispatch_client.testing import RunningServer, running_server

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

SERVICE = "frequenz.api.dispatch.v1.MicrogridDispatchService"
SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


@asynccontextmanager
async def channel_to(server: RunningServer | DispatchServer) -> AsyncIterator[Channel]:
    channel = Channel(server.host, server.port)
    try:
        yield channel
    finally:
        channel.close()


async def check(channel: Channel, service: str = "") -> Any:
    response = await HealthStub(channel).Check(HealthCheckRequest(service=service))
    return response.status


async def test_health_is_serving_for_the_server_and_the_service(
    store_server: RunningServer,
) -> None:
    async with channel_to(store_server) as channel:
        assert await check(channel) == SERVING
        assert await check(channel, SERVICE) == SERVING
        with pytest.raises(GRPCError) as error:
            await check(channel, "no.such.Service")
        assert error.value.status == Status.NOT_FOUND


async def test_health_and_reflection_need_no_credentials() -> None:
    async with running_server(keys=["secret-key"], sign_secret="s") as server:
        async with channel_to(server) as channel:
            assert await check(channel) == SERVING
            assert SERVICE in await list_services(channel)
        async with connect(server) as stub:
            with pytest.raises(GRPCError) as error:
                await create(stub, 1)
            assert error.value.status == Status.UNAUTHENTICATED


async def test_watch_sees_not_serving_before_the_server_goes_away() -> None:
    async with running_server() as server, channel_to(server) as channel:
        async with HealthStub(channel).Watch.open() as watch:
            await watch.send_message(HealthCheckRequest(service=SERVICE), end=True)
            first = await watch.recv_message()
            assert first is not None and first.status == SERVING
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(server.stop)
                    update = await watch.recv_message()
                    assert update is not None and update.status == NOT_SERVING
            assert not server.is_running
        await server.start()
        async with channel_to(server) as channel:
            assert await check(channel) == SERVING


async def list_services(channel: Channel) -> list[str]:
    async with ServerReflectionStub(channel).ServerReflectionInfo.open() as stream:
        await stream.send_message(ServerReflectionRequest(list_services=""), end=True)
        response = await stream.recv_message()
    assert response is not None
    return [service.name for service in response.list_services_response.service]


async def fetch_files(channel: Channel, symbol: str) -> descriptor_pool.DescriptorPool:
    """Build a descriptor pool from what reflection serves, as grpcurl does."""
    pool = descriptor_pool.DescriptorPool()
    loaded: set[str] = set()
    async with ServerReflectionStub(channel).ServerReflectionInfo.open() as stream:

        async def ask(request: ServerReflectionRequest) -> list[descriptor_pb2.FileDescriptorProto]:
            await stream.send_message(request)
            response = await stream.recv_message()
            assert response is not None
            assert not response.HasField("error_response"), response.error_response
            return [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in response.file_descriptor_response.file_descriptor_proto
            ]

        async def load(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
            for file in files:
                if file.name in loaded:
                    continue
                for dependency in file.dependency:
                    if dependency not in loaded:
                        await load(await ask(ServerReflectionRequest(file_by_filename=dependency)))
                pool.Add(file)
                loaded.add(file.name)

        await load(await ask(ServerReflectionRequest(file_containing_symbol=symbol)))
        await stream.end()
    return pool


async def test_reflection_lists_the_services() -> None:
    async with running_server() as server, channel_to(server) as channel:
        services = await list_services(channel)
    assert set(services) >= {SERVICE, "grpc.health.v1.Health"}


async def test_a_reflection_client_calls_the_service_from_reflected_descriptors(
    store_server: RunningServer,
) -> None:
    async with channel_to(store_server) as channel:
        pool = await fetch_files(channel, SERVICE)
        service = pool.FindServiceByName(SERVICE)
        method = service.methods_by_name["CreateMicrogridDispatch"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = request_class()
        request.microgrid_id = 5
        request.start_immediately = True
        request.dispatch_data.type = "REFLECTED"
        request.dispatch_data.duration = 60
        request.dispatch_data.target.component_ids.ids.extend([7])
        async with channel.request(
            f"/{SERVICE}/{method.name}", Cardinality.UNARY_UNARY, request_class, response_class
        ) as stream:
            await stream.send_message(request, end=True)
            response = await stream.recv_message()
        assert response is not None
        dispatch_id = response.dispatch.metadata.dispatch_id
        # Described by reflection's descriptors, read back through our own code.
        assert pool.FindMessageTypeByName("frequenz.api.dispatch.v1.Dispatch").fields_by_name[
            "data"
        ]
    async with connect(store_server) as stub:
        stored = await get(stub, 5, dispatch_id)
    assert stored.data is not None and stored.data.type == "REFLECTED"


async def test_store_outage_is_not_serving_and_ends_streams() -> None:
    # A PostgreSQL server of its own: this test stops and restarts it.
    pgtemp = pytest.importorskip("dispatch_client.server.pgtemp")
    pg_store = pytest.importorskip("dispatch_client.server.pg_store")
    try:
        postgres = pgtemp.TemporaryPostgres()
        postgres.start()
    except pgtemp.PostgresUnavailableError as error:
        _unavailable(str(error))
    try:
        url = postgres.create_database("outage")
        store = pg_store.PgDispatchStore(url, timeout_s=1.0)
        async with (
            DispatchService(store=store) as service,
            DispatchServer(service) as server,
            channel_to(server) as channel,
            connect(server) as stub,  # type: ignore[arg-type]
            HealthStub(channel).Watch.open() as watch,
        ):
            await watch.send_message(HealthCheckRequest(service=SERVICE), end=True)

            async def next_status() -> Any:
                with anyio.fail_after(15):
                    response = await watch.recv_message()
                assert response is not None
                return response.status

            assert await next_status() == SERVING
            async with subscribed(stub.channel, 1) as stream:
                # The pool's idle connections die with the server; the outage
                # lasts long enough for the pool's reconnect backoff (1 s, 2 s,
                # 4 s, ...) to lag behind the database's return.
                await anyio.to_thread.run_sync(postgres.pause)
                outage_ends = anyio.current_time() + 4
                assert await next_status() == NOT_SERVING
                assert await check(channel) == NOT_SERVING
                with anyio.fail_after(10), pytest.raises(GRPCError) as ended:
                    while await stream.recv_message() is not None:
                        pass
                    await stream.recv_trailing_metadata()
                assert ended.value.status == Status.UNAVAILABLE
                assert "re-list" in (ended.value.message or "")
                with pytest.raises(GRPCError) as refused:
                    await create(stub, 1)
                assert refused.value.status == Status.UNAVAILABLE
                with pytest.raises(GRPCError) as no_stream:
                    async with subscribed(stub.channel, 1):
                        pass
                assert no_stream.value.status == Status.UNAVAILABLE
                await anyio.sleep(outage_ends - anyio.current_time())
            await anyio.to_thread.run_sync(postgres.resume)
            assert await next_status() == SERVING
            # SERVING means calls work: the first ones after the outage neither
            # got a dead connection nor waited for the pool to reconnect.
            started = anyio.current_time()
            for _ in range(3):
                created = await create(stub, 1)
                assert created.metadata is not None
            assert anyio.current_time() - started < 1.0
            # A client leaving a stream the server keeps open cancels it.
            await watch.cancel()
    finally:
        postgres.stop()
