"""The README's Python examples run against the reference server, so they never rot.

Each runs twice against the same server, as a reader trying them again would:
an example that only passes on an empty microgrid fails the second run. The
examples run concurrently within a round (each uses its own microgrid ids).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from markdown_examples import ROOT, describe, programs, run_all, run_program

from dispatch_client.testing import threaded_server

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
        "client.manage(",
    ):
        assert call in code, f"README lost its {call} example"


def test_readme_shows_the_whole_client_signature() -> None:
    import inspect

    from dispatch_client import Client

    text = README.read_text()
    for name in inspect.signature(Client).parameters:
        assert name in text.split("### Connecting", 1)[1], f"README's Client(...) lacks {name}"


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every example run twice (all first runs, then all second runs) against one server."""
    codes = programs(README)
    with threaded_server() as server:
        found: dict[str, subprocess.CompletedProcess[str]] = {}
        for attempt in ("first", "second"):
            jobs: list[tuple[str, Callable[[Path], subprocess.CompletedProcess[str]]]] = [
                (
                    f"{index}:{attempt}",
                    functools.partial(run_example, code, server.url, name=f"example_{index}"),
                )
                for index, code in enumerate(codes)
            ]
            found.update(run_all(jobs))
        yield found


def run_example(
    code: str, url: str, workdir: Path, *, name: str
) -> subprocess.CompletedProcess[str]:
    return run_program(code, url, workdir, name)


@pytest.mark.parametrize("index", range(len(programs(README))))
def test_readme_example_runs_twice_on_the_same_server(
    index: int, results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    for attempt in ("first", "second"):
        result = results[f"{index}:{attempt}"]
        assert result.returncode == 0, f"README example {index}, {attempt} run: {describe(result)}"


@pytest.mark.anyio
async def test_the_quoted_tls_error_is_the_real_one() -> None:
    """README and getting started quote what leaving out ?ssl=false does; it must stay true."""
    import datetime as dt

    from dispatch_client import Client, Unavailable
    from dispatch_client.testing import running_server

    quoted = "TLS handshake failed: the server does not speak TLS (WRONG_VERSION_NUMBER)"
    assert quoted in README.read_text()
    assert quoted in (ROOT / "docs" / "getting-started.md").read_text()
    async with running_server() as server:
        tls_url = server.url.split("?", 1)[0]
        async with Client(tls_url, call_timeout=dt.timedelta(seconds=10)) as client:
            with pytest.raises(Unavailable) as caught:
                await client.get(1, 1)
    assert quoted in str(caught.value)
    assert "?ssl=false" in str(caught.value)
