"""Running-state latency: from a run's scheduled start or stop to the consumer, ours vs frequenz-dispatch.

    bench/.venv/bin/python -m bench.running [--quick] [--output bench/results-running.json]

(`bench/bench.sh` sets up bench/.venv; `make bench` does not run this module.)

One reference server process (SQLite file). Per round, two consumer processes
follow the same microgrid at the same time:

- "ours": `Client.running(microgrid_id, type)` (dispatch_client);
- "frequenz-dispatch": `Dispatcher.new_running_state_event_receiver(type)`
  (frequenz-dispatch 1.0.4 on the official client), no merge strategy.

When both say READY (their stream is open and the snapshot taken), the
orchestrator creates `--dispatches` dispatches of that type through our
client: `--per-second` of them start at each whole second from a few seconds
ahead, each running for `--duration` seconds, so every dispatch gives one
start and one stop. Each consumer notes `time.time()` when a transition
reaches its loop and subtracts the scheduled instant (the start time, or start
time + duration; the first message per dispatch is its start, the second its
stop). Latency is therefore timer wake-up + delivery to the consumer; both
consumers run on the same machine and wait on the same instants, so load
hits both alike. Bounded: fixed counts, and every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

from .run import ROOT, Server
from .stats import percentile

MICROGRID = 7
KIND = "BENCH_RUNNING"
CONSUMERS = ("ours", "frequenz-dispatch")
KEY = "bench"


# -- consumers (each in a process of its own) ---------------------------------------------


def _scheduled(start: dt.datetime, duration: dt.timedelta, stop: bool) -> float:
    return (start + duration if stop else start).timestamp()


async def consume_ours(url: str, expected: int, limit_s: float) -> list[dict[str, Any]]:
    from dispatch_client import Client, Transition

    samples: list[dict[str, Any]] = []
    async with Client(url, auth_key=KEY) as client:
        transitions = client.running(MICROGRID, KIND)

        async def follow() -> None:
            async with aclosing(transitions):
                async for transition in transitions:
                    seen = time.time()
                    data = transition.dispatch.data
                    assert data is not None and data.start_time is not None
                    duration = dt.timedelta(seconds=data.duration or 0)
                    stop = transition.kind is Transition.STOPPED
                    scheduled = _scheduled(data.start_time, duration, stop)
                    samples.append({"stop": stop, "latency": seen - scheduled})
                    if len(samples) == expected:
                        return

        async with asyncio.timeout(limit_s), asyncio.TaskGroup() as group:
            group.create_task(follow())
            # The hub's state, not an event of ours: poll it until the stream is open.
            while not (MICROGRID in client.streams and client.streams[MICROGRID].connected):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            print("READY", flush=True)
    return samples


async def consume_frequenz(url: str, expected: int, limit_s: float) -> list[dict[str, Any]]:
    from frequenz.client.common.microgrid import MicrogridId
    from frequenz.dispatch import Dispatcher

    samples: list[dict[str, Any]] = []
    starts_seen: set[int] = set()
    async with Dispatcher(microgrid_id=MicrogridId(MICROGRID), server_url=url, auth_key=KEY) as d:
        receiver = await d.new_running_state_event_receiver(KIND)
        # The Dispatcher has fetched the dispatches; give its stream a moment to open.
        await asyncio.sleep(1.0)
        print("READY", flush=True)
        async with asyncio.timeout(limit_s):
            async for dispatch in receiver:
                seen = time.time()
                stop = int(dispatch.id) in starts_seen
                starts_seen.add(int(dispatch.id))
                scheduled = _scheduled(dispatch.start_time, dispatch.duration, stop)
                samples.append({"stop": stop, "latency": seen - scheduled})
                if len(samples) == expected:
                    break
    return samples


def consumer_main(name: str, url: str, expected: int, timeout: float) -> None:
    consume = consume_ours if name == "ours" else consume_frequenz
    try:
        samples = asyncio.run(consume(url, expected, timeout))
    except TimeoutError:
        samples = []
    print("RESULT " + json.dumps(samples), flush=True)


# -- the orchestrator ---------------------------------------------------------------------


class Consumer:
    """A consumer process; `result()` waits for its samples."""

    def __init__(self, name: str, url: str, expected: int, timeout: float) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.running",
                "--consumer",
                name,
                url,
                str(expected),
                str(timeout),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.errors: list[str] = []
        assert self.process.stderr is not None
        threading.Thread(
            target=lambda: self.errors.extend(self.process.stderr),  # type: ignore[arg-type]
            daemon=True,
        ).start()
        self.timeout = timeout

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "READY":
            self.process.kill()
            raise RuntimeError(
                f"{self.name} did not get ready: {line}{''.join(self.errors)[-3000:]}"
            )

    def result(self) -> list[dict[str, Any]]:
        try:
            out, _ = self.process.communicate(timeout=self.timeout + 30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]
        raise RuntimeError(f"{self.name} gave no result:\n{''.join(self.errors)[-3000:]}")


async def create_dispatches(url: str, count: int, per_second: int, duration: int) -> float:
    """Create the round's dispatches; return when the last of them stops (epoch seconds)."""
    from dispatch_client import Client

    first = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    last_stop = first
    async with Client(url, auth_key=KEY) as client:
        for index in range(count):
            start = first + dt.timedelta(seconds=index // per_second)
            await client.create(MICROGRID, KIND, start, dt.timedelta(seconds=duration), [index + 1])
            last_stop = max(last_stop, start + dt.timedelta(seconds=duration))
    return last_stop.timestamp()


def run_round(url: str, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    expected = 2 * args.dispatches
    timeout = args.dispatches / args.per_second + args.duration + 30
    consumers = [Consumer(name, url, expected, timeout) for name in CONSUMERS]
    try:
        for consumer in consumers:
            consumer.wait_ready()
        asyncio.run(create_dispatches(url, args.dispatches, args.per_second, args.duration))
        return {consumer.name: consumer.result() for consumer in consumers}
    finally:
        for consumer in consumers:
            if consumer.process.poll() is None:
                consumer.process.kill()
                consumer.process.wait()


def _ms(values: list[float], pct: float) -> float | None:
    return round(1000 * percentile(values, pct), 2) if values else None


def report(samples: dict[str, list[dict[str, Any]]], expected: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, got in samples.items():
        row: dict[str, Any] = {"transitions": len(got), "missing": expected - len(got)}
        for label, chosen in (
            ("all", got),
            ("start", [s for s in got if not s["stop"]]),
            ("stop", [s for s in got if s["stop"]]),
        ):
            latencies = [s["latency"] for s in chosen]
            row[label] = {"p50_ms": _ms(latencies, 50), "p99_ms": _ms(latencies, 99)}
        rows[name] = row
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\nscheduled start/stop -> consumer, {result['config']['rounds']} round(s) of "
        f"{result['config']['dispatches']} dispatches ({result['expected']} transitions per consumer)"
    )
    header = f"{'consumer':<20}{'p50 ms':>10}{'p99 ms':>10}{'start p50':>11}{'stop p50':>10}{'missing':>9}"
    print(header)
    print("-" * len(header))
    for name, row in result["consumers"].items():
        print(
            f"{name:<20}{row['all']['p50_ms']!s:>10}{row['all']['p99_ms']!s:>10}"
            f"{row['start']['p50_ms']!s:>11}{row['stop']['p50_ms']!s:>10}{row['missing']:>9}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--consumer"]:
        name, url, expected, timeout = argv[1:5]
        consumer_main(name, url, int(expected), float(timeout))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.running", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 dispatches, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dispatches", type=int, default=40, help="per round")
    parser.add_argument("--per-second", type=int, default=2, help="dispatches starting together")
    parser.add_argument("--duration", type=int, default=1, help="seconds each dispatch runs")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.dispatches = 1, 6
    output = args.output or ROOT / "bench" / (
        "results-running-quick.json" if args.quick else "results-running.json"
    )
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in CONSUMERS}
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(Path(workdir) / "running.sqlite")
        try:
            for index in range(args.rounds):
                print(f"round {index + 1}/{args.rounds} on {server.url}", file=sys.stderr)
                for name, got in run_round(server.url, args).items():
                    samples[name].extend(got)
                # Later rounds must not see this round's dispatches as running.
                time.sleep(args.duration + 0.5)
        finally:
            server.stop()
    from importlib import metadata

    expected = 2 * args.dispatches * args.rounds
    result = {
        "config": {
            "rounds": args.rounds,
            "dispatches": args.dispatches,
            "per_second": args.per_second,
            "duration_s": args.duration,
        },
        "expected": expected,
        "versions": {
            name: metadata.version(name)
            for name in ("dispatch-client", "frequenz-dispatch", "frequenz-client-dispatch")
        },
        "consumers": report(samples, expected),
    }
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
