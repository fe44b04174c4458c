"""A reference server in a process of its own, to kill, stop, pause and restart (holds no tests).

`python -m dispatch_client.server` on a SQLite file and a fixed port, so a
restart serves the same data at the same URL. Used by the chaos test and the
stream-gap reproductions, where the client's event loop must be able to block
without blocking the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio

READY_LIMIT = 20.0
"""Seconds a starting server may take to accept connections."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """One reference server process at a time, on the same database file and port."""

    def __init__(self, db: Path, *args: str, port: int | None = None) -> None:
        self.db = db
        self.port = port or free_port()
        self.args = args
        self.log = db.with_suffix(".log")
        self.starts = 0
        self._process: anyio.abc.Process | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}?ssl=false"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> float:
        """Start the server and wait until it accepts connections; return when it did (monotonic)."""
        assert not self.running
        if self._process is not None:
            await self._process.aclose()
        with self.log.open("ab") as log:
            self._process = await anyio.open_process(
                [
                    sys.executable,
                    "-m",
                    "dispatch_client.server",
                    "--db",
                    str(self.db),
                    "--port",
                    str(self.port),
                    "--log-level",
                    "WARNING",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.starts += 1
        self.paused = False
        with anyio.fail_after(READY_LIMIT):
            while not accepts(self.port):
                if self._process.returncode is not None:
                    raise RuntimeError(
                        f"server exited with {self._process.returncode}: {self.tail()}"
                    )
                await anyio.sleep(0.01)
        return time.monotonic()

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, their connections just die."""
        await self._end(signal.SIGKILL)

    async def terminate(self) -> None:
        """SIGTERM: the server closes its streams and stops."""
        await self._end(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)
        self.paused = False

    async def _end(self, how: signal.Signals) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        if self.paused:
            self.resume()
        process.send_signal(how)
        with anyio.fail_after(15):
            await process.wait()

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.kill()
        if self._process is not None:
            await self._process.aclose()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
