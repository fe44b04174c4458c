"""What every dispatch-cli command shares: settings, connecting, error shapes, common options."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import asyncclick as click

from ..client import Client
from ..errors import DispatchApiError
from .output import Output
from .parsing import uint64_param

__all__ = [
    "ApiFailure",
    "OneLineErrors",
    "Settings",
    "command_json_option",
    "connect",
    "microgrid_argument",
    "usage_error",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """Global options, shared by every command through the click context."""

    url: str | None
    key: str | None = field(repr=False)  # never shown, not even in a debug repr
    sign_secret: str | None = field(repr=False)
    json_mode: bool = False
    client: Client | None = field(default=None, repr=False)
    """A client to use instead of opening one per command (`repl` shares one per session)."""

    def output(self) -> Output:
        """Return the printer for this invocation.

        Returns:
            An `Output` in JSON mode when --json was given.
        """
        return Output(json_mode=self.json_mode)


class ApiFailure(click.ClickException):
    """An error from the API: one line, exit code 1, no traceback.

    Args:
        error: the typed error; its class name, message and server URL are shown.
    """

    exit_code = 1

    def __init__(self, error: DispatchApiError) -> None:
        where = f" (server {error.server_url})" if error.server_url else ""
        super().__init__(f"{type(error).__name__}: {error.message}{where}")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail on it a second time."""
    with suppress(OSError):
        sys.stdout.flush()
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. a test runner's buffer)
        pass


class OneLineErrors(click.Group):
    """A group whose errors print as a single `Error: ...` line.

    Click would print the usage and a hint before a usage error; a script
    reading stderr wants just the one line naming the argument.
    """

    async def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; in standalone mode, exit with 0, 1 (API error), 2 (usage) or 130 (aborted).

        Args:
            args: the arguments; None reads `sys.argv`.
            prog_name: the program name shown in messages.
            complete_var: the shell-completion environment variable.
            standalone_mode: exit with a status instead of returning or raising.
            **extra: passed to `make_context`.

        Returns:
            The command's result, when not in standalone mode.

        Raises:
            SystemExit: in standalone mode, always.
        """
        if not standalone_mode:
            return await super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = await super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as error:
            click.echo(f"Error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except OSError as error:
            # The environment failed, not the command (stdout on a full disk, a
            # port in use): one line naming it, exit 1, no traceback.
            _quiet_stdout()
            click.echo(f"Error: {type(error).__name__}: {error}", err=True)
            sys.exit(1)
        # Without standalone mode click returns an Exit's code (e.g. 0 after
        # --help) or the command's return value (None for ours).
        sys.exit(result if isinstance(result, int) else 0)

    async def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, turning typed API errors into one-line failures.

        Args:
            ctx: the group's context.

        Returns:
            The subcommand's result.

        Raises:
            ApiFailure: the subcommand raised a `DispatchApiError`.
        """
        try:
            return await super().invoke(ctx)
        except DispatchApiError as error:
            raise ApiFailure(error) from None


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    assert settings is not None, "the group callback always sets Settings"
    return settings


def _json_flag(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _settings(ctx).json_mode = True


def command_json_option(func: F) -> F:
    """Add a command-level `--json` flag that sets the global one.

    `dispatch-cli list 1 --json` reads naturally; it is accepted as well as
    `dispatch-cli --json list 1`.

    Args:
        func: the command callback to decorate.

    Returns:
        `func` with the option attached (the flag is not passed to it).
    """
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_json_flag,
        help="Same as the global --json.",
    )(func)


def microgrid_argument(func: F) -> F:
    """Add the MICROGRID argument (an int in 0..2**64-1), passed as `microgrid_id`.

    Args:
        func: the command callback to decorate.

    Returns:
        `func` with the argument attached.
    """
    return click.argument("microgrid_id", metavar="MICROGRID", type=uint64_param())(func)


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Client]:
    """Open a client with the global options, closed on exit.

    Args:
        settings: the global options (URL, key, sign secret).

    Yields:
        The connected `Client` (`settings.client` itself when set, left open).

    Raises:
        click.UsageError: no URL was given (exit 2).
        click.BadParameter: the URL or sign secret is malformed (exit 2; the
            message names the option, never its secret value).
    """
    if settings.client is not None:
        yield settings.client  # the caller's to close
        return
    if not settings.url:
        raise click.UsageError("no server URL: pass --url or set DISPATCH_API_URL")
    try:
        client = Client(
            settings.url,
            auth_key=settings.key or None,
            sign_secret=settings.sign_secret or None,
        )
    except ValueError as error:
        message = str(error)
        if "sign_secret" in message:
            hint = "'--sign-secret'"
        elif message.startswith("auth_key"):
            hint = "'--key'"
        else:
            hint = "'--url' / DISPATCH_API_URL"
        raise click.BadParameter(str(error), param_hint=hint) from None
    async with client:
        yield client


def usage_error(error: ValueError) -> NoReturn:
    """Re-raise a client-side input check as a usage error (exit 2).

    A ValueError from the client is its check of our input before sending:
    the user's argument was wrong, not the API. A `DispatchApiError` that is
    also a ValueError is re-raised unchanged (exit 1).

    Args:
        error: the error the client raised.

    Raises:
        click.UsageError: with the check's message.
        DispatchApiError: `error` itself, when it came from the server.
    """
    if isinstance(error, DispatchApiError):
        raise error
    raise click.UsageError(str(error)) from None
