"""Reference server: SQLite persistence, restarts, crashes, the CLI, TLS, testing helpers."""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import trustme
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError
from test_server_support import (
    GRPCError,
    Status,
    connect,
    create,
    expect_error,
    get,
    list_all,
)

from dispatch_client import DispatchData
from dispatch_client.server import DispatchService, DispatchStore, server_ssl_context
from dispatch_client.server.store import ListQuery, is_recurring, target_key, to_micros
from dispatch_client.testing import RunningServer, in_memory_channel, running_server
from dispatch_client.wire import (
    DeleteMicrogridDispatchRequest,
    ListMicrogridDispatchesRequest,
    MicrogridDispatchServiceStub,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["test_server_support"]

URL_LINE = re.compile(rb"connect with (grpc://\S+)")


async def test_file_database_survives_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "dispatches.db")
    async with running_server(db=db) as server, connect(server) as stub:
        kept = [await create(stub, 1), await create(stub, 2)]
        last = await create(stub, 1)
        assert last.metadata is not None
        await stub.delete_microgrid_dispatch(
            DeleteMicrogridDispatchRequest(microgrid_id=1, dispatch_id=last.metadata.dispatch_id)
        )
    async with running_server(db=db) as server, connect(server) as stub:
        for dispatch, microgrid_id in zip(kept, (1, 2), strict=True):
            assert dispatch.metadata is not None
            assert bytes(await get(stub, microgrid_id, dispatch.metadata.dispatch_id)) == bytes(
                dispatch
            )
        assert len(await list_all(stub, 1)) == 1
        newer = await create(stub, 1)
        # Ids are never reused, not even the deleted highest one.
        assert newer.metadata is not None and newer.metadata.dispatch_id > last.metadata.dispatch_id


async def test_stop_and_start_keep_port_and_data(store_server: RunningServer) -> None:
    url, port = store_server.url, store_server.port
    assert url == f"grpc://127.0.0.1:{port}?ssl=false"
    async with connect(store_server) as stub:
        created = await create(stub)
        await store_server.stop()
        assert not store_server.is_running
        await store_server.stop()  # idempotent
        with pytest.raises((GRPCError, OSError, StreamTerminatedError)):
            await list_all(stub)
        await store_server.start()
        assert (store_server.url, store_server.port) == (url, port)
        assert created.metadata is not None
        # The same channel reconnects by itself.
        assert bytes(await get(stub, 1, created.metadata.dispatch_id)) == bytes(created)


def _check_row_consistency(rows: list[tuple[object, ...]]) -> None:
    # Every indexed column must agree with the serialized data it was copied from.
    for _id, type_, start, is_active, is_dry_run, recurring, target, blob in rows:
        assert isinstance(blob, bytes)
        data = DispatchData.parse(blob)
        assert data.start_time is not None
        assert (type_, start, is_active, is_dry_run, recurring, target) == (
            data.type,
            to_micros(data.start_time),
            int(data.is_active),
            int(data.is_dry_run),
            int(is_recurring(data)),
            target_key(data.target),
        )


@dataclass
class Cli:
    process: Process
    url: str
    output: BufferedByteReceiveStream
    seen: bytes

    async def rest_of_output(self) -> bytes:
        chunks = [self.seen]
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                chunks.append(await self.output.receive())
        return b"".join(chunks)


async def _start_cli(*args: str) -> Cli:
    """Start the server CLI on a free port and wait for the line with its URL."""
    process = await anyio.open_process(
        [sys.executable, "-m", "dispatch_client.server", "--port", "0", *args],
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = BufferedByteReceiveStream(process.stdout)
    seen = b""
    with anyio.fail_after(20):
        while True:
            try:
                line = await output.receive_until(b"\n", 1 << 16)
            except anyio.IncompleteRead:
                raise AssertionError(b"server exited: " + seen) from None
            seen += line + b"\n"
            match = URL_LINE.search(line)
            if match:
                return Cli(process, match.group(1).decode(), output, seen)


def _channel_for(url: str) -> Channel:
    match = re.fullmatch(r"grpc://([^:]+):(\d+)\?ssl=false", url)
    assert match, url
    return Channel(match.group(1), int(match.group(2)))


async def test_crash_mid_write_leaves_only_whole_rows(tmp_path: Path) -> None:
    db = str(tmp_path / "crash.db")
    cli = await _start_cli("--db", db)
    channel = _channel_for(cli.url)
    writer = MicrogridDispatchServiceStub(channel)

    async def hammer() -> None:
        with contextlib.suppress(Exception):  # the server dies under it
            while True:
                made = await create(writer, 1)
                assert made.metadata is not None
                if made.metadata.dispatch_id % 3 == 0:
                    await writer.delete_microgrid_dispatch(
                        DeleteMicrogridDispatchRequest(
                            microgrid_id=1, dispatch_id=made.metadata.dispatch_id
                        )
                    )

    try:
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(hammer)
                await anyio.sleep(0.5)
                cli.process.kill()  # SIGKILL: no chance to finish anything
    finally:
        channel.close()
        with contextlib.suppress(ProcessLookupError):
            cli.process.kill()
        await cli.process.aclose()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT id, type, start_time, is_active, is_dry_run, is_recurring, target_key, data"
            " FROM dispatches"
        ).fetchall()
    assert rows, "the writers should have stored something before the kill"
    _check_row_consistency(rows)
    highest = max(int(row[0]) for row in rows)
    async with DispatchStore(db) as store:
        result = await store.list(ListQuery(microgrid_id=1, limit=1000))
        assert result.total_items == len(rows)
    async with running_server(db=db) as server, connect(server) as stub:
        newer = await create(stub, 1)
        assert newer.metadata is not None and newer.metadata.dispatch_id > highest


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_cli_serves_with_keys_and_stops_cleanly_on_signal(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    key = "cli-key-do-not-print"
    cli = await _start_cli("--db", str(tmp_path / "cli.db"), "--key", key)
    channel = _channel_for(cli.url)
    try:
        stub = MicrogridDispatchServiceStub(channel)
        response = await stub.list_microgrid_dispatches(
            ListMicrogridDispatchesRequest(microgrid_id=1), metadata=[("key", key)]
        )
        assert response.dispatches == []
        with expect_error(Status.UNAUTHENTICATED):
            await stub.list_microgrid_dispatches(ListMicrogridDispatchesRequest(microgrid_id=1))
    finally:
        channel.close()
        cli.process.send_signal(stop_signal)
        with anyio.fail_after(10):
            output = await cli.rest_of_output()
            returncode = await cli.process.wait()
        await cli.process.aclose()
    # SIGTERM is a requested stop (0); Ctrl-C an interruption (130, like every command).
    assert returncode == (130 if stop_signal == signal.SIGINT else 0), output
    assert b"stopping" in output
    assert key.encode() not in output
    assert b"Traceback" not in output


async def test_cli_rejects_half_a_tls_configuration() -> None:
    result = await anyio.run_process(
        [sys.executable, "-m", "dispatch_client.server", "--tls-cert", "x.pem"], check=False
    )
    assert result.returncode == 2
    assert b"--tls-key" in result.stderr


async def test_tls_server(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.set_alpn_protocols(["h2"])
    server_ctx = server_ssl_context(str(cert_file), str(key_file))
    async with running_server(ssl=server_ctx) as server:
        assert server.url == f"grpc://127.0.0.1:{server.port}"
        channel = Channel(server.host, server.port, ssl=client_ctx)
        try:
            assert await create(MicrogridDispatchServiceStub(channel)) is not None
        finally:
            channel.close()


async def test_in_memory_channel_runs_every_rpc() -> None:
    async with in_memory_channel() as channel:
        stub = MicrogridDispatchServiceStub(channel)
        created = await create(stub, 4)
        assert created.metadata is not None
        assert bytes(await get(stub, 4, created.metadata.dispatch_id)) == bytes(created)
        assert len(await list_all(stub, 4)) == 1


async def test_in_memory_channel_with_a_given_service() -> None:
    async with DispatchService() as service, in_memory_channel(service) as channel:
        await create(MicrogridDispatchServiceStub(channel), 4)
        assert len((await service.store.list(ListQuery(microgrid_id=4))).dispatches) == 1
    assert not service.store.is_open
