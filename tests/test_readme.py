"""The README's Python examples run against the reference server, so they never rot.

Each runs twice against the same server, as a reader trying them again would:
an example that only passes on an empty microgrid fails the second run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from markdown_examples import ROOT, describe, programs, run_program

from dispatch_client.testing import ThreadedServer, threaded_server

README = ROOT / "README.md"


def test_readme_has_the_promised_examples() -> None:
    code = "\n".join(programs(README))
    for call in (
        "client.create(",
        "client.list(",
        "client.update(",
        "client.watch(",
        "client.stream(",
        "client.running(",
        "aclosing(",
    ):
        assert call in code, f"README lost its {call} example"


def test_readme_shows_the_whole_client_signature() -> None:
    import inspect

    from dispatch_client import Client

    text = README.read_text()
    for name in inspect.signature(Client).parameters:
        assert name in text.split("### Connecting", 1)[1], f"README's Client(...) lacks {name}"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with threaded_server() as running:
        yield running


@pytest.mark.parametrize("index", range(len(programs(README))))
def test_readme_example_runs_twice_on_the_same_server(
    index: int, server: ThreadedServer, tmp_path: Path
) -> None:
    code = programs(README)[index]
    for attempt in ("first", "second"):
        result = run_program(code, server.url, tmp_path, f"example_{index}")
        assert result.returncode == 0, f"README example {index}, {attempt} run: {describe(result)}"
