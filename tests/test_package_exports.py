"""The package's public names: all importable, and the heavy ones loaded only on use."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import dispatch_client

# Modules a unary-only program should not load just by importing the package.
DEFERRED = (
    "anyio",
    "dateutil.rrule",
    *(f"dispatch_client.{m}" for m in ("recurrence", "schedule", "streaming")),
)


def _run(program: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("name", dispatch_client.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(dispatch_client, name) is not None
    assert name in dir(dispatch_client)


def test_lazy_names_are_the_module_objects() -> None:
    from dispatch_client import recurrence, schedule, streaming

    assert dispatch_client.runs is recurrence.runs
    assert dispatch_client.RunTransition is schedule.RunTransition
    assert dispatch_client.StreamHub is streaming.StreamHub


def test_unknown_name_raises_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = dispatch_client.no_such_name  # type: ignore[attr-defined]


def test_import_defers_stream_and_schedule_modules() -> None:
    loaded = _run(
        f"""
        import sys
        import dispatch_client
        print(sorted(m for m in {DEFERRED!r} if m in sys.modules))
        """
    )
    assert loaded == "[]"


def test_unary_calls_do_not_load_stream_modules() -> None:
    # The reference server needs anyio itself, so it runs in another process.
    program = """
        import asyncio, datetime as dt, re, subprocess, sys
        from dispatch_client import Client

        server = subprocess.Popen(
            [sys.executable, "-m", "dispatch_client.server", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            url = None
            for line in server.stderr:
                found = re.search(r"connect with (grpc://\\S+)", line)
                if found:
                    url = found.group(1)
                    break
            assert url, "the server did not say where it listens"

            async def main():
                async with Client(url) as client:
                    made = await client.create(1, "T", "NOW", dt.timedelta(minutes=1), [1])
                    got = await client.get(1, made.metadata.dispatch_id)
                    assert got == made
                    listed = [d async for d in client.dispatches(1)]
                    assert listed == [made]

            asyncio.run(main())
        finally:
            server.terminate()
            server.wait(10)
        print(sorted(m for m in DEFERRED if m in sys.modules))
        """
    loaded = _run(f"DEFERRED = {DEFERRED!r}\n" + textwrap.dedent(program))
    assert loaded == "[]"
