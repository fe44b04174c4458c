"""dispatch-cli repl against the reference server: prompt_toolkit pipe input, then a real terminal.

The in-process tests type into prompt_toolkit's pipe input (no terminal) and
read what the commands print; one test runs `dispatch-cli repl` in a real
pseudo-terminal with pexpect, types, presses Tab and Ctrl-C, and leaves.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

import dispatch_client.cli.base as cli_base
from dispatch_client import Client
from dispatch_client.cli import cli
from dispatch_client.cli.repl import CliCompleter, _has_secret
from dispatch_client.testing import RunningServer, running_server

KEY = "repl-test-key-0123456789"
MG = 7


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server(keys=[KEY]) as srv:
        yield srv


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's state directory, where the history goes (platformdirs reads XDG_STATE_HOME)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("DISPATCH_API_URL", "DISPATCH_API_KEY", "DISPATCH_API_AUTH_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "state"


@pytest.fixture
def clients_made(monkeypatch: pytest.MonkeyPatch) -> list[Client]:
    """Every Client the CLI constructs (a real one, only counted)."""
    made: list[Client] = []

    class CountedClient(Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(cli_base, "Client", CountedClient)
    return made


@pytest.fixture
def pipe() -> Iterator[PipeInput]:
    with create_pipe_input() as keys:
        yield keys


async def repl(server: RunningServer, keys: PipeInput) -> Any:
    """Run `dispatch-cli --url URL --key KEY repl`, reading `keys`, in this task's context."""
    with anyio.fail_after(30), create_app_session(input=keys, output=DummyOutput()):
        return await cli.main(
            ["--url", server.url, "--key", KEY, "repl"], "dispatch-cli", standalone_mode=False
        )


@pytest.mark.anyio
async def test_a_session_runs_commands_on_one_connection_and_survives_errors(
    server: RunningServer,
    pipe: PipeInput,
    state_home: Path,
    clients_made: list[Client],
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = [
        f"create {MG} CHARGE 1,2 now 1h --json",
        f"list {MG}",
        "frobnicate",  # no such command
        f"get {MG} 999",  # an API error (NOT_FOUND)
        f"create {MG} LATE 1 '2020-01-01 00:00' 1h",  # a usage error (start in the past)
        "create 'unclosed",  # a line that does not parse
        f"update {MG} 1 --duration 2h",
        "help",
        "help update",
        "",
        "exit",
    ]
    pipe.send_text("\n".join(lines) + "\n")
    await repl(server, pipe)

    out, err = capsys.readouterr()
    created = json.loads(out.splitlines()[0])
    assert created["data"]["type"] == "CHARGE"
    assert "CHARGE" in out.split("\n", 1)[1]  # the list's table
    assert "Error: no such command 'frobnicate'" in err
    assert "Error: NotFound: " in err
    assert "Error: " in err and "past" in err
    assert "No closing quotation" in err
    assert "Duration    2h" in out  # the update ran after all those errors
    assert "Commands (each as on the shell" in out and "Usage: " in out
    assert "Traceback" not in out + err and KEY not in out + err

    # One connection for the whole session, closed at its end.
    assert len(clients_made) == 1
    assert not clients_made[0].is_connected
    history = (state_home / "dispatch-cli" / "repl_history").read_text()
    assert f"+list {MG}" in history and "+frobnicate" in history


@pytest.mark.anyio
async def test_json_on_one_line_does_not_stick_to_the_next(
    server: RunningServer, pipe: PipeInput, state_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe.send_text(f"create {MG} A 1 now 1h --json\ncreate {MG} B 1 now 1h\n")
    pipe.send_text("\x04")  # Ctrl-D leaves
    await repl(server, pipe)
    out = capsys.readouterr().out
    json.loads(out.splitlines()[0])
    assert "Type        B" in out


@pytest.mark.anyio
async def test_ctrl_c_at_the_prompt_clears_the_line_and_the_session_goes_on(
    server: RunningServer, pipe: PipeInput, state_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe.send_text(f"create {MG} NEVER 1 now")
    pipe.send_text("\x03")  # Ctrl-C drops the half-typed line
    pipe.send_text(f"create {MG} KEPT 1 now 1h\nexit\n")
    await repl(server, pipe)
    assert "KEPT" in capsys.readouterr().out
    async with Client(server.url, auth_key=KEY) as client:
        types = {d.data.type async for d in client.dispatches(MG) if d.data is not None}
    assert types == {"KEPT"}


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
async def test_ctrl_c_stops_a_stream_and_returns_to_the_prompt(
    server: RunningServer, pipe: PipeInput, state_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    async def press_ctrl_c_once_streaming() -> None:
        with anyio.fail_after(10):
            while "Listening for events" not in "".join(seen):
                seen.append(capsys.readouterr().err)
                await anyio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)
        # After the stream, the prompt reads on: the same connection still works.
        pipe.send_text(f"create {MG} AFTER 1 now 1h\nexit\n")

    pipe.send_text(f"stream {MG}\n")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(press_ctrl_c_once_streaming)
        await repl(server, pipe)
    out = capsys.readouterr().out
    assert f"Listening for events of microgrid {MG}" in "".join(seen)
    assert "CREATED" not in out and "Type        AFTER" in out
    assert server.service.open_stream_count(MG) == 0


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
async def test_serve_in_the_session_leaves_no_logging_behind_and_its_key_no_history(
    server: RunningServer,
    pipe: PipeInput,
    state_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by hand: after `serve` and Ctrl-C, every later command printed INFO
    # log lines (serve's logging setup outlived it), and `serve --key K` was
    # written to the history file.
    root = logging.getLogger()
    # As on the shell: no handlers yet (pytest's own would make basicConfig a no-op).
    monkeypatch.setattr(root, "handlers", [])
    level, handlers = root.level, list(root.handlers)
    seen: list[str] = []

    async def press_ctrl_c_once_serving() -> None:
        with anyio.fail_after(10):
            while "Serving the Dispatch API" not in "".join(seen):
                seen.append(capsys.readouterr().out)
                await anyio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)
        pipe.send_text(f"list {MG}\nexit\n")

    pipe.send_text("serve --port 0 --log-level DEBUG --key serve-only-key-42 --sign-secret s3\n")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(press_ctrl_c_once_serving)
        await repl(server, pipe)
    assert (root.level, root.handlers) == (level, handlers)
    assert "No dispatches." in capsys.readouterr().out  # the session went on after serve
    history = (state_home / "dispatch-cli" / "repl_history").read_text()
    assert f"+list {MG}" in history
    assert "serve-only-key-42" not in history and "s3" not in history
    assert (state_home / "dispatch-cli" / "repl_history").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("serve --key K", True),
        ("serve --key=K", True),
        ("serve --sign-secret 's 1'", True),
        ("serve --auth-key K", True),
        ("serve --key 'unclosed", True),  # does not parse, still not written
        ("list 1 --query key", False),
        ("create 1 KEY 1 now --payload '{\"--key\": 1}'", False),
    ],
)
def test_which_lines_stay_out_of_the_history_file(line: str, secret: bool) -> None:
    assert _has_secret(line) is secret


# --- completion ---------------------------------------------------------------


@pytest.fixture
def completer() -> CliCompleter:
    return CliCompleter(cli, cli.context_class(cli, info_name="dispatch-cli"))


def complete(completer: CliCompleter, text: str) -> list[str]:
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def test_completion_of_commands(completer: CliCompleter) -> None:
    names = complete(completer, "")
    assert {"create", "list", "stream", "watch", "serve", "help", "exit", "quit"} <= set(names)
    assert "repl" not in names  # no session inside the session
    assert complete(completer, "cr") == ["create"]
    assert complete(completer, "help up") == ["update"]


def test_completion_of_options(completer: CliCompleter) -> None:
    options = complete(completer, f"list {MG} --")
    assert {"--active", "--inactive", "--sort", "--target", "--json", "--help"} <= set(options)
    assert complete(completer, f"update {MG} 5 --no-d") == ["--no-duration"]


def test_completion_of_enum_values(completer: CliCompleter) -> None:
    assert complete(completer, f"create {MG} X 1 now --freq ") == [
        "minutely",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "yearly",
    ]
    assert complete(completer, f"list {MG} --sort ") == ["start", "created", "updated"]
    assert complete(completer, f"create {MG} X 1 now 1h --by-weekday s") == ["saturday", "sunday"]
    # TARGET is the third argument of create; the option before it takes a value.
    targets = complete(completer, f"create --payload '{{}}' {MG} CHARGE BATT")
    assert targets == ["BATTERY", "BATTERY:LI_ION", "BATTERY:NA_ION"]
    assert "INVERTER:PV" in complete(completer, f"list {MG} --target inv")
    assert complete(completer, f"create {MG} CHARGE 1 n") == ["now"]
    # Free-form values get no suggestions.
    assert complete(completer, f"create {MG} ") == []


# --- a real terminal ----------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_repl_in_a_real_terminal(tmp_path: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    server = subprocess.Popen(
        [sys.executable, "-m", "dispatch_client.cli", "--json", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        env = dict(
            os.environ,
            DISPATCH_API_URL=url,
            XDG_STATE_HOME=str(tmp_path),
            TERM="xterm",
            # No cursor-position request: pexpect would have to answer it.
            PROMPT_TOOLKIT_NO_CPR="1",
        )
        env.pop("DISPATCH_API_KEY", None)
        child = pexpect.spawn(
            sys.executable,
            ["-m", "dispatch_client.cli", "repl"],
            env=env,
            encoding="utf-8",
            timeout=20,
            dimensions=(40, 120),
        )
        try:
            child.expect("Connected to ")
            child.expect("dispatch>")
            child.send("cre\t")  # Tab completes the command ...
            child.expect("ate")  # ... (the screen may be redrawn in pieces)
            child.send(f" {MG} CHARGE 1,2 now 1h\r")
            child.expect("Type.*CHARGE")
            child.expect("dispatch>")
            child.send(f"stream {MG}\r")
            child.expect(f"Listening for events of microgrid {MG}")
            child.sendintr()  # Ctrl-C
            child.expect("dispatch>")
            child.send(f"list {MG}\r")
            child.expect("CHARGE")
            child.expect("dispatch>")
            child.send("exit\r")
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == 0, child.before
        history = (tmp_path / "dispatch-cli" / "repl_history").read_text()
        assert f"+stream {MG}" in history
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
