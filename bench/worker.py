"""One measurement of one client, in a process of its own.

    python -m bench.worker '{"task": "unary", "client": "ours", ...}'

Prints progress lines (`READY`) and finally one JSON line starting with
`RESULT ` on stdout. The orchestrator (`bench.run`) starts these; they are not
meant to be run by hand except when debugging a single measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .clients import Adapter, adapter
from .stats import percentile

Task = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
TASKS: dict[str, Task] = {}


def task(func: Task) -> Task:
    TASKS[func.__name__.removeprefix("task_")] = func
    return func


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


async def _opened(spec: dict[str, Any]) -> Adapter:
    client = adapter(spec["client"])
    await client.open(spec["url"])
    return client


async def _gather_workers(concurrency: int, calls_each: int, call: Callable[[], Awaitable[Any]]):
    async def worker() -> None:
        for _ in range(calls_each):
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _each_once(
    concurrency: int, ids: list[int], call: Callable[[int], Awaitable[Any]]
) -> float:
    """Call `call(id)` once per id from `concurrency` tasks; return the process CPU time."""
    left = iter(ids)

    async def worker() -> None:
        for dispatch_id in left:
            await call(dispatch_id)

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu


@task
async def task_unary(spec: dict[str, Any]) -> dict[str, Any]:
    """get latency at concurrency 1, get throughput at 64, create throughput at 16."""
    client = await _opened(spec)
    mid, did = spec["get_microgrid"], spec["get_dispatch"]
    try:
        for _ in range(spec["warmup"]):
            await client.get(mid, did)
        latencies = []
        for _ in range(spec["latency_calls"]):
            start = time.perf_counter()
            await client.get(mid, did)
            latencies.append(time.perf_counter() - start)

        conc, each = spec["get_concurrency"], spec["get_calls_each"]
        await _gather_workers(conc, 2, lambda: client.get(mid, did))  # warm the streams up
        cpu, start = time.process_time(), time.perf_counter()
        await _gather_workers(conc, each, lambda: client.get(mid, did))
        get_wall, get_cpu = time.perf_counter() - start, time.process_time() - cpu

        cmid, conc, each = spec["create_microgrid"], spec["create_concurrency"], spec["create_each"]
        payload = {"power_w": 5000.0, "mode": "charge"}
        await client.create(cmid, "BENCH", payload)  # build (and for raw: cache) the request
        created: list[int] = []

        async def create() -> None:
            created.append(await client.create(cmid, "BENCH", payload))

        cpu, start = time.process_time(), time.perf_counter()
        await _gather_workers(conc, each, create)
        create_wall, create_cpu = time.perf_counter() - start, time.process_time() - cpu

        # Each created dispatch is updated once, then deleted once, by `conc` tasks.
        client.prepare(cmid, created)
        update_cpu = await _each_once(conc, created, lambda did: client.update(cmid, did))
        delete_cpu = await _each_once(conc, created, lambda did: client.delete(cmid, did))
    finally:
        await client.close()
    get_calls = spec["get_concurrency"] * spec["get_calls_each"]
    create_calls = spec["create_concurrency"] * spec["create_each"]
    return {
        "update_cpu_us": 1e6 * update_cpu / len(created),
        "delete_cpu_us": 1e6 * delete_cpu / len(created),
        "get_p50_ms": 1000 * percentile(latencies, 50),
        "get_p99_ms": 1000 * percentile(latencies, 99),
        "get_throughput": get_calls / get_wall,
        "get_cpu_us": 1e6 * get_cpu / get_calls,
        "create_throughput": create_calls / create_wall,
        "create_cpu_us": 1e6 * create_cpu / create_calls,
    }


@task
async def task_list(spec: dict[str, Any]) -> dict[str, Any]:
    """List every dispatch of a microgrid, keeping them all; then the peak RSS."""
    client = await _opened(spec)
    try:
        await client.first_page(spec["microgrid"], 1)  # connect and warm up
        gc.collect()
        cpu, start = time.process_time(), time.perf_counter()
        found = await client.list_all(spec["microgrid"], spec["page_size"])
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await client.close()
    if len(found) != spec["expected"]:
        raise RuntimeError(f"listed {len(found)} dispatches, expected {spec['expected']}")
    return {
        "list_wall_s": wall,
        "list_cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _decoder(client: str) -> Callable[[bytes], list[Any]]:
    if client in ("ours", "ours-pure"):
        # What our client's channel does with a response: its codec's decode.
        from dispatch_client._fastdecode import ResponseCodec
        from dispatch_client.wire import ListMicrogridDispatchesResponse

        codec = ResponseCodec() if client == "ours" else ResponseCodec(fast=False)

        def ours(raw: bytes) -> list[Any]:
            return codec.decode(raw, ListMicrogridDispatchesResponse).dispatches

        return ours
    from frequenz.api.dispatch.v1 import dispatch_pb2
    from frequenz.client.dispatch.types import Dispatch

    def official(raw: bytes) -> list[Any]:
        response = dispatch_pb2.ListMicrogridDispatchesResponse.FromString(raw)
        return [Dispatch.from_protobuf(d) for d in response.dispatches]

    return official


def _decode(spec: dict[str, Any]) -> dict[str, Any]:
    raw = Path(spec["file"]).read_bytes()
    decode = _decoder(spec["client"])
    decoded = decode(raw)
    if len(decoded) != spec["expected"]:
        raise RuntimeError(f"decoded {len(decoded)} dispatches, expected {spec['expected']}")
    result: dict[str, Any] = {}
    if spec["client"] == "ours":
        reference = _decoder("ours-pure")(raw)
        result["identical"] = decoded == reference and repr(decoded) == repr(reference)
        result["fast"] = _fast_decode_on()
    times = []
    for _ in range(spec["rounds"]):
        gc.collect()
        # CPU time: a decode is pure CPU work, and CPU time is the steadier
        # measure on a machine that other work shares.
        start = time.process_time()
        for _ in range(spec["repeat"]):
            decode(raw)
        times.append((time.process_time() - start) / spec["repeat"])
    result["decode_ms"] = [1000 * t for t in times]
    return result


def _fast_decode_on() -> bool:
    from dispatch_client._fastdecode import enabled

    return enabled()


@task
async def task_decode(spec: dict[str, Any]) -> dict[str, Any]:
    """Decode one list response into domain objects, `rounds` times after a warm-up."""
    return _decode(spec)


@task
async def task_consume(spec: dict[str, Any]) -> dict[str, Any]:
    """Stream events to `consumers` consumers until each has seen the END sentinel."""
    client = await _opened(spec)
    mid, count = spec["microgrid"], spec["consumers"]
    warmed = [asyncio.Event() for _ in range(count)]
    received: list[list[float]] = [[] for _ in range(count)]
    last_receive = [0.0] * count
    first_sent: list[float] = []
    errors: list[str] = []

    async def consume(index: int) -> None:
        try:
            async for kind, sent in client.events(mid):
                now = time.time()
                if kind == "WARMUP":
                    warmed[index].set()
                elif kind == "END":
                    return
                elif sent is not None:
                    if not first_sent or sent < first_sent[0]:
                        first_sent[:] = [sent]
                    received[index].append(now - sent)
                    last_receive[index] = now
        except Exception as exc:  # an overflow or a broken stream is a result, not a crash
            errors.append(f"{type(exc).__name__}: {exc}")

    try:
        tasks = [asyncio.create_task(consume(i)) for i in range(count)]
        # Until every consumer's stream is open, a create may not reach it.
        for _ in range(100):
            await client.create(mid, "WARMUP", {})
            for _ in range(30):
                if all(w.is_set() for w in warmed):
                    break
                await asyncio.sleep(0.01)
            else:
                continue
            break
        else:
            raise RuntimeError("the consumers never saw a warm-up event")
        cpu = time.process_time()
        print("READY", flush=True)
        await asyncio.wait_for(asyncio.gather(*tasks), spec["timeout"])
        cpu = time.process_time() - cpu
    finally:
        await client.close()
    latencies = [lat for per_consumer in received for lat in per_consumer]
    delivered = len(latencies)
    span = max(last_receive) - first_sent[0] if first_sent else float("nan")
    return {
        "delivered": delivered,
        "expected": count * spec["events"],
        "events_per_s": delivered / span if delivered else 0.0,
        "latency_p50_ms": 1000 * percentile(latencies, 50) if latencies else float("nan"),
        "latency_p99_ms": 1000 * percentile(latencies, 99) if latencies else float("nan"),
        "cpu_us_per_event": 1e6 * cpu / delivered if delivered else float("nan"),
        "errors": errors[:3],
    }


def _rss_mb() -> float:
    """The resident set size now, in MB (Linux; the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return pages * resource.getpagesize() / 2**20


@task
async def task_fleet(spec: dict[str, Any]) -> dict[str, Any]:
    """Follow the streams of `microgrids` microgrids at once until each saw `events_each` events.

    Prints `START <unix time>` before opening the first stream; the
    orchestrator, which learns from the server when all are open, then writes
    one line to stdin; once its client is done opening (ours: caught up)
    it prints `READY` and the producer runs.
    """
    client = await _opened(spec)
    first, count, each = spec["microgrid"], spec["microgrids"], spec["events_each"]
    loop = asyncio.get_running_loop()
    go = asyncio.Event()

    def wait_for_go() -> None:
        sys.stdin.readline()
        loop.call_soon_threadsafe(go.set)

    threading.Thread(target=wait_for_go, daemon=True).start()
    latencies: list[float] = []
    errors: list[str] = []
    left = [count]
    all_done = asyncio.Event()

    def done() -> None:
        left[0] -= 1
        if not left[0]:
            all_done.set()

    async def consume(microgrid: int) -> None:
        # A consumer that has its events keeps reading (nothing more comes)
        # until the timing is over: leaving its stream would close it, work
        # that ours does then (it closes a stream its last consumer leaves)
        # and the official client does not (its stream stays open), and that
        # is not delivering events.
        seen = 0
        try:
            async for _, sent in client.events(microgrid):
                if sent is None:
                    continue
                latencies.append(time.time() - sent)
                seen += 1
                if seen == each:
                    done()
        except Exception as exc:  # a broken stream is a result, not a crash
            errors.append(f"{type(exc).__name__}: {exc}")
            if seen < each:
                done()

    tasks: list[asyncio.Task[None]] = []
    try:
        print(f"START {time.time()!r}", flush=True)
        cpu = time.process_time()
        tasks = [asyncio.create_task(consume(first + i)) for i in range(count)]
        await go.wait()
        # What a client does to open its streams after the server holds them
        # all (ours: the catch-up list of each) is opening, not delivering
        # events: the events' timing starts once it is done (at once for the
        # official client, which does not catch up).
        settle = time.monotonic()
        ready_at = None
        while client.opening() and time.monotonic() - settle < spec["timeout"]:
            await asyncio.sleep(0.005)
            ready_at = time.time()
        settle = time.monotonic() - settle
        open_cpu = time.process_time() - cpu
        open_rss = _rss_mb()
        cpu = time.process_time()
        print("READY", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), spec["timeout"])
        cpu = time.process_time() - cpu
        rss = _rss_mb()
    finally:
        for pending in tasks:
            pending.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    delivered = len(latencies)
    return {
        "delivered": delivered,
        "expected": count * each,
        "fleet_cpu_us_per_event": 1e6 * cpu / delivered if delivered else float("nan"),
        "fleet_open_cpu_ms": 1000 * open_cpu,
        "fleet_settle_s": settle,
        "fleet_ready_at": ready_at,
        "fleet_open_rss_mb": open_rss,
        "fleet_rss_mb": rss,
        "fleet_latency_p50_ms": 1000 * percentile(latencies, 50) if latencies else float("nan"),
        "errors": errors[:3],
    }


@task
async def task_produce(spec: dict[str, Any]) -> dict[str, Any]:
    """Create `events` dispatches stamped with their send time, then the END sentinel."""
    client = await _opened(spec)
    # Round robin over `microgrids` consecutive microgrids (the fleet benchmark), else one.
    mid, spread = spec["microgrid"], spec.get("microgrids", 1)
    left = iter(range(spec["events"]))
    start = time.perf_counter()

    async def worker() -> None:
        for index in left:
            await client.create(mid + index % spread, "EVENT", {"sent": time.time()})

    try:
        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
        wall = time.perf_counter() - start
        if spread == 1:
            await client.create(mid, "END", {})
    finally:
        await client.close()
    return {"produce_rate": spec["events"] / wall}


def main() -> None:
    spec = json.loads(sys.argv[1])
    emit(asyncio.run(TASKS[spec["task"]](spec)))


if __name__ == "__main__":
    main()
