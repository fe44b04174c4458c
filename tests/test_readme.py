"""The README's Python examples run against the reference server, so they never rot."""

import os
import re
import sys
from pathlib import Path

import anyio
import pytest

from dispatch_client.testing import running_server

README = Path(__file__).resolve().parent.parent / "README.md"
# ```python blocks are programs; ```python notest marks fragments.
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples() -> list[str]:
    return BLOCK.findall(README.read_text())


def test_readme_has_the_promised_examples() -> None:
    code = "\n".join(examples())
    for call in (
        "client.create(",
        "client.list(",
        "client.update(",
        "client.watch(",
        "client.stream(",
        "client.running(",
    ):
        assert call in code, f"README lost its {call} example"


@pytest.mark.anyio
@pytest.mark.parametrize("index", range(len(examples())))
async def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(examples()[index])
    async with running_server() as server:
        env = dict(os.environ, DISPATCH_API_URL=server.url)
        with anyio.fail_after(60):
            result = await anyio.run_process([sys.executable, str(script)], env=env, check=False)
    assert result.returncode == 0, (
        f"README example {index} failed:\n{result.stdout.decode()}\n{result.stderr.decode()}"
    )
