"""The client under `trio.run` and anyio's trio backend, its loop thread's life, and the extra.

These tests start event loops themselves (no anyio pytest plugin), like an
application would.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import anyio
import pytest
import trio
from test_streaming_helpers import wait_until

import dispatch_client
from dispatch_client import (
    Client,
    ClientNotConnected,
    Dispatch,
    DispatchApiError,
    Event,
    Unavailable,
)
from dispatch_client.testing import ThreadedServer, threaded_server

MG = 1


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dispatch-client-loop-")]


def wait_for_no_loop_thread(limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while loop_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop_threads() == []


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with threaded_server() as server:
        yield server


async def round_trip(client: Client, kind: str) -> list[str]:
    created = await client.create(MG, kind, "NOW", None, [1])
    assert created.metadata is not None
    assert await client.get(MG, created.metadata.dispatch_id) == created
    return [d.data.type async for d in client.dispatches(MG) if d.data is not None]


def test_under_trio_run(server: ThreadedServer) -> None:
    async def main() -> list[str]:
        async with Client(server.url) as client:
            return await round_trip(client, "TRIO_RUN")

    assert "TRIO_RUN" in trio.run(main)
    wait_for_no_loop_thread()


def test_under_anyio_with_the_trio_backend(server: ThreadedServer) -> None:
    async def main() -> list[Event]:
        async with Client(server.url) as client:
            events = []
            async with anyio.create_task_group() as tg:

                async def create_when_subscribed() -> None:
                    await wait_until(lambda: server.service.open_stream_count(MG) > 0)
                    await client.create(MG, "ANYIO_TRIO", "NOW", None, [1])

                tg.start_soon(create_when_subscribed)
                with anyio.fail_after(10):
                    async for event in client.stream(MG):
                        events.append(event.event)
                        break
            return events

    assert anyio.run(main, backend="trio") == [Event.CREATED]
    wait_for_no_loop_thread()


def test_one_client_across_trio_and_asyncio_runs(server: ThreadedServer) -> None:
    client = Client(server.url)

    async def use(kind: str) -> list[str]:
        try:
            return await round_trip(client, kind)
        finally:
            await client.disconnect()
            client.connect()

    assert "FIRST" in trio.run(use, "FIRST")
    assert "SECOND" in asyncio.run(use("SECOND"))
    assert "THIRD" in trio.run(use, "THIRD")
    wait_for_no_loop_thread()


def test_a_forgotten_client_stops_its_thread_when_collected(server: ThreadedServer) -> None:
    async def forget() -> None:
        client = Client(server.url)
        await round_trip(client, "FORGOTTEN")
        assert len(loop_threads()) == 1
        del client

    trio.run(forget)
    gc.collect()
    wait_for_no_loop_thread()


def test_calls_racing_disconnect_end_as_under_asyncio(server: ThreadedServer) -> None:
    async def main() -> list[object]:
        client = Client(server.url)
        warm_up = await client.create(MG, "WARM_UP", "NOW", None, [1])
        assert warm_up.metadata is not None
        outcomes: list[object] = []

        async def call() -> None:
            try:
                outcomes.append(await client.get(MG, warm_up.metadata.dispatch_id))
            except DispatchApiError as exc:
                outcomes.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(call)
                await trio.lowlevel.checkpoint()
                nursery.start_soon(client.disconnect)
        return outcomes

    outcomes = trio.run(main)
    # Finished first, refused (not connected), or cut off with the connection;
    # nothing hangs and nothing of asyncio's escapes into trio.
    assert len(outcomes) == 20
    assert all(isinstance(o, Dispatch | ClientNotConnected | Unavailable) for o in outcomes)
    wait_for_no_loop_thread()


def test_without_the_extra_the_error_says_what_to_install(
    server: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the bridge's requirements were missing: importing it fails.
    monkeypatch.delattr(dispatch_client, "_trio", raising=False)
    monkeypatch.setitem(sys.modules, "dispatch_client._trio", None)

    async def main() -> None:
        client = Client(server.url)
        with pytest.raises(ImportError, match=r"pip install 'dispatch_client\[trio\]'"):
            await client.get(MG, 1)
        with pytest.raises(ImportError, match="trio extra"):
            client.stream(MG)

    trio.run(main)


def test_too_old_trio_names_the_install_hint_once(
    server: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bridge is imported afresh while trio claims an unsupported version.
    monkeypatch.delattr(dispatch_client, "_trio", raising=False)
    monkeypatch.delitem(sys.modules, "dispatch_client._trio", raising=False)
    monkeypatch.setattr(trio, "__version__", "0.20.0")

    async def main() -> None:
        client = Client(server.url)
        with pytest.raises(ImportError) as info:
            await client.get(MG, 1)
        message = str(info.value)
        assert "0.20.0 is too old" in message
        assert message.count("pip install 'dispatch_client[trio]'") == 1

    trio.run(main)


def test_asyncio_programs_import_nothing_of_trio() -> None:
    program = textwrap.dedent(
        """
        import asyncio, sys
        from dispatch_client import Client
        from dispatch_client.testing import running_server

        async def main():
            async with running_server() as server, Client(server.url) as client:
                await client.create(1, "X", "NOW", None, [1])
                assert [d async for d in client.dispatches(1)]
                async for _ in client.watch(1):
                    break

        asyncio.run(main())
        loaded = sorted(
            name for name in ("trio", "trio_asyncio", "outcome", "dispatch_client._trio")
            if name in sys.modules
        )
        print(loaded)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
