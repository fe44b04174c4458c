"""Changes lost by a stream consumer across server restarts: ours vs the official client.

`python -m bench --only restarts` adds the row to the table; `python -m bench.restarts`
runs it alone and prints the figures.

One reference server process on a SQLite file and a fixed port; one consumer
process per client, both following the same microgrid with their defaults (ours:
`stream()`, which catches up after every gap; the official client: `stream()`,
which re-opens without catching up); one producer process (our client) creating
dispatches at a steady rate, each stamped with a sequence number, retrying a
create the server did not answer. While it runs, the server is killed (SIGKILL)
and restarted on the same port `restarts` times. Changes can only be made while
the server is up, so what a consumer loses is what was made between the server
coming back and its stream being open again. The server's list is the truth in
the end: a consumer lost every dispatch in it that it never received.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .clients import adapter

ROOT = Path(__file__).resolve().parent.parent
MICROGRID = 77
RATE = 50.0
"""Creates per second."""
UP_SECONDS = 1.5
DOWN_SECONDS = 0.5
END_WAIT = 30.0
"""Seconds a consumer may take to see the END sentinel after the producer made it."""
_DURATION = dt.timedelta(hours=1)
_CALL_TIMEOUT = dt.timedelta(seconds=2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Server:
    def __init__(self, db: Path) -> None:
        self.db, self.port = db, _free_port()
        self.url = f"grpc://127.0.0.1:{self.port}?ssl=false"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatch_client.server",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
                "--log-level",
                "ERROR",
            ],
            cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.01)
        raise RuntimeError("the server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def _worker(spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.restarts", "worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _result(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]
    raise RuntimeError(f"worker gave no result:\n{err[-3000:]}")


def measure_restarts(
    workdir: Path, clients: tuple[str, ...], *, restarts: int = 5, log: Any = print
) -> dict[str, dict[str, Any]]:
    """One run: every client's consumer against the same server, producer and restarts."""
    server = _Server(Path(tempfile.mkdtemp(dir=workdir)) / "restarts.db")
    server.start()
    consumers: dict[str, subprocess.Popen[str]] = {}
    try:
        for client in clients:
            spec = {"role": "consume", "client": client, "url": server.url}
            consumers[client] = _worker(spec)
            ready = consumers[client].stdout.readline()  # type: ignore[union-attr]
            if ready.strip() != "READY":
                raise RuntimeError(f"{client} consumer did not get ready: {ready}")
        count = int(RATE * (restarts + 1) * (UP_SECONDS + DOWN_SECONDS))
        producer = _worker({"role": "produce", "url": server.url, "count": count})
        for index in range(restarts):
            time.sleep(UP_SECONDS)
            log(f"restart {index + 1}/{restarts}")
            server.kill()
            time.sleep(DOWN_SECONDS)
            server.start()
        produced = _result(producer, 120)
        seen = {client: _result(process, END_WAIT + 30) for client, process in consumers.items()}
    finally:
        for process in consumers.values():
            if process.poll() is None:
                process.kill()
        server.kill()
    created = set(produced["created"])
    return {
        client: {
            "stream_lost_restarts": len(created - set(result["seen"])),
            "created": len(created),
            "errors": result["errors"],
        }
        for client, result in seen.items()
    }


# -- the worker processes ----------------------------------------------------------


async def _consume(spec: dict[str, Any]) -> dict[str, Any]:
    client = adapter(spec["client"])
    await client.open(spec["url"])
    seen: list[int] = []
    errors: list[str] = []
    warmed, ended = asyncio.Event(), asyncio.Event()

    async def follow() -> None:
        try:
            async for kind, sent in client.events(MICROGRID):
                if kind == "WARMUP":
                    warmed.set()
                elif kind == "END":
                    ended.set()
                    return
                elif sent is not None:
                    seen.append(int(sent))
        except Exception as exc:  # a stream that gave up is a result, not a crash
            errors.append(f"{type(exc).__name__}: {exc}")
            ended.set()

    task = asyncio.create_task(follow())
    try:
        while not warmed.is_set():
            await client.create(MICROGRID, "WARMUP", {})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(warmed.wait(), 0.5)
        print("READY", flush=True)
        try:
            await asyncio.wait_for(ended.wait(), 600)
        except TimeoutError:
            errors.append("never saw END")
    finally:
        task.cancel()
        await client.close()
    return {"seen": seen, "errors": errors[:3]}


async def _produce(spec: dict[str, Any]) -> dict[str, Any]:
    from dispatch_client import Client, DispatchApiError

    async def create(client: Client, kind: str, payload: dict[str, Any]) -> None:
        while True:  # until the server answers; a lost answer may leave a duplicate: fine
            try:
                await client.create(MICROGRID, kind, "NOW", _DURATION, [1], payload=payload)
                return
            except DispatchApiError:
                await asyncio.sleep(0.02)

    async with Client(spec["url"], call_timeout=_CALL_TIMEOUT) as client:
        start = time.monotonic()
        for seq in range(spec["count"]):
            await asyncio.sleep(max(0.0, start + seq / RATE - time.monotonic()))
            await create(client, "EVENT", {"sent": seq})
        # Let every consumer's stream come back before the sentinel.
        await asyncio.sleep(5)
        await create(client, "END", {})
        created = [
            int(d.data.payload.fields["sent"].number_value)
            async for d in client.dispatches(MICROGRID)
            if d.data is not None and d.data.type == "EVENT" and d.data.payload is not None
        ]
    return {"created": created}


def _worker_main(spec: dict[str, Any]) -> None:
    role = _consume if spec["role"] == "consume" else _produce
    print("RESULT " + json.dumps(asyncio.run(role(spec))), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        _worker_main(json.loads(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory(prefix="dispatch-restarts-") as tmp:
        figures = measure_restarts(Path(tmp), ("ours", "official"))
    for client, figure in figures.items():
        print(
            f"{client}: lost {figure['stream_lost_restarts']} of {figure['created']} changes"
            f" across 5 restarts {figure['errors'] or ''}"
        )


if __name__ == "__main__":
    main()
