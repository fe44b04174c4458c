"""dispatch-cli never prints a traceback, never replaces what it did not understand.

- Time phrases are understood exactly or refused (exit 2) naming the part.
- Every command runs over a stored set of odd dispatches (values a newer
  server may send, edge values) and shows them, raw where unknown.
- `get` shows what exists and reports the rest (exit 1), like `delete`.
- Ctrl-C ends `stream`, `watch` and `serve` with exit 130, SIGTERM with 0.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
import pytest
from asyncclick.testing import CliRunner, Result
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dispatch_client import (
    BatteryType,
    DispatchData,
    ElectricalComponentCategory,
    Event,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)
from dispatch_client._proto.google.protobuf import ListValue, Struct, Value
from dispatch_client.cli import cli
from dispatch_client.cli.parsing import parse_time
from dispatch_client.testing import RunningServer, running_server
from dispatch_client.wire import StreamMicrogridDispatchesResponse

pytestmark = pytest.mark.anyio

MG = "7"


async def run(server: RunningServer | None, *args: str) -> Result:
    environment: Mapping[str, str | None] = {
        "DISPATCH_API_URL": server.url if server else None,
        "DISPATCH_API_KEY": None,
        "DISPATCH_API_SIGN_SECRET": None,
        "COLUMNS": "100",
    }
    with anyio.fail_after(30):
        return await CliRunner().invoke(cli, list(args), env=environment, catch_exceptions=False)


def clean(result: Result, *codes: int) -> str:
    """No traceback, an expected exit code; returns stdout + stderr."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.exit_code in codes, (result.exit_code, output)
    return output


# --- time phrases ------------------------------------------------------------------------

NOW = dt.datetime(2031, 3, 10, 9, 15, 42, 123456, tzinfo=dt.UTC)  # a Monday


@settings(max_examples=150, deadline=None)
@given(
    day=st.sampled_from(["tomorrow", "today", "friday", "next monday"]),
    hour=st.integers(0, 99),
    minute=st.integers(0, 99),
    form=st.sampled_from(["{h}:{m:02d}", "{h:02d}:{m:02d}", "{h}:{m:02d}:30", "{h}{ampm}"]),
    ampm=st.sampled_from(["am", "pm", " am", " p.m."]),
    zone=st.sampled_from(["", " UTC", " CET", " PST", " +0200"]),
)
@example(day="tomorrow", hour=25, minute=0, form="{h}:{m:02d}", ampm="am", zone="")
def test_a_time_of_day_is_understood_exactly_or_refused(
    day: str, hour: int, minute: int, form: str, ampm: str, zone: str
) -> None:
    clock = form.format(h=hour, m=minute, ampm=ampm)
    phrase = f"{day} {clock}{zone}"
    try:
        parsed = parse_time(phrase, now=NOW)
    except ValueError as error:
        assert repr(clock) in str(error) or repr(phrase) in str(error)
        return
    # Understood: the time of day written is the time of day given, in its zone.
    offsets = {"": 0, " UTC": 0, " CET": 1, " PST": -8, " +0200": 2}
    local = parsed + dt.timedelta(hours=offsets[zone])
    want_hour = hour
    if "{ampm}" in form:
        want_hour = hour % 12 + (12 if "p" in ampm else 0)
    want_second = 30 if ":30" in form else 0
    assert (local.hour, local.minute, local.second) == (
        want_hour,
        0 if "{ampm}" in form else minute,
        want_second,
    )


@pytest.mark.parametrize(
    "phrase",
    [
        "tomorrow 25:00",
        "tomorrow 8:61",
        "tomorrow 13pm",
        "tomorrow 2500",
        "tomorrow 9.30",
        "tomorrow -5:00",
        "in 10 min 25:00",
        "in 10 min CET",
    ],
)
def test_phrases_dateparser_would_silently_change_are_refused(phrase: str) -> None:
    with pytest.raises(ValueError, match=r"not a time of day|could not understand|time zone"):
        parse_time(phrase, now=NOW)


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("tomorrow 08:00", dt.datetime(2031, 3, 11, 8, tzinfo=dt.UTC)),
        ("friday 9am CET", dt.datetime(2031, 3, 14, 8, tzinfo=dt.UTC)),
        ("tomorrow 9:30 p.m.", dt.datetime(2031, 3, 11, 21, 30, tzinfo=dt.UTC)),
        ("in 10 min", NOW + dt.timedelta(minutes=10)),
    ],
)
def test_phrases_that_are_understood(phrase: str, expected: dt.datetime) -> None:
    assert parse_time(phrase, now=NOW) == expected


# --- against a server --------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server() as srv:
        yield srv


async def test_create_with_a_time_it_cannot_read_exits_2_naming_it(server: RunningServer) -> None:
    result = await run(server, "create", "1", "X", "1", "tomorrow 25:00", "1h")
    output = clean(result, 2)
    assert "'25:00'" in output and "START" in output
    assert "No dispatches" in clean(await run(server, "list", "1"), 0)


async def test_get_shows_what_exists_and_reports_the_rest(server: RunningServer) -> None:
    for kind in ("A", "B"):
        clean(await run(server, "create", MG, kind, "1", "in 1 hour", "10m"), 0)
    result = await run(server, "get", MG, "1", "3108-3110", "2")
    clean(result, 1)
    assert "A" in result.stdout and "B" in result.stdout
    for missing in ("3108", "3109", "3110"):
        assert f"dispatch {missing} not found" in result.stderr
    assert result.stderr.count("Error: NotFound") == 3


FUTURE = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)


def odd_dispatches() -> dict[str, DispatchData]:
    """Stored as is, bypassing the checks: what a newer or older server may hold."""

    def data(**fields: object) -> DispatchData:
        values: dict[str, object] = {
            "type": "ODD",
            "start_time": FUTURE,
            "duration": 3600,
            "target": TargetComponents(component_ids=TargetComponentsIdSet(ids=[1])),
            "is_active": True,
        }
        values.update(fields)
        return DispatchData(**values)  # type: ignore[arg-type]

    return {
        "frequency 9": data(recurrence=RecurrenceRule(freq=RecurrenceRuleFrequency(9))),
        "weekday 8": data(
            recurrence=RecurrenceRule(
                freq=RecurrenceRuleFrequency.DAILY, byweekdays=[RecurrenceRuleWeekday(8)]
            )
        ),
        "category 99": data(
            target=TargetComponents(
                component_categories=TargetComponentsCategorySet(
                    categories=[ElectricalComponentCategory(99)]
                )
            )
        ),
        "battery type 7": data(
            target=TargetComponents(
                component_categories_types=TargetComponentsCategoryTypeSet(
                    categories=[
                        TargetComponentsCategoryAndType(
                            category=ElectricalComponentCategory.BATTERY, battery=BatteryType(7)
                        )
                    ]
                )
            )
        ),
        "year 9999": data(
            start_time=dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC),
            recurrence=RecurrenceRule(freq=RecurrenceRuleFrequency.MINUTELY),
        ),
        "zero duration": data(duration=0),
        "no duration": data(duration=None),
        "count 4096": data(
            recurrence=RecurrenceRule(
                freq=RecurrenceRuleFrequency.MINUTELY,
                end_criteria=RecurrenceRuleEndCriteria(count=4096),
            )
        ),
        # Payload values JSON cannot hold, and text a terminal would obey.
        "payload NaN and -inf": data(
            payload=Struct(
                fields={"n": Value(number_value=math.nan), "i": Value(number_value=-math.inf)}
            )
        ),
        "payload Value without kind": data(
            payload=Struct(
                fields={"k": Value(), "l": Value(list_value=ListValue(values=[Value()]))}
            )
        ),
        "control characters in type": data(type="\x1b[2J\nY\u202e"),
        "until before start": data(
            recurrence=RecurrenceRule(
                freq=RecurrenceRuleFrequency.HOURLY,
                end_criteria=RecurrenceRuleEndCriteria(until_time=FUTURE - dt.timedelta(days=9)),
            )
        ),
    }


def strict_json(line: str) -> object:
    """json.loads, refusing the NaN / Infinity that JSON does not have."""

    def refuse(constant: str) -> object:
        raise AssertionError(f"not JSON: {constant} in {line}")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture
async def odd_server(server: RunningServer) -> RunningServer:
    now = dt.datetime.now(dt.UTC)
    for data in odd_dispatches().values():
        await server.service.store.insert(int(MG), data, now=now, end_time=None)
    return server


async def test_every_command_over_odd_dispatches(odd_server: RunningServer, tmp_path: Path) -> None:
    server = odd_server
    ids = [str(i) for i in range(1, len(odd_dispatches()) + 1)]
    table = clean(await run(server, "list", MG), 0)
    assert "frequency 9 (unknown)" in table
    assert "99 (unknown)" in table and "BATTERY:7 (unknown)" in table
    assert "\\x1b[2J" in table and "\x1b" not in table  # shown escaped, not obeyed
    clean(await run(server, "list", MG, "--running"), 0)
    listed = await run(server, "--json", "list", MG)
    clean(listed, 0)
    for line in listed.stdout.splitlines():
        strict_json(line)
    detail = clean(await run(server, "get", MG, *ids), 0)
    assert "weekday 8 (unknown)" in detail
    assert "recurrence.freq 9 is not a known RecurrenceRuleFrequency" in detail  # the warning
    assert '"n": "NaN"' in detail and '"k": null' in detail
    assert "\x1b" not in detail and "\u202e" not in detail
    got = await run(server, "--json", "get", MG, *ids)
    clean(got, 0)
    for line in got.stdout.splitlines():
        strict_json(line)
    for flags in ([], ["--all"], ["--json"], ["--hours", "8000"]):
        output = clean(await run(server, "timeline", MG, *flags), 0)
        assert "\x1b" not in output
    for dispatch_id in ids:
        result = await run(server, "ical", MG, dispatch_id, "-o", str(tmp_path / "x.ics"))
        output = clean(result, 0, 1)
        if result.exit_code:
            assert "cannot be exported" in output
    watched = clean(await run(server, "watch", MG, "--max-events", str(len(ids))), 0)
    assert "frequency 9 (unknown)" in watched and "\x1b" not in watched
    watched = await run(server, "--json", "watch", MG, "--max-events", str(len(ids)))
    clean(watched, 0)
    for line in watched.stdout.splitlines():
        strict_json(line)
    clean(await run(server, "update", MG, "1", "--duration", "2h"), 0, 1)
    clean(await run(server, "update", MG, "2", "--inactive"), 0, 1)
    clean(await run(server, "delete", MG, ids[-1]), 0)


async def test_stream_shows_an_unknown_event_kind(odd_server: RunningServer) -> None:
    server = odd_server
    stored = await server.service.store.get(int(MG), 1)
    assert stored is not None

    async def publish_when_open() -> None:
        with anyio.fail_after(10):
            await server.service.wait_for_streams(int(MG), 1)
        # An event kind a newer server might send.
        server.service._fanout.publish(
            int(MG), StreamMicrogridDispatchesResponse(dispatch=stored, event=Event(9))
        )

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(publish_when_open)
        output = clean(await run(server, "stream", MG, "--max-events", "1"), 0)
    assert "9 (unknown)" in output and "frequency 9 (unknown)" in output


# --- interrupts (real processes) ---------------------------------------------------------


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    return process.returncode, stderr


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_serve_stream_and_watch_exit_130_on_ctrl_c(signum: int, status: int) -> None:
    env = {**os.environ}
    env.pop("DISPATCH_API_KEY", None)
    server = start("dispatch_client.cli", "--json", "serve", "--port", "0", env=env)
    try:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        env["DISPATCH_API_URL"] = url
        for command in ("stream", "watch"):
            follower = start("dispatch_client.cli", command, MG, env=env)
            assert follower.stderr is not None
            # The announcement says the stream is open and the handlers are in place.
            assert re.match(r"(Listening for|Watching) events", follower.stderr.readline())
            code, stderr = stop(follower, signum)
            assert code == status, stderr
            assert "Traceback" not in stderr
        python_m = start("dispatch_client.server", "--port", "0", env=env)
        assert python_m.stderr is not None
        while "listening" not in python_m.stderr.readline():
            pass
        code, stderr = stop(python_m, signum)
        assert code == status and "Traceback" not in stderr
    finally:
        code, stderr = stop(server, signum)
    assert code == status and "Traceback" not in stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["list", MG], ["--json", "get", MG, "1"], ["timeline", MG]])
async def test_output_the_system_cannot_write_is_one_line_exit_1(
    odd_server: RunningServer, args: list[str]
) -> None:
    # stdout on a full disk (/dev/full): an OSError from the write, a traceback before.
    environment = {**os.environ, "DISPATCH_API_URL": odd_server.url}
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        with anyio.fail_after(30):
            done = await anyio.run_process(
                [sys.executable, "-m", "dispatch_client.cli", *args],
                stdout=full,
                env=environment,
                check=False,
            )
    finally:
        os.close(full)
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert done.returncode == 1
    assert stderr.strip() == "Error: OSError: [Errno 28] No space left on device"


async def test_a_url_with_credentials_is_named_as_the_url() -> None:
    # The message says "pass auth_key= instead": it once made the error name --key.
    result = await run(None, "--url", "grpc://user:pw@127.0.0.1:1?ssl=false", "list", MG)
    output = clean(result, 2)
    assert "'--url'" in output and "'--key'" not in output
