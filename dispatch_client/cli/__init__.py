"""`dispatch-cli`: the Dispatch API from the shell (needs the `cli` extra)."""

from __future__ import annotations

import sys

from .commands import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the `dispatch-cli` console script."""
    try:
        cli(prog_name="dispatch-cli")
    except KeyboardInterrupt:
        # Ctrl-C outside stream/watch/serve (which stop cleanly on it): no traceback.
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
