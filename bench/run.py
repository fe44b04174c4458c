"""Orchestrate the benchmark: one server process, one worker process per measurement.

`python -m bench [--quick] [--only GROUP ...] [--output FILE]`

The reference server runs in its own process (its CPU never counts as client
CPU, and both clients face the same server); every measurement of a client
runs in a fresh worker process (`bench.worker`), and the rounds of the two
clients are interleaved so a change in machine load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dispatch_client._fastdecode import ENV_VAR

from .stats import summary

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ("ours", "official")
PURE = "ours-pure"  # our client decoding with betterproto2 only, as without the `fast` extra
RAW = "raw"  # the generated stub on a stock grpclib channel: the floor under our facade
GROUPS = ("unary", "list", "stream", "fleet", "restarts", "decode", "import")
LIST_MICROGRID = 1
CREATE_MICROGRID = 100
STREAM_MICROGRID = 1000
FLEET_MICROGRID = 10_000
WORKER_TIMEOUT = 300.0


@dataclass(frozen=True)
class Config:
    """Sizes and round counts; `quick()` is a smoke run, not a measurement."""

    list_size: int = 10_000
    page_size: int = 1_000
    unary_rounds: int = 5
    latency_calls: int = 300
    get_concurrency: int = 64
    get_calls_each: int = 30
    create_concurrency: int = 16
    create_each: int = 20
    list_rounds: int = 3
    stream_events: int = 5_000
    stream_consumers: tuple[int, ...] = (1, 10)
    stream_rounds: int = 3
    producer_concurrency: int = 4
    decode_size: int = 1_000
    decode_rounds: int = 7
    decode_repeat: int = 3
    import_rounds: int = 15
    fleet_microgrids: int = 1_000
    fleet_events_each: int = 2
    fleet_rounds: int = 5
    restarts: int = 5
    restart_rounds: int = 2
    clients: tuple[str, ...] = CLIENTS

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        return cls(
            list_size=2_000,
            unary_rounds=1,
            latency_calls=100,
            get_calls_each=5,
            create_each=5,
            list_rounds=1,
            stream_events=300,
            stream_rounds=1,
            decode_rounds=2,
            decode_repeat=1,
            import_rounds=2,
            fleet_microgrids=50,
            fleet_rounds=1,
            restart_rounds=1,
            **overrides,
        )


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    core: bool = True  # one of the metrics, rather than an extra diagnostic


def metrics(config: Config) -> list[Metric]:
    n, p = f"{config.list_size:,}", f"{config.page_size:,}"
    rows = [
        Metric("get_p50_ms", "get latency p50, concurrency 1", "ms", False),
        Metric("get_p99_ms", "get latency p99, concurrency 1", "ms", False),
        Metric(
            "get_throughput", f"get throughput, concurrency {config.get_concurrency}", "/s", True
        ),
        Metric(
            "get_cpu_us", f"get client CPU per call, c={config.get_concurrency}", "us", False, False
        ),
        Metric(
            "create_throughput",
            f"create throughput, concurrency {config.create_concurrency}",
            "/s",
            True,
        ),
        Metric("create_cpu_us", "create client CPU per call", "us", False, False),
        Metric("update_cpu_us", "update client CPU per call, c=16", "us", False, False),
        Metric("delete_cpu_us", "delete client CPU per call, c=16", "us", False, False),
        Metric("list_wall_s", f"list {n} (pages of {p}): wall", "s", False),
        Metric("list_cpu_s", f"list {n} (pages of {p}): client CPU", "s", False),
    ]
    events = f"{config.stream_events:,}"
    for consumers in config.stream_consumers:
        who = f"stream {events} events to {consumers} consumer" + ("s" if consumers > 1 else "")
        rows += [
            Metric(f"stream{consumers}_events_per_s", f"{who}: delivered events/s", "/s", True),
            Metric(f"stream{consumers}_latency_p50_ms", f"{who}: latency p50", "ms", False),
            Metric(f"stream{consumers}_latency_p99_ms", f"{who}: latency p99", "ms", False),
            Metric(
                f"stream{consumers}_cpu_us_per_event",
                f"{who}: client CPU/event",
                "us",
                False,
                False,
            ),
        ]
    fleet = f"fleet of {config.fleet_microgrids:,} streams"
    rows += [
        Metric("fleet_open_s", f"{fleet}: time until all open", "s", False),
        Metric("fleet_rss_mb", f"{fleet}: client RSS", "MB", False),
        Metric("fleet_cpu_us_per_event", f"{fleet}: client CPU/event", "us", False),
        Metric("fleet_open_cpu_ms", f"{fleet}: client CPU to open all", "ms", False, False),
        Metric("fleet_ready_s", f"{fleet}: time until all caught up", "s", False, False),
    ]
    rows += [
        Metric(
            "stream_lost_restarts",
            f"stream consumer across {config.restarts} server restarts: lost",
            "changes",
            False,
        ),
        Metric(
            "decode_ms", f"decode one {config.decode_size:,}-dispatch list response", "ms", False
        ),
        Metric("import_ms", "cold import of the package", "ms", False),
        Metric(
            "import_unversioned_ms",
            "cold import, ours without betterproto2's version lookup (vs the official's)",
            "ms",
            False,
            False,
        ),
        Metric("peak_rss_mb", f"peak RSS after listing {n}", "MB", False),
    ]
    return rows


# -- processes ----------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


class Server:
    """`python -m dispatch_client.server` in a process of its own."""

    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatch_client.server",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--db",
                str(db),
                # Never cut a slow bench consumer off: both clients get the same big buffer.
                "--stream-buffer",
                "1000000",
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stderr is not None
        self.tail: deque[str] = deque(maxlen=20)
        url = None
        for line in self.process.stderr:
            self.tail.append(line)
            found = re.search(r"grpc://\S+", line)
            if found:
                url = found.group(0)
                break
        if url is None:
            raise RuntimeError("the server did not start:\n" + "".join(self.tail))
        self.url = url
        # Keep draining its log so it can never block on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.tail.append(line)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class FleetServer:
    """`python -m bench.fleet_server`: the reference server, reporting its open stream count."""

    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet_server", str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("URL "):
            self.stop()
            raise RuntimeError(f"the fleet server did not start: {line!r}")
        self.url = line.split()[1]
        self.open_count, self.open_time = 0, 0.0
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            _, count, at = line.split()
            with self._changed:
                self.open_count, self.open_time = int(count), float(at)
                self._changed.notify_all()

    def wait_open(self, count: int, timeout: float) -> float | None:
        """Wait until exactly `count` streams are open; return when that was (unix time)."""
        with self._changed:
            if self._changed.wait_for(lambda: self.open_count == count, timeout):
                return self.open_time
        return None

    stop = Server.stop


def run_fleet(
    spec: dict[str, Any], producer: dict[str, Any], server: FleetServer
) -> dict[str, Any]:
    """Open the consumer's streams, time them until the server has them all, then produce."""
    if server.wait_open(0, 60) is None:
        raise RuntimeError("streams of the previous fleet round are still open")
    consumer = subprocess.Popen(
        _worker_command(spec),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert consumer.stdin is not None and consumer.stdout is not None
    assert consumer.stderr is not None
    err_lines: list[str] = []
    threading.Thread(target=lambda: err_lines.extend(consumer.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        started = consumer.stdout.readline()
        if not started.startswith("START "):
            consumer.wait(30)
            raise RuntimeError(
                f"fleet consumer did not start: {started}{''.join(err_lines)[-3000:]}"
            )
        opened = server.wait_open(spec["microgrids"], spec["timeout"])
        consumer.stdin.write("GO\n")
        consumer.stdin.flush()
        ready = consumer.stdout.readline()
        if ready.strip() != "READY":
            consumer.wait(30)
            raise RuntimeError(
                f"fleet consumer did not get ready: {ready}{''.join(err_lines)[-3000:]}"
            )
        produced = run_worker(producer)
        out, _ = consumer.communicate(timeout=spec["timeout"] + 60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    result = _result(out, "".join(err_lines), spec)
    start = float(started.split()[1])
    result["fleet_open_s"] = math.nan if opened is None else opened - start
    # Ours delivers a stream's events once its catch-up is in; a client that
    # does not catch up is ready once the server holds its streams.
    ready = result.pop("fleet_ready_at", None) or opened
    result["fleet_ready_s"] = math.nan if ready is None else ready - start
    result["produce_rate"] = produced["produce_rate"]
    return result


def _worker_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "bench.worker", json.dumps(spec)]


def _result(stdout: str, stderr: str, spec: dict[str, Any]) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]
    raise RuntimeError(
        f"worker {spec['task']}/{spec['client']} gave no result:\n{stderr[-3000:]}{stdout[-2000:]}"
    )


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        _worker_command(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=WORKER_TIMEOUT,
        check=False,
    )
    return _result(done.stdout, done.stderr, spec)


def run_stream(spec: dict[str, Any], producer: dict[str, Any]) -> dict[str, Any]:
    """Start the consumers, wait until their stream is open, then run the producer."""
    consumer = subprocess.Popen(
        _worker_command(spec),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert consumer.stdout is not None and consumer.stderr is not None
    err_lines: list[str] = []
    threading.Thread(target=lambda: err_lines.extend(consumer.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        ready = consumer.stdout.readline()
        if ready.strip() != "READY":
            consumer.wait(30)
            raise RuntimeError(f"consumer did not get ready: {ready}{''.join(err_lines)[-3000:]}")
        produced = run_worker(producer)
        out, _ = consumer.communicate(timeout=spec["timeout"] + 30)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    result = _result(out, "".join(err_lines), spec)
    result["produce_rate"] = produced["produce_rate"]
    return result


# What betterproto2's own import would cost without `importlib.metadata`
# (betterproto/python-betterproto2#170, open): its `_version` module reads the
# package's version from the installed metadata, which imports zipfile, email,
# csv and more (about 20 ms here). A diagnostic of what blocks the cold import
# row, in the benchmark only: the library itself never patches betterproto2.
_UNVERSIONED = (
    "import sys, types; version = types.ModuleType('betterproto2._version'); "
    "version.__version__ = '0.10.0'; version.check_compiler_version = lambda v: None; "
    "sys.modules['betterproto2._version'] = version; "
)


def run_import(client: str, *, unversioned: bool = False) -> float:
    module = "dispatch_client" if client == "ours" else "frequenz.client.dispatch"
    code = (
        (_UNVERSIONED if unversioned else "")
        + "import time; t = time.perf_counter(); "
        + f"import {module}; print(1000 * (time.perf_counter() - t))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


# -- setup ---------------------------------------------------------------------


async def populate(db: Path, count: int) -> None:
    """Store `count` varied dispatches in the list microgrid, through the servicer."""
    from dispatch_client.server.service import DispatchService
    from dispatch_client.wire import CreateMicrogridDispatchRequest

    from .data import dispatch_data

    now = dt.datetime.now(dt.UTC)
    async with DispatchService(db=str(db)) as service:
        for i in range(count):
            await service.create_microgrid_dispatch(
                CreateMicrogridDispatchRequest(
                    microgrid_id=LIST_MICROGRID, dispatch_data=dispatch_data(i, now)
                )
            )


def write_decode_input(path: Path, count: int) -> None:
    from .data import list_response

    path.write_bytes(bytes(list_response(count, dt.datetime.now(dt.UTC))))


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in (
        "dispatch-client",
        "frequenz-client-dispatch",
        "frequenz-client-base",
        "frequenz-channels",
        "grpclib",
        "h2",
        "betterproto2",
        "grpcio",
        "protobuf",
        "anyio",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        cpu_model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    try:
        from google.protobuf.internal import api_implementation

        versions["protobuf backend"] = api_implementation.Type()
    except ImportError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
    }


# -- the run ---------------------------------------------------------------------


def _order(round_index: int, clients: tuple[str, ...]) -> tuple[str, ...]:
    """Rotate who goes first, so no client always runs on the warmer/colder machine."""
    shift = round_index % len(clients)
    return clients[shift:] + clients[:shift]


def _add(samples: dict[str, dict[str, list[float]]], client: str, result: dict[str, Any]) -> None:
    for key, value in result.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            samples[client].setdefault(key, []).append(float(value))


def _deliveries(result: dict[str, Any], label: str, notes: list[str], log: Log) -> dict[str, Any]:
    """Note a run whose consumers missed events or failed; return its measurements."""
    if result["delivered"] != result["expected"] or result["errors"]:
        note = (
            f"{label}: delivered {result['delivered']:,}/{result['expected']:,} {result['errors']}"
        )
        notes.append(note)
        log(note)
    return {k: v for k, v in result.items() if k not in ("delivered", "expected")}


def measure(config: Config, groups: set[str], log: Log, workdir: Path) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {c: {} for c in (*CLIENTS, PURE, RAW)}
    notes: list[str] = []
    db = workdir / "bench.db"
    if groups & {"unary", "list", "stream"}:
        log(f"populating {config.list_size:,} dispatches")
        asyncio.run(populate(db, config.list_size))
        server = Server(db)
        log(f"server at {server.url} (pid {server.process.pid})")
        try:
            _measure_with_server(config, groups, log, server.url, samples, notes)
        finally:
            server.stop()
    if "fleet" in groups:
        fleet_server = FleetServer(workdir / "fleet.db")
        log(f"fleet server at {fleet_server.url} (pid {fleet_server.process.pid})")
        try:
            _measure_fleet(config, log, fleet_server, samples, notes)
        finally:
            fleet_server.stop()
    if "restarts" in groups:
        from .restarts import measure_restarts

        clients = tuple(c for c in config.clients if c in CLIENTS)
        for r in range(config.restart_rounds):
            log(f"restarts round {r + 1}/{config.restart_rounds}")
            figures = measure_restarts(workdir, clients, restarts=config.restarts, log=log)
            for client, figure in figures.items():
                samples[client].setdefault("stream_lost_restarts", []).append(
                    figure["stream_lost_restarts"]
                )
                notes.append(
                    f"restarts round {r + 1}: {client} lost {figure['stream_lost_restarts']}"
                    f" of {figure['created']} {figure['errors'] or ''}".rstrip()
                )
    if "decode" in groups:
        raw = workdir / "list_response.bin"
        write_decode_input(raw, config.decode_size)
        log(f"decode: {raw.stat().st_size:,} bytes, {config.decode_size:,} dispatches")
        for client in ("ours", "official", PURE):
            spec = {
                "task": "decode",
                "client": client,
                "file": str(raw),
                "expected": config.decode_size,
                "rounds": config.decode_rounds,
                "repeat": config.decode_repeat,
            }
            try:
                decoded = run_worker(spec)
            except RuntimeError as exc:
                last = str(exc).strip().splitlines()[-1]
                notes.append(f"decode {client} failed: {last}")
                log(f"decode {client} failed: {exc}")
                continue
            samples[client]["decode_ms"] = decoded["decode_ms"]
            if "identical" in decoded:
                identical = "identical to" if decoded["identical"] else "DIFFERENT from"
                path = "upb fast path" if decoded["fast"] else "fast path OFF"
                notes.append(
                    f"{client} decode ({path}) gives objects {identical} betterproto2's parse"
                )
    if "import" in groups:
        log("cold import")
        for client in CLIENTS:
            run_import(client)  # compile the bytecode once, outside the samples
        for r in range(config.import_rounds):
            for client in _order(r, CLIENTS):
                took = run_import(client)
                samples[client].setdefault("import_ms", []).append(took)
                if client == "ours":
                    took = run_import(client, unversioned=True)
                # The diagnostic row compares with the official client's own import.
                samples[client].setdefault("import_unversioned_ms", []).append(took)
    return {"samples": samples, "notes": notes}


def _measure_with_server(
    config: Config,
    groups: set[str],
    log: Log,
    url: str,
    samples: dict[str, dict[str, list[float]]],
    notes: list[str],
) -> None:
    if "unary" in groups:
        for r in range(config.unary_rounds):
            for client in _order(r, (*config.clients, RAW)):
                log(f"unary round {r + 1}/{config.unary_rounds}: {client}")
                spec = {
                    "task": "unary",
                    "client": client,
                    "url": url,
                    "get_microgrid": LIST_MICROGRID,
                    "get_dispatch": 1,
                    "warmup": 50,
                    "latency_calls": config.latency_calls,
                    "get_concurrency": config.get_concurrency,
                    "get_calls_each": config.get_calls_each,
                    "create_microgrid": CREATE_MICROGRID,
                    "create_concurrency": config.create_concurrency,
                    "create_each": config.create_each,
                }
                _add(samples, client, run_worker(spec))
    if "list" in groups:
        for r in range(config.list_rounds):
            for client in _order(r, (*config.clients, RAW)):
                log(f"list round {r + 1}/{config.list_rounds}: {client}")
                spec = {
                    "task": "list",
                    "client": client,
                    "url": url,
                    "microgrid": LIST_MICROGRID,
                    "page_size": config.page_size,
                    "expected": config.list_size,
                }
                _add(samples, client, run_worker(spec))
    if "stream" in groups:
        microgrid = STREAM_MICROGRID
        for consumers in config.stream_consumers:
            for r in range(config.stream_rounds):
                for client in _order(r, config.clients):
                    microgrid += 1
                    log(
                        f"stream {consumers} consumer(s) round {r + 1}/{config.stream_rounds}: {client}"
                    )
                    spec = {
                        "task": "consume",
                        "client": client,
                        "url": url,
                        "microgrid": microgrid,
                        "consumers": consumers,
                        "events": config.stream_events,
                        "timeout": 240,
                    }
                    producer = {
                        "task": "produce",
                        "client": "ours",
                        "url": url,
                        "microgrid": microgrid,
                        "events": config.stream_events,
                        "concurrency": config.producer_concurrency,
                    }
                    result = run_stream(spec, producer)
                    label = f"stream {consumers} {client} round {r + 1}"
                    kept = _deliveries(result, label, notes, log)
                    _add(samples, client, {f"stream{consumers}_{k}": v for k, v in kept.items()})


def _measure_fleet(
    config: Config,
    log: Log,
    server: FleetServer,
    samples: dict[str, dict[str, list[float]]],
    notes: list[str],
) -> None:
    microgrid = FLEET_MICROGRID
    for r in range(config.fleet_rounds):
        for client in _order(r, config.clients):
            log(
                f"fleet of {config.fleet_microgrids:,} round {r + 1}/{config.fleet_rounds}: {client}"
            )
            spec = {
                "task": "fleet",
                "client": client,
                "url": server.url,
                "microgrid": microgrid,
                "microgrids": config.fleet_microgrids,
                "events_each": config.fleet_events_each,
                "timeout": 240,
            }
            producer = {
                "task": "produce",
                "client": "ours",
                "url": server.url,
                "microgrid": microgrid,
                "microgrids": config.fleet_microgrids,
                "events": config.fleet_microgrids * config.fleet_events_each,
                "concurrency": config.producer_concurrency,
            }
            microgrid += config.fleet_microgrids
            result = run_fleet(spec, producer, server)
            kept = _deliveries(result, f"fleet {client} round {r + 1}", notes, log)
            _add(samples, client, kept)


# -- the report ----------------------------------------------------------------


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


def _cell(stats: dict[str, float]) -> str:
    if not stats["rounds"]:
        return "n/a"
    if stats["rounds"] == 1:
        return _fmt(stats["median"])
    return f"{_fmt(stats['median'])} ({_fmt(stats['min'])}-{_fmt(stats['max'])})"


def _ratio(metric: Metric, ours: dict[str, float], official: dict[str, float]) -> float:
    if not (ours["rounds"] and official["rounds"] and ours["median"] and official["median"]):
        return math.nan
    if metric.higher_is_better:
        return ours["median"] / official["median"]
    return official["median"] / ours["median"]


def report(config: Config, measured: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    samples = measured["samples"]
    rows = []
    for metric in metrics(config):
        stats = {client: summary(samples[client].get(metric.key, [])) for client in samples}
        row: dict[str, Any] = {
            "key": metric.key,
            "label": metric.label,
            "unit": metric.unit,
            "better": "higher" if metric.higher_is_better else "lower",
            "core": metric.core,
            "ours": stats["ours"],
            "official": stats["official"],
            "ratio": _ratio(metric, stats["ours"], stats["official"]),
            "samples": {client: samples[client].get(metric.key, []) for client in samples},
        }
        if stats[PURE]["rounds"]:
            row[PURE] = stats[PURE]
            row["ratio_ours_pure"] = _ratio(metric, stats[PURE], stats["official"])
        if stats[RAW]["rounds"] and metric.key.endswith(("_cpu_us", "_cpu_s")):
            # raw/ours: 1 means the facade costs nothing, 0.9 that it adds 11%.
            row[RAW] = stats[RAW]
            row["ratio_raw"] = _ratio(metric, stats["ours"], stats[RAW])
        rows.append(row)
    return {"machine": info, "config": config.__dict__, "metrics": rows}


def print_table(result: dict[str, Any]) -> None:
    pure = PURE in result["config"]["clients"]
    raw = any(RAW in row for row in result["metrics"])
    header = ["metric", "ours", "official", "ratio"]
    if raw:
        header += [RAW, "raw/ours"]
    if pure:
        header += [PURE, "ratio"]
    rows = [tuple(header)]
    for row in result["metrics"]:
        label = f"{row['label']} ({row['unit']})" + ("" if row["core"] else " *")
        cells = [label, _cell(row["ours"]), _cell(row["official"]), _fmt_ratio(row["ratio"])]
        if raw:
            cells += [_cell(row[RAW]), _fmt_ratio(row["ratio_raw"])] if RAW in row else ["", ""]
        if pure:
            if PURE in row:
                cells += [_cell(row[PURE]), _fmt_ratio(row["ratio_ours_pure"])]
            else:
                cells += ["", ""]
        rows.append(tuple(cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, cells in enumerate(rows):
        lines.append(
            " | ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(cells)
            )
        )
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths))
    print("\n".join(lines))
    print(
        "\nmedian of rounds (min-max); ratio > 1 means ours is better "
        "(official/ours for times, ours/official for rates); * = extra diagnostic"
    )
    if raw:
        print(
            f"{RAW}: the generated grpclib stub on a stock grpclib channel with our codec, "
            "requests built once, "
            "no facade; raw/ours >= 0.9 means the facade adds at most ~10%"
        )
    decode = next(r for r in result["metrics"] if r["key"] == "decode_ms")
    if PURE in decode and not pure:
        print(
            f"without the fast decode path (betterproto2 only): {_cell(decode[PURE])} ms, "
            f"ratio vs official {_fmt_ratio(decode['ratio_ours_pure'])}"
        )
    if pure:
        print(f"{PURE}: our client with the fast decode path off ({ENV_VAR}=0)")
    m = result["machine"]
    print(
        f"\nmachine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['implementation']} {m['python']}, "
        f"{m['platform']}; load average {result['load_average']}"
    )
    print("packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"elapsed: {result['elapsed_s']:.0f} s")


def _fmt_ratio(ratio: float) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, one round")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups")
    parser.add_argument(
        "--pure",
        action="store_true",
        help=f"also measure our client with the fast decode path off ({PURE} column)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the JSON results (default: bench/results.json, "
        "or bench/results-quick.json with --quick)",
    )
    args = parser.parse_args(argv)
    clients = (*CLIENTS, PURE) if args.pure else CLIENTS
    config = Config.quick(clients=clients) if args.quick else Config(clients=clients)
    groups = set(args.only or GROUPS)
    output = args.output or ROOT / "bench" / (
        "results-quick.json" if args.quick else "results.json"
    )
    log = Log()
    info = machine_info()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmp:
        measured = measure(config, groups, log, Path(tmp))
    result = report(config, measured, info)
    result["notes"] = measured["notes"]
    result["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    result["elapsed_s"] = time.perf_counter() - log.start
    result["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["quick"] = args.quick
    tmp_out = output.with_name(output.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    tmp_out.replace(output)
    print_table(result)
    print(
        f"results written to {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}"
    )
    return 0
