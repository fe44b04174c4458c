"""No API key or sign secret in any log line, at DEBUG, on either side, third-party loggers included.

The server runs in a process of its own at `--log-level DEBUG` (its stderr
is every record it logs); the client runs here with every logger at DEBUG.
hpack logs each header it encodes or decodes at DEBUG, so without the
redaction the key would appear on both sides many times over.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest

from dispatch_client import Client, Unauthenticated

pytestmark = pytest.mark.anyio

KEY = "key-Zq8vW3xY1-secret"
OTHER_KEY = "key-not-accepted-Pq7rT2"  # a key the server does not know must not show either
SECRET = "sign-Hs9kL4mN0-secret"
FORMS = (KEY, OTHER_KEY, SECRET, "Zq8vW3xY1", "Pq7rT2", "Hs9kL4mN0")


@pytest.fixture
def server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dispatch_client.server",
            "--port",
            "0",
            "--key",
            KEY,
            "--sign-secret",
            SECRET,
            "--log-level",
            "DEBUG",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    url = None
    for line in process.stderr:
        if "connect with" in line:
            url = line.rsplit(" ", 1)[-1].strip()
            break
    assert url is not None
    try:
        yield url, process
    finally:
        process.kill()
        process.wait()


async def test_no_secret_in_any_log_line_on_either_side(
    server: tuple[str, subprocess.Popen[str]], caplog: pytest.LogCaptureFixture
) -> None:
    url, process = server
    caplog.set_level(logging.DEBUG)  # the root logger: every logger propagates here
    with anyio.fail_after(20):
        async with Client(url, auth_key=KEY, sign_secret=SECRET) as client:
            created = await client.create(1, "T", "NOW", dt.timedelta(minutes=1), [1])
            assert created.metadata is not None
            await client.get(1, created.metadata.dispatch_id)
            async for _ in client.list(1):
                pass
            async with anyio.create_task_group() as tasks:

                async def change() -> None:
                    await anyio.sleep(0.2)
                    await client.delete(1, created.metadata.dispatch_id)  # type: ignore[union-attr]

                tasks.start_soon(change)
                async for event in client.stream(1):
                    assert event.dispatch == created or event.dispatch.data == created.data
                    break
        async with Client(url, auth_key=OTHER_KEY, sign_secret="wrong-" + SECRET) as stranger:
            with pytest.raises(Unauthenticated):
                await stranger.get(1, 1)

    process.terminate()
    _, server_log = process.communicate(timeout=20)
    client_log = caplog.text + "\n".join(r.getMessage() for r in caplog.records)

    # Both sides logged the HTTP/2 exchange: the check looks at real DEBUG output.
    assert "hpack" in server_log and "hpack" in {r.name.split(".")[0] for r in caplog.records}
    for form in FORMS:
        assert form not in server_log, f"server log holds {form!r}"
        assert form not in client_log, f"client log holds {form!r}"
    # The rejection is logged, by reason, not by value.
    assert "API key not accepted" in server_log
