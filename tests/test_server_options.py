"""Both server entry points take one set of options: same names, defaults, checks and results.

`python -m dispatch_client.server` (argparse) and `dispatch-cli serve` (click)
are parsed side by side, without serving; running them is covered by
test_server_persistence.py and test_cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import asyncclick as click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_client.cli.serve import serve_command, serve_config
from dispatch_client.server import DEFAULT_STREAM_BUFFER_SIZE
from dispatch_client.server.__main__ import parse_config, parser
from dispatch_client.server.config import SERVER_OPTIONS, ServerConfig


def argparse_config(argv: list[str]) -> ServerConfig:
    return parse_config(argv)


def click_config(argv: list[str]) -> ServerConfig:
    return anyio.run(serve_config, argv)


def argparse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def click_error(argv: list[str]) -> str:
    with pytest.raises(click.UsageError) as error:
        click_config(argv)
    return error.value.format_message()


def test_same_option_names() -> None:
    argparse_flags = {
        flag
        for action in parser()._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }
    click_flags = {
        flag
        for param in serve_command.params
        for flag in param.opts
        if flag != "--json"  # output format of the CLI, not a server option
    }
    assert argparse_flags == click_flags == {option.flag for option in SERVER_OPTIONS}


def test_same_defaults() -> None:
    expected = ServerConfig(
        host="127.0.0.1",
        port=50051,
        db=":memory:",
        keys=(),
        sign_secret=None,
        tls_cert=None,
        tls_key=None,
        stream_buffer=DEFAULT_STREAM_BUFFER_SIZE,
        log_level="INFO",
    )
    assert argparse_config([]) == expected
    assert click_config([]) == expected


def test_every_option_given(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    argv = [
        "--host=::1",
        "--port=0",
        f"--db={tmp_path / 'd.db'}",
        "--key=a",
        "--key=b",
        "--sign-secret=s3cret",
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        "--stream-buffer=7",
        "--log-level=debug",
    ]
    expected = ServerConfig(
        host="::1",
        port=0,
        db=str(tmp_path / "d.db"),
        keys=("a", "b"),
        sign_secret="s3cret",
        tls_cert=str(cert),
        tls_key=str(key),
        stream_buffer=7,
        log_level="debug",
    )
    assert argparse_config(argv) == expected
    assert click_config(argv) == expected
    # Keys and secrets stay out of the repr (it may end up in a log line).
    assert "s3cret" not in repr(expected) and "'a'" not in repr(expected)


_text = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)
_argv_parts = st.lists(
    st.one_of(
        _text.map(lambda v: ["--host", v]),
        st.integers(0, 65535).map(lambda v: ["--port", str(v)]),
        _text.map(lambda v: ["--db", v]),
        _text.map(lambda v: ["--key", v]),
        _text.map(lambda v: ["--sign-secret", v]),
        st.integers(1, 10**6).map(lambda v: ["--stream-buffer", str(v)]),
        st.sampled_from(["debug", "INFO", "Warning", "ERROR"]).map(lambda v: ["--log-level", v]),
    ),
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(_argv_parts)
def test_any_valid_argv_parses_the_same(parts: list[list[str]]) -> None:
    argv = [word for part in parts for word in part]
    assert argparse_config(argv) == click_config(argv)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        pytest.param(["--port", "70000"], "--port", id="port-too-high"),
        pytest.param(["--port", "-1"], "--port", id="port-negative"),
        pytest.param(["--port", "x"], "--port", id="port-not-int"),
        pytest.param(["--stream-buffer", "0"], "--stream-buffer", id="buffer-zero"),
        pytest.param(["--tls-cert", "cert.pem"], "--tls-key", id="tls-half"),
        pytest.param(
            ["--tls-cert", "missing.pem", "--tls-key", "missing.pem"],
            "--tls-cert",
            id="tls-missing-file",
        ),
        pytest.param(["--log-level", "loud"], "--log-level", id="log-level-unknown"),
        pytest.param(["--no-such-option"], "--no-such-option", id="unknown-option"),
        # Secrets that could never work: accepted and served before.
        pytest.param(["--key", ""], "--key", id="key-empty"),
        pytest.param(["--key", "a\nb"], "--key", id="key-newline"),
        pytest.param(["--key", "ключ"], "--key", id="key-not-ascii"),
        pytest.param(["--sign-secret", ""], "--sign-secret", id="sign-secret-empty"),
    ],
)
def test_same_bad_input_refused_naming_the_option(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert named in argparse_error(argv, capsys)
    assert named in click_error(argv)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "db",
    [
        pytest.param("{tmp}/missing-folder/x.db", id="folder-missing"),
        pytest.param("{tmp}", id="a-directory"),
        pytest.param("{tmp}/not-a-db.txt", id="not-a-database"),
    ],
)
async def test_a_database_path_that_cannot_be_opened_is_one_line_exit_1(
    db: str, tmp_path: Path
) -> None:
    # sqlite3 errors escaped the startup as an ExceptionGroup traceback.
    (tmp_path / "not-a-db.txt").write_text("hello, not SQLite\n" * 100)
    path = db.format(tmp=tmp_path)
    with anyio.fail_after(30):
        done = await anyio.run_process(
            [sys.executable, "-m", "dispatch_client.server", "--port", "0", "--db", path],
            check=False,
        )
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert f"cannot open the SQLite database {path!r}" in stderr.strip().splitlines()[-1]
