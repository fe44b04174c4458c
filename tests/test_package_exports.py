"""The package's public names: all importable, and the heavy ones loaded only on use."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from fresh_python import run_python

import dispatch_client
import dispatch_client.wire

PACKAGE = Path(dispatch_client.__file__).parent
MAX_ROOT_NAMES = 70

# Modules a unary-only program should not load just by importing the package.
DEFERRED = (
    "anyio",
    "dateutil.rrule",
    *(f"dispatch_client.{m}" for m in ("recurrence", "schedule", "streaming")),
)


@pytest.mark.parametrize("name", dispatch_client.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(dispatch_client, name) is not None
    assert name in dir(dispatch_client)


def test_lazy_names_are_the_module_objects() -> None:
    from dispatch_client import recurrence, schedule, streaming

    assert dispatch_client.runs is recurrence.runs
    assert dispatch_client.RunTransition is schedule.RunTransition
    assert dispatch_client.SharedStream is streaming.SharedStream


def test_the_root_stays_small_and_the_wire_classes_live_in_wire() -> None:
    names = dispatch_client.__all__
    assert len(names) == len(set(names))
    assert len(names) <= MAX_ROOT_NAMES
    wire = set(dispatch_client.wire.__all__)
    assert not wire & set(names)
    assert not any(n.endswith(("Request", "Response")) for n in names)
    assert {"MicrogridDispatchServiceStub", "MicrogridDispatchServiceBase"} <= wire
    for name in wire:
        assert getattr(dispatch_client.wire, name) is not None


def _imports(path: Path, module: str) -> set[str]:
    """The dispatch_client modules `path` imports anywhere, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dispatch_client"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            if base.startswith("dispatch_client"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                    found.add(sub if is_module else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found - {module}


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        module = ".".join(parts)
        graph[module] = _imports(path, module)
    # A submodule importing its own package's __init__ (for `__version__`) is
    # not a cycle of ours unless that __init__ imports the submodule back.
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert "dispatch_client._runtime" not in graph["dispatch_client._trio"]


def test_unknown_name_raises_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = dispatch_client.no_such_name  # type: ignore[attr-defined]


def test_import_defers_stream_and_schedule_modules() -> None:
    loaded = run_python(
        f"""
        import sys
        import dispatch_client
        print(sorted(m for m in {DEFERRED!r} if m in sys.modules))
        """
    )
    assert loaded == "[]"


def test_unary_calls_do_not_load_stream_modules() -> None:
    # The reference server needs anyio itself, so it runs in another process.
    program = """
        import asyncio, datetime as dt, re, subprocess, sys
        from dispatch_client import Client

        server = subprocess.Popen(
            [sys.executable, "-m", "dispatch_client.server", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            url = None
            for line in server.stderr:
                found = re.search(r"connect with (grpc://\\S+)", line)
                if found:
                    url = found.group(1)
                    break
            assert url, "the server did not say where it listens"

            async def main():
                async with Client(url) as client:
                    made = await client.create(1, "T", "NOW", dt.timedelta(minutes=1), [1])
                    got = await client.get(1, made.metadata.dispatch_id)
                    assert got == made
                    listed = [d async for d in client.dispatches(1)]
                    assert listed == [made]

            asyncio.run(main())
        finally:
            server.terminate()
            server.wait(10)
        print(sorted(m for m in DEFERRED if m in sys.modules))
        """
    loaded = run_python(f"DEFERRED = {DEFERRED!r}\n" + textwrap.dedent(program))
    assert loaded == "[]"
