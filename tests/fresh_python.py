"""Running a program in a fresh interpreter, for tests of what importing the package does."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(program: str) -> str:
    """Run `program` (dedented) with this interpreter in a new process and return its stdout.

    Args:
        program: Python source; its indentation is removed first.

    Returns:
        What the program printed, stripped.
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
