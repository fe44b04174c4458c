"""The reference server for the fleet benchmark, reporting its open stream count.

    python -m bench.fleet_server DB

Runs `dispatch_client.server` on a free loopback port and prints, on stdout,
`URL <url>` once it listens, then `OPEN <count> <unix time>` whenever the
number of subscribed streams changes (checked every 2 ms; the time is when
the count last changed, taken as the server subscribes or unsubscribes a
stream, not when the check ran: a check can run late while the server's loop
is busy). The fleet benchmark takes "all streams open" from here: the moment
the server has registered every subscription, the same definition for both
clients. Once a round's streams are all closed again, the server collects
its garbage before it reports 0 (the next round waits for that report): a
shared server's full collections, 50-170 ms, landed in a random later
round's opening, either client's, and made the row swing 0.85-1.17.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time

from dispatch_client.server.app import DispatchServer, serve
from dispatch_client.server.fanout import Subscription

POLL_S = 0.002


def _stamp_changes(server: DispatchServer) -> list[float]:
    """Record, in the returned one-item list, when a stream was last (un)subscribed."""
    changed = [time.time()]
    fanout = server.service._fanout
    subscribe, unsubscribe = fanout.subscribe, fanout.unsubscribe

    def stamped_subscribe(microgrid_id: int) -> Subscription:
        subscription = subscribe(microgrid_id)
        changed[0] = time.time()
        return subscription

    def stamped_unsubscribe(subscription: Subscription) -> None:
        unsubscribe(subscription)
        changed[0] = time.time()

    fanout.subscribe = stamped_subscribe  # type: ignore[method-assign]
    fanout.unsubscribe = stamped_unsubscribe  # type: ignore[method-assign]
    return changed


async def _report(server: DispatchServer, changed: list[float]) -> None:
    last = -1
    while True:
        count = server.service.open_stream_count()
        if count != last:
            if count == 0 and last > 0:
                # A round is over: its garbage is collected now, before the
                # next round is told to start, so no round (of either client)
                # pays for the one before with a full collection mid-opening.
                gc.collect()
            print(f"OPEN {count} {changed[0]!r}", flush=True)
            last = count
        await asyncio.sleep(POLL_S)


def main() -> None:
    tasks: list[asyncio.Task[None]] = []

    def ready(server: DispatchServer) -> None:
        print(f"URL {server.url}", flush=True)
        changed = _stamp_changes(server)
        tasks.append(asyncio.get_running_loop().create_task(_report(server, changed)))

    asyncio.run(
        serve(
            host="127.0.0.1", port=0, db=sys.argv[1], stream_buffer_size=1_000_000, on_ready=ready
        )
    )


if __name__ == "__main__":
    main()
