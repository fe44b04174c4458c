"""The documentation site's examples run, and its pages and reference stay complete.

`make docs` builds the site with `mkdocs build --strict` (broken links and
cross-references fail it); these tests cover what a build does not check: that
every whole program on a page runs against a real reference server, and that
every page is reachable from the navigation. ```bash blocks (the CLI guide's
script) run too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from markdown_examples import ROOT, describe, programs, run_program, run_script, scripts

from dispatch_client.testing import ThreadedServer, threaded_server

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
EXAMPLES = [
    (page.relative_to(DOCS).as_posix(), index)
    for page in PAGES
    for index in range(len(programs(page)))
]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with threaded_server() as running:
        yield running


@pytest.mark.parametrize(("page", "index"), EXAMPLES, ids=[f"{p}:{i}" for p, i in EXAMPLES])
def test_docs_example_runs(page: str, index: int, server: ThreadedServer, tmp_path: Path) -> None:
    code = programs(DOCS / page)[index]
    result = run_program(code, server.url, tmp_path, f"example_{index}")
    assert result.returncode == 0, f"{page} example {index}: {describe(result)}"


SCRIPTS = [
    (page.relative_to(DOCS).as_posix(), index)
    for page in PAGES
    for index in range(len(scripts(page)))
]


@pytest.mark.parametrize(("page", "index"), SCRIPTS, ids=[f"{p}:{i}" for p, i in SCRIPTS])
def test_docs_shell_script_runs(
    page: str, index: int, server: ThreadedServer, tmp_path: Path
) -> None:
    result = run_script(scripts(DOCS / page)[index], server.url, tmp_path)
    assert result.returncode == 0, f"{page} script {index}: {describe(result)}"


def test_the_guides_have_examples() -> None:
    assert scripts(DOCS / "guides/cli.md"), "the CLI guide has no runnable script"
    for page in ("getting-started.md", "guides/streams.md", "guides/schedules.md"):
        assert programs(DOCS / page), f"{page} has no runnable example"


def test_every_page_is_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", config, re.MULTILINE))
    pages = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"
    assert listed - pages == set(), "nav entries without a page"
