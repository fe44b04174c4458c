"""The documentation site's examples run, and its pages and reference stay complete.

`make docs` builds the site with `mkdocs build --strict` (broken links and
cross-references fail it); these tests cover what a build does not check: that
every whole program on a page runs against a real reference server, and that
every page is reachable from the navigation. ```bash blocks (the CLI guide's
script) run too.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from markdown_examples import (
    ROOT,
    describe,
    programs,
    run_all,
    run_program,
    run_script,
    scripts,
)

from dispatch_client.testing import threaded_server

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
EXAMPLES = [
    (page.relative_to(DOCS).as_posix(), index)
    for page in PAGES
    for index in range(len(programs(page)))
]


SCRIPTS = [
    (page.relative_to(DOCS).as_posix(), index)
    for page in PAGES
    for index in range(len(scripts(page)))
]


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every program and script of the site, run concurrently against one server."""
    with threaded_server() as server:
        jobs: list[tuple[str, Callable[[Path], subprocess.CompletedProcess[str]]]] = []
        for page, index in EXAMPLES:
            code = programs(DOCS / page)[index]
            jobs.append(
                (
                    f"{page}:{index}",
                    functools.partial(run_example, code, server.url, name=f"example_{index}"),
                )
            )
        for page, index in SCRIPTS:
            code = scripts(DOCS / page)[index]
            jobs.append((f"{page}:script{index}", functools.partial(run_shell, code, server.url)))
        yield run_all(jobs)


def run_example(
    code: str, url: str, workdir: Path, *, name: str
) -> subprocess.CompletedProcess[str]:
    return run_program(code, url, workdir, name)


def run_shell(code: str, url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return run_script(code, url, workdir)


@pytest.mark.parametrize(("page", "index"), EXAMPLES, ids=[f"{p}:{i}" for p, i in EXAMPLES])
def test_docs_example_runs(
    page: str, index: int, results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = results[f"{page}:{index}"]
    assert result.returncode == 0, f"{page} example {index}: {describe(result)}"


@pytest.mark.parametrize(("page", "index"), SCRIPTS, ids=[f"{p}:{i}" for p, i in SCRIPTS])
def test_docs_shell_script_runs(
    page: str, index: int, results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = results[f"{page}:script{index}"]
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


def test_every_public_module_has_a_reference_page() -> None:
    documented = {
        match
        for page in (DOCS / "reference").glob("*.md")
        for match in re.findall(r"^::: (dispatch_client[\w.]*)", page.read_text(), re.MULTILINE)
    }
    package = ROOT / "dispatch_client"
    public = {
        f"dispatch_client.{path.stem}"
        for path in package.glob("*.py")
        if not path.stem.startswith("_")
    } | {
        f"dispatch_client.{path.name}"
        for path in package.iterdir()
        if (path / "__init__.py").exists() and not path.name.startswith("_")
    }
    # Client is documented where users import it from: the package root.
    public -= {"dispatch_client.client", "dispatch_client.cli"}
    assert "dispatch_client" in documented
    assert public - documented == set(), "public modules without a reference page"
