"""`dispatch-cli serve`: the reference server, with the options of `python -m dispatch_client.server`.

Both entry points build their options from
`dispatch_client.server.config.SERVER_OPTIONS` and check them with
`ServerConfig.from_options`, so they accept the same options with the same
defaults. This one also prints the URL to connect to (or `{"url": ...}` with
--json) as soon as the server listens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncclick as click

from ..server.config import (
    SERVER_OPTIONS,
    ServerConfig,
    configure_logging,
    run_until_stopped,
)
from .base import Settings, command_json_option

__all__ = ["serve_command", "serve_config"]

F = TypeVar("F", bound=Callable[..., Any])

_CLICK_TYPES: dict[type, click.ParamType[Any]] = {int: click.INT, str: click.STRING}


def _server_options(func: F) -> F:
    for option in reversed(SERVER_OPTIONS):
        func = click.option(
            option.flag,
            option.dest,
            type=_CLICK_TYPES[option.kind],
            default=() if option.repeat else option.default,
            multiple=option.repeat,
            show_default=option.default is not None,
            metavar=option.metavar,
            help=option.help,
        )(func)
    return func


def _config(values: dict[str, Any]) -> ServerConfig:
    try:
        return ServerConfig.from_options(**values)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


async def serve_config(argv: Sequence[str]) -> ServerConfig:
    """Parse `dispatch-cli serve` arguments into a config, without serving.

    Args:
        argv: the arguments after `serve`, e.g. `["--port", "0"]`.

    Returns:
        The checked server configuration.

    Raises:
        click.UsageError: an unknown option or a bad value (the message names the option).
    """
    async with await serve_command.make_context("serve", list(argv)) as ctx:
        return _config(dict(ctx.params))


@click.command("serve")
@_server_options
@command_json_option
@click.pass_obj
async def serve_command(settings: Settings, /, **values: Any) -> None:
    """Run the reference Dispatch API server until Ctrl-C (or SIGTERM).

    Prints the URL to connect to as soon as it listens (with --json:
    {"url": ...}); logs go to stderr.
    """
    from ..server import DispatchServer

    config = _config(values)
    out = settings.output()
    configure_logging(config)

    def ready(server: DispatchServer) -> None:
        if out.json_mode:
            out.json_line({"url": server.url, "host": server.host, "port": server.port})
        else:
            out.line(f"Serving the Dispatch API on {server.url} (db {config.db}); Ctrl-C to stop")

    try:
        status = await run_until_stopped(config, on_ready=ready)
    except OSError as error:  # port taken, unreadable certificate, bad db path
        raise click.ClickException(
            f"cannot serve on {config.host}:{config.port}: {error}"
        ) from None
    if status:
        raise click.exceptions.Exit(status)  # 130 after Ctrl-C, like the other commands
