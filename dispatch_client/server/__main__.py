"""`python -m dispatch_client.server`: run the reference server until SIGINT/SIGTERM.

The options are those of `dispatch-cli serve` (both come from
`dispatch_client.server.config.SERVER_OPTIONS`); this entry point needs no extra.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

from .config import ServerConfig, add_server_arguments, configure_logging, run_until_stopped

__all__ = ["main", "parse_config", "parser"]


def parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        An argparse parser with every option of `SERVER_OPTIONS`.
    """
    p = argparse.ArgumentParser(
        prog="python -m dispatch_client.server",
        description="Run the reference Frequenz Dispatch API server (grpclib + SQLite).",
    )
    add_server_arguments(p)
    return p


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    """Parse and check command-line arguments.

    Args:
        argv: the arguments without the program name; None reads `sys.argv`.

    Returns:
        The checked server configuration.

    Raises:
        SystemExit: with status 2 and a one-line message naming the option,
            for an unknown option or a bad value (argparse's usage error).
    """
    p = parser()
    args = p.parse_args(argv)
    try:
        return ServerConfig.from_options(**vars(args))
    except ValueError as error:
        p.error(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and serve until interrupted.

    Args:
        argv: the arguments without the program name; None reads `sys.argv`.

    Returns:
        The exit status: 0 after a clean stop (SIGTERM), 130 after Ctrl-C
        (SIGINT), 1 when the server cannot start.

    Raises:
        SystemExit: with status 2 for bad arguments.
    """
    config = parse_config(argv)
    configure_logging(config)
    try:
        return anyio.run(run_until_stopped, config)
    except OSError as error:  # port taken, unreadable certificate, bad db path
        print(f"error: cannot serve on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
