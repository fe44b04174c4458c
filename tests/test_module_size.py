"""No library module grows past 600 lines (issue 13); generated code aside.

A module that gets too long is split by role into well-named modules (private
`_x.py` ones re-exported by the public module), not trimmed of docstrings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import dispatch_client

MAX_LINES = 600
PACKAGE = Path(dispatch_client.__file__).parent
MODULES = sorted(
    path for path in PACKAGE.rglob("*.py") if "_proto" not in path.relative_to(PACKAGE).parts
)


def test_the_package_has_modules() -> None:
    assert len(MODULES) > 30


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_module_is_at_most_600_lines(path: Path) -> None:
    name = path.relative_to(PACKAGE).as_posix()
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (allowed: {MAX_LINES}); split it by role"
