"""Profile our client's side of one scenario with cProfile, against a server process.

    python -m bench.profiling get|create|list|stream [--calls N] [--top N] [--pure]
                              [--consumers N]

Prints where the client's CPU time goes, per package (betterproto2, grpclib,
h2, asyncio, dispatch_client, ...) and per function. `--pure` turns the
fast decode path off (betterproto2 only), to see what it saves.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .clients import use_pure_decode
from .run import LIST_MICROGRID, Server, populate


def _package(filename: str) -> str:
    for marker, name in (
        ("betterproto2", "betterproto2"),
        ("grpclib", "grpclib"),
        ("/h2/", "h2"),
        ("/hpack/", "hpack"),
        ("_fastdecode", "fast decode (upb -> dataclasses)"),
        ("dispatch_client/_proto", "generated (_proto)"),
        ("dispatch_client", "dispatch_client facade"),
        ("anyio", "anyio"),
        ("asyncio", "asyncio"),
        ("google/protobuf", "protobuf"),
    ):
        if marker in filename:
            return name
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins"
    return "other"


def print_profile(stats: pstats.Stats, top: int) -> None:
    raw: Any = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())
    by_package: collections.Counter[str] = collections.Counter()
    for (filename, _, _), entry in raw.items():
        by_package[_package(filename)] += entry[2]
    print(f"total profiled CPU {total:.3f} s; self time by package:")
    for package, seconds in by_package.most_common():
        print(f"  {100 * seconds / total:5.1f}%  {package}")
    print()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


async def scenario(name: str, url: str, calls: int, pure: bool, consumers: int = 10) -> None:
    from dispatch_client import Client

    if pure:
        use_pure_decode()
    client = Client(url, auth_key="bench")
    try:
        if name == "get":
            await client.get(LIST_MICROGRID, 1)
            with _profiled():
                await asyncio.gather(
                    *(_repeat(client.get, calls // 64, LIST_MICROGRID, 1) for _ in range(64))
                )
        elif name == "create":
            payload = {"power_w": 5000.0, "mode": "charge"}

            async def one() -> None:
                await client.create(
                    100,
                    "BENCH",
                    "NOW",
                    __import__("datetime").timedelta(hours=1),
                    [1, 2, 3],
                    payload=payload,
                )

            await one()
            with _profiled():
                await asyncio.gather(*(_repeat(one, calls // 16) for _ in range(16)))
        elif name == "list":
            await client.get(LIST_MICROGRID, 1)
            with _profiled():
                async for _ in client.list(LIST_MICROGRID, page_size=1000):
                    pass
        elif name == "stream":
            await _stream(client, url, calls, consumers=consumers)
        else:
            raise SystemExit(f"unknown scenario {name}")
    finally:
        await client.disconnect()


async def _stream(client: Any, url: str, events: int, consumers: int) -> None:
    """`consumers` consumers of one microgrid; a producer process creates `events` dispatches."""
    microgrid = 2000
    seen = [asyncio.Event() for _ in range(consumers)]

    async def consume(index: int) -> None:
        async for event in client.stream(microgrid):
            if event.dispatch.data.type == "END":
                return
            seen[index].set()

    tasks = [asyncio.create_task(consume(i)) for i in range(consumers)]
    while not all(s.is_set() for s in seen):
        await client.create(microgrid, "WARMUP", "NOW", None, [1])
        await asyncio.sleep(0.2)
    spec = {"task": "produce", "client": "ours", "url": url, "microgrid": microgrid}
    spec |= {"events": events, "concurrency": 4}
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.worker", json.dumps(spec), stdout=asyncio.subprocess.DEVNULL
    )
    with _profiled():
        await asyncio.gather(*tasks)
    await producer.wait()


async def _repeat(call: Any, times: int, *args: Any) -> None:
    for _ in range(times):
        await call(*args)


class _profiled:
    enabled = True
    profiler: cProfile.Profile | None = None

    def __enter__(self) -> None:
        _profiled.profiler = cProfile.Profile() if self.enabled else None
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        if _profiled.profiler is not None:
            _profiled.profiler.enable()

    def __exit__(self, *exc: object) -> None:
        if _profiled.profiler is not None:
            _profiled.profiler.disable()
        overhead = " (with profiler overhead)" if self.enabled else ""
        print(
            f"wall {time.perf_counter() - self.wall:.3f} s, "
            f"CPU {time.process_time() - self.cpu:.3f} s{overhead}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling")
    parser.add_argument("scenario", choices=("get", "create", "list", "stream"))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--list-size", type=int, default=10_000)
    parser.add_argument("--pure", action="store_true", help="turn the fast decode path off")
    parser.add_argument("--consumers", type=int, default=10, help="stream consumers")
    parser.add_argument("--no-profile", action="store_true", help="only time the scenario")
    args = parser.parse_args()
    _profiled.enabled = not args.no_profile
    with tempfile.TemporaryDirectory(prefix="dispatch-profile-") as tmp:
        db = Path(tmp) / "profile.db"
        asyncio.run(populate(db, args.list_size if args.scenario == "list" else 10))
        server = Server(db)
        try:
            asyncio.run(scenario(args.scenario, server.url, args.calls, args.pure, args.consumers))
        finally:
            server.stop()
    if _profiled.profiler is not None:
        print_profile(pstats.Stats(_profiled.profiler), args.top)


if __name__ == "__main__":
    main()
