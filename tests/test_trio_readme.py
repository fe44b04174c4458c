"""The README's trio program runs against a reference server, so it never rots.

The program is the first ```python block under the "## Using it from trio"
heading; the test fails if the section or its program is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dispatch_client.testing import threaded_server

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Using it from trio"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def trio_program() -> str:
    text = README.read_text()
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    program = BLOCK.search(section)
    assert program is not None, f"the {HEADING!r} section has no ```python block"
    code = program.group(1)
    assert "trio.run(" in code, "the trio example does not run trio"
    return code


def test_the_readme_trio_program_runs(tmp_path: Path) -> None:
    script = tmp_path / "trio_example.py"
    script.write_text(trio_program())
    with threaded_server() as server:
        env = dict(os.environ, DISPATCH_API_URL=server.url)
        result = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    # The watch saw the change and the delete live, and the list what was left.
    lines = result.stdout.splitlines()
    assert "UPDATED TRIO_CHARGE" in lines
    assert "DELETED TRIO_CHARGE" in lines
    assert "left: ['TRIO_CURTAIL']" in lines
