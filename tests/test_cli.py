"""dispatch-cli end to end: every command against the reference server over a real socket.

Commands run in-process through asyncclick's CliRunner (same event loop as the
server); `serve` and `python -m dispatch_client.cli` run as real subprocesses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
import pytest
from asyncclick.testing import CliRunner, Result

from dispatch_client import (
    BatteryType,
    Client,
    Dispatch,
    ElectricalComponentCategory,
    Event,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
)
from dispatch_client.cli import cli
from dispatch_client.testing import RunningServer, running_server
from dispatch_client.wire import (
    DeleteMicrogridDispatchResponse,
    StreamMicrogridDispatchesResponse,
)

pytestmark = pytest.mark.anyio

KEY = "cli-test-key-0123456789"
MG = "7"


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server(keys=[KEY]) as srv:
        yield srv


async def run(
    server: RunningServer | None,
    *args: str,
    key: str | None = KEY,
    env: Mapping[str, str | None] | None = None,
) -> Result:
    """Invoke the CLI; the server URL and key come from the environment like in real use."""
    environment: dict[str, str | None] = {
        "DISPATCH_API_URL": server.url if server else None,
        "DISPATCH_API_KEY": key,
        "DISPATCH_API_SIGN_SECRET": None,
        "COLUMNS": "80",
        **(env or {}),
    }
    with anyio.fail_after(20):
        return await CliRunner().invoke(cli, list(args), env=environment, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def json_lines(result: Result) -> list[dict[str, object]]:
    return [json.loads(line) for line in ok(result).splitlines()]


def one_error_line(result: Result, code: int) -> str:
    """The failure contract: exit code, exactly one `Error:` line, no traceback, no key."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    assert KEY not in result.output
    return lines[0]


async def create(server: RunningServer, *args: str) -> Dispatch:
    [document] = json_lines(await run(server, "--json", "create", MG, *args))
    return Dispatch.from_dict(document)


async def stream_opened(server: RunningServer) -> None:
    """Wait until the CLI's stream is registered, so no change made after it is missed."""
    with anyio.fail_after(10):
        await server.service.wait_for_streams(int(MG), 1)


def dispatch_id(dispatch: Dispatch) -> int:
    assert dispatch.metadata is not None
    return dispatch.metadata.dispatch_id


# --- global behaviour ---------------------------------------------------------


async def test_help_and_version() -> None:
    text = ok(await run(None, "--help"))
    for command in (
        "list",
        "get",
        "create",
        "update",
        "delete",
        "stream",
        "watch",
        "timeline",
        "ical",
        "serve",
    ):
        assert command in text
    assert "DISPATCH_API_URL" in text and "DISPATCH_API_KEY" in text
    assert "0.1.0" in ok(await run(None, "--version"))


async def test_missing_url_is_a_usage_error() -> None:
    line = one_error_line(await run(None, "list", MG), 2)
    assert "--url" in line and "DISPATCH_API_URL" in line


async def test_bad_url_names_the_option() -> None:
    line = one_error_line(await run(None, "list", MG, env={"DISPATCH_API_URL": "http://x"}), 2)
    assert "'--url'" in line


async def test_wrong_key_is_an_api_error_that_never_shows_a_key(server: RunningServer) -> None:
    line = one_error_line(await run(server, "list", MG, key="not-the-key"), 1)
    assert line.startswith("Error: Unauthenticated:")
    assert "not-the-key" not in line


async def test_signed_requests(server: RunningServer) -> None:
    async with running_server(keys=[KEY], sign_secret="s3cret") as signed:
        one_error_line(await run(signed, "list", MG), 1)  # unsigned: refused
        assert "No dispatches" in ok(await run(signed, "--sign-secret", "s3cret", "list", MG))


async def test_options_come_from_flags_as_well(server: RunningServer) -> None:
    result = await run(None, "--url", server.url, "--key", KEY, "list", MG, key=None)
    assert "No dispatches" in ok(result)


# --- create / get -----------------------------------------------------------------


async def test_create_one_off_then_get_round_trips_json(server: RunningServer) -> None:
    text = ok(
        await run(
            server,
            "create",
            MG,
            "BATTERY_CHARGE",
            "BATTERY:LI_ION",
            "in 10 min",
            "1h30m",
            "--payload",
            '{"power_w": 5000}',
        )
    )
    assert "BATTERY_CHARGE" in text and "1h30m" in text and "BATTERY:LI_ION" in text
    assert '{"power_w": 5000}' in text

    [document] = json_lines(await run(server, "--json", "get", MG, "1"))
    dispatch = Dispatch.from_dict(document)
    assert json.loads(dispatch.to_json()) == document
    assert dispatch.data is not None
    assert dispatch.data.type == "BATTERY_CHARGE"
    assert dispatch.data.duration == 5400
    assert dispatch.data.is_active and not dispatch.data.is_dry_run
    assert dispatch.data.target is not None
    assert dispatch.data.target.component_categories_types is not None
    [kind] = dispatch.data.target.component_categories_types.categories
    assert (kind.category, kind.battery) == (
        ElectricalComponentCategory.BATTERY,
        BatteryType.LI_ION,
    )
    assert dispatch.data.start_time is not None
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    assert abs(dispatch.data.start_time - expected) < dt.timedelta(seconds=30)
    assert dispatch.data.payload is not None
    assert dispatch.data.payload.to_dict() == {"power_w": 5000}


async def test_create_now_recurring_dry_run_inactive(server: RunningServer) -> None:
    dispatch = await create(
        server,
        "PV_CURTAIL",
        "INVERTER,BATTERY",
        "now",
        "PT45M",
        "--freq",
        "weekly",
        "--interval",
        "2",
        "--count",
        "5",
        "--by-weekday",
        "mo,fr",
        "--by-hour",
        "8,12",
        "--dry-run",
        "--inactive",
    )
    data = dispatch.data
    assert data is not None and data.recurrence is not None
    assert data.is_dry_run and not data.is_active
    assert data.duration == 2700
    assert data.recurrence.freq == RecurrenceRuleFrequency.WEEKLY
    assert data.recurrence.interval == 2
    assert data.recurrence.byweekdays == [
        RecurrenceRuleWeekday.MONDAY,
        RecurrenceRuleWeekday.FRIDAY,
    ]
    assert data.recurrence.byhours == [8, 12]
    assert data.recurrence.end_criteria is not None and data.recurrence.end_criteria.count == 5
    assert data.target is not None and data.target.component_categories is not None


async def test_create_without_duration_runs_unlimited(server: RunningServer) -> None:
    dispatch = await create(server, "OPEN", "1,2,3", "tomorrow 08:00")
    assert dispatch.data is not None and dispatch.data.duration is None
    assert dispatch.data.target is not None and dispatch.data.target.component_ids is not None
    assert dispatch.data.target.component_ids.ids == [1, 2, 3]


async def test_get_several_and_ranges(server: RunningServer) -> None:
    for kind in ("A", "B", "C"):
        await create(server, kind, "1", "in 1 hour", "10m")
    documents = json_lines(await run(server, "--json", "get", MG, "1-2", "3"))
    assert [Dispatch.from_dict(d).data.type for d in documents] == ["A", "B", "C"]  # type: ignore[union-attr]
    text = ok(await run(server, "get", MG, "2"))
    assert "Next run" in text and "B" in text


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["T", "BATTERY", "blah blah"], "'START'"),
        (["T", "BATTERY", "5"], "'START'"),
        (["T", "SPACESHIP", "now"], "'TARGET'"),
        (["T", "1,BATTERY", "now"], "'TARGET'"),
        (["T", "METER:LI_ION", "now"], "'TARGET'"),
        (["T", "BATTERY", "now", "90 parsecs"], "'DURATION'"),
        (["T", "BATTERY", "now", "P1M"], "'DURATION'"),
        (["T", "BATTERY", "now", "--payload", "[1]"], "'--payload'"),
        (["T", "BATTERY", "now", "--payload", "{oops"], "'--payload'"),
        (["T", "BATTERY", "now", "--count", "3"], "'--freq'"),
        (["T", "BATTERY", "now", "--freq", "daily", "--by-hour", "25"], "'--by-hour'"),
        (["T", "BATTERY", "now", "--freq", "daily", "--by-weekday", "funday"], "'--by-weekday'"),
        (["T", "BATTERY", "now", "--freq", "fortnightly"], "'--freq'"),
        (["T", "BATTERY", "now", "--freq", "daily", "--count", "0"], "'--count'"),
    ],
)
async def test_create_bad_arguments_exit_2_naming_the_argument(
    server: RunningServer, args: list[str], names: str
) -> None:
    line = one_error_line(await run(server, "create", MG, *args), 2)
    assert names.strip("'") in line  # optional arguments show as '[DURATION]'
    assert "Invalid value" in line or "needed" in line


async def test_create_in_the_past_is_a_usage_error(server: RunningServer) -> None:
    line = one_error_line(await run(server, "create", MG, "T", "BATTERY", "yesterday", "1h"), 2)
    assert "past" in line
    line = one_error_line(
        await run(
            server,
            "create",
            MG,
            "T",
            "BATTERY",
            "now",
            "--freq",
            "daily",
            "--count",
            "2",
            "--until",
            "in 2 days",
        ),
        2,
    )
    assert "--count" in line and "--until" in line


async def test_unknown_id_is_an_api_error(server: RunningServer) -> None:
    line = one_error_line(await run(server, "get", MG, "999"), 1)
    assert line.startswith("Error: NotFound:") and "999" in line
    one_error_line(await run(server, "update", MG, "999", "--inactive"), 1)
    one_error_line(await run(server, "ical", MG, "999"), 1)
    one_error_line(await run(server, "get", MG, "x"), 2)


TOO_BIG = str(2**64)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["get", MG, TOO_BIG], id="get-id"),
        pytest.param(["get", MG, f"5-{TOO_BIG}"], id="get-range"),
        pytest.param(["delete", MG, TOO_BIG], id="delete-id"),
        pytest.param(["list", TOO_BIG], id="list-microgrid"),
        pytest.param(["update", MG, TOO_BIG, "--inactive"], id="update-id"),
        pytest.param(["ical", TOO_BIG, "1"], id="ical-microgrid"),
        pytest.param(["ical", MG, TOO_BIG], id="ical-id"),
    ],
)
async def test_ids_beyond_uint64_are_usage_errors(server: RunningServer, args: list[str]) -> None:
    line = one_error_line(await run(server, *args), 2)
    assert TOO_BIG in line and "2**64-1" in line


# --- list ------------------------------------------------------------------------------


async def test_list_table_json_and_filters(server: RunningServer) -> None:
    charge = await create(server, "BATTERY_CHARGE", "BATTERY", "in 10 min", "1h")
    charge_more = await create(server, "BATTERY_CHARGE_MORE", "BATTERY", "in 20 min", "1h")
    curtail = await create(server, "PV_CURTAIL", "INVERTER:PV", "in 2 hours", "1h", "--inactive")
    running = await create(server, "RUNNING", "5", "now", "1h", "--dry-run")

    table = ok(await run(server, "list", MG))
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["ID", "Type", "Start"]
    assert all(len(line) <= 80 for line in table.splitlines())
    for dispatch in (charge, curtail, running):
        assert any(line.split()[0] == str(dispatch_id(dispatch)) for line in rows)

    def ids(result: Result) -> list[int]:
        return [dispatch_id(Dispatch.from_dict(d)) for d in json_lines(result)]

    everything = ids(await run(server, "--json", "list", MG))
    # Newest first, as the service sorts without options.
    assert everything == [dispatch_id(d) for d in (running, curtail, charge_more, charge)]
    assert ids(await run(server, "list", MG, "--json", "--sort", "start")) == [
        dispatch_id(d) for d in (running, charge, charge_more, curtail)
    ]
    assert ids(await run(server, "--json", "list", MG, "--inactive")) == [dispatch_id(curtail)]
    assert ids(await run(server, "--json", "list", MG, "--dry-run")) == [dispatch_id(running)]
    assert ids(await run(server, "--json", "list", MG, "--type", "BATTERY_CHARGE")) == [
        dispatch_id(charge)
    ]
    assert ids(await run(server, "--json", "list", MG, "--query", "CHARGE")) == [
        dispatch_id(charge_more),
        dispatch_id(charge),
    ]
    # The service rounds start times to the second, so "now" may be stored a bit ahead.
    assert running.data is not None and running.data.start_time is not None
    await anyio.sleep(max(0.0, (running.data.start_time - dt.datetime.now(dt.UTC)).total_seconds()))
    assert ids(await run(server, "--json", "list", MG, "--running")) == [dispatch_id(running)]
    first, last = dispatch_id(charge), dispatch_id(charge_more)
    assert sorted(ids(await run(server, "--json", "list", MG, "--id", f"{first}-{last}"))) == [
        first,
        last,
    ]
    assert ids(await run(server, "--json", "list", MG, "--target", "INVERTER:PV")) == [
        dispatch_id(curtail)
    ]
    assert ids(
        await run(
            server, "--json", "list", MG, "--start-from", "in 15 min", "--start-to", "in 3 hours"
        )
    ) == [
        dispatch_id(curtail),
        dispatch_id(charge_more),
    ]
    assert len(ids(await run(server, "--json", "list", MG, "--page-size", "1"))) == 4
    assert "No dispatches" in ok(await run(server, "list", "8"))
    one_error_line(await run(server, "list", MG, "--start-from", "whenever"), 2)
    one_error_line(await run(server, "list", MG, "--target", "1,X"), 2)


# --- update / delete --------------------------------------------------------------


async def test_update_fields_and_recurrence(server: RunningServer) -> None:
    dispatch = await create(server, "CHARGE", "BATTERY", "in 1 hour", "1h", "--payload", '{"a": 1}')
    did = str(dispatch_id(dispatch))

    [document] = json_lines(
        await run(
            server,
            "--json",
            "update",
            MG,
            did,
            "--duration",
            "2h",
            "--target",
            "4,5",
            "--inactive",
            "--payload",
            '{"b": 2}',
            "--start",
            "in 2 hours",
        )
    )
    data = Dispatch.from_dict(document).data
    assert data is not None and data.target is not None and data.target.component_ids is not None
    assert data.duration == 7200 and not data.is_active
    assert data.target.component_ids.ids == [4, 5]
    assert data.payload is not None and data.payload.to_dict() == {"b": 2}

    [document] = json_lines(
        await run(
            server,
            "--json",
            "update",
            MG,
            did,
            "--no-duration",
            "--no-payload",
            "--freq",
            "daily",
            "--count",
            "3",
            "--by-month",
            "jan,jul",
        )
    )
    data = Dispatch.from_dict(document).data
    assert data is not None and data.duration is None
    assert data.payload is None or not data.payload.fields
    assert data.recurrence is not None and data.recurrence.freq == RecurrenceRuleFrequency.DAILY
    assert data.recurrence.bymonths == [1, 7]

    [document] = json_lines(await run(server, "--json", "update", MG, did, "--no-recurrence"))
    data = Dispatch.from_dict(document).data
    assert data is not None and (data.recurrence is None or not data.recurrence.freq)

    text = ok(await run(server, "update", MG, did, "--active"))
    assert "active" in text

    assert "nothing to update" in one_error_line(await run(server, "update", MG, did), 2)
    one_error_line(await run(server, "update", MG, did, "--duration", "1h", "--no-duration"), 2)
    one_error_line(await run(server, "update", MG, did, "--start", "never ever"), 2)
    assert "past" in one_error_line(await run(server, "update", MG, did, "--start", "yesterday"), 2)


async def test_delete_ids_and_ranges(server: RunningServer) -> None:
    made = [dispatch_id(await create(server, f"T{i}", "1", "in 1 hour", "1m")) for i in range(4)]
    assert (
        ok(await run(server, "delete", MG, str(made[0]))).strip() == f"Deleted dispatch {made[0]}."
    )
    documents = json_lines(await run(server, "--json", "delete", MG, f"{made[1]}-{made[2]}"))
    assert [DeleteMicrogridDispatchResponse.from_dict(d).dispatch_id for d in documents] == made[
        1:3
    ]
    remaining = json_lines(await run(server, "--json", "list", MG))
    assert [dispatch_id(Dispatch.from_dict(d)) for d in remaining] == [made[3]]

    # A range over missing ids still deletes what exists, reports each miss, exits 1.
    result = await run(server, "delete", MG, f"{made[2]}-{made[3]}")
    assert result.exit_code == 1
    assert f"Deleted dispatch {made[3]}." in result.stdout
    assert result.stderr.count("Error: NotFound") == 1
    one_error_line(await run(server, "delete", MG, "9-3"), 2)


# --- stream / watch -----------------------------------------------------------------


async def test_stream_prints_events_as_ndjson(server: RunningServer) -> None:
    results: list[Result] = []

    async def stream() -> None:
        results.append(
            await run(server, "--json", "stream", MG, "--max-events", "3", "--timeout", "15s")
        )

    async with anyio.create_task_group() as tasks, Client(server.url, auth_key=KEY) as client:
        tasks.start_soon(stream)
        await stream_opened(server)
        made = await client.create(int(MG), "X", "NOW", dt.timedelta(minutes=5), [1])
        assert made.metadata is not None
        await client.update(int(MG), made.metadata.dispatch_id, {"active": False})
        await client.delete(int(MG), made.metadata.dispatch_id)

    [result] = results
    assert "Listening for events" in result.stderr
    events = [StreamMicrogridDispatchesResponse.from_dict(d) for d in json_lines(result)]
    assert [e.event for e in events] == [Event.CREATED, Event.UPDATED, Event.DELETED]
    assert {
        e.dispatch.metadata.dispatch_id for e in events if e.dispatch and e.dispatch.metadata
    } == {made.metadata.dispatch_id}


async def test_stream_human_lines(server: RunningServer) -> None:
    results: list[Result] = []

    async def stream() -> None:
        results.append(await run(server, "stream", MG, "--max-events", "1", "--timeout", "15s"))

    async with anyio.create_task_group() as tasks, Client(server.url, auth_key=KEY) as client:
        tasks.start_soon(stream)
        await stream_opened(server)
        await client.create(int(MG), "HUMAN", "NOW", dt.timedelta(minutes=5), [1])

    [result] = results
    [line] = ok(result).splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d CREATED\s+#\d+ HUMAN start .* for 5m on 1 \(once\)", line)


async def test_stream_timeout_and_errors(server: RunningServer) -> None:
    quiet = await run(server, "stream", MG, "--timeout", "1s")
    assert ok(quiet) == ""
    line = one_error_line(await run(server, "stream", MG, key="wrong-key"), 1)
    assert line.startswith("Error: Unauthenticated:")
    line = one_error_line(await run(server, "watch", MG, key="wrong-key"), 1)
    assert line.startswith("Error: Unauthenticated:")
    one_error_line(await run(server, "stream", MG, "--timeout", "soon"), 2)


async def test_watch_starts_with_a_snapshot(server: RunningServer) -> None:
    await create(server, "OLD1", "1", "in 1 hour", "1m")
    await create(server, "OLD2", "1", "in 1 hour", "1m")
    results: list[Result] = []

    async def watch() -> None:
        results.append(
            await run(server, "--json", "watch", MG, "--max-events", "3", "--timeout", "15s")
        )

    # The library makes the change: a second CliRunner would capture the watcher's output.
    async with anyio.create_task_group() as tasks, Client(server.url, auth_key=KEY) as client:
        tasks.start_soon(watch)
        await stream_opened(server)
        # Whether this lands before or after the snapshot, it shows up exactly once.
        await client.create(int(MG), "NEW", "NOW", dt.timedelta(minutes=1), [1])

    [result] = results
    events = [StreamMicrogridDispatchesResponse.from_dict(d) for d in json_lines(result)]
    assert all(e.event == Event.CREATED for e in events)
    assert sorted(e.dispatch.data.type for e in events if e.dispatch and e.dispatch.data) == [
        "NEW",
        "OLD1",
        "OLD2",
    ]


# --- timeline / ical -------------------------------------------------------------------


async def test_timeline_draws_runs_in_80_columns(server: RunningServer) -> None:
    once = await create(server, "ONCE", "1", "in 2 hours", "1h")
    hourly = await create(
        server, "HOURLY", "2", "in 1 hour", "15m", "--freq", "hourly", "--interval", "4"
    )
    await create(server, "FAR_AWAY", "3", "in 30 days", "1h")
    await create(server, "DRY", "4", "in 3 hours", "1h", "--dry-run")

    text = ok(await run(server, "timeline", MG, "--hours", "24"))
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    rows = {line.split()[1]: line for line in lines if line.startswith("#")}
    assert set(rows) == {"ONCE", "HOURLY", "DRY"}
    assert rows["ONCE"].count("█") >= 2
    assert len(re.findall("█+", rows["HOURLY"])) in (5, 6, 7)  # every 4 h in 24 h
    assert "▒" in rows["DRY"]
    assert "1 dispatch without runs" in text

    documents = json_lines(await run(server, "--json", "timeline", MG, "--hours", "24"))
    by_id = {dispatch_id(Dispatch.from_dict(d["dispatch"])): d["runs"] for d in documents}  # type: ignore[arg-type]
    assert len(by_id[dispatch_id(once)]) == 1  # type: ignore[arg-type]
    assert len(by_id[dispatch_id(hourly)]) in (5, 6, 7)  # type: ignore[arg-type]


async def test_ical_export(server: RunningServer, tmp_path: Path) -> None:
    dispatch = await create(
        server, "ICAL", "1", "in 1 hour", "30m", "--freq", "daily", "--count", "3"
    )
    did = str(dispatch_id(dispatch))
    result = await run(server, "ical", MG, did)
    ok(result)
    calendar = result.stdout_bytes  # bytes as written: iCalendar lines end in CRLF
    assert calendar.startswith(b"BEGIN:VCALENDAR\r\n")
    assert b"RRULE:" in calendar and b"COUNT=3" in calendar
    target = tmp_path / "d.ics"
    ok(await run(server, "ical", MG, did, "-o", str(target)))
    assert target.read_bytes() == calendar
    [document] = json_lines(await run(server, "--json", "ical", MG, did))
    assert document["ical"] == calendar.decode()


# --- serve and the console entry point (real processes) ------------------------------------


def test_serve_and_python_m_cli(tmp_path: Path) -> None:
    db = tmp_path / "served.sqlite"
    env = {**os.environ, "DISPATCH_API_KEY": KEY}
    env.pop("DISPATCH_API_URL", None)
    command = [sys.executable, "-m", "dispatch_client.cli"]
    server = subprocess.Popen(
        [*command, "--json", "serve", "--port", "0", "--db", str(db), "--key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        assert url.startswith("grpc://127.0.0.1:")
        env["DISPATCH_API_URL"] = url

        def cli_run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*command, *args], env=env, capture_output=True, text=True, timeout=30, check=False
            )

        created = cli_run("--json", "create", MG, "SERVED", "BATTERY", "in 1 hour", "1h")
        assert created.returncode == 0, created.stderr
        assert Dispatch.from_dict(json.loads(created.stdout)).data.type == "SERVED"  # type: ignore[union-attr]
        missing = cli_run("get", MG, "12345")
        assert missing.returncode == 1
        assert missing.stderr.strip().startswith("Error: NotFound:")
        assert KEY not in missing.stderr + missing.stdout
    finally:
        server.terminate()  # SIGTERM: the server shuts down cleanly, exit 0
        assert server.wait(timeout=10) == 0
    assert db.exists()
    # The data outlives the server: it was in the SQLite file.
