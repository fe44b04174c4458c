"""The migration guide has a row for every public name of frequenz-client-dispatch 1.1.1.

The names below are facts read off that release (its `DispatchApiClient`
members and parameters, its `types`, `recurrence` and `test` modules, and its
CLI's options); the official package itself is not installed here. A name
missing from docs/migration.md is a call someone switching cannot look up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GUIDE = (Path(__file__).parent.parent / "docs" / "migration.md").read_text()

CLIENT = [
    "DispatchApiClient",
    "server_url",
    "auth_key",
    "key=",
    "sign_secret",
    "connect=",
    "call_timeout",
    "stream_timeout",
    "client.connect(",
    "disconnect()",
    "is_connected",
    "channel_defaults",
    "client.channel",
    "client.stub",
]
CALLS = [
    "client.create(",
    "client.get(",
    "client.delete(",
    "client.update(",
    "client.list(",
    "client.stream(",
    # create()'s parameters
    "microgrid_id",
    "start_time",
    "duration",
    "target",
    "active=",
    "dry_run=",
    "payload=",
    "recurrence=",
    # list()'s parameters
    "target_components",
    "start_from",
    "start_to",
    "end_from",
    "end_to",
    "dispatch_ids",
    "filter_queries",
    "page_size",
    # update()'s
    "new_fields",
    "dispatch_id",
]
TYPES = [
    "Dispatch",
    "DispatchEvent",
    "DispatchId",
    "Event",
    "TargetIds",
    "TargetCategories",
    "TargetCategory",
    "TargetComponents",
    "TimeIntervalFilter",
    "BatteryType",
    "InverterType",
    "EvChargerType",
    "d.started",
    "started_at",
    "d.until",
    "next_run_after",
    "d.next_run",
    "end_time",
    "from_protobuf",
    "to_protobuf",
    "RecurrenceRule",
    "Frequency",
    "Weekday",
    "EndCriteria",
    "EndCriteria(until=",
    "byweekdays",
]
TESTING = ["FakeClient", "set_dispatches", "DispatchGenerator", "to_create_params", "test.fixtures"]
CLI = [
    "--url",
    "DISPATCH_API_URL",
    "--auth-key",
    "DISPATCH_API_AUTH_KEY",
    "--api-key",
    "DISPATCH_API_KEY",
    "--sign-secret",
    "DISPATCH_API_SIGN_SECRET",
    "FREQUENZ_API_KEY",
    "FREQUENZ_API_SECRET",
    "--raw",
    "--running",
    "--dispatch-ids",
    "--filter-queries",
    "-t T",
    "-T TYPE",
    "--frequency",
    "-a false",
    "-d true",
    "-p JSON",
    "--start-time",
    "1..3",
    "repl",
]


@pytest.mark.parametrize("name", CLIENT + CALLS + TYPES + TESTING + CLI)
def test_the_guide_names_every_public_name_of_the_official_client(name: str) -> None:
    assert name in GUIDE
