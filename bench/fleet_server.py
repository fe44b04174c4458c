"""The reference server for the fleet benchmark, reporting its open stream count.

    python -m bench.fleet_server DB

Runs `dispatch_client.server` on a free loopback port and prints, on stdout,
`URL <url>` once it listens, then `OPEN <count> <unix time>` whenever the
number of subscribed streams changes (checked every 2 ms). The fleet
benchmark takes "all streams open" from here: the moment the server has
registered every subscription, the same definition for both clients.
"""

from __future__ import annotations

import asyncio
import sys
import time

from dispatch_client.server.app import DispatchServer, serve

POLL_S = 0.002


async def _report(server: DispatchServer) -> None:
    last = -1
    while True:
        count = server.service.open_stream_count()
        if count != last:
            print(f"OPEN {count} {time.time()!r}", flush=True)
            last = count
        await asyncio.sleep(POLL_S)


def main() -> None:
    tasks: list[asyncio.Task[None]] = []

    def ready(server: DispatchServer) -> None:
        print(f"URL {server.url}", flush=True)
        tasks.append(asyncio.get_running_loop().create_task(_report(server)))

    asyncio.run(
        serve(
            host="127.0.0.1", port=0, db=sys.argv[1], stream_buffer_size=1_000_000, on_ready=ready
        )
    )


if __name__ == "__main__":
    main()
