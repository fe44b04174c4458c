"""`make demo`: a short scripted dispatch-cli session against a local reference server.

Starts `dispatch-cli serve` on a free loopback port with a temporary SQLite file,
creates a one-off and a recurring dispatch, lists them, draws the timeline,
updates one while `stream` runs in the background, deletes one, then stops the
server and removes the temporary files. Every step has a timeout, so the demo
fails instead of hanging; any failing step makes the exit code 1.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MICROGRID = "1"
KEY = "demo-key"
STEP_TIMEOUT = 30.0
START_TIMEOUT = 20.0
CLI = [sys.executable, "-m", "dispatch_client.cli"]


class DemoError(Exception):
    """A step failed; the message says which and why."""


def heading(text: str) -> None:
    print(f"\n\033[1m## {text}\033[0m" if sys.stdout.isatty() else f"\n## {text}", flush=True)


def show_command(args: list[str], *, background: bool = False) -> None:
    print("$ dispatch-cli " + shlex.join(args) + (" &" if background else ""), flush=True)


def run(args: list[str], env: dict[str, str], *, capture: bool = False) -> str:
    """Run one CLI command; its output goes to the terminal unless captured."""
    if not capture:
        show_command(args)
    try:
        done = subprocess.run(
            [*CLI, *args],
            env=env,
            timeout=STEP_TIMEOUT,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            text=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DemoError(
            f"`dispatch-cli {shlex.join(args)}` took over {STEP_TIMEOUT:.0f} s"
        ) from None
    if done.returncode != 0:
        detail = f": {done.stderr.strip()}" if capture and done.stderr else ""
        raise DemoError(f"`dispatch-cli {shlex.join(args)}` exited {done.returncode}{detail}")
    return done.stdout or ""


def lines_of(stream: object) -> queue.Queue[str | None]:
    """Read a pipe's lines on a thread, so waiting for one can time out."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue[str | None], pattern: str, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise DemoError(f"{what} ended early; it said: {''.join(seen).strip()!r}")
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise DemoError(f"{what} did not say {pattern!r} within {timeout:.0f} s")


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def ids_by_type(env: dict[str, str]) -> dict[str, int]:
    listing = run(["--json", "list", MICROGRID], env, capture=True)
    ids = {}
    for line in listing.splitlines():
        dispatch = json.loads(line)
        ids[dispatch["data"]["type"]] = int(dispatch["metadata"]["dispatchId"])
    return ids


def session(env: dict[str, str]) -> None:
    heading("Create a one-off dispatch: charge Li-ion batteries in 10 minutes, for 1h30m")
    run(
        [
            "create",
            MICROGRID,
            "BATTERY_CHARGE",
            "BATTERY:LI_ION",
            "in 10 min",
            "1h30m",
            "--payload",
            '{"power_w": 5000}',
        ],
        env,
    )

    heading("Create a recurring dispatch: curtail PV every 3 hours, 8 times")
    run(
        [
            "create",
            MICROGRID,
            "PV_CURTAIL",
            "INVERTER:PV",
            "in 1 hour",
            "45m",
            "--freq",
            "hourly",
            "--interval",
            "3",
            "--count",
            "8",
        ],
        env,
    )

    heading("Create a dry run for EV chargers tomorrow morning")
    run(["create", MICROGRID, "EV_LIMIT", "EV_CHARGER", "tomorrow 06:00", "3h", "--dry-run"], env)

    heading("List them")
    run(["list", MICROGRID], env)

    heading("Timeline of the next 24 hours")
    run(["timeline", MICROGRID, "--hours", "24", "--width", "80"], env)

    ids = ids_by_type(env)
    charge, ev_limit = str(ids["BATTERY_CHARGE"]), str(ids["EV_LIMIT"])

    heading("Update one while `stream` runs in the background")
    stream_args = ["stream", MICROGRID, "--max-events", "1", "--timeout", "20s"]
    show_command(stream_args, background=True)
    stream = subprocess.Popen(
        [*CLI, *stream_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notes, printed = lines_of(stream.stderr), lines_of(stream.stdout)
        # Change nothing until the stream is open, or the event would go to nobody.
        print("  " + wait_for_line(notes, r"Listening", STEP_TIMEOUT, "stream").strip(), flush=True)
        update = ["update", MICROGRID, charge, "--duration", "2h", "--payload", '{"power_w": 7500}']
        run(update, env)
        for _ in range(5):
            try:
                event = wait_for_line(printed, r"UPDATED", STEP_TIMEOUT / 5, "the stream")
                break
            except DemoError:
                # "Listening" rests on the client's open-stream heuristic; on a
                # very slow machine the server may register the stream a little
                # later and miss the change, so make it again (same values).
                run(update, env, capture=True)
        else:
            raise DemoError("the stream did not report the update in time")
        print("The background stream printed:", flush=True)
        print(f"  stream │ {event.rstrip()}", flush=True)
        stream.wait(timeout=STEP_TIMEOUT)  # --max-events 1: it ends by itself
    finally:
        stop(stream)

    heading("Delete the dry run, and list again as JSON (one Dispatch per line)")
    run(["delete", MICROGRID, ev_limit], env)
    run(["--json", "list", MICROGRID], env)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-demo-"))
    server: subprocess.Popen[str] | None = None
    try:
        heading("Start the reference server on a free loopback port, SQLite in a temp dir")
        serve_args = [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            str(workdir / "demo.sqlite"),
            "--key",
            KEY,
        ]
        show_command(serve_args, background=True)
        server = subprocess.Popen(
            [*CLI, *serve_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = wait_for_line(
            lines_of(server.stdout), r"Serving .*grpc://", START_TIMEOUT, "the server"
        )
        url = re.search(r"grpc://\S+", line).group(0)  # type: ignore[union-attr]
        print(f"  {line.strip()}", flush=True)
        # The key goes through the environment, so it never shows in a command line.
        env = {**os.environ, "DISPATCH_API_URL": url, "DISPATCH_API_KEY": KEY}
        print(f"$ export DISPATCH_API_URL={url} DISPATCH_API_KEY=…", flush=True)
        session(env)
    except DemoError as error:
        print(f"\ndemo failed: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    heading("Done: server stopped, temporary files removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
