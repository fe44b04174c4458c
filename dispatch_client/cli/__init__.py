"""`dispatch-cli`: the Dispatch API from the shell (needs the `cli` extra)."""

from __future__ import annotations

from .commands import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the `dispatch-cli` console script."""
    cli(prog_name="dispatch-cli")
