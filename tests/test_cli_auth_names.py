"""The official CLI's names for the API key work too: `--auth-key` and `DISPATCH_API_AUTH_KEY`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import anyio
import pytest
from asyncclick.testing import CliRunner, Result

from dispatch_client.cli import cli
from dispatch_client.testing import RunningServer, running_server

pytestmark = pytest.mark.anyio

KEY = "auth-name-key-0123456789"
OTHER = "some-other-key-9876543210"
UNSET: dict[str, str | None] = {
    "DISPATCH_API_KEY": None,
    "DISPATCH_API_AUTH_KEY": None,
    "DISPATCH_API_SIGN_SECRET": None,
}


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server(keys=[KEY]) as srv:
        yield srv


async def run(server: RunningServer, *args: str, env: Mapping[str, str | None]) -> Result:
    environment = {**UNSET, "DISPATCH_API_URL": server.url, **env}
    with anyio.fail_after(20):
        return await CliRunner().invoke(cli, list(args), env=environment, catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--auth-key", KEY], {}),
        (["--key", KEY], {}),
        ([], {"DISPATCH_API_AUTH_KEY": KEY}),
        ([], {"DISPATCH_API_KEY": KEY}),
        # A flag beats the environment, whichever name either uses.
        (["--auth-key", KEY], {"DISPATCH_API_KEY": OTHER}),
        (["--key", KEY], {"DISPATCH_API_AUTH_KEY": OTHER}),
        # Both variables set to the same key, or one of them empty.
        ([], {"DISPATCH_API_KEY": KEY, "DISPATCH_API_AUTH_KEY": KEY}),
        ([], {"DISPATCH_API_KEY": "", "DISPATCH_API_AUTH_KEY": KEY}),
        # A flag settles two variables that disagree.
        (["--key", KEY], {"DISPATCH_API_KEY": OTHER, "DISPATCH_API_AUTH_KEY": KEY}),
    ],
    ids=[
        "auth-key",
        "key",
        "AUTH_KEY env",
        "KEY env",
        "flag>env",
        "key>env",
        "both env, same",
        "KEY env empty",
        "flag>both env",
    ],
)
async def test_the_key_is_taken_from_any_of_its_names(
    server: RunningServer, args: list[str], env: dict[str, str | None]
) -> None:
    result = await run(server, *args, "list", "1", env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--auth-key", OTHER], {}), ([], {"DISPATCH_API_AUTH_KEY": OTHER})],
    ids=["flag", "env"],
)
async def test_a_wrong_auth_key_is_refused_and_never_shown(
    server: RunningServer, args: list[str], env: dict[str, str | None]
) -> None:
    result = await run(server, *args, "list", "1", env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Unauthenticated:")
    assert OTHER not in result.output


@pytest.mark.parametrize(
    "env",
    [
        {"DISPATCH_API_KEY": KEY, "DISPATCH_API_AUTH_KEY": OTHER},
        {"DISPATCH_API_KEY": OTHER, "DISPATCH_API_AUTH_KEY": KEY},
    ],
    ids=["KEY right, AUTH_KEY stale", "AUTH_KEY right, KEY stale"],
)
async def test_two_key_variables_that_disagree_are_refused_by_name(
    server: RunningServer, env: dict[str, str | None]
) -> None:
    # The official CLI prefers DISPATCH_API_AUTH_KEY; guessing either way is
    # unsafe for someone with both set, so the conflict is named (not the keys).
    result = await run(server, "list", "1", env=env)
    assert result.exit_code == 2
    assert "DISPATCH_API_KEY and DISPATCH_API_AUTH_KEY" in result.stderr
    assert KEY not in result.output and OTHER not in result.output


async def test_help_names_both() -> None:
    result = await CliRunner().invoke(cli, ["--help"], env=UNSET)
    assert "--auth-key" in result.stdout and "DISPATCH_API_AUTH_KEY" in result.stdout
