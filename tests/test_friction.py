"""Small frictions a new user met: quiet library logging, quiet stream leaves, hints that help."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys

import anyio
import pytest

import dispatch_client.testing
from dispatch_client import Client, Unavailable
from dispatch_client.testing import running_server

pytestmark = pytest.mark.anyio


def test_a_library_without_logging_setup_prints_nothing() -> None:
    # Without a NullHandler on "dispatch_client", logging's last-resort handler
    # would print this WARNING (a reconnect, say) on the app's stderr.
    code = (
        "import logging, dispatch_client\n"
        "logging.getLogger('dispatch_client.streaming').warning('stream broke, reconnecting')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stderr == ""
    handlers = logging.getLogger("dispatch_client").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


async def test_a_client_leaving_a_stream_is_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="grpclib.server")
    async with running_server() as server, Client(server.url) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:

                async def leave_when_open() -> None:
                    await server.service.wait_for_streams(1, 1)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(leave_when_open)
                async for _ in client.stream(1):
                    pass
            await client.disconnect()
            await server.service.wait_for_streams(1, 0)
            await anyio.sleep(0.1)  # grpclib logs after the handler has ended
    leaves = [r for r in caplog.records if r.getMessage().startswith("Request was cancelled")]
    assert leaves, "the leave is still logged, at DEBUG"
    assert all(r.levelno == logging.DEBUG for r in leaves)


async def test_a_leave_is_not_shown_when_info_is_the_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server() as server, Client(server.url) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:

                async def leave_when_open() -> None:
                    await server.service.wait_for_streams(1, 1)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(leave_when_open)
                async for _ in client.stream(1):
                    pass
            await client.disconnect()
            await server.service.wait_for_streams(1, 0)
            await anyio.sleep(0.1)
    assert not [r for r in caplog.records if "cancelled" in r.getMessage()]


def test_the_testing_plugin_is_registered_by_its_entry_point_only() -> None:
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert any(p.value == "dispatch_client.testing" for p in plugins)
    doc = dispatch_client.testing.__doc__ or ""
    # Listing it in pytest_plugins as well makes pytest abort: the docs must not advise it.
    assert 'pytest_plugins = ["dispatch_client.testing"]' not in doc.replace("\n", " ")
    assert "entry point" in doc


async def test_tls_against_a_plaintext_server_says_so_and_suggests_ssl_false() -> None:
    async with running_server() as server:
        tls_url = server.url.removesuffix("?ssl=false")
        async with Client(tls_url) as client:
            with pytest.raises(Unavailable) as error:
                await client.get(1, 1)
    assert "does not speak TLS" in error.value.message
    assert "?ssl=false" in error.value.message
