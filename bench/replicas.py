"""Reference server on PostgreSQL: create throughput and stream latency, 1 vs 3 replicas.

    .venv/bin/python -m bench.replicas [--quick] [--output bench/results-replicas.json]

Starts a throwaway PostgreSQL server (`TemporaryPostgres`: Debian's binaries,
durability off as in the tests) and, per setup, that many
`python -m dispatch_client.server --db postgresql://...` processes on free
loopback ports. Then, for each setup:

- create throughput: `--tasks` tasks, each with its own `Client`, spread
  round robin over the replicas, create as many dispatches as they can for
  `--seconds`; the rate is creates per second (median of the rounds);
- stream latency: one stream open on every replica, then `--events` creates,
  one after the other, each through the next replica in turn; for each create
  the time from sending it until each replica's stream yields its event. Split
  into the replica that took the write ("same") and the others ("other").

Runs with the project's own environment (`make install`; it needs the
`postgresql` extra), not bench/.venv: no official client is involved.
Bounded: every phase has a fixed duration or count and a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Any

from dispatch_client import Client
from dispatch_client.server.pg_store import migrate
from dispatch_client.server.pgtemp import TemporaryPostgres, free_port

_READY_TIMEOUT_S = 30


@contextmanager
def replica_processes(url: str, count: int) -> Any:
    """Start `count` server processes on one database; yield their URLs."""
    with ExitStack() as stack:
        urls = []
        for _ in range(count):
            port = free_port()
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dispatch_client.server",
                    "--port",
                    str(port),
                    "--db",
                    url,
                    "--log-level",
                    "WARNING",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(_stop, process)
            urls.append(f"grpc://127.0.0.1:{port}?ssl=false")
        asyncio.run(_wait_ready(urls))
        yield urls


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _wait_ready(urls: list[str]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    for url in urls:
        async with Client(url, auth_key="bench") as client:
            while True:
                try:
                    await client.get(1, 1)
                except Exception as error:
                    if type(error).__name__ == "NotFound":
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"replica {url} did not come up") from error
                    await asyncio.sleep(0.1)
                else:
                    break


async def create_throughput(urls: list[str], tasks: int, seconds: float) -> float:
    """Creates per second by `tasks` clients spread over `urls`."""
    done = 0
    stop_at = 0.0

    async def worker(index: int) -> None:
        nonlocal done
        async with Client(urls[index % len(urls)], auth_key="bench") as client:
            await client.create(9, "WARMUP", "NOW", dt.timedelta(minutes=5), [1])
            await ready.wait()
            while time.monotonic() < stop_at:
                await client.create(9, "BENCH", "NOW", dt.timedelta(minutes=5), [1, 2])
                done += 1

    ready = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        for index in range(tasks):
            group.create_task(worker(index))
        await asyncio.sleep(0.5)  # let every client connect and warm up
        started = time.monotonic()
        stop_at = started + seconds
        ready.set()
    return done / (time.monotonic() - started)


async def stream_latency(urls: list[str], events: int) -> dict[str, list[float]]:
    """Seconds from sending a create until each replica's stream has the event."""
    microgrid = 10
    same: list[float] = []
    other: list[float] = []
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(url, auth_key="bench")) for url in urls]
        streams = [client.stream(microgrid) for client in clients]
        queues: list[asyncio.Queue[tuple[int, float]]] = [asyncio.Queue() for _ in urls]

        async def follow(index: int) -> None:
            async for event in streams[index]:
                metadata = event.dispatch.metadata
                if metadata is not None:
                    queues[index].put_nowait((metadata.dispatch_id, time.perf_counter()))

        readers = [asyncio.create_task(follow(i)) for i in range(len(urls))]
        try:
            # Streams are open once a probe create shows up on every replica.
            await clients[0].create(microgrid, "PROBE", "NOW", None, [1])
            for queue in queues:
                await asyncio.wait_for(queue.get(), 10)
            for n in range(events):
                writer = n % len(urls)
                sent = time.perf_counter()
                created = await clients[writer].create(microgrid, "LATENCY", "NOW", None, [1])
                assert created.metadata is not None
                for index, queue in enumerate(queues):
                    dispatch_id, arrived = await asyncio.wait_for(queue.get(), 10)
                    assert dispatch_id == created.metadata.dispatch_id
                    (same if index == writer else other).append(arrived - sent)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return {"same": same, "other": other}


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: short and small")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--tasks", type=int, default=24, help="concurrent creating clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=150, help="creates for the latency run")
    parser.add_argument("--output", type=Path, default=Path("bench/results-replicas.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seconds, args.rounds, args.events = 4, 1.0, 1, 12
        args.output = args.output.with_name("results-replicas-quick.json")

    rows: list[dict[str, Any]] = []
    with TemporaryPostgres() as postgres:
        for count in args.replicas:
            url = postgres.create_database(f"bench_{count}")
            migrate(url)
            with replica_processes(url, count) as urls:
                rates = [
                    asyncio.run(create_throughput(urls, args.tasks, args.seconds))
                    for _ in range(args.rounds)
                ]
                latency = asyncio.run(stream_latency(urls, args.events))
            row = {
                "replicas": count,
                "creates_per_s": round(statistics.median(rates), 1),
                "creates_per_s_rounds": [round(r, 1) for r in rates],
                "latency_same_ms_p50": _ms(latency["same"], 0.5),
                "latency_same_ms_p95": _ms(latency["same"], 0.95),
                "latency_other_ms_p50": _ms(latency["other"], 0.5),
                "latency_other_ms_p95": _ms(latency["other"], 0.95),
                "latency_other_ms_max": _ms(latency["other"], 1.0),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    result = {
        "what": "reference server on PostgreSQL: create throughput and stream latency",
        "machine": f"{os.cpu_count()} cores",
        "settings": {
            "tasks": args.tasks,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "events": args.events,
        },
        "rows": rows,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "\n| replicas | creates/s | event latency, same replica p50/p95 | other replicas p50/p95 |"
    )
    print("| --- | --- | --- | --- |")
    for row in rows:
        other = (
            f"{row['latency_other_ms_p50']} / {row['latency_other_ms_p95']} ms"
            if row["latency_other_ms_p50"] is not None
            else "-"
        )
        print(
            f"| {row['replicas']} | {row['creates_per_s']} |"
            f" {row['latency_same_ms_p50']} / {row['latency_same_ms_p95']} ms | {other} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
