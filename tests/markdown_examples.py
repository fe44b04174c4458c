"""Run the ```python programs of Markdown files (README, docs/) against a reference server.

A block fenced as exactly ```python is a whole program: it reads the server URL
from `DISPATCH_API_URL` and must exit 0. A ```bash block is a shell script run
the same way (with `set -eo pipefail`, this interpreter's bin directory first
on PATH). Fragments are fenced differently (```py, ```sh, or ```python notest
in the README) and are not run. This module holds
no tests; test_readme.py and test_docs.py use it.

The programs of a file set run concurrently against one server (they spend
most of their time starting Python or waiting for schedules), so each must
use microgrid ids of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
SCRIPT = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
# Generous: a program may wait for real schedules (a few seconds) on a busy machine.
PROGRAM_TIMEOUT = 60.0


def programs(path: Path) -> list[str]:
    """Return the runnable ```python blocks of a Markdown file, in order."""
    return PROGRAM.findall(path.read_text())


def scripts(path: Path) -> list[str]:
    """Return the runnable ```bash blocks of a Markdown file, in order."""
    return SCRIPT.findall(path.read_text())


def run_script(code: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run one shell script with `DISPATCH_API_URL=url` and this venv's tools first on PATH."""
    env = dict(os.environ, DISPATCH_API_URL=url, COLUMNS="100")
    env.pop("DISPATCH_API_KEY", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROGRAM_TIMEOUT,
        check=False,
        cwd=tmp_path,
    )


def run_program(code: str, url: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Run one program in a fresh interpreter with `DISPATCH_API_URL=url`."""
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    env = dict(os.environ, DISPATCH_API_URL=url)
    env.pop("DISPATCH_API_KEY", None)
    return subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROGRAM_TIMEOUT,
        check=False,
        cwd=tmp_path,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a failed program, for the assertion message."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# Enough to overlap interpreter start-ups and schedule waits on a 2-core machine.
CONCURRENCY = 4


def run_all(
    jobs: Sequence[tuple[str, Callable[[Path], subprocess.CompletedProcess[str]]]],
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run `jobs` (name, run(workdir)) concurrently, each in a fresh directory; results by name."""
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(CONCURRENCY) as pool:
        futures = {}
        for number, (name, job) in enumerate(jobs):
            workdir = Path(scratch) / str(number)
            workdir.mkdir()
            futures[name] = pool.submit(job, workdir)
        return {name: future.result() for name, future in futures.items()}
