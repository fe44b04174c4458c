"""The dispatch-cli command group: global options, and every command registered on it.

The commands live in modules by role: `query` (list, get, delete), `edit`
(create, update), `follow` (stream, watch), `views` (timeline, ical) and
`serve`, and `repl` runs them interactively; `base` holds what they share.
"""

from __future__ import annotations

import os

import asyncclick as click

from .. import __version__
from .base import OneLineErrors, Settings
from .edit import create_command, update_command
from .follow import stream_command, watch_command
from .query import delete_command, get_command, list_command
from .repl import repl_command
from .serve import serve_command
from .views import ical_command, timeline_command

__all__ = ["cli"]


@click.group(
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--url",
    envvar="DISPATCH_API_URL",
    show_envvar=True,
    metavar="URL",
    help="Server URL, e.g. grpc://dispatch.example.com or grpc://127.0.0.1:50051?ssl=false.",
)
@click.option(
    "--key",
    "--auth-key",
    "key",
    # The second pair is the official client's CLI's naming.
    envvar=["DISPATCH_API_KEY", "DISPATCH_API_AUTH_KEY"],
    show_envvar=True,
    metavar="KEY",
    help="API key (sent with every call, never printed).",
)
@click.option(
    "--sign-secret",
    envvar="DISPATCH_API_SIGN_SECRET",
    show_envvar=True,
    metavar="SECRET",
    help="Secret to sign each call with (HMAC-SHA256), if the server wants signatures.",
)
@click.option(
    "--json",
    "json_mode",
    is_flag=True,
    help="Machine-readable output: one JSON document per line (protobuf JSON of the messages).",
)
@click.version_option(__version__, "-V", "--version", prog_name="dispatch-cli")
@click.pass_context
async def cli(
    ctx: click.Context,
    url: str | None,
    key: str | None,
    sign_secret: str | None,
    json_mode: bool,
) -> None:
    """Manage dispatches of the Frequenz Dispatch API.

    Times are UTC unless they say otherwise. START accepts ISO 8601, 'now' or
    phrases like 'in 10 min' and 'tomorrow 08:00'; DURATION accepts 90s, 15m,
    1h30m or PT1H30M; TARGET accepts ids (1,2,3), categories (BATTERY,INVERTER)
    or category:type (BATTERY:LI_ION).
    """
    if ctx.get_parameter_source("key") is click.core.ParameterSource.ENVIRONMENT:
        _check_key_variables_agree()
    ctx.obj = Settings(url=url, key=key, sign_secret=sign_secret, json_mode=json_mode)


def _check_key_variables_agree() -> None:
    """Refuse two different keys in the two key variables, naming them but not the keys.

    Someone switching from the official CLI may still have an old
    `DISPATCH_API_KEY` next to its `DISPATCH_API_AUTH_KEY`; silently taking
    one of them would end in an `Unauthenticated` that points nowhere.

    Raises:
        click.UsageError: both variables are set, to different keys.
    """
    keys = {os.environ.get(name) for name in ("DISPATCH_API_KEY", "DISPATCH_API_AUTH_KEY")}
    keys.discard(None)
    keys.discard("")
    if len(keys) > 1:
        raise click.UsageError(
            "DISPATCH_API_KEY and DISPATCH_API_AUTH_KEY are both set, to different keys; "
            "unset one, or pass --key"
        )


for _command in (
    list_command,
    get_command,
    delete_command,
    create_command,
    update_command,
    stream_command,
    watch_command,
    timeline_command,
    ical_command,
    serve_command,
    repl_command,
):
    cli.add_command(_command)
